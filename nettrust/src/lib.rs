//! nettrust: an outbound firewall that uses DNS as its source of truth.
//!
//! [`run`] binds the DNS listeners, starts the firewall backend with the whitelists, and serves
//! queries until the shutdown future completes; then it removes everything it created.
//! See ARCHITECTURE.md for the path of a DNS answer through the modules.

pub mod authorizer;
pub mod blacklist;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod dns;
pub mod firewall;
pub mod sys;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::{TcpListener, UdpSocket};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    authorizer::Authorizer,
    blacklist::Blacklist,
    config::{Backend, FwdProto, Settings},
    dns::{
        cache::Cache,
        proxy::Proxy,
        server,
        tls::{self, TlsError},
        upstream::{Transport, Upstreams},
    },
    firewall::{
        Policy,
        ebpf::{EbpfError, EbpfFirewall},
    },
};

/// How long shutdown waits for in-flight queries before removing the firewall.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The requested firewall backend is not part of this version.
    #[error("firewall backend {0:?} is not yet available; use --firewall-backend ebpf (or auto)")]
    BackendUnavailable(&'static str),
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
    /// TLS material (listener certificate, upstream CA bundle) is unusable.
    #[error("DNS over TLS")]
    Tls(#[from] TlsError),
    /// A blacklist entry is unusable.
    #[error("blacklist")]
    Blacklist(#[from] blacklist::PatternError),
    /// The eBPF backend could not start.
    #[error("cannot start the eBPF firewall")]
    Ebpf(#[from] EbpfError),
    /// Cleaning up at exit failed; the messages list everything left behind.
    #[error("cleanup failed: {}", .0.iter().map(|e| error_chain(e)).collect::<Vec<_>>().join("; "))]
    Teardown(Vec<EbpfError>),
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

/// Runs the daemon until `shutdown` completes, then removes the firewall.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    if settings.backend == Backend::Nftables {
        return Err(RunError::BackendUnavailable("nftables"));
    }
    // TLS material and lists first, then bind: a bad file or a busy port must fail before any
    // firewall object exists.
    let listen_tls = match &settings.listen_tls {
        Some(t) => Some(tokio_rustls::TlsAcceptor::from(tls::server_config(
            &t.cert, &t.key,
        )?)),
        None => None,
    };
    let transport = match (&settings.fwd_tls, settings.fwd_proto) {
        (Some(t), _) => Transport::Tls {
            config: tls::client_config(t.ca_bundle.as_deref())?,
            name: match &t.name {
                Some(name) => Some(tls::server_name(Some(name), settings.fwd_addrs[0].ip())?),
                None => None,
            },
        },
        (None, FwdProto::Tcp) => Transport::Tcp,
        (None, FwdProto::Udp) => Transport::Udp,
    };
    let blacklist = Arc::new(Blacklist::new(
        &settings.blacklist.domains,
        &settings.blacklist.hosts,
        &settings.blacklist.networks,
        settings.blacklist.response,
    )?);
    let listen = settings.listen_addr;
    let bind_tcp = async |addr: SocketAddr| {
        TcpListener::bind(addr)
            .await
            .map_err(|source| RunError::Bind {
                addr,
                proto: "tcp",
                source,
            })
    };
    let udp = UdpSocket::bind(listen)
        .await
        .map_err(|source| RunError::Bind {
            addr: listen,
            proto: "udp",
            source,
        })?;
    let tcp = bind_tcp(listen).await?;
    let dedicated_tls = match settings.listen_tls.as_ref().and_then(|t| t.addr) {
        Some(addr) => Some(bind_tcp(addr).await?),
        None => None,
    };

    let policy = Policy {
        whitelist_hosts: settings.whitelist_hosts.clone(),
        whitelist_networks: settings.whitelist_networks.clone(),
    };
    let firewall = Arc::new(EbpfFirewall::start(
        &settings.cgroups,
        &settings.bpffs_dir,
        &policy,
    )?);
    let authorizer = Authorizer::new(firewall.clone(), None)
        .with_blacklist(blacklist)
        .with_ptr_authorization(settings.authorize_ptr);
    let proxy = Arc::new(
        Proxy::new(
            Upstreams::new(&settings.fwd_addrs, transport, settings.fwd_timeout),
            authorizer,
        )
        .with_cache(
            settings
                .dns_ttl_cache
                .map(|max| Cache::new(max, settings.dns_cache_size)),
        )
        .with_udp_buffer_size(settings.fwd_udp_buffer_size),
    );

    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    tracker.spawn(server::serve_udp(
        Arc::new(udp),
        proxy.clone(),
        tracker.clone(),
        cancel.clone(),
    ));
    let plain_tcp_tls = listen_tls.clone().filter(|_| {
        settings
            .listen_tls
            .as_ref()
            .is_some_and(|t| t.on_listen_addr)
    });
    tracker.spawn(server::serve_tcp(
        tcp,
        plain_tcp_tls,
        proxy.clone(),
        tracker.clone(),
        cancel.clone(),
    ));
    if let (Some(listener), Some(acceptor)) = (dedicated_tls, listen_tls) {
        tracker.spawn(server::serve_tcp(
            listener,
            Some(acceptor),
            proxy,
            tracker.clone(),
            cancel.clone(),
        ));
    }
    tracing::info!(
        listen = %listen,
        upstreams = ?settings.fwd_addrs,
        fwd_proto = ?settings.fwd_proto,
        fwd_tls = settings.fwd_tls.is_some(),
        cache = ?settings.dns_ttl_cache,
        "nettrust is running"
    );

    shutdown.await;
    tracing::info!("Interrupted");
    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some queries were still in flight at shutdown");
    }
    firewall.stop().map_err(RunError::Teardown)?;
    tracing::info!("firewall removed, bye");
    Ok(())
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
