//! Configuration: the TOML file, the environment and the command line, merged and validated into
//! [`Settings`] before any firewall object exists.
//!
//! Precedence, for every option: flag > environment > config file > default. Lists from the
//! environment (`NET_TRUST_WHITELIST_*`) add to the config file's lists, as in the original.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use serde::Deserialize;

use crate::{blacklist::BlockResponse, cli::RunArgs};

/// Where nettrust pins its eBPF maps unless told otherwise.
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/nettrust";
/// Port used when an address is given without one (RFC 1035 §4.2).
pub const DNS_PORT: u16 = 53;
/// Port used for a DNS-over-TLS upstream given without one (RFC 7858 §3.1).
pub const DOT_PORT: u16 = 853;
/// Upstream timeout unless configured.
pub const DEFAULT_FWD_TIMEOUT: Duration = Duration::from_secs(3);

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
/// cannot silently disable a protection.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Address the DNS proxy listens on (UDP and TCP), `IP:PORT`.
    pub listen_addr: Option<String>,
    /// Upstream DNS server, `IP:PORT` (port defaults to 53).
    pub fwd_addr: Option<String>,
    /// More upstream servers, tried in order after `fwd_addr`.
    pub fwd_addrs: Option<Vec<String>>,
    /// `udp` or `tcp`.
    pub fwd_proto: Option<String>,
    /// DNS over TLS to the upstreams.
    pub fwd_tls: Option<bool>,
    /// PEM CA bundle for the upstreams' certificates.
    pub fwd_tls_cert: Option<PathBuf>,
    /// Name the upstreams' certificates must carry.
    pub fwd_tls_name: Option<String>,
    /// EDNS0 UDP payload size advertised upstream.
    pub fwd_udp_buffer_size: Option<u16>,
    /// Upstream timeout in milliseconds.
    pub fwd_timeout_ms: Option<u64>,
    /// DNS over TLS on the TCP listener.
    pub listen_tls: Option<bool>,
    /// Dedicated DNS-over-TLS listener, `IP:PORT`.
    pub listen_tls_addr: Option<String>,
    /// PEM certificate chain of the TLS listener.
    pub listen_cert: Option<PathBuf>,
    /// PEM private key of the TLS listener.
    pub listen_cert_key: Option<PathBuf>,
    /// Cache lifetime cap in seconds; 0 or less disables the cache.
    pub dns_ttl_cache: Option<i64>,
    /// Most answers kept in the cache.
    pub dns_cache_size: Option<usize>,
    /// Whether PTR answers authorize the address they name.
    pub authorize_ptr: Option<bool>,
    /// cgroup v2 directories to enforce on; empty means the cgroup v2 root (the whole host).
    pub cgroups: Option<Vec<PathBuf>>,
    /// `auto`, `ebpf` or `nftables`.
    pub firewall_backend: Option<String>,
    /// Always allow loopback destinations.
    pub whitelist_loopback: Option<bool>,
    /// Always allow private-network destinations.
    pub whitelist_private: Option<bool>,
    /// bpffs directory for nettrust's pinned maps.
    pub bpffs_dir: Option<PathBuf>,
    /// Destinations always allowed.
    #[serde(default)]
    pub whitelist: WhitelistSection,
    /// Names and destinations never allowed.
    #[serde(default)]
    pub blacklist: BlacklistSection,
}

/// `[blacklist]` section of the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlacklistSection {
    /// Addresses (IPv4 or IPv6) that answers never authorize.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Networks in CIDR notation that answers never authorize.
    #[serde(default)]
    pub networks: Vec<String>,
    /// Domain names (`example.com`) and wildcards (`*.example.com`) the proxy refuses to resolve.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Answer to blacklisted domains: `refused`, `nxdomain` or `servfail`.
    pub response: Option<String>,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// eBPF cgroup_skb programs and maps.
    Ebpf,
    /// nftables table (not available yet).
    Nftables,
}

/// Protocol to the upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FwdProto {
    /// UDP for UDP clients, TCP for TCP clients and after truncated answers.
    Udp,
    /// Always TCP (DNS over TLS when `fwd_tls`).
    Tcp,
}

/// DNS over TLS to the upstreams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwdTls {
    /// CA bundle; `None` = the system bundle.
    pub ca_bundle: Option<PathBuf>,
    /// Name the certificates must carry; `None` = the upstream's IP address.
    pub name: Option<String>,
}

/// The TLS listener(s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenTls {
    /// Whether the TCP listener on `listen_addr` speaks DNS over TLS (as the original).
    pub on_listen_addr: bool,
    /// A dedicated DNS-over-TLS listener.
    pub addr: Option<SocketAddr>,
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// The proxy's blacklists, parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BlacklistSettings {
    /// Domain patterns (validated).
    pub domains: Vec<String>,
    /// Addresses never authorized.
    pub hosts: Vec<IpAddr>,
    /// Networks never authorized.
    pub networks: Vec<IpNet>,
    /// Answer to blacklisted domains.
    pub response: BlockResponse,
}

/// The validated configuration of a daemon run.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// DNS listen address (UDP and TCP).
    pub listen_addr: SocketAddr,
    /// Upstream DNS servers, tried in order.
    pub fwd_addrs: Vec<SocketAddr>,
    /// Protocol to the upstreams.
    pub fwd_proto: FwdProto,
    /// DNS over TLS to the upstreams (then `fwd_proto` is TCP).
    pub fwd_tls: Option<FwdTls>,
    /// EDNS0 UDP payload size advertised upstream.
    pub fwd_udp_buffer_size: u16,
    /// How long one upstream may take.
    pub fwd_timeout: Duration,
    /// DNS-over-TLS listening, when enabled.
    pub listen_tls: Option<ListenTls>,
    /// Cache lifetime cap; `None` = no cache.
    pub dns_ttl_cache: Option<Duration>,
    /// Most answers kept in the cache.
    pub dns_cache_size: usize,
    /// The proxy's blacklists.
    pub blacklist: BlacklistSettings,
    /// Whether PTR answers authorize the address they name.
    pub authorize_ptr: bool,
    /// cgroup v2 directories the egress filter is attached to.
    pub cgroups: Vec<PathBuf>,
    /// Firewall implementation.
    pub backend: Backend,
    /// Hosts always allowed (configured ones plus the listen and forward addresses).
    pub whitelist_hosts: Vec<IpAddr>,
    /// Networks always allowed (loopback/private when enabled, plus configured ones).
    pub whitelist_networks: Vec<IpNet>,
    /// bpffs directory for pinned maps.
    pub bpffs_dir: PathBuf,
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
    parse_socket_addr_or(key, value, DNS_PORT)
}

/// Parses `IP:PORT`, `[IPv6]:PORT`, or a bare IP (port `default_port`).
pub fn parse_socket_addr_or(
    key: &str,
    value: &str,
    default_port: u16,
) -> Result<SocketAddr, ConfigError> {
    if let Ok(addr) = value.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(invalid(key, value, "port 0 is not a usable DNS port"));
        }
        return Ok(addr);
    }
    value
        .parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, default_port))
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

fn parse_backend(key: &str, value: &str) -> Result<Backend, ConfigError> {
    match value {
        "auto" | "ebpf" => Ok(Backend::Ebpf),
        "nftables" => Ok(Backend::Nftables),
        _ => Err(invalid(key, value, "expected auto, ebpf or nftables")),
    }
}

/// Lists added by `NET_TRUST_WHITELIST_HOSTS_<NAME>` and `NET_TRUST_WHITELIST_NETWORKS_<NAME>` (the
/// original README's singular `NET_TRUST_WHITELIST_NETWORK_<NAME>` is accepted too). Variables are
/// taken in name order so the result does not depend on the environment's order.
#[derive(Debug, Default, PartialEq)]
pub struct EnvLists {
    /// Hosts to whitelist.
    pub hosts: Vec<IpAddr>,
    /// Networks to whitelist.
    pub networks: Vec<IpNet>,
    /// Hosts to blacklist (`NET_TRUST_BLACKLIST_HOSTS_<NAME>`).
    pub blacklist_hosts: Vec<IpAddr>,
    /// Networks to blacklist (`NET_TRUST_BLACKLIST_NETWORKS_<NAME>`).
    pub blacklist_networks: Vec<IpNet>,
}

impl EnvLists {
    /// Collects the lists from `vars` (e.g. `std::env::vars()`).
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut vars: Vec<_> = vars
            .into_iter()
            .filter(|(k, _)| {
                k.starts_with("NET_TRUST_WHITELIST_") || k.starts_with("NET_TRUST_BLACKLIST_")
            })
            .collect();
        vars.sort();
        let mut lists = Self::default();
        for (key, value) in vars {
            if let Some(rest) = key.strip_prefix("NET_TRUST_BLACKLIST_") {
                if rest.starts_with("HOSTS_") || rest == "HOSTS" {
                    lists.blacklist_hosts.push(parse_host(&key, &value)?);
                } else if rest.starts_with("NETWORKS_") || rest == "NETWORKS" {
                    lists.blacklist_networks.push(parse_network(&key, &value)?);
                } else {
                    return Err(invalid(
                        &key,
                        &value,
                        "unknown variable; use NET_TRUST_BLACKLIST_HOSTS_<NAME> or NET_TRUST_BLACKLIST_NETWORKS_<NAME>",
                    ));
                }
                continue;
            }
            let rest = &key["NET_TRUST_WHITELIST_".len()..];
            if rest.starts_with("HOSTS_") || rest == "HOSTS" {
                lists.hosts.push(parse_host(&key, &value)?);
            } else if rest.starts_with("NETWORKS_")
                || rest == "NETWORKS"
                || rest.starts_with("NETWORK_")
            {
                lists.networks.push(parse_network(&key, &value)?);
            } else {
                return Err(invalid(
                    &key,
                    &value,
                    "unknown variable; use NET_TRUST_WHITELIST_HOSTS_<NAME> or NET_TRUST_WHITELIST_NETWORKS_<NAME>",
                ));
            }
        }
        Ok(lists)
    }
}

impl Settings {
    /// Merges flags, environment lists and the config file, applies defaults and validates
    /// everything. `cgroup2_root` is the default cgroup when none is configured.
    pub fn resolve(
        args: &RunArgs,
        file: FileConfig,
        env: EnvLists,
        cgroup2_root: impl FnOnce() -> Result<PathBuf, crate::cgroup::CgroupError>,
    ) -> Result<Self, ConfigError> {
        let FileConfig {
            listen_addr,
            fwd_addr,
            fwd_addrs,
            fwd_proto,
            fwd_tls,
            fwd_tls_cert,
            fwd_tls_name,
            fwd_udp_buffer_size,
            fwd_timeout_ms,
            listen_tls,
            listen_tls_addr,
            listen_cert,
            listen_cert_key,
            dns_ttl_cache,
            dns_cache_size,
            authorize_ptr,
            cgroups,
            firewall_backend,
            whitelist_loopback,
            whitelist_private,
            bpffs_dir,
            whitelist,
            blacklist,
        } = file;

        let listen_addr = match (&args.listen_addr, &listen_addr) {
            (Some(v), _) => parse_socket_addr("--listen-addr", v)?,
            (None, Some(v)) => parse_socket_addr("listen_addr", v)?,
            (None, None) => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DNS_PORT),
        };
        let tls_upstream = args.fwd_tls.or(fwd_tls).unwrap_or(false);
        let fwd_proto = match (&args.fwd_proto, &fwd_proto) {
            (Some(v), _) => Some(parse_fwd_proto("--fwd-proto", v)?),
            (None, Some(v)) => Some(parse_fwd_proto("fwd_proto", v)?),
            (None, None) => None,
        };
        let fwd_proto = match (fwd_proto, tls_upstream) {
            (Some(FwdProto::Udp), true) => {
                return Err(invalid(
                    "fwd_proto",
                    "udp",
                    "fwd_tls (DNS over TLS) requires fwd_proto tcp",
                ));
            }
            (Some(proto), _) => proto,
            (None, true) => FwdProto::Tcp,
            (None, false) => FwdProto::Udp,
        };
        let default_port = if tls_upstream { DOT_PORT } else { DNS_PORT };
        let mut fwd_addrs_resolved = Vec::new();
        if !args.fwd_addr.is_empty() {
            for v in &args.fwd_addr {
                fwd_addrs_resolved.push(parse_socket_addr_or("--fwd-addr", v, default_port)?);
            }
        } else {
            if let Some(v) = &fwd_addr {
                fwd_addrs_resolved.push(parse_socket_addr_or("fwd_addr", v, default_port)?);
            }
            for v in fwd_addrs.iter().flatten() {
                fwd_addrs_resolved.push(parse_socket_addr_or("fwd_addrs", v, default_port)?);
            }
        }
        dedup(&mut fwd_addrs_resolved);
        let fwd_addrs = fwd_addrs_resolved;
        if fwd_addrs.is_empty() {
            return Err(ConfigError::Missing(
                "no upstream DNS server: set --fwd-addr IP:PORT or fwd_addr in the config file",
            ));
        }
        if let Some(looping) = fwd_addrs.iter().find(|a| **a == listen_addr) {
            return Err(invalid(
                "--fwd-addr",
                looping.to_string(),
                "the forward address cannot be the listen address (queries would loop)",
            ));
        }
        let fwd_tls = tls_upstream.then(|| FwdTls {
            ca_bundle: args.fwd_tls_cert.clone().or(fwd_tls_cert),
            name: args.fwd_tls_name.clone().or(fwd_tls_name),
        });
        let fwd_udp_buffer_size = args
            .fwd_udp_buffer_size
            .or(fwd_udp_buffer_size)
            .unwrap_or(crate::dns::upstream::DEFAULT_UDP_BUFFER_SIZE);
        if fwd_udp_buffer_size < 512 {
            return Err(invalid(
                "fwd_udp_buffer_size",
                fwd_udp_buffer_size.to_string(),
                "must be at least 512 (RFC 6891 §6.2.5)",
            ));
        }
        let fwd_timeout = match args.fwd_timeout_ms.or(fwd_timeout_ms) {
            None => DEFAULT_FWD_TIMEOUT,
            Some(0) => return Err(invalid("fwd_timeout_ms", "0", "must be positive")),
            Some(ms) => Duration::from_millis(ms),
        };

        let listen_tls_on_listen_addr = args.listen_tls.or(listen_tls).unwrap_or(false);
        let listen_tls_addr = match (&args.listen_tls_addr, &listen_tls_addr) {
            (Some(v), _) => Some(parse_socket_addr_or("--listen-tls-addr", v, DOT_PORT)?),
            (None, Some(v)) => Some(parse_socket_addr_or("listen_tls_addr", v, DOT_PORT)?),
            (None, None) => None,
        };
        let listen_tls = if listen_tls_on_listen_addr || listen_tls_addr.is_some() {
            let cert = args.listen_cert.clone().or(listen_cert);
            let key = args.listen_cert_key.clone().or(listen_cert_key);
            let (Some(cert), Some(key)) = (cert, key) else {
                return Err(ConfigError::Missing(
                    "listen_tls/listen_tls_addr need listen_cert and listen_cert_key",
                ));
            };
            Some(ListenTls {
                on_listen_addr: listen_tls_on_listen_addr,
                addr: listen_tls_addr,
                cert,
                key,
            })
        } else {
            None
        };
        let dns_ttl_cache = match args.dns_ttl_cache.or(dns_ttl_cache) {
            Some(secs) if secs > 0 => Some(Duration::from_secs(secs.unsigned_abs())),
            _ => None,
        };
        let dns_cache_size = args
            .dns_cache_size
            .or(dns_cache_size)
            .unwrap_or(crate::dns::cache::DEFAULT_CAPACITY);
        if dns_cache_size == 0 {
            return Err(invalid("dns_cache_size", "0", "must be positive"));
        }
        let authorize_ptr = args.authorize_ptr.or(authorize_ptr).unwrap_or(false);
        let blacklist = resolve_blacklist(args, blacklist, &env)?;
        let backend = match (&args.firewall_backend, &firewall_backend) {
            (Some(v), _) => parse_backend("--firewall-backend", v)?,
            (None, Some(v)) => parse_backend("firewall_backend", v)?,
            (None, None) => Backend::Ebpf,
        };
        let cgroups = if !args.cgroups.is_empty() {
            args.cgroups.clone()
        } else {
            match cgroups {
                Some(list) if !list.is_empty() => list,
                _ => vec![cgroup2_root().map_err(|e| invalid("cgroups", "", e.to_string()))?],
            }
        };
        let loopback = args
            .whitelist_loopback
            .or(whitelist_loopback)
            .unwrap_or(true);
        let private = args.whitelist_private.or(whitelist_private).unwrap_or(true);

        let mut whitelist_networks = Vec::new();
        if loopback {
            whitelist_networks.extend(loopback_networks());
        }
        if private {
            whitelist_networks.extend(private_networks());
        }
        whitelist_networks.extend(env.networks);
        for net in &whitelist.networks {
            whitelist_networks.push(parse_network("whitelist.networks", net)?);
        }
        let mut whitelist_hosts = vec![listen_addr.ip()];
        whitelist_hosts.extend(listen_tls.as_ref().and_then(|t| t.addr).map(|a| a.ip()));
        whitelist_hosts.extend(fwd_addrs.iter().map(SocketAddr::ip));
        whitelist_hosts.extend(env.hosts);
        for host in &whitelist.hosts {
            whitelist_hosts.push(parse_host("whitelist.hosts", host)?);
        }
        whitelist_hosts.retain(|ip| !ip.is_unspecified());
        dedup(&mut whitelist_hosts);
        dedup(&mut whitelist_networks);

        let bpffs_dir = args
            .bpffs_dir
            .clone()
            .or(bpffs_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BPFFS_DIR));
        if !bpffs_dir.is_absolute() {
            return Err(invalid(
                "bpffs_dir",
                bpffs_dir.display().to_string(),
                "must be an absolute path",
            ));
        }

        Ok(Self {
            listen_addr,
            fwd_addrs,
            fwd_proto,
            fwd_tls,
            fwd_udp_buffer_size,
            fwd_timeout,
            listen_tls,
            dns_ttl_cache,
            dns_cache_size,
            blacklist,
            authorize_ptr,
            cgroups,
            backend,
            whitelist_hosts,
            whitelist_networks,
            bpffs_dir,
        })
    }
}

fn parse_fwd_proto(key: &str, value: &str) -> Result<FwdProto, ConfigError> {
    match value {
        "udp" => Ok(FwdProto::Udp),
        "tcp" => Ok(FwdProto::Tcp),
        _ => Err(invalid(key, value, "expected udp or tcp")),
    }
}

/// `[blacklist]` plus `NET_TRUST_BLACKLIST_*` plus `--blacklist-response`, validated.
fn resolve_blacklist(
    args: &RunArgs,
    section: BlacklistSection,
    env: &EnvLists,
) -> Result<BlacklistSettings, ConfigError> {
    let BlacklistSection {
        hosts,
        networks,
        domains,
        response,
    } = section;
    let response = match (&args.blacklist_response, &response) {
        (Some(v), _) => parse_block_response("--blacklist-response", v)?,
        (None, Some(v)) => parse_block_response("blacklist.response", v)?,
        (None, None) => BlockResponse::default(),
    };
    let mut settings = BlacklistSettings {
        response,
        hosts: env.blacklist_hosts.clone(),
        networks: env.blacklist_networks.clone(),
        domains: Vec::new(),
    };
    for host in &hosts {
        settings.hosts.push(parse_host("blacklist.hosts", host)?);
    }
    for net in &networks {
        settings
            .networks
            .push(parse_network("blacklist.networks", net)?);
    }
    for domain in domains {
        crate::blacklist::Blacklist::new(std::slice::from_ref(&domain), &[], &[], response)
            .map_err(|e| invalid("blacklist.domains", &domain, e.reason))?;
        settings.domains.push(domain);
    }
    dedup(&mut settings.hosts);
    dedup(&mut settings.networks);
    Ok(settings)
}

fn parse_block_response(key: &str, value: &str) -> Result<BlockResponse, ConfigError> {
    BlockResponse::parse(value)
        .ok_or_else(|| invalid(key, value, "expected refused, nxdomain or servfail"))
}

/// Everything `nettrust run` needs before it touches the firewall: reads `--config`, the
/// environment and the flags, and checks that every cgroup is a cgroup v2 directory.
pub fn load(args: &RunArgs) -> Result<Settings, ConfigError> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let env = EnvLists::from_vars(std::env::vars())?;
    let settings = Settings::resolve(args, file, env, crate::cgroup::cgroup2_mount)?;
    for cgroup in &settings.cgroups {
        crate::cgroup::validate(cgroup)
            .map_err(|e| invalid("cgroup", cgroup.display().to_string(), e.to_string()))?;
    }
    Ok(settings)
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
