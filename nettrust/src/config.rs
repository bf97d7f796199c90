//! Configuration: the TOML file, the environment and the command line, merged and validated into
//! [`Settings`] before any firewall object exists.
//!
//! Precedence, for every option: flag > environment (`NET_TRUST_<KEY>`) > config file > default,
//! including `0` and `false`. Lists from the environment (`NET_TRUST_WHITELIST_*`,
//! `NET_TRUST_BLACKLIST_*`) add to the config file's lists, as in the original.

mod capture;
mod clients;
mod domains;
mod env;
mod files;
mod options;
mod policies;
mod validate;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

pub use clients::interface_networks;
pub use env::Env;
pub use files::{FileKind, check_file_mode};
use ipnet::IpNet;
pub use options::{
    Backend, BlacklistSection, FirewallType, FwdProto, LogFormat, Names, Options, PolicyMode,
    PolicySection, WhitelistSection, names as option_names,
};
use serde::Serialize;
pub use validate::{
    DEFAULT_MAX_ANSWER_ADDRESSES, DEFAULT_WORKER_THREADS, MAX_HOSTS_LIMIT, MAX_NETWORKS_LIMIT,
    MAX_WORKER_THREADS, parse_socket_addr,
};

use crate::{
    blacklist::BlockResponse,
    policy::{Domains, DomainsFileError},
};

/// The config file: the same [`Options`] as the command line, read from TOML.
pub type FileConfig = Options;

/// Where nettrust pins its eBPF maps unless told otherwise.
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/nettrust";
/// Port used when an address is given without one (RFC 1035 §4.2).
pub const DNS_PORT: u16 = 53;
/// EDNS0 payload size advertised upstream by default (the DNS Flag Day 2020 value).
pub const DEFAULT_UDP_BUFFER: u16 = 1232;
/// Port of a dedicated DNS-over-TLS listener given without one (RFC 7858 §3.1).
pub const DOT_PORT: u16 = 853;
/// Default upstream timeout.
pub const DEFAULT_FWD_TIMEOUT_MS: u64 = 2000;
/// Default seconds between expiry sweeps (the original's).
pub const DEFAULT_TTL_CHECK_INTERVAL: u64 = 30;

/// Errors of loading and validating the configuration. Each names the offending key and value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("config file {path}: cannot read it")]
    Read {
        /// Path given with --config.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML for nettrust (syntax, type or unknown key).
    #[error("config file {path}: {message}")]
    Parse {
        /// Path given with --config.
        path: PathBuf,
        /// The parser's message, which names the key and position.
        message: String,
    },
    /// An option has a value that cannot be used.
    #[error("{key}: invalid value {value:?}: {reason}")]
    Invalid {
        /// Option (flag, config key or environment variable) holding the value.
        key: String,
        /// The offending value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A required option is missing.
    #[error("{0}")]
    Missing(&'static str),
    /// A domain-list file cannot be read or holds a bad entry (the message names the file, the
    /// line and the entry).
    #[error("{key}: {error}")]
    DomainsFile {
        /// Config key naming the file.
        key: String,
        /// What is wrong.
        error: DomainsFileError,
    },
}

fn invalid(
    key: impl Into<String>,
    value: impl Into<String>,
    reason: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

/// Certificate and key of the DoT listener.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListenTls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// DoT settings towards the upstream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FwdTls {
    /// CA bundle; `None` = system roots.
    pub ca: Option<PathBuf>,
    /// Certificate name; `None` = the upstream's IP address.
    pub name: Option<String>,
}

/// Never-authorize rules.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Blacklist {
    /// Addresses never authorized.
    pub hosts: Vec<IpAddr>,
    /// Networks never authorized.
    pub networks: Vec<IpNet>,
    /// Lower-case domains without trailing dot; `*.` prefix = subdomains (the config file's
    /// list, as given).
    pub domains: Vec<String>,
    /// File of more domains, one per line.
    pub domains_file: Option<PathBuf>,
    /// `domains` and the file's entries, compiled for matching.
    #[serde(rename = "domain_entries", serialize_with = "entry_count")]
    pub matcher: Arc<Domains>,
    /// Answer to a blacklisted domain.
    pub response: BlockResponse,
}

/// A `[[policy]]` section, validated: its cgroups may resolve only the names it allows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicySettings {
    /// `[a-z0-9_-]{1,32}`, unique among the policies.
    pub name: String,
    /// Enforce or only log.
    pub mode: PolicyMode,
    /// cgroup v2 directories of the policy; none is in another policy or in the top-level
    /// `cgroups`.
    pub cgroups: Vec<PathBuf>,
    /// `allow_domains` and the entries of `allow_domains_file`, compiled for matching.
    #[serde(rename = "domain_entries", serialize_with = "entry_count")]
    pub domains: Arc<Domains>,
    /// `allow_domains_file`, if any (its entries are in `domains`).
    pub domains_file: Option<PathBuf>,
    /// Destinations always allowed for the policy's cgroups.
    pub networks: Vec<IpNet>,
}

/// Renders a compiled domain list as its number of entries (a list can hold millions).
fn entry_count<S: serde::Serializer>(domains: &Arc<Domains>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(domains.len()).unwrap_or(u64::MAX))
}

/// The validated configuration of a daemon run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    /// DNS listen address (UDP and TCP).
    pub listen_addr: SocketAddr,
    /// DoT on the TCP listener.
    pub listen_tls: Option<ListenTls>,
    /// Dedicated DoT listener; when set, the TCP listener of `listen_addr` stays plain DNS.
    pub listen_tls_addr: Option<SocketAddr>,
    /// Clients the listeners serve; others get REFUSED.
    pub allow_clients: Vec<IpNet>,
    /// Upstream DNS servers, in failover order.
    pub fwd_addrs: Vec<SocketAddr>,
    /// Transport to the upstreams.
    pub fwd_proto: FwdProto,
    /// DoT to the upstreams.
    pub fwd_tls: Option<FwdTls>,
    /// EDNS0 payload size advertised upstream.
    pub fwd_udp_buffer_size: u16,
    /// Upstream timeout.
    #[serde(with = "millis")]
    pub fwd_timeout: Duration,
    /// Firewall implementation.
    pub backend: Backend,
    /// Hook.
    pub firewall_type: FirewallType,
    /// Drop unsolicited inbound traffic.
    pub firewall_drop_input: bool,
    /// cgroup v2 directories filtered in the default policy: the top-level `cgroups`, or the
    /// cgroup v2 root when neither they nor any `[[policy]]` are given (empty when policies are
    /// given without top-level cgroups). See [`Settings::filtered_cgroups`].
    pub cgroups: Vec<PathBuf>,
    /// Answer cache cap; `None` = no cache.
    #[serde(with = "opt_secs")]
    pub dns_ttl_cache: Option<Duration>,
    /// Most answers kept in the cache.
    pub dns_cache_size: usize,
    /// TCP/DoT client connections open at once, per listener (the oldest is closed at the cap).
    pub max_tcp_connections: usize,
    /// Threads of the runtime serving DNS: 1 is a current-thread runtime, more a multi-thread
    /// runtime with that many workers.
    pub worker_threads: usize,
    /// Capacity of each eBPF host map (per address family): authorized plus whitelisted hosts.
    pub max_hosts: u32,
    /// Capacity of each eBPF network trie (per address family).
    pub max_networks: u32,
    /// Most addresses one DNS answer authorizes (the rest are relayed but not allowed).
    pub max_answer_addresses: u32,
    /// Authorization lifetime; `None` = never expires.
    #[serde(with = "opt_secs")]
    pub authorized_ttl: Option<Duration>,
    /// Time between expiry sweeps.
    #[serde(with = "secs")]
    pub ttl_check_interval: Duration,
    /// Keep policy and whitelists on exit.
    pub do_not_flush_table: bool,
    /// Keep authorized hosts on exit (with `do_not_flush_table`).
    pub do_not_flush_authorized_hosts: bool,
    /// Hosts always allowed (configured ones plus the listen addresses; the forward addresses are
    /// allowed on their DNS port only, see `reload::policy`).
    pub whitelist_hosts: Vec<IpAddr>,
    /// Networks always allowed (loopback/private when enabled, plus configured ones).
    pub whitelist_networks: Vec<IpNet>,
    /// Never-authorize rules.
    pub blacklist: Blacklist,
    /// Authorize PTR answers' addresses.
    pub authorize_ptr: bool,
    /// bpffs directory for pinned objects.
    pub bpffs_dir: PathBuf,
    /// Prometheus endpoint, if any.
    pub metrics_addr: Option<SocketAddr>,
    /// Log output format.
    pub log_format: LogFormat,
    /// The `[[policy]]` sections, in file order.
    #[serde(rename = "policy", skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<PolicySettings>,
    /// More DNS listen addresses (UDP and TCP), besides `listen_addr`.
    pub listen_addrs: Vec<SocketAddr>,
    /// Answer every DNS query of the filtered cgroups (eBPF socket-address programs).
    pub dns_capture: bool,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
}
mod millis {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}
mod opt_secs {
    pub fn serialize<S: serde::Serializer>(
        d: &Option<std::time::Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_i64(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
            None => s.serialize_i64(-1),
        }
    }
}

pub(crate) use crate::dns::clients::loopback_networks;

/// The networks allowed by `whitelist_private`: the original's RFC 1918 ranges and CGNAT
/// (RFC 6598), plus IPv6 unique-local (RFC 4193) and link-local (RFC 4291 §2.5.6).
pub fn private_networks() -> Vec<IpNet> {
    [
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "fc00::/7",
        "fe80::/10",
    ]
    .iter()
    .map(|n| n.parse().expect("valid literal"))
    .collect()
}

impl Settings {
    /// Merges flags, environment and the config file, applies defaults and validates everything
    /// that does not need the filesystem beyond certificate files. `cgroup2_root` gives the default
    /// cgroup when none is configured.
    pub fn resolve(
        args: &Options,
        file: &Options,
        env: &Env,
        cgroup2_root: impl FnOnce() -> Result<PathBuf, crate::cgroup::CgroupError>,
    ) -> Result<Self, ConfigError> {
        let l = options::Layers::new(args, &env.options, file);
        let (listen_addr, listen_tls, listen_tls_addr) = validate::listener(&l)?;
        let listen_addrs = capture::listen_addrs(&l, listen_addr, listen_tls_addr)?;
        let listeners: Vec<Option<SocketAddr>> = [Some(listen_addr), listen_tls_addr]
            .into_iter()
            .chain(listen_addrs.iter().copied().map(Some))
            .collect();
        let allow_clients = clients::allow_clients(&l, listeners.clone(), interface_networks)?;
        let fwd_addrs = validate::upstreams(&l, listen_addr)?;
        let (fwd_proto, fwd_tls, fwd_udp_buffer_size, fwd_timeout) =
            validate::upstream_transport(&l)?;
        let has_policies = !l.file().policies.is_empty();
        let (backend, firewall_type, firewall_drop_input, cgroups) =
            validate::firewall(&l, has_policies, cgroup2_root)?;
        let policies = policies::policies(&l, &cgroups)?;
        let dns_capture = capture::dns_capture(&l, backend, firewall_type)?;
        let (dns_ttl_cache, authorized_ttl, ttl_check_interval) = validate::lifetimes(&l)?;
        let (do_not_flush_table, do_not_flush_authorized_hosts) = validate::exit_mode(&l)?;
        let (whitelist_hosts, whitelist_networks) = validate::whitelist(&l, env, listeners)?;
        let allowed: Vec<IpAddr> = whitelist_hosts
            .iter()
            .copied()
            .chain(fwd_addrs.iter().map(SocketAddr::ip))
            .collect();
        let blacklist = validate::blacklist(&l, env, &allowed)?;
        let (authorize_ptr, bpffs_dir, metrics_addr, log_format) =
            validate::operations(&l, listen_addr)?;
        let (dns_cache_size, max_tcp_connections, worker_threads) = validate::counts(&l)?;
        let (max_hosts, max_networks, max_answer_addresses) =
            validate::capacities(&l, &whitelist_hosts, &whitelist_networks)?;
        Ok(Self {
            listen_addr,
            listen_tls,
            listen_tls_addr,
            allow_clients,
            fwd_addrs,
            fwd_proto,
            fwd_tls,
            fwd_udp_buffer_size,
            fwd_timeout,
            backend,
            firewall_type,
            firewall_drop_input,
            cgroups,
            dns_ttl_cache,
            dns_cache_size,
            max_tcp_connections,
            worker_threads,
            max_hosts,
            max_networks,
            max_answer_addresses,
            authorized_ttl,
            ttl_check_interval,
            do_not_flush_table,
            do_not_flush_authorized_hosts,
            whitelist_hosts,
            whitelist_networks,
            blacklist,
            authorize_ptr,
            bpffs_dir,
            metrics_addr,
            log_format,
            policies,
            listen_addrs,
            dns_capture,
        })
    }

    /// Every cgroup the filter is attached to: the default policy's (`cgroups`) then each
    /// policy's.
    pub fn filtered_cgroups(&self) -> Vec<PathBuf> {
        self.cgroups
            .iter()
            .chain(self.policies.iter().flat_map(|p| &p.cgroups))
            .cloned()
            .collect()
    }

    /// The effective settings as TOML, for `nettrust check-config`.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render the settings: {e}\n"))
    }
}

/// The config file named by `--config` or `NET_TRUST_CONFIG`, if any.
fn config_path(args: &Options, env: &Env) -> Option<(String, PathBuf)> {
    let no_file = Options::default();
    let l = options::Layers::new(args, &env.options, &no_file);
    l.get("config", |o| o.config.clone())
        .map(|g| (g.key, g.value))
}

/// Everything `nettrust run` needs before it touches the firewall: reads the config file, the
/// environment and the flags, and checks that every cgroup is a cgroup v2 directory. Also returns
/// warnings to log once logging is set up (it depends on the settings).
pub fn load(args: &Options) -> Result<(Settings, Vec<String>), ConfigError> {
    let env = Env::from_vars(std::env::vars())?;
    let warnings = env
        .unknown
        .iter()
        .map(|var| format!("ignoring unknown environment variable {var}"))
        .collect();
    // SAFETY: geteuid has no preconditions.
    let running_as_root = unsafe { libc::geteuid() } == 0;
    let file = match config_path(args, &env) {
        Some((key, path)) => {
            check_file_mode(&key, &path, FileKind::Config, running_as_root)?;
            Options::load(&path)?
        }
        None => Options::default(),
    };
    let settings = Settings::resolve(args, &file, &env, crate::cgroup::cgroup2_mount)?;
    if let Some(tls) = &settings.listen_tls {
        check_file_mode(
            "listen_cert_key",
            &tls.key,
            FileKind::PrivateKey,
            running_as_root,
        )?;
    }
    if let Some(ca) = settings.fwd_tls.as_ref().and_then(|t| t.ca.as_ref()) {
        check_file_mode("fwd_tls_cert", ca, FileKind::Trusted, running_as_root)?;
    }
    if let Some(file) = &settings.blacklist.domains_file {
        check_file_mode(
            "blacklist.domains_file",
            file,
            FileKind::DomainList,
            running_as_root,
        )?;
    }
    for policy in &settings.policies {
        if let Some(file) = &policy.domains_file {
            let key = format!("policy.{}.allow_domains_file", policy.name);
            check_file_mode(&key, file, FileKind::DomainList, running_as_root)?;
        }
    }
    let keyed = settings.cgroups.iter().map(|c| ("cgroup".to_owned(), c));
    let in_policies = settings.policies.iter().flat_map(|p| {
        let key = format!("policy.{}.cgroups", p.name);
        p.cgroups.iter().map(move |c| (key.clone(), c))
    });
    for (key, cgroup) in keyed.chain(in_policies) {
        if settings.backend == Backend::Nftables && crate::cgroup::patterns::is_pattern(cgroup) {
            return Err(invalid(
                key,
                cgroup.display().to_string(),
                crate::cgroup::patterns::NEEDS_EBPF,
            ));
        }
        crate::cgroup::validate_entry(cgroup)
            .map_err(|e| invalid(key, cgroup.display().to_string(), e))?;
    }
    Ok((settings, warnings))
}

fn dedup<T: PartialEq>(items: &mut Vec<T>) {
    let mut i = 0;
    while i < items.len() {
        if items[..i].contains(&items[i]) {
            items.remove(i);
        } else {
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests;
