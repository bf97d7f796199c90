//! Configuration: the TOML file, the environment and the command line, merged and validated into
//! [`Settings`] before any firewall object exists.
//!
//! Precedence, for every option: flag > environment (`NET_TRUST_<KEY>`) > config file > default,
//! including `0` and `false`. Lists from the environment (`NET_TRUST_WHITELIST_*`,
//! `NET_TRUST_BLACKLIST_*`) add to the config file's lists, as in the original.

mod env;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

pub use env::Env;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{blacklist::BlockResponse, cli::RunArgs};

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

/// The config file (`--config`). Every key is optional; unknown keys are an error, so a typo
/// cannot silently disable a protection. `config.toml` at the repository root documents each.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Address the DNS proxy listens on (UDP and TCP), `IP:PORT`.
    pub listen_addr: Option<String>,
    /// Serve DNS over TLS on the TCP listener.
    pub listen_tls: Option<bool>,
    /// Dedicated DNS-over-TLS listener, `IP:PORT` (port defaults to 853); needs `listen_tls`.
    pub listen_tls_addr: Option<String>,
    /// PEM certificate chain of the DoT listener.
    pub listen_cert: Option<PathBuf>,
    /// PEM private key of the DoT listener.
    pub listen_cert_key: Option<PathBuf>,
    /// Networks (CIDR) or addresses allowed to query the listeners.
    pub allow_clients: Option<Vec<String>>,
    /// Upstream DNS server, `IP:PORT` (port defaults to 53).
    pub fwd_addr: Option<String>,
    /// More upstream servers, tried in order after `fwd_addr`.
    pub fwd_addrs: Option<Vec<String>>,
    /// `udp` or `tcp`.
    pub fwd_proto: Option<String>,
    /// DNS over TLS to the upstream.
    pub fwd_tls: Option<bool>,
    /// PEM CA bundle for the upstream's certificate.
    pub fwd_tls_cert: Option<PathBuf>,
    /// Name the upstream's certificate must carry.
    pub fwd_tls_name: Option<String>,
    /// EDNS0 UDP payload size advertised to the upstream.
    pub fwd_udp_buffer_size: Option<u16>,
    /// Upstream timeout in milliseconds.
    pub fwd_timeout_ms: Option<u64>,
    /// `auto`, `ebpf` or `nftables`.
    pub firewall_backend: Option<String>,
    /// `output` or `forward`.
    pub firewall_type: Option<String>,
    /// Drop unsolicited inbound traffic too.
    pub firewall_drop_input: Option<bool>,
    /// cgroup v2 directories to enforce on; empty means the cgroup v2 root (the whole host).
    pub cgroups: Option<Vec<PathBuf>>,
    /// Answer cache lifetime cap in seconds; -1 or 0 disables it.
    pub dns_ttl_cache: Option<i64>,
    /// Most answers kept in the cache.
    pub dns_cache_size: Option<usize>,
    /// TCP/DoT client connections open at once, per listener.
    pub max_tcp_connections: Option<usize>,
    /// Threads serving DNS.
    pub worker_threads: Option<usize>,
    /// Capacity of each eBPF host map (per address family).
    pub max_hosts: Option<u32>,
    /// Capacity of each eBPF network trie (per address family).
    pub max_networks: Option<u32>,
    /// Most addresses one answer may authorize.
    pub max_answer_addresses: Option<u32>,
    /// Always allow loopback destinations.
    pub whitelist_loopback: Option<bool>,
    /// Always allow private-network destinations.
    pub whitelist_private: Option<bool>,
    /// Seconds an authorization lasts; -1 = never expires.
    pub authorized_ttl: Option<i64>,
    /// Seconds between expiry sweeps.
    pub ttl_check_interval: Option<i64>,
    /// Keep the deny policy and whitelists on exit.
    pub do_not_flush_table: Option<bool>,
    /// Keep the authorized hosts on exit too.
    pub do_not_flush_authorized_hosts: Option<bool>,
    /// Authorize the address of PTR answers.
    pub authorize_ptr: Option<bool>,
    /// bpffs directory for nettrust's pinned objects.
    pub bpffs_dir: Option<PathBuf>,
    /// Prometheus endpoint address.
    pub metrics_addr: Option<String>,
    /// `text` or `json`.
    pub log_format: Option<String>,
    /// Destinations always allowed.
    #[serde(default)]
    pub whitelist: WhitelistSection,
    /// What is never authorized.
    #[serde(default)]
    pub blacklist: BlacklistSection,
}

/// `[whitelist]` section of the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhitelistSection {
    /// Single addresses (IPv4 or IPv6).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Networks in CIDR notation (IPv4 or IPv6).
    #[serde(default)]
    pub networks: Vec<String>,
}

/// `[blacklist]` section of the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlacklistSection {
    /// Addresses never authorized (they stay in the answer).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Networks never authorized.
    #[serde(default)]
    pub networks: Vec<String>,
    /// Domains answered with `response`: exact names or `*.example.com` (its subdomains).
    #[serde(default)]
    pub domains: Vec<String>,
    /// `refused`, `nxdomain` or `servfail`.
    pub response: Option<String>,
}

impl FileConfig {
    /// Parses the text of a config file; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }
}

/// Which firewall implementation enforces the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// eBPF, falling back to nftables where eBPF cannot be used.
    Auto,
    /// eBPF cgroup_skb programs and maps.
    Ebpf,
    /// nftables table.
    Nftables,
}

/// Where the filter hooks in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FirewallType {
    /// This host's (or the chosen cgroups') outgoing traffic.
    Output,
    /// Traffic routed through this host (gateway mode).
    Forward,
}

/// Transport to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FwdProto {
    /// UDP, with TCP retry for truncated answers.
    Udp,
    /// TCP (required for DoT).
    Tcp,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
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
    /// Lower-case domains without trailing dot; `*.` prefix = subdomains.
    pub domains: Vec<String>,
    /// Answer to a blacklisted domain.
    pub response: BlockResponse,
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
    /// cgroup v2 directories the filter is attached to.
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

/// The loopback networks allowed by `whitelist_loopback` (RFC 1122 §3.2.1.3, RFC 4291 §2.5.3).
pub fn loopback_networks() -> Vec<IpNet> {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .map(|n| n.parse().expect("valid literal"))
        .collect()
}

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

/// Parses `IP:PORT`, `[IPv6]:PORT`, or a bare IP (port 53).
pub fn parse_socket_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(addr) = value.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(invalid(key, value, "port 0 is not a usable port"));
        }
        return Ok(addr);
    }
    value
        .parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, DNS_PORT))
        .map_err(|_| {
            invalid(
                key,
                value,
                "expected IP:PORT, e.g. 127.0.0.1:53 or [::1]:53",
            )
        })
}

fn parse_host(key: &str, value: &str) -> Result<IpAddr, ConfigError> {
    value
        .trim()
        .parse()
        .map_err(|_| invalid(key, value, "expected an IPv4 or IPv6 address"))
}

fn parse_network(key: &str, value: &str) -> Result<IpNet, ConfigError> {
    value
        .trim()
        .parse::<IpNet>()
        .map(|net| net.trunc())
        .map_err(|_| {
            invalid(
                key,
                value,
                "expected a network in CIDR notation, e.g. 192.0.2.0/24",
            )
        })
}

/// Validates a blacklist domain: `name` or `*.name`, RFC 1035 label rules (underscores allowed, as
/// in service names). Returns it lower-cased without trailing dot.
fn parse_domain(key: &str, value: &str) -> Result<String, ConfigError> {
    let bad = |reason: &str| invalid(key, value, reason.to_owned());
    let lower = value.trim().trim_end_matches('.').to_ascii_lowercase();
    let name = lower.strip_prefix("*.").unwrap_or(&lower);
    if name.is_empty() || name.len() > 253 {
        return Err(bad("expected a domain like example.com or *.example.com"));
    }
    for label in name.split('.') {
        let valid = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !valid {
            return Err(bad(
                "not a valid domain name (labels of letters, digits, '-', at most 63 bytes)",
            ));
        }
    }
    Ok(lower)
}

/// Checks that `path` is a readable PEM file holding a block whose label contains `label`
/// (`CERTIFICATE`, `PRIVATE KEY`).
fn check_pem(key: &str, path: &Path, label: &str) -> Result<(), ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(key, &shown, format!("cannot read it: {e}")))?;
    let has_block = text
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.contains(label) && l.ends_with("-----"));
    if !has_block {
        return Err(invalid(
            key,
            &shown,
            format!("no PEM {label} block in the file"),
        ));
    }
    Ok(())
}

/// One layer of the precedence chain: the value and the name it was given under.
struct Pick<T> {
    value: T,
    key: String,
}

/// [`pick`] for a count that must lie between 1 and `max`; an error names where the value came
/// from.
fn pick_count(
    flag: (Option<usize>, &str),
    env: &Env,
    file: (&str, Option<usize>),
    max: usize,
) -> Result<Option<usize>, ConfigError> {
    match pick(flag.0, flag.1, env, file.0, file.1)? {
        Some(Pick { value, key }) if !(1..=max).contains(&value) => Err(invalid(
            key,
            value.to_string(),
            format!("must be between 1 and {max}"),
        )),
        picked => Ok(picked.map(|p| p.value)),
    }
}

/// Resolves one scalar: flag, then `NET_TRUST_<KEY>`, then the config file.
fn pick<T: FromStr>(
    flag: Option<T>,
    flag_name: &str,
    env: &Env,
    key: &str,
    file: Option<T>,
) -> Result<Option<Pick<T>>, ConfigError> {
    if let Some(value) = flag {
        return Ok(Some(Pick {
            value,
            key: flag_name.to_owned(),
        }));
    }
    if let Some((var, raw)) = env.scalar(key) {
        let value = raw
            .trim()
            .parse()
            .map_err(|_| invalid(var, raw, format!("not a valid value for {key}")))?;
        return Ok(Some(Pick {
            value,
            key: var.to_owned(),
        }));
    }
    Ok(file.map(|value| Pick {
        value,
        key: key.to_owned(),
    }))
}

/// Parses one of a fixed set of lower-case words.
fn choice<T: Copy>(
    pick: Option<Pick<String>>,
    default: T,
    options: &[(&str, T)],
) -> Result<T, ConfigError> {
    let Some(Pick { value, key }) = pick else {
        return Ok(default);
    };
    let lower = value.to_ascii_lowercase();
    options
        .iter()
        .find(|(name, _)| *name == lower)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            invalid(key, value, format!("expected one of: {}", names.join(", ")))
        })
}

fn flag_or_env_bool(
    flag: Option<bool>,
    name: &str,
    env: &Env,
    key: &str,
    file: Option<bool>,
    default: bool,
) -> Result<bool, ConfigError> {
    Ok(pick(flag, name, env, key, file)?.map_or(default, |p| p.value))
}

impl Settings {
    /// Merges flags, environment and the config file, applies defaults and validates everything
    /// that does not need the filesystem beyond certificate files. `cgroup2_root` gives the default
    /// cgroup when none is configured.
    pub fn resolve(
        args: &RunArgs,
        file: FileConfig,
        env: &Env,
        cgroup2_root: impl FnOnce() -> Result<PathBuf, crate::cgroup::CgroupError>,
    ) -> Result<Self, ConfigError> {
        let FileConfig {
            listen_addr,
            listen_tls,
            listen_tls_addr,
            listen_cert,
            listen_cert_key,
            allow_clients,
            fwd_addr,
            fwd_addrs,
            fwd_proto,
            fwd_tls,
            fwd_tls_cert,
            fwd_tls_name,
            fwd_udp_buffer_size,
            fwd_timeout_ms,
            firewall_backend,
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
            whitelist_loopback,
            whitelist_private,
            authorized_ttl,
            ttl_check_interval,
            do_not_flush_table,
            do_not_flush_authorized_hosts,
            authorize_ptr,
            bpffs_dir,
            metrics_addr,
            log_format,
            whitelist,
            blacklist,
        } = file;

        // Listener.
        let listen_addr = match pick(
            args.listen_addr.clone(),
            "--listen-addr",
            env,
            "listen_addr",
            listen_addr,
        )? {
            Some(Pick { value, key }) => parse_socket_addr(&key, &value)?,
            None => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DNS_PORT),
        };
        let listen_tls = match pick(
            args.listen_tls,
            "--listen-tls",
            env,
            "listen_tls",
            listen_tls,
        )? {
            Some(Pick { value: true, .. }) => {
                let cert = pick(args.listen_cert.clone(), "--listen-cert", env, "listen_cert", listen_cert)?
                    .ok_or(ConfigError::Missing("listen_tls is enabled but no certificate was given (--listen-cert / listen_cert)"))?;
                let key = pick(args.listen_cert_key.clone(), "--listen-cert-key", env, "listen_cert_key", listen_cert_key)?
                    .ok_or(ConfigError::Missing("listen_tls is enabled but no private key was given (--listen-cert-key / listen_cert_key)"))?;
                check_pem(&cert.key, &cert.value, "CERTIFICATE")?;
                check_pem(&key.key, &key.value, "PRIVATE KEY")?;
                Some(ListenTls {
                    cert: cert.value,
                    key: key.value,
                })
            }
            _ => None,
        };
        let listen_tls_addr = match pick(
            args.listen_tls_addr.clone(),
            "--listen-tls-addr",
            env,
            "listen_tls_addr",
            listen_tls_addr,
        )? {
            Some(Pick { value, key }) => {
                if listen_tls.is_none() {
                    return Err(invalid(
                        key,
                        value,
                        "a dedicated DNS-over-TLS listener needs listen_tls = true (and its certificate)",
                    ));
                }
                // A bare address gets the DoT port (RFC 7858 §3.1).
                let addr = match value.trim().parse::<IpAddr>() {
                    Ok(ip) => SocketAddr::new(ip, DOT_PORT),
                    Err(_) => parse_socket_addr(&key, &value)?,
                };
                if addr == listen_addr {
                    return Err(invalid(key, value, "must differ from listen_addr"));
                }
                Some(addr)
            }
            None => None,
        };

        let allow_clients = resolve_allow_clients(
            args,
            env,
            allow_clients,
            [Some(listen_addr), listen_tls_addr],
            interface_networks,
        )?;

        // Upstreams: flags replace everything; else the environment's one address; else the file.
        let mut upstreams: Vec<(String, String)> = args
            .fwd_addrs
            .iter()
            .map(|a| ("--fwd-addr".to_owned(), a.clone()))
            .collect();
        if upstreams.is_empty() {
            if let Some((var, value)) = env.scalar("fwd_addr") {
                upstreams.push((var.to_owned(), value.to_owned()));
            } else {
                upstreams.extend(fwd_addr.map(|a| ("fwd_addr".to_owned(), a)));
                upstreams.extend(
                    fwd_addrs
                        .unwrap_or_default()
                        .into_iter()
                        .map(|a| ("fwd_addrs".to_owned(), a)),
                );
            }
        }
        if upstreams.is_empty() {
            return Err(ConfigError::Missing(
                "no upstream DNS server: set --fwd-addr IP:PORT or fwd_addr in the config file",
            ));
        }
        let mut fwd = Vec::with_capacity(upstreams.len());
        for (key, value) in &upstreams {
            let addr = parse_socket_addr(key, value)?;
            if addr == listen_addr {
                return Err(invalid(
                    key,
                    value,
                    "the forward address cannot be the listen address (queries would loop)",
                ));
            }
            if !fwd.contains(&addr) {
                fwd.push(addr);
            }
        }
        let fwd_proto = choice(
            pick(
                args.fwd_proto.clone(),
                "--fwd-proto",
                env,
                "fwd_proto",
                fwd_proto,
            )?,
            FwdProto::Udp,
            &[("udp", FwdProto::Udp), ("tcp", FwdProto::Tcp)],
        )?;
        let fwd_tls = match pick(args.fwd_tls, "--fwd-tls", env, "fwd_tls", fwd_tls)? {
            Some(Pick { value: true, key }) => {
                if fwd_proto != FwdProto::Tcp {
                    return Err(invalid(
                        key,
                        "true",
                        "DNS over TLS to the upstream requires fwd_proto = \"tcp\"",
                    ));
                }
                let ca = pick(
                    args.fwd_tls_cert.clone(),
                    "--fwd-tls-cert",
                    env,
                    "fwd_tls_cert",
                    fwd_tls_cert,
                )?;
                if let Some(ca) = &ca {
                    check_pem(&ca.key, &ca.value, "CERTIFICATE")?;
                }
                let name = pick(
                    args.fwd_tls_name.clone(),
                    "--fwd-tls-name",
                    env,
                    "fwd_tls_name",
                    fwd_tls_name,
                )?;
                if let Some(name) = &name {
                    parse_domain(&name.key, &name.value)?;
                }
                Some(FwdTls {
                    ca: ca.map(|p| p.value),
                    name: name.map(|p| p.value),
                })
            }
            _ => None,
        };
        let fwd_udp_buffer_size = match pick(
            args.fwd_udp_buffer_size,
            "--fwd-udp-buffer-size",
            env,
            "fwd_udp_buffer_size",
            fwd_udp_buffer_size,
        )? {
            Some(Pick { value, key }) if value < 512 => {
                return Err(invalid(
                    key,
                    value.to_string(),
                    "must be between 512 and 65535 (RFC 6891 §6.2.5)",
                ));
            }
            Some(p) => p.value,
            None => DEFAULT_UDP_BUFFER,
        };
        let fwd_timeout = match pick(
            args.fwd_timeout_ms,
            "--fwd-timeout-ms",
            env,
            "fwd_timeout_ms",
            fwd_timeout_ms,
        )? {
            Some(Pick { value, key }) if !(10..=60_000).contains(&value) => {
                return Err(invalid(
                    key,
                    value.to_string(),
                    "must be between 10 and 60000 milliseconds",
                ));
            }
            Some(p) => Duration::from_millis(p.value),
            None => Duration::from_millis(DEFAULT_FWD_TIMEOUT_MS),
        };

        // Firewall.
        let backend = choice(
            pick(
                args.firewall_backend.clone(),
                "--firewall-backend",
                env,
                "firewall_backend",
                firewall_backend,
            )?,
            Backend::Auto,
            &[
                ("auto", Backend::Auto),
                ("ebpf", Backend::Ebpf),
                ("nftables", Backend::Nftables),
            ],
        )?;
        let type_pick = pick(
            args.firewall_type.clone(),
            "--firewall-type",
            env,
            "firewall_type",
            firewall_type,
        )?;
        let type_key = type_pick.as_ref().map(|p| p.key.clone());
        let firewall_type = choice(
            type_pick,
            FirewallType::Output,
            &[
                ("output", FirewallType::Output),
                ("forward", FirewallType::Forward),
            ],
        )?;
        if firewall_type == FirewallType::Forward && backend == Backend::Ebpf {
            return Err(invalid(
                type_key.unwrap_or_default(),
                "forward",
                "gateway mode filters routed traffic, which cgroup programs never see: use the nftables backend",
            ));
        }
        let firewall_drop_input = flag_or_env_bool(
            args.firewall_drop_input,
            "--firewall-drop-input",
            env,
            "firewall_drop_input",
            firewall_drop_input,
            false,
        )?;
        let cgroups = if !args.cgroups.is_empty() {
            args.cgroups.clone()
        } else {
            match cgroups {
                Some(list) if !list.is_empty() => list,
                _ => vec![cgroup2_root().map_err(|e| invalid("cgroups", "", e.to_string()))?],
            }
        };

        // Lifetimes.
        let dns_ttl_cache = match pick(
            args.dns_ttl_cache,
            "--dns-ttl-cache",
            env,
            "dns_ttl_cache",
            dns_ttl_cache,
        )? {
            Some(Pick { value, key }) if value < -1 => {
                return Err(invalid(
                    key,
                    value.to_string(),
                    "must be -1 (off), 0 (off) or a number of seconds",
                ));
            }
            Some(Pick { value, .. }) if value > 0 => {
                Some(Duration::from_secs(value.unsigned_abs()))
            }
            _ => None,
        };
        let authorized_ttl = match pick(
            args.authorized_ttl,
            "--authorized-ttl",
            env,
            "authorized_ttl",
            authorized_ttl,
        )? {
            Some(Pick { value, key }) if value == 0 || value < -1 => {
                return Err(invalid(
                    key,
                    value.to_string(),
                    "must be -1 (never expire) or a number of seconds >= 1",
                ));
            }
            Some(Pick { value, .. }) if value > 0 => {
                Some(Duration::from_secs(value.unsigned_abs()))
            }
            _ => None,
        };
        let ttl_check_interval = match pick(
            args.ttl_check_interval,
            "--ttl-check-ticker",
            env,
            "ttl_check_interval",
            ttl_check_interval,
        )? {
            Some(Pick { value, key }) if value < 1 => {
                return Err(invalid(
                    key,
                    value.to_string(),
                    "the expiry sweep interval must be >= 1 second",
                ));
            }
            Some(Pick { value, .. }) => Duration::from_secs(value.unsigned_abs()),
            None => Duration::from_secs(DEFAULT_TTL_CHECK_INTERVAL),
        };
        let do_not_flush_table = flag_or_env_bool(
            args.do_not_flush_table,
            "--do-not-flush-table",
            env,
            "do_not_flush_table",
            do_not_flush_table,
            false,
        )?;
        let keep_hosts = pick(
            args.do_not_flush_authorized_hosts,
            "--do-not-flush-authorized-hosts",
            env,
            "do_not_flush_authorized_hosts",
            do_not_flush_authorized_hosts,
        )?;
        let do_not_flush_authorized_hosts = match keep_hosts {
            Some(Pick { value: true, key }) if !do_not_flush_table => {
                return Err(invalid(
                    key,
                    "true",
                    "keeping the authorized hosts needs do_not_flush_table = true (the table holding them is removed otherwise)",
                ));
            }
            Some(p) => p.value,
            None => false,
        };

        // Whitelist.
        let loopback = flag_or_env_bool(
            args.whitelist_loopback,
            "--whitelist-loopback",
            env,
            "whitelist_loopback",
            whitelist_loopback,
            true,
        )?;
        let private = flag_or_env_bool(
            args.whitelist_private,
            "--whitelist-private",
            env,
            "whitelist_private",
            whitelist_private,
            true,
        )?;
        let mut whitelist_networks = Vec::new();
        if loopback {
            whitelist_networks.extend(loopback_networks());
        }
        if private {
            whitelist_networks.extend(private_networks());
        }
        whitelist_networks.extend(env.whitelist_networks.iter().copied());
        for net in &whitelist.networks {
            whitelist_networks.push(parse_network("whitelist.networks", net)?);
        }
        let mut whitelist_hosts = vec![listen_addr.ip()];
        whitelist_hosts.extend(listen_tls_addr.map(|a| a.ip()));
        // The upstream servers are not whitelisted hosts: the firewall allows them on their DNS
        // port and transport only (`firewall::upstream_services`).
        whitelist_hosts.extend(env.whitelist_hosts.iter().copied());
        for host in &whitelist.hosts {
            whitelist_hosts.push(parse_host("whitelist.hosts", host)?);
        }
        whitelist_hosts.retain(|ip| !ip.is_unspecified());
        dedup(&mut whitelist_hosts);
        dedup(&mut whitelist_networks);

        // Blacklist.
        let BlacklistSection {
            hosts,
            networks,
            domains,
            response,
        } = blacklist;
        let mut blacklist_hosts = env.blacklist_hosts.clone();
        for host in &hosts {
            blacklist_hosts.push(parse_host("blacklist.hosts", host)?);
        }
        let mut blacklist_networks = env.blacklist_networks.clone();
        for net in &networks {
            blacklist_networks.push(parse_network("blacklist.networks", net)?);
        }
        let mut blacklist_domains = Vec::with_capacity(domains.len());
        for domain in &domains {
            blacklist_domains.push(parse_domain("blacklist.domains", domain)?);
        }
        let response_pick = match args.blacklist_response.clone() {
            Some(value) => Some(Pick {
                value,
                key: "--blacklist-response".to_owned(),
            }),
            None => pick(
                None,
                "",
                env,
                "blacklist_response",
                response.map(|r| r.to_owned()),
            )?
            .map(|p| Pick {
                key: if p.key == "blacklist_response" {
                    "blacklist.response".to_owned()
                } else {
                    p.key
                },
                value: p.value,
            }),
        };
        let response = choice(
            response_pick,
            BlockResponse::Refused,
            &[
                ("refused", BlockResponse::Refused),
                ("nxdomain", BlockResponse::NxDomain),
                ("servfail", BlockResponse::ServFail),
            ],
        )?;
        dedup(&mut blacklist_hosts);
        dedup(&mut blacklist_networks);
        dedup(&mut blacklist_domains);
        let fwd_hosts: Vec<IpAddr> = fwd.iter().map(SocketAddr::ip).collect();
        for host in whitelist_hosts.iter().chain(&fwd_hosts) {
            if blacklist_hosts.contains(host) {
                return Err(invalid(
                    "blacklist.hosts",
                    host.to_string(),
                    "also whitelisted (or a listen/forward address); remove one of the two",
                ));
            }
        }

        let authorize_ptr = flag_or_env_bool(
            args.authorize_ptr,
            "--authorize-ptr",
            env,
            "authorize_ptr",
            authorize_ptr,
            false,
        )?;
        let bpffs_dir = pick(
            args.bpffs_dir.clone(),
            "--bpffs-dir",
            env,
            "bpffs_dir",
            bpffs_dir,
        )?;
        let bpffs_dir = match bpffs_dir {
            Some(Pick { value, key })
                if !value.is_absolute() || value.parent().is_none_or(|p| p == Path::new("/")) =>
            {
                return Err(invalid(
                    key,
                    value.display().to_string(),
                    "must be an absolute path inside a bpf filesystem, e.g. /sys/fs/bpf/nettrust",
                ));
            }
            Some(p) => p.value,
            None => PathBuf::from(DEFAULT_BPFFS_DIR),
        };
        let metrics_addr = match pick(
            args.metrics_addr.clone(),
            "--metrics-addr",
            env,
            "metrics_addr",
            metrics_addr,
        )? {
            Some(Pick { value, key }) => {
                let addr = value
                    .parse::<SocketAddr>()
                    .map_err(|_| invalid(&key, &value, "expected IP:PORT, e.g. 127.0.0.1:9153"))?;
                if addr == listen_addr || addr.port() == 0 {
                    return Err(invalid(
                        key,
                        value,
                        "must be a free IP:PORT other than the DNS listen address",
                    ));
                }
                Some(addr)
            }
            None => None,
        };
        let log_format = choice(
            pick(
                args.log_format.clone(),
                "--log-format",
                env,
                "log_format",
                log_format,
            )?,
            LogFormat::Text,
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        )?;

        let dns_cache_size = match pick(
            args.dns_cache_size,
            "--dns-cache-size",
            env,
            "dns_cache_size",
            dns_cache_size,
        )? {
            Some(Pick { value: 0, key }) => {
                return Err(invalid(key, "0", "must be at least 1"));
            }
            Some(p) => p.value,
            None => crate::dns::cache::DEFAULT_CAPACITY,
        };
        let max_tcp_connections = pick_count(
            (args.max_tcp_connections, "--max-tcp-connections"),
            env,
            ("max_tcp_connections", max_tcp_connections),
            MAX_TCP_CONNECTIONS,
        )?
        .unwrap_or(crate::dns::server::DEFAULT_MAX_TCP_CONNECTIONS);
        let worker_threads = pick_count(
            (args.worker_threads, "--worker-threads"),
            env,
            ("worker_threads", worker_threads),
            MAX_WORKER_THREADS,
        )?
        .unwrap_or(DEFAULT_WORKER_THREADS);

        let (max_hosts, max_networks) = capacities(
            args,
            env,
            (max_hosts, max_networks),
            &whitelist_hosts,
            &whitelist_networks,
        )?;
        let max_answer_addresses = answer_cap(args, env, max_answer_addresses, max_hosts)?;

        Ok(Self {
            listen_addr,
            listen_tls,
            listen_tls_addr,
            allow_clients,
            fwd_addrs: fwd,
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
            blacklist: Blacklist {
                hosts: blacklist_hosts,
                networks: blacklist_networks,
                domains: blacklist_domains,
                response,
            },
            authorize_ptr,
            bpffs_dir,
            metrics_addr,
            log_format,
        })
    }

    /// The effective settings as TOML, for `nettrust check-config`.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render the settings: {e}\n"))
    }
}

/// Threads serving DNS unless `worker_threads` says otherwise (UDP fast-path threads, and runtime
/// threads). One: at full load on 2 cores one fast-path thread serves about 10 % more queries/s
/// than two (the client and the upstream need the other core), and a current-thread runtime
/// 3–8 % more than a multi-thread one with 9 % less CPU per query (docs/benchmark-history.md).
pub const DEFAULT_WORKER_THREADS: usize = 1;
/// Largest accepted `worker_threads`.
pub const MAX_WORKER_THREADS: usize = 256;

/// Largest accepted `max_tcp_connections`: each connection holds a file descriptor, and the
/// daemon's limit is usually 1024 soft / 524288 hard.
const MAX_TCP_CONNECTIONS: usize = 65_536;

/// Largest accepted `max_hosts` (per family; at 16 Mi the IPv4 table alone takes 358 MB of kernel
/// memory, and the IPv6 map about 1.7 GB when full).
pub const MAX_HOSTS_LIMIT: u32 = 1 << 24;
/// Largest accepted `max_networks` (per family).
pub const MAX_NETWORKS_LIMIT: u32 = 1 << 20;

/// `max_hosts` and `max_networks`: within range, and large enough for the whitelists they hold
/// (a host map also needs room for at least one authorization).
fn capacities(
    args: &RunArgs,
    env: &Env,
    file: (Option<u32>, Option<u32>),
    whitelist_hosts: &[IpAddr],
    whitelist_networks: &[IpNet],
) -> Result<(u32, u32), ConfigError> {
    fn one(
        pick: Option<Pick<u32>>,
        default: u32,
        limit: u32,
        whitelisted: usize,
        min: usize,
        what: &str,
    ) -> Result<u32, ConfigError> {
        let Some(Pick { value, key }) = pick else {
            return Ok(default);
        };
        if value == 0 || value > limit {
            return Err(invalid(
                key,
                value.to_string(),
                format!("must be between 1 and {limit}"),
            ));
        }
        if (value as usize) < min {
            return Err(invalid(
                key,
                value.to_string(),
                format!(
                    "too small for the {whitelisted} whitelisted {what} of one address family (at least {min})"
                ),
            ));
        }
        Ok(value)
    }
    let hosts = whitelist_hosts
        .iter()
        .filter(|h| h.is_ipv4())
        .count()
        .max(whitelist_hosts.iter().filter(|h| h.is_ipv6()).count());
    let nets = whitelist_networks
        .iter()
        .filter(|n| matches!(n, IpNet::V4(_)))
        .count()
        .max(
            whitelist_networks
                .iter()
                .filter(|n| matches!(n, IpNet::V6(_)))
                .count(),
        );
    let max_hosts = one(
        pick(args.max_hosts, "--max-hosts", env, "max_hosts", file.0)?,
        nettrust_common::DEFAULT_MAX_HOSTS,
        MAX_HOSTS_LIMIT,
        hosts,
        hosts + 1,
        "hosts",
    )?;
    let max_networks = one(
        pick(
            args.max_networks,
            "--max-networks",
            env,
            "max_networks",
            file.1,
        )?,
        nettrust_common::DEFAULT_MAX_NETS,
        MAX_NETWORKS_LIMIT,
        nets,
        nets,
        "networks",
    )?;
    Ok((max_hosts, max_networks))
}

/// Most addresses one answer authorizes unless `max_answer_addresses` says otherwise: more than
/// any ordinary service publishes for one name, far fewer than an attacker's zone can put in one
/// TCP answer (thousands) to fill the host map.
pub const DEFAULT_MAX_ANSWER_ADDRESSES: u32 = 32;

/// `max_answer_addresses`: at least 1 and at most `max_hosts`, so one answer can never need more
/// room than the host map has.
fn answer_cap(
    args: &RunArgs,
    env: &Env,
    file: Option<u32>,
    max_hosts: u32,
) -> Result<u32, ConfigError> {
    let picked = pick(
        args.max_answer_addresses,
        "--max-answer-addresses",
        env,
        "max_answer_addresses",
        file,
    )?;
    let Some(Pick { value, key }) = picked else {
        return Ok(DEFAULT_MAX_ANSWER_ADDRESSES.min(max_hosts));
    };
    if value == 0 || value > max_hosts {
        return Err(invalid(
            key,
            value.to_string(),
            format!("must be between 1 and max_hosts ({max_hosts})"),
        ));
    }
    Ok(value)
}

/// The config file named by `--config` or `NET_TRUST_CONFIG`, if any.
fn config_path(args: &RunArgs, env: &Env) -> Option<(String, PathBuf)> {
    match (&args.config, env.scalar("config")) {
        (Some(path), _) => Some(("--config".to_owned(), path.clone())),
        (None, Some((var, value))) => Some((var.to_owned(), PathBuf::from(value))),
        (None, None) => None,
    }
}

/// Everything `nettrust run` needs before it touches the firewall: reads the config file, the
/// environment and the flags, and checks that every cgroup is a cgroup v2 directory. Also returns
/// warnings to log once logging is set up (it depends on the settings).
pub fn load(args: &RunArgs) -> Result<(Settings, Vec<String>), ConfigError> {
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
            FileConfig::load(&path)?
        }
        None => FileConfig::default(),
    };
    let settings = Settings::resolve(args, file, &env, crate::cgroup::cgroup2_mount)?;
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
    for cgroup in &settings.cgroups {
        crate::cgroup::validate(cgroup)
            .map_err(|e| invalid("cgroup", cgroup.display().to_string(), e.to_string()))?;
    }
    Ok((settings, warnings))
}

/// What a file checked by [`check_file_mode`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// The config file: whoever can write it decides what the firewall allows.
    Config,
    /// The DoT listener's private key: whoever can write it can swap it, whoever can read it can
    /// impersonate the listener.
    PrivateKey,
    /// The CA bundle the DoT upstream is verified against: whoever can write it can add a CA and
    /// answer in the upstream's name (and so authorize anything).
    Trusted,
}

/// `allow_clients`: the flags (`--allow-client`, repeatable) replace everything; else
/// `NET_TRUST_ALLOW_CLIENTS` (comma- or space-separated); else the file's list. Each entry is a
/// network in CIDR notation or a single address. Unset: loopback plus the subnet of each
/// listener address that is not loopback, as `subnets` reads it from the interfaces.
fn resolve_allow_clients(
    args: &RunArgs,
    env: &Env,
    file: Option<Vec<String>>,
    listeners: [Option<SocketAddr>; 2],
    subnets: impl Fn(IpAddr) -> Vec<IpNet>,
) -> Result<Vec<IpNet>, ConfigError> {
    let entries: Option<Vec<(String, String)>> = if !args.allow_clients.is_empty() {
        Some(
            args.allow_clients
                .iter()
                .map(|v| ("--allow-client".to_owned(), v.clone()))
                .collect(),
        )
    } else if let Some((var, value)) = env.scalar("allow_clients") {
        Some(
            value
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|v| !v.is_empty())
                .map(|v| (var.to_owned(), v.to_owned()))
                .collect(),
        )
    } else {
        file.map(|list| {
            list.into_iter()
                .map(|v| ("allow_clients".to_owned(), v))
                .collect()
        })
    };
    let mut networks = Vec::new();
    match entries {
        Some(entries) => {
            for (key, value) in entries {
                let net = match value.trim().parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip),
                    Err(_) => parse_network(&key, &value).map_err(|_| {
                        invalid(
                            &key,
                            &value,
                            "expected a network in CIDR notation (e.g. 192.0.2.0/24) or an address",
                        )
                    })?,
                };
                networks.push(net);
            }
            if networks.is_empty() {
                return Err(invalid(
                    "allow_clients",
                    "[]",
                    "an empty list would refuse every client; leave it unset for the default (loopback and the listen subnet)",
                ));
            }
        }
        None => {
            networks.extend(loopback_networks());
            for ip in listeners.into_iter().flatten().map(|a| a.ip()) {
                if !ip.is_loopback() {
                    networks.extend(subnets(ip));
                }
            }
        }
    }
    dedup(&mut networks);
    Ok(networks)
}

/// The networks of this host's interfaces that `ip` belongs to (address and prefix, e.g.
/// 192.0.2.1/24 gives 192.0.2.0/24); for an unspecified address (0.0.0.0, ::), every
/// non-loopback interface network (both families for ::, which also accepts IPv4). An address
/// on no interface gives itself alone.
pub fn interface_networks(ip: IpAddr) -> Vec<IpNet> {
    let mut found = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } == 0 {
        let mut cursor = list;
        while !cursor.is_null() {
            // SAFETY: a node of the list getifaddrs returned, valid until freeifaddrs.
            let entry = unsafe { &*cursor };
            cursor = entry.ifa_next;
            // SAFETY: ifa_addr and ifa_netmask are null or point at sockaddrs of the family
            // they name (the kernel gives the netmask in the address's family).
            let (Some(addr), Some(mask)) = (unsafe { sockaddr_ip(entry.ifa_addr) }, unsafe {
                sockaddr_ip(entry.ifa_netmask)
            }) else {
                continue;
            };
            let prefix = match mask {
                IpAddr::V4(m) => u32::from(m).leading_ones(),
                IpAddr::V6(m) => u128::from(m).leading_ones(),
            };
            let Ok(net) = IpNet::new(addr, u8::try_from(prefix).unwrap_or(0)) else {
                continue;
            };
            let wanted = match ip {
                IpAddr::V4(v4) if v4.is_unspecified() => addr.is_ipv4() && !addr.is_loopback(),
                IpAddr::V6(v6) if v6.is_unspecified() => !addr.is_loopback(),
                _ => addr == ip.to_canonical(),
            };
            if wanted {
                found.push(net.trunc());
            }
        }
        // SAFETY: the list getifaddrs returned, freed once.
        unsafe { libc::freeifaddrs(list) };
    }
    if found.is_empty() && !ip.is_unspecified() {
        found.push(IpNet::from(ip));
    }
    dedup(&mut found);
    found
}

/// The IP address of an IPv4 or IPv6 `sockaddr`; `None` for a null pointer or another family.
///
/// # Safety
/// `addr` is null or points at a valid sockaddr of the family it names.
unsafe fn sockaddr_ip(addr: *const libc::sockaddr) -> Option<IpAddr> {
    if addr.is_null() {
        return None;
    }
    // SAFETY: non-null and valid per the contract; the family says which structure it is.
    unsafe {
        match i32::from((*addr).sa_family) {
            libc::AF_INET => {
                let v4 = &*addr.cast::<libc::sockaddr_in>();
                Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr))))
            }
            libc::AF_INET6 => {
                let v6 = &*addr.cast::<libc::sockaddr_in6>();
                Some(IpAddr::V6(std::net::Ipv6Addr::from(v6.sin6_addr.s6_addr)))
            }
            _ => None,
        }
    }
}

/// Refuses a file others could change (group or other write bit, or, when nettrust runs as
/// root, an owner other than root) and a private key others could read (other read bit); the
/// error names the file and the command that fixes it. Symbolic links are followed: the mode of
/// the file read is the one that matters; the directories on the way are checked as well
/// (`check_directories`).
pub fn check_file_mode(
    key: &str,
    path: &Path,
    kind: FileKind,
    running_as_root: bool,
) -> Result<(), ConfigError> {
    use std::os::unix::fs::MetadataExt as _;
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path)
        .map_err(|e| invalid(key, &shown, format!("cannot read it: {e}")))?;
    let mode = meta.mode() & 0o7777;
    let (fixed_mode, what) = match kind {
        FileKind::Config => (0o644, "the config file"),
        FileKind::PrivateKey => (0o600, "the private key"),
        FileKind::Trusted => (0o644, "the CA bundle"),
    };
    if mode & 0o022 != 0 {
        return Err(invalid(
            key,
            &shown,
            format!(
                "{what} is writable by other users (mode {mode:04o}); fix: chmod {fixed_mode:o} {shown}"
            ),
        ));
    }
    if kind == FileKind::PrivateKey && mode & 0o004 != 0 {
        return Err(invalid(
            key,
            &shown,
            format!(
                "{what} is readable by other users (mode {mode:04o}); fix: chmod {fixed_mode:o} {shown}"
            ),
        ));
    }
    if running_as_root && meta.uid() != 0 {
        return Err(invalid(
            key,
            &shown,
            format!(
                "{what} is owned by uid {} while nettrust runs as root, so that user can change it; fix: chown root:root {shown}",
                meta.uid()
            ),
        ));
    }
    check_directories(key, path, what, running_as_root)
}

/// Refuses a file in a directory others could change: whoever can write a directory on the way
/// to the file (group or other write bit without the sticky bit, or, when nettrust runs as
/// root, a directory owned by another user) can rename another file over it after the check
/// (before the read, or before the next SIGHUP). The directories of the path as given (where its
/// symbolic links live) and of the file it leads to are checked.
fn check_directories(
    key: &str,
    path: &Path,
    what: &str,
    running_as_root: bool,
) -> Result<(), ConfigError> {
    use std::os::unix::fs::MetadataExt as _;
    let shown = path.display().to_string();
    let unreadable = |e: std::io::Error| invalid(key, &shown, format!("cannot read it: {e}"));
    let given = std::path::absolute(path).map_err(unreadable)?;
    let target = std::fs::canonicalize(path).map_err(unreadable)?;
    for file in [&given, &target] {
        for dir in file.ancestors().skip(1) {
            let meta = std::fs::symlink_metadata(dir).map_err(|e| {
                invalid(
                    key,
                    &shown,
                    format!("cannot read its directory {}: {e}", dir.display()),
                )
            })?;
            let (mode, dir) = (meta.mode() & 0o7777, dir.display());
            if mode & 0o022 != 0 && mode & 0o1000 == 0 {
                return Err(invalid(
                    key,
                    &shown,
                    format!(
                        "{what} is in a directory other users can write ({dir}, mode {mode:04o}), so they can replace it; fix: chmod go-w {dir}, or move the file to a directory only root can change (e.g. /etc/nettrust)"
                    ),
                ));
            }
            if running_as_root && meta.uid() != 0 {
                return Err(invalid(
                    key,
                    &shown,
                    format!(
                        "{what} is in a directory owned by uid {} ({dir}) while nettrust runs as root, so that user can replace it; fix: move the file to a directory only root can change (e.g. /etc/nettrust), or chown root:root {dir}",
                        meta.uid()
                    ),
                ));
            }
        }
    }
    Ok(())
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
