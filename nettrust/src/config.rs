//! Configuration: the TOML file, the environment and the command line, merged and validated into
//! [`Settings`] before any firewall object exists.
//!
//! Precedence, for every option: flag > environment > config file > default. Lists from the
//! environment (`NET_TRUST_WHITELIST_*`) add to the config file's lists, as in the original.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::Deserialize;

use crate::cli::RunArgs;

/// Where nettrust pins its eBPF maps unless told otherwise.
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/nettrust";
/// Port used when an address is given without one (RFC 1035 §4.2).
pub const DNS_PORT: u16 = 53;

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

/// The validated configuration of a daemon run.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// DNS listen address (UDP and TCP).
    pub listen_addr: SocketAddr,
    /// Upstream DNS server.
    pub fwd_addr: SocketAddr,
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
    if let Ok(addr) = value.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(invalid(key, value, "port 0 is not a usable DNS port"));
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
}

impl EnvLists {
    /// Collects the lists from `vars` (e.g. `std::env::vars()`).
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut vars: Vec<_> = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with("NET_TRUST_WHITELIST_"))
            .collect();
        vars.sort();
        let mut lists = Self::default();
        for (key, value) in vars {
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
            cgroups,
            firewall_backend,
            whitelist_loopback,
            whitelist_private,
            bpffs_dir,
            whitelist,
        } = file;

        let listen_addr = match (&args.listen_addr, &listen_addr) {
            (Some(v), _) => parse_socket_addr("--listen-addr", v)?,
            (None, Some(v)) => parse_socket_addr("listen_addr", v)?,
            (None, None) => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DNS_PORT),
        };
        let fwd_addr = match (&args.fwd_addr, &fwd_addr) {
            (Some(v), _) => parse_socket_addr("--fwd-addr", v)?,
            (None, Some(v)) => parse_socket_addr("fwd_addr", v)?,
            (None, None) => {
                return Err(ConfigError::Missing(
                    "no upstream DNS server: set --fwd-addr IP:PORT or fwd_addr in the config file",
                ));
            }
        };
        if listen_addr == fwd_addr {
            return Err(invalid(
                "--fwd-addr",
                fwd_addr.to_string(),
                "the forward address cannot be the listen address (queries would loop)",
            ));
        }
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
        let mut whitelist_hosts = vec![listen_addr.ip(), fwd_addr.ip()];
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
            fwd_addr,
            cgroups,
            backend,
            whitelist_hosts,
            whitelist_networks,
            bpffs_dir,
        })
    }
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
