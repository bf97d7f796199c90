//! nettrust: an outbound firewall that uses DNS as its source of truth.
//!
//! [`run`] binds the DNS listeners, starts the firewall backend with the whitelists, and serves
//! queries until the shutdown future completes; then it removes everything it created.
//! See ARCHITECTURE.md for the path of a DNS answer through the modules.

pub mod authorizer;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod dns;
pub mod firewall;
pub mod metrics;
pub mod reload;
pub mod sys;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::{TcpListener, UdpSocket};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    authorizer::Authorizer,
    config::{Backend, FirewallType, Settings},
    dns::{proxy::Proxy, server, upstream::Upstream},
    firewall::{
        Firewall,
        ebpf::{EbpfError, EbpfFirewall},
        nftables::{NftablesError, NftablesFirewall},
    },
};

/// How long shutdown waits for in-flight queries before removing the firewall.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// An option is accepted by the configuration but not implemented by this version; refusing
    /// it beats silently running without the protection it promises.
    #[error("{0} is not available in this version of nettrust")]
    NotYetAvailable(&'static str),
    /// A DNS listener could not be bound.
    #[error("cannot listen on {proto} {addr}")]
    Bind {
        /// Listen address.
        addr: SocketAddr,
        /// `udp` or `tcp`.
        proto: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The eBPF backend could not start.
    #[error("cannot start the eBPF firewall")]
    Ebpf(#[from] EbpfError),
    /// Cleaning up at exit failed; the messages list everything left behind.
    #[error("cleanup failed: {}", .0.iter().map(|e| error_chain(e)).collect::<Vec<_>>().join("; "))]
    Teardown(Vec<EbpfError>),
    /// The nftables backend could not start or stop.
    #[error("nftables firewall")]
    Nftables(#[from] NftablesError),
    /// eBPF was made unavailable on purpose (`NETTRUST_FORCE_EBPF_FAILURE=1`, for tests).
    #[error("eBPF disabled by NETTRUST_FORCE_EBPF_FAILURE=1")]
    EbpfForcedOff,
}

/// Formats an error with its chain of causes, `outer: inner: root`.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// The first configured option that this version cannot honour yet.
fn not_yet_available(settings: &Settings) -> Option<&'static str> {
    let checks = [
        (settings.listen_tls.is_some(), "listen_tls"),
        (settings.fwd_tls.is_some(), "fwd_tls"),
        (
            settings.fwd_proto != config::FwdProto::Udp,
            "fwd_proto = \"tcp\"",
        ),
        (
            settings.fwd_addrs.len() > 1,
            "more than one upstream (fwd_addrs)",
        ),
        (settings.dns_ttl_cache.is_some(), "dns_ttl_cache"),
        (
            !settings.blacklist.hosts.is_empty() || !settings.blacklist.networks.is_empty(),
            "blacklist.hosts/networks",
        ),
        (!settings.blacklist.domains.is_empty(), "blacklist.domains"),
        (settings.authorize_ptr, "authorize_ptr"),
        (
            settings.firewall_drop_input && settings.backend == Backend::Ebpf,
            "firewall_drop_input with the eBPF backend (use nftables or auto)",
        ),
        (settings.do_not_flush_table, "do_not_flush_table"),
    ];
    checks
        .into_iter()
        .find_map(|(set, name)| set.then_some(name))
}

/// Runs the daemon until `shutdown` completes, then removes the firewall. Each configuration
/// received on `reloads` (SIGHUP in `main`) is applied with [`reload::apply`].
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()>,
    mut reloads: tokio::sync::mpsc::Receiver<Settings>,
) -> Result<(), RunError> {
    if let Some(option) = not_yet_available(&settings) {
        return Err(RunError::NotYetAvailable(option));
    }
    // Bind first: a busy port must fail before any firewall object exists.
    let listen = settings.listen_addr;
    let udp = UdpSocket::bind(listen)
        .await
        .map_err(|source| RunError::Bind {
            addr: listen,
            proto: "udp",
            source,
        })?;
    let tcp = TcpListener::bind(listen)
        .await
        .map_err(|source| RunError::Bind {
            addr: listen,
            proto: "tcp",
            source,
        })?;

    let metrics_listener = match settings.metrics_addr {
        Some(addr) => Some(metrics::bind(addr).await.map_err(|source| RunError::Bind {
            addr,
            proto: "tcp (metrics)",
            source,
        })?),
        None => None,
    };

    let backend = start_backend(&settings)?;
    let firewall = backend.firewall();
    let authorizer = Authorizer::new(firewall.clone(), settings.authorized_ttl);
    let upstream = settings.fwd_addrs[0];
    let proxy = Arc::new(Proxy::new(
        Upstream::new(upstream, settings.fwd_timeout),
        authorizer,
    ));

    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    tracker.spawn(server::serve_udp(
        Arc::new(udp),
        proxy.clone(),
        tracker.clone(),
        cancel.clone(),
    ));
    tracker.spawn(server::serve_tcp(
        tcp,
        proxy,
        tracker.clone(),
        cancel.clone(),
    ));
    if let Some(listener) = metrics_listener {
        let sources = metrics::Sources {
            firewall: firewall.clone(),
            bpffs_dir: settings.bpffs_dir.clone(),
        };
        tracker.spawn(metrics::serve(listener, sources, cancel.clone()));
    }
    tracing::info!(listen = %listen, upstream = %upstream, "nettrust is running");

    tokio::pin!(shutdown);
    let mut current = settings;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(new) = reloads.recv() => {
                if let Err(e) = reload::apply(&mut current, new, firewall.as_ref()) {
                    tracing::error!("{}", error_chain(&e));
                }
            }
        }
    }
    tracing::info!("Interrupted");
    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some queries were still in flight at shutdown");
    }
    backend.stop()?;
    tracing::info!("firewall removed, bye");
    Ok(())
}

/// The backend that enforces the policy.
enum StartedBackend {
    Ebpf(Arc<EbpfFirewall>),
    Nftables(Arc<NftablesFirewall>),
}

impl StartedBackend {
    fn firewall(&self) -> Arc<dyn Firewall> {
        match self {
            Self::Ebpf(f) => f.clone(),
            Self::Nftables(f) => f.clone(),
        }
    }

    fn stop(&self) -> Result<(), RunError> {
        match self {
            Self::Ebpf(f) => f.stop().map_err(RunError::Teardown),
            Self::Nftables(f) => Ok(f.stop()?),
        }
    }
}

/// Starts the configured backend. `auto` uses eBPF and falls back to nftables, logging why,
/// when eBPF cannot start or cannot do what is asked (gateway mode, `--firewall-drop-input`).
fn start_backend(settings: &Settings) -> Result<StartedBackend, RunError> {
    let policy = reload::policy(settings);
    let start_ebpf = || -> Result<StartedBackend, RunError> {
        if std::env::var_os("NETTRUST_FORCE_EBPF_FAILURE").is_some_and(|v| v == "1") {
            return Err(RunError::EbpfForcedOff);
        }
        Ok(StartedBackend::Ebpf(Arc::new(EbpfFirewall::start(
            &settings.cgroups,
            &settings.bpffs_dir,
            &policy,
        )?)))
    };
    let start_nftables = || -> Result<StartedBackend, RunError> {
        let options = firewall::nftables::Options {
            mode: match settings.firewall_type {
                FirewallType::Output => firewall::nftables::Mode::Output {
                    cgroups: settings.cgroups.clone(),
                },
                FirewallType::Forward => firewall::nftables::Mode::Forward,
            },
            drop_input: settings.firewall_drop_input,
        };
        Ok(StartedBackend::Nftables(Arc::new(NftablesFirewall::start(
            &options, &policy,
        )?)))
    };
    match settings.backend {
        Backend::Ebpf => start_ebpf(),
        Backend::Nftables => start_nftables(),
        Backend::Auto if settings.firewall_type == FirewallType::Forward => {
            tracing::info!("firewall backend: nftables (gateway mode needs the forward hook)");
            start_nftables()
        }
        Backend::Auto if settings.firewall_drop_input => {
            tracing::info!("firewall backend: nftables (--firewall-drop-input needs nftables)");
            start_nftables()
        }
        Backend::Auto => start_ebpf().or_else(|e| {
            tracing::warn!(
                reason = %error_chain(&e),
                "eBPF firewall unavailable, falling back to nftables"
            );
            start_nftables()
        }),
    }
}

/// `nettrust list`: the authorized hosts of the daemon whose maps are pinned in `bpffs_dir`, one
/// line each: address, then the remaining lifetime.
pub fn list(bpffs_dir: &std::path::Path) -> Result<String, EbpfError> {
    let mut hosts = firewall::ebpf::list_pinned(bpffs_dir)?;
    hosts.sort_by_key(|h| h.addr);
    let now = firewall::boottime_ns();
    let mut out = String::new();
    for host in hosts {
        let ttl = match host.expires_ns {
            0 => "never expires".to_owned(),
            deadline => format!(
                "expires in {}s",
                deadline.saturating_sub(now) / 1_000_000_000
            ),
        };
        out.push_str(&format!("{}\t{ttl}\n", host.addr));
    }
    Ok(out)
}
