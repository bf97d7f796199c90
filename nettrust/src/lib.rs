//! nettrust: an outbound firewall that uses DNS as its source of truth.
//!
//! [`run`] binds the DNS listeners, starts the firewall backend with the whitelists, and serves
//! queries until the shutdown future completes; then it removes everything it created.
//! See ARCHITECTURE.md for the path of a DNS answer through the modules.

pub mod authorizer;
pub mod blacklist;
pub mod cgroup;
pub mod cli;
pub mod commands;
pub mod config;
pub mod conntrack;
pub mod dns;
pub mod firewall;
pub mod metrics;
pub mod netlink;
pub mod policy;
pub mod privileges;
pub mod reload;
pub mod scopes;
pub mod sweeper;
pub mod sys;

// Used by the binary and, for tests, the root tests' JSON parser: dependencies of the package
// that the library itself does not use.
use anyhow as _;
#[cfg(test)]
use serde_json as _;
use tracing_subscriber as _;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    authorizer::Authorizer,
    config::{Backend, FirewallType, FwdProto, Settings},
    dns::{
        cache::Cache,
        proxy::Proxy,
        server,
        tls::{self, TlsError},
        upstream::{Transport, Upstreams},
    },
    firewall::{
        ExitMode, Firewall,
        ebpf::{EbpfError, EbpfFirewall, EbpfOptions},
        nftables::{NftablesError, NftablesFirewall},
    },
    sweeper::SweepConfig,
};

/// How long shutdown waits for in-flight queries before removing the firewall.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the nftables backend checks that its table still exists (and re-installs it).
const NFTABLES_WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
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
    /// The UDP listener's threads (`epoll`, thread spawn) could not start.
    #[error("cannot start the UDP DNS threads on {addr}")]
    UdpEngine {
        /// Listen address.
        addr: SocketAddr,
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
    /// The nftables backend could not start or stop.
    #[error("nftables firewall")]
    Nftables(#[from] NftablesError),
    /// eBPF was made unavailable on purpose (`NETTRUST_FORCE_EBPF_FAILURE=1`, for tests).
    #[error("eBPF disabled by NETTRUST_FORCE_EBPF_FAILURE=1")]
    EbpfForcedOff,
    /// `dns_capture` with eBPF unavailable (`firewall_backend = auto` fell back to nftables).
    #[error(
        "dns_capture needs the eBPF backend, which is unavailable here (firewall_backend = auto fell back to nftables)"
    )]
    CaptureNeedsEbpf,
    /// Two `[[policy]]` names share a scope number.
    #[error("policies")]
    Scopes(#[from] scopes::ScopeCollision),
    /// The capabilities could not be reduced to what the running firewall needs.
    #[error("cannot start with reduced privileges")]
    Privileges(#[from] privileges::PrivilegeError),
    /// Cleaning up at exit failed; the messages list everything left behind.
    #[error("cleanup failed: {}", .0.iter().map(|e| error_chain(e)).collect::<Vec<_>>().join("; "))]
    Teardown(Vec<EbpfError>),
    /// A cgroup pattern is configured but the firewall is nftables (e.g. after falling back
    /// from eBPF): its rules list cgroup ids, so a cgroup created later would be filtered late.
    #[error("cgroup {}: {}", .0.display(), cgroup::patterns::NEEDS_EBPF)]
    CgroupPattern(std::path::PathBuf),
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

/// Runs the daemon until `shutdown` completes, then removes the firewall. Each configuration
/// received on `reloads` (SIGHUP in `main`) is applied with [`reload::apply`].
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()>,
    reloads: tokio::sync::mpsc::Receiver<Settings>,
) -> Result<(), RunError> {
    // TLS material and lists first, then bind: a bad file or a busy port must fail before any
    // firewall object exists.
    let listen_tls = match &settings.listen_tls {
        Some(t) => Some(tokio_rustls::TlsAcceptor::from(tls::server_config(
            &t.cert, &t.key,
        )?)),
        None => None,
    };
    let transport = upstream_transport(&settings)?;
    let blacklist = Arc::new(reload::blacklist(&settings)?);
    let (policies, scopes) = scopes::of_settings(&settings)?;
    let listeners = Listeners::bind(&settings, listen_tls).await?;

    let policy = reload::policy(&settings);
    let exit_mode = exit_mode(&settings);
    let backend = start_backend(&settings, &policy, &scopes)?;
    let firewall = backend.firewall();
    let (proxy, reload_handle) = proxy(&settings, firewall.clone(), blacklist, transport);
    reload_handle.set_policies(Arc::new(policies));

    let tasks = Tasks::default();
    if let Err(e) = tasks.start_udp(&settings, &listeners, &proxy) {
        // Not serving UDP would leave clients without DNS behind a deny-by-default firewall.
        let _ = backend.stop(exit_mode);
        return Err(e);
    }
    tasks.spawn_services(&settings, listeners, &proxy, &backend);
    // Everything that needs more than the running firewall's capabilities is done. A daemon that
    // cannot shed them (a sandbox that forbids capset(2) or hides /proc/sys/kernel/cap_last_cap)
    // does not run with more than it needs: it stops, removing its firewall as on any failed
    // start, and says why.
    match privileges::drop_privileges() {
        Ok(kept) => tracing::info!("capabilities reduced to {kept:#x}, no-new-privs set"),
        Err(e) => {
            tracing::error!("{}", error_chain(&e));
            tasks.drain().await;
            if let Err(stop) = backend.stop(exit_mode) {
                tracing::error!("{}", error_chain(&stop));
            }
            return Err(RunError::Privileges(e));
        }
    }
    tracing::info!(
        listen = %settings.listen_addr,
        allow_clients = ?settings.allow_clients,
        upstreams = ?settings.fwd_addrs,
        fwd_proto = ?settings.fwd_proto,
        fwd_tls = settings.fwd_tls.is_some(),
        cache = ?settings.dns_ttl_cache,
        "nettrust is running"
    );

    serve_reloads(
        settings,
        shutdown,
        reloads,
        firewall.as_ref(),
        &reload_handle,
    )
    .await;
    tracing::info!("Interrupted");
    if !tasks.drain().await {
        tracing::warn!("some queries were still in flight at shutdown");
    }
    backend.stop(exit_mode)?;
    match exit_mode {
        ExitMode::FlushAll => tracing::info!("firewall removed, bye"),
        ExitMode::KeepPolicy => {
            tracing::info!("authorized hosts removed, deny policy left in place, bye");
        }
        ExitMode::KeepAll => tracing::info!("firewall left in place, bye"),
    }
    Ok(())
}

/// The DNS proxy in front of `firewall`, and the authorizer handle SIGHUP reloads update.
fn proxy(
    settings: &Settings,
    firewall: Arc<dyn Firewall>,
    blacklist: Arc<blacklist::Blacklist>,
    transport: Transport,
) -> (Arc<Proxy>, Authorizer) {
    let authorizer = Authorizer::new(firewall, settings.authorized_ttl)
        .with_blacklist(blacklist)
        .with_ptr_authorization(settings.authorize_ptr)
        .with_max_addresses(settings.max_answer_addresses);
    let reload_handle = authorizer.clone();
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
        .with_udp_buffer_size(settings.fwd_udp_buffer_size)
        .with_allow_clients(settings.allow_clients.clone()),
    );
    (proxy, reload_handle)
}

/// The upstream transport: DoT when `fwd_tls` is set, else `fwd_proto`.
fn upstream_transport(settings: &Settings) -> Result<Transport, RunError> {
    Ok(match (&settings.fwd_tls, settings.fwd_proto) {
        (Some(t), _) => Transport::Tls {
            config: tls::client_config(t.ca.as_deref())?,
            name: match &t.name {
                Some(name) => Some(tls::server_name(Some(name), settings.fwd_addrs[0].ip())?),
                None => None,
            },
        },
        (None, FwdProto::Tcp) => Transport::Tcp,
        (None, FwdProto::Udp) => Transport::Udp,
    })
}

/// What happens to the firewall at exit, with a warning when it is not the default.
fn exit_mode(settings: &Settings) -> ExitMode {
    let exit_mode = ExitMode::from_flags(
        settings.do_not_flush_table,
        settings.do_not_flush_authorized_hosts,
    );
    match exit_mode {
        ExitMode::FlushAll => tracing::warn!(
            "on exit flush table is enabled. Please set this to false if you wish to deny traffic to all if NetTrust is not running"
        ),
        ExitMode::KeepPolicy => {}
        ExitMode::KeepAll => {
            tracing::warn!("on exit NetTrust will not flush the authorized hosts list");
        }
    }
    exit_mode
}

/// The daemon's sockets, bound before any firewall object exists.
struct Listeners {
    udp: std::net::UdpSocket,
    tcp: TcpListener,
    /// The DoT acceptor: for `dedicated_tls` when there is one, else for `tcp`.
    tls: Option<tokio_rustls::TlsAcceptor>,
    dedicated_tls: Option<TcpListener>,
    metrics: Option<TcpListener>,
    /// The sockets of `listen_addrs`, served like `udp` and `tcp` (plain DNS).
    more: Vec<(SocketAddr, std::net::UdpSocket, TcpListener)>,
}

impl Listeners {
    async fn bind(
        settings: &Settings,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Result<Self, RunError> {
        let bind_tcp = async |addr: SocketAddr, proto| {
            TcpListener::bind(addr)
                .await
                .map_err(|source| RunError::Bind {
                    addr,
                    proto,
                    source,
                })
        };
        let bind_udp = |addr: SocketAddr| {
            std::net::UdpSocket::bind(addr)
                .and_then(|udp| udp.set_nonblocking(true).map(|()| udp))
                .map_err(|source| RunError::Bind {
                    addr,
                    proto: "udp",
                    source,
                })
        };
        let listen = settings.listen_addr;
        let udp = bind_udp(listen)?;
        let tcp = bind_tcp(listen, "tcp").await?;
        let mut more = Vec::new();
        for &addr in &settings.listen_addrs {
            more.push((addr, bind_udp(addr)?, bind_tcp(addr, "tcp").await?));
        }
        let dedicated_tls = match settings.listen_tls_addr {
            Some(addr) => Some(bind_tcp(addr, "tcp").await?),
            None => None,
        };
        let metrics = match settings.metrics_addr {
            Some(addr) => Some(bind_tcp(addr, "tcp (metrics)").await?),
            None => None,
        };
        Ok(Self {
            udp,
            tcp,
            tls,
            dedicated_tls,
            metrics,
            more,
        })
    }
}

/// The daemon's tasks and threads: cancelled together, waited for at shutdown.
#[derive(Default)]
struct Tasks {
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Tasks {
    /// Starts the UDP engine's threads on each UDP listener; on failure everything is
    /// cancelled.
    fn start_udp(
        &self,
        settings: &Settings,
        listeners: &Listeners,
        proxy: &Arc<Proxy>,
    ) -> Result<(), RunError> {
        let more = listeners.more.iter().map(|(addr, udp, _)| (*addr, udp));
        for (addr, udp) in std::iter::once((settings.listen_addr, &listeners.udp)).chain(more) {
            dns::udp::start(
                udp,
                settings.worker_threads,
                proxy,
                &self.tracker,
                &self.cancel,
            )
            .map_err(|source| {
                self.cancel.cancel();
                RunError::UdpEngine { addr, source }
            })?;
        }
        Ok(())
    }

    /// Starts the TCP/DoT listeners, the sweeper, the nftables watch and the metrics endpoint.
    fn spawn_services(
        &self,
        settings: &Settings,
        listeners: Listeners,
        proxy: &Arc<Proxy>,
        backend: &StartedBackend,
    ) {
        let serve_tcp = |listener, tls| {
            server::serve_tcp(
                listener,
                tls,
                settings.max_tcp_connections,
                proxy.clone(),
                self.tracker.clone(),
                self.cancel.clone(),
            )
        };
        // With listen_tls the TCP listener of listen_addr speaks DoT (as the original); a
        // dedicated DoT listener (listen_tls_addr) leaves it plain.
        let tcp_tls = listeners
            .tls
            .clone()
            .filter(|_| listeners.dedicated_tls.is_none());
        self.tracker.spawn(serve_tcp(listeners.tcp, tcp_tls));
        for (_, _, tcp) in listeners.more {
            self.tracker.spawn(serve_tcp(tcp, None));
        }
        if let (Some(listener), Some(acceptor)) = (listeners.dedicated_tls, listeners.tls) {
            self.tracker.spawn(serve_tcp(listener, Some(acceptor)));
        }
        let firewall = backend.firewall();
        if let Some(ttl) = settings.authorized_ttl {
            let config = SweepConfig {
                ttl,
                ticker: settings.ttl_check_interval,
            };
            self.tracker
                .spawn(sweeper::run(firewall.clone(), config, self.cancel.clone()));
        }
        if let StartedBackend::Nftables(nft) = backend {
            self.tracker.spawn(firewall::nftables::watch(
                nft.clone(),
                NFTABLES_WATCH_INTERVAL,
                self.cancel.clone(),
            ));
        }
        if let Some(listener) = listeners.metrics {
            let sources = metrics::Sources {
                firewall,
                bpffs_dir: settings.bpffs_dir.clone(),
            };
            self.tracker
                .spawn(metrics::serve(listener, sources, self.cancel.clone()));
        }
    }

    /// Cancels everything and waits up to [`DRAIN_TIMEOUT`]; false when something was still
    /// running then.
    async fn drain(&self) -> bool {
        self.cancel.cancel();
        self.tracker.close();
        tokio::time::timeout(DRAIN_TIMEOUT, self.tracker.wait())
            .await
            .is_ok()
    }
}

/// Applies each configuration received on `reloads` until `shutdown` completes.
async fn serve_reloads(
    mut current: Settings,
    shutdown: impl Future<Output = ()>,
    mut reloads: tokio::sync::mpsc::Receiver<Settings>,
    firewall: &dyn Firewall,
    authorizer: &Authorizer,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(new) = reloads.recv() => {
                if let Err(e) = reload::apply(&mut current, new, firewall, authorizer) {
                    tracing::error!("{}", error_chain(&e));
                }
                // The replaced configuration's lists (a million-entry allow-list or blacklist is
                // tens of MB) are freed by now: hand their pages back instead of keeping the
                // reload's peak as the daemon's size.
                // SAFETY: malloc_trim only releases free heap memory; it has no preconditions.
                #[cfg(target_env = "gnu")]
                unsafe {
                    libc::malloc_trim(0);
                }
            }
        }
    }
}

/// Whether `e` means this machine cannot run the eBPF backend (no object, the kernel refused to
/// load or attach the program), as opposed to a problem nftables would not fix or must not paper
/// over: another daemon using the directory, pinned state that is not ours, an unsafe directory.
fn ebpf_unavailable(e: &RunError) -> bool {
    matches!(
        e,
        RunError::EbpfForcedOff
            | RunError::Ebpf(EbpfError::NoObject | EbpfError::Load(_) | EbpfError::Program { .. })
    )
}

/// The backend in use.
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

    fn stop(&self, mode: ExitMode) -> Result<(), RunError> {
        match self {
            Self::Ebpf(f) => f.stop(mode).map_err(RunError::Teardown),
            Self::Nftables(f) => Ok(f.stop(mode)?),
        }
    }
}

/// Starts the configured backend. `auto` uses eBPF and falls back to nftables, logging why, when
/// eBPF cannot start or cannot do what is asked (gateway mode filters routed traffic, which
/// cgroup programs never see).
fn start_backend(
    settings: &Settings,
    policy: &firewall::Policy,
    scopes: &firewall::Scopes,
) -> Result<StartedBackend, RunError> {
    let start_ebpf = || -> Result<StartedBackend, RunError> {
        if std::env::var_os("NETTRUST_FORCE_EBPF_FAILURE").is_some_and(|v| v == "1") {
            return Err(RunError::EbpfForcedOff);
        }
        let capture = settings.dns_capture.then(|| {
            let listeners: Vec<SocketAddr> = std::iter::once(settings.listen_addr)
                .chain(settings.listen_addrs.iter().copied())
                .collect();
            firewall::ebpf::CaptureTargets::from_listeners(&listeners)
        });
        let options = EbpfOptions {
            cgroups: settings.filtered_cgroups(),
            pin_dir: settings.bpffs_dir.clone(),
            policy: policy.clone(),
            drop_input: settings.firewall_drop_input,
            capacities: firewall::ebpf::Capacities {
                hosts: settings.max_hosts,
                networks: settings.max_networks,
            },
            scopes: scopes.clone(),
        };
        let firewall = EbpfFirewall::start_with_capture(&options, capture.as_ref())?;
        firewall.start_denied_log();
        firewall.start_cgroup_watch(settings.filtered_cgroups());
        Ok(StartedBackend::Ebpf(Arc::new(firewall)))
    };
    let start_nftables = || -> Result<StartedBackend, RunError> {
        if settings.dns_capture {
            return Err(RunError::CaptureNeedsEbpf);
        }
        let filtered = settings.filtered_cgroups();
        if let Some(pattern) = filtered.iter().find(|c| cgroup::patterns::is_pattern(c)) {
            return Err(RunError::CgroupPattern(pattern.clone()));
        }
        let options = firewall::nftables::Options {
            mode: match settings.firewall_type {
                FirewallType::Output => firewall::nftables::Mode::Output {
                    cgroups: settings.filtered_cgroups(),
                },
                FirewallType::Forward => firewall::nftables::Mode::Forward,
            },
            drop_input: settings.firewall_drop_input,
        };
        let firewall = NftablesFirewall::start_with_scopes(&options, policy, scopes)?;
        firewall.set_max_hosts(settings.max_hosts);
        Ok(StartedBackend::Nftables(Arc::new(firewall)))
    };
    match settings.backend {
        Backend::Ebpf => start_ebpf(),
        Backend::Nftables => start_nftables(),
        Backend::Auto if settings.firewall_type == FirewallType::Forward => {
            tracing::info!("firewall backend: nftables (gateway mode needs the forward hook)");
            start_nftables()
        }
        Backend::Auto => match start_ebpf() {
            Err(e) if ebpf_unavailable(&e) => {
                // Loud, with the reason in the message itself: a fallback caused by a sandbox
                // (a system-call filter without bpf(2), a missing CAP_BPF) is otherwise easy to
                // miss, and the nftables backend behaves differently.
                tracing::warn!(
                    "eBPF firewall unavailable, falling back to nftables: {} (firewall_backend = \"ebpf\" makes this a start error)",
                    error_chain(&e)
                );
                start_nftables()
            }
            other => other,
        },
    }
}
