//! The options of a daemon run, declared once: each field is a command-line flag (clap, with its
//! `NET_TRUST_<KEY>` environment variable) and a config file key (serde), and [`Layers`] applies
//! the precedence rule to them.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde::{Deserialize, Deserializer, Serialize};

use super::ConfigError;
use crate::blacklist::BlockResponse;

/// Options of `nettrust run` and `check-config`, and the keys of the config file (`--config`).
/// Unset options fall back to the environment (`NET_TRUST_<KEY>`, e.g.
/// `NET_TRUST_AUTHORIZED_TTL`), then the config file, then the built-in defaults. Unknown file
/// keys are an error, so a typo cannot silently disable a protection; `config.toml` at the
/// repository root documents each key.
#[derive(Debug, Default, Clone, PartialEq, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// TOML configuration file (an empty file is valid).
    #[arg(long, value_name = "PATH", env = "NET_TRUST_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address the DNS proxy listens on, UDP and TCP [default: 127.0.0.1:53].
    #[arg(long, value_name = "IP:PORT", env = "NET_TRUST_LISTEN_ADDR")]
    pub listen_addr: Option<String>,
    /// Serve DNS over TLS on the TCP listener [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", env = "NET_TRUST_LISTEN_TLS")]
    pub listen_tls: Option<bool>,
    /// Dedicated DNS-over-TLS listener (needs --listen-tls); the TCP listener of --listen-addr
    /// then stays plain DNS. Port defaults to 853.
    #[arg(long, value_name = "IP:PORT", env = "NET_TRUST_LISTEN_TLS_ADDR")]
    pub listen_tls_addr: Option<String>,
    /// PEM certificate (chain) of the DoT listener.
    #[arg(long, value_name = "PATH", env = "NET_TRUST_LISTEN_CERT")]
    pub listen_cert: Option<PathBuf>,
    /// PEM private key of the DoT listener.
    #[arg(long, value_name = "PATH", env = "NET_TRUST_LISTEN_CERT_KEY")]
    pub listen_cert_key: Option<PathBuf>,
    /// Network (CIDR) or address allowed to query the DNS listeners; repeat for more. Replaces
    /// allow_clients; the variable takes a comma-separated list [default: loopback, plus the
    /// listen addresses' own subnets].
    #[arg(
        long = "allow-client",
        value_name = "NET",
        env = "NET_TRUST_ALLOW_CLIENTS"
    )]
    pub allow_clients: Option<Vec<String>>,
    /// Upstream DNS server (port defaults to 53); repeat for failover, tried in order. Replaces
    /// the config file's fwd_addr and fwd_addrs.
    #[arg(long = "fwd-addr", value_name = "IP:PORT", env = "NET_TRUST_FWD_ADDR")]
    #[serde(default)]
    pub fwd_addrs: Vec<String>,
    /// Config file only: the first upstream, tried before `fwd_addrs`.
    #[arg(skip)]
    pub fwd_addr: Option<String>,
    /// Transport to the upstream [default: udp].
    #[arg(
        long,
        value_name = "PROTO",
        ignore_case = true,
        env = "NET_TRUST_FWD_PROTO"
    )]
    #[serde(default, deserialize_with = "value_enum")]
    pub fwd_proto: Option<FwdProto>,
    /// DNS over TLS to the upstream (requires --fwd-proto tcp) [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", env = "NET_TRUST_FWD_TLS")]
    pub fwd_tls: Option<bool>,
    /// PEM CA bundle that signs the upstream's certificate [default: system roots].
    #[arg(long, value_name = "PATH", env = "NET_TRUST_FWD_TLS_CERT")]
    pub fwd_tls_cert: Option<PathBuf>,
    /// Name the upstream's certificate must carry (and SNI) [default: its IP address].
    #[arg(long, value_name = "NAME", env = "NET_TRUST_FWD_TLS_NAME")]
    pub fwd_tls_name: Option<String>,
    /// EDNS0 UDP payload size advertised to the upstream, 512-65535 [default: 1232].
    #[arg(long, value_name = "BYTES", env = "NET_TRUST_FWD_UDP_BUFFER_SIZE")]
    pub fwd_udp_buffer_size: Option<u16>,
    /// Upstream timeout in milliseconds before failover/SERVFAIL [default: 2000].
    #[arg(long, value_name = "MS", env = "NET_TRUST_FWD_TIMEOUT_MS")]
    pub fwd_timeout_ms: Option<u64>,
    /// Firewall backend [default: auto].
    #[arg(
        long,
        value_name = "BACKEND",
        ignore_case = true,
        env = "NET_TRUST_FIREWALL_BACKEND"
    )]
    #[serde(default, deserialize_with = "value_enum")]
    pub firewall_backend: Option<Backend>,
    /// Hook: output (this host's processes) or forward (gateway) [default: output].
    #[arg(
        long,
        value_name = "TYPE",
        ignore_case = true,
        env = "NET_TRUST_FIREWALL_TYPE"
    )]
    #[serde(default, deserialize_with = "value_enum")]
    pub firewall_type: Option<FirewallType>,
    /// Also drop unsolicited inbound traffic (loopback and replies pass) [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", env = "NET_TRUST_FIREWALL_DROP_INPUT")]
    pub firewall_drop_input: Option<bool>,
    /// cgroup v2 directory to enforce on; repeatable [default: the cgroup v2 root, the whole host].
    #[arg(long = "cgroup", value_name = "PATH")]
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
    /// Cache answers for at most SECS seconds; -1 or 0 disables the cache [default: -1].
    #[arg(
        long,
        value_name = "SECS",
        allow_negative_numbers = true,
        env = "NET_TRUST_DNS_TTL_CACHE"
    )]
    pub dns_ttl_cache: Option<i64>,
    /// Most answers kept in the cache [default: 10000].
    #[arg(long, value_name = "N", env = "NET_TRUST_DNS_CACHE_SIZE")]
    pub dns_cache_size: Option<usize>,
    /// TCP/DoT client connections open at once, per listener; at the cap a new connection
    /// closes the oldest of the client holding the most [default: 256].
    #[arg(long, value_name = "N", env = "NET_TRUST_MAX_TCP_CONNECTIONS")]
    pub max_tcp_connections: Option<usize>,
    /// Threads serving DNS: 1 serves UDP queries on one thread and the rest on another (the least
    /// CPU per query); more spread queries and TLS handshakes over that many (restart-only)
    /// [default: 1].
    #[arg(long, value_name = "N", env = "NET_TRUST_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// Capacity of each eBPF host map, per address family (authorized plus whitelisted hosts;
    /// restart-only) [default: 65536].
    #[arg(long, value_name = "N", env = "NET_TRUST_MAX_HOSTS")]
    pub max_hosts: Option<u32>,
    /// Capacity of each eBPF network trie, per address family (restart-only) [default: 4096].
    #[arg(long, value_name = "N", env = "NET_TRUST_MAX_NETWORKS")]
    pub max_networks: Option<u32>,
    /// Most addresses one DNS answer may authorize; the rest stay in the answer but are not
    /// allowed, and are logged and counted (restart-only) [default: 32].
    #[arg(long, value_name = "N", env = "NET_TRUST_MAX_ANSWER_ADDRESSES")]
    pub max_answer_addresses: Option<u32>,
    /// Always allow loopback (127.0.0.0/8, ::1) [default: true].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", env = "NET_TRUST_WHITELIST_LOOPBACK")]
    pub whitelist_loopback: Option<bool>,
    /// Always allow private networks (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7,
    /// fe80::/10) [default: true].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", env = "NET_TRUST_WHITELIST_PRIVATE")]
    pub whitelist_private: Option<bool>,
    /// Seconds an authorized host stays allowed without being resolved again or used; -1 = never
    /// expires [default: -1].
    #[arg(
        long,
        value_name = "SECS",
        allow_negative_numbers = true,
        env = "NET_TRUST_AUTHORIZED_TTL"
    )]
    pub authorized_ttl: Option<i64>,
    /// Seconds between expiry sweeps, >= 1 (config key ttl_check_interval) [default: 30].
    #[arg(
        long = "ttl-check-ticker",
        value_name = "SECS",
        allow_negative_numbers = true,
        env = "NET_TRUST_TTL_CHECK_INTERVAL"
    )]
    pub ttl_check_interval: Option<i64>,
    /// On exit keep the deny policy and whitelists in place (authorized hosts are cleared)
    /// [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", env = "NET_TRUST_DO_NOT_FLUSH_TABLE")]
    pub do_not_flush_table: Option<bool>,
    /// With --do-not-flush-table: keep the authorized hosts too; the next start adopts them
    /// [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", env = "NET_TRUST_DO_NOT_FLUSH_AUTHORIZED_HOSTS")]
    pub do_not_flush_authorized_hosts: Option<bool>,
    /// Answer to a blacklisted domain (config key `response` in `[blacklist]`) [default: refused].
    #[arg(
        long,
        value_name = "RCODE",
        ignore_case = true,
        env = "NET_TRUST_BLACKLIST_RESPONSE"
    )]
    #[serde(skip)]
    pub blacklist_response: Option<BlockResponse>,
    /// Authorize the address named by a PTR question's answer (the original did) [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", env = "NET_TRUST_AUTHORIZE_PTR")]
    pub authorize_ptr: Option<bool>,
    /// bpffs directory where nettrust pins its maps [default: /sys/fs/bpf/nettrust].
    #[arg(long, value_name = "PATH", env = "NET_TRUST_BPFFS_DIR")]
    pub bpffs_dir: Option<PathBuf>,
    /// Serve Prometheus metrics over HTTP at IP:PORT/metrics [default: off].
    #[arg(long, value_name = "IP:PORT", env = "NET_TRUST_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// Log format [default: text].
    #[arg(
        long,
        value_name = "FORMAT",
        ignore_case = true,
        env = "NET_TRUST_LOG_FORMAT"
    )]
    #[serde(default, deserialize_with = "value_enum")]
    pub log_format: Option<LogFormat>,
    /// More addresses the DNS proxy listens on, UDP and TCP (e.g. a container bridge's host
    /// address for DNS capture); repeat for more. Replaces listen_addrs; the variable takes a
    /// comma-separated list [default: none].
    #[arg(
        long = "listen-addrs",
        value_name = "IP:PORT",
        env = "NET_TRUST_LISTEN_ADDRS"
    )]
    pub listen_addrs: Option<Vec<String>>,
    /// Answer every DNS query (port 53, UDP and TCP, any address) the filtered cgroups send,
    /// shown as coming from the address asked (eBPF backend) [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", env = "NET_TRUST_DNS_CAPTURE")]
    pub dns_capture: Option<bool>,
    /// Config file only: destinations always allowed.
    #[arg(skip)]
    #[serde(default)]
    pub whitelist: WhitelistSection,
    /// Config file only: what is never authorized.
    #[arg(skip)]
    #[serde(default)]
    pub blacklist: BlacklistSection,
    /// Config file only: the `[[policy]]` sections, each a domain allow-list for its cgroups.
    #[arg(skip)]
    #[serde(default, rename = "policy")]
    pub policies: Vec<PolicySection>,
    /// Options (field names) whose value clap read from the environment rather than the
    /// command line: [`Layers`] takes those from the environment layer, which names the
    /// variable and reads it as the configuration always has (trimmed, case-insensitive name).
    #[arg(skip)]
    #[serde(skip)]
    pub from_env: Vec<String>,
}

/// `[whitelist]` section of the config file.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
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
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
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
    /// A file of more such domains, one per line, `#` comments (added to `domains`).
    pub domains_file: Option<PathBuf>,
    /// `refused`, `nxdomain` or `servfail` (`--blacklist-response`); checked with the other
    /// values so the error names `blacklist.response`.
    pub response: Option<String>,
}

/// A `[[policy]]` section of the config file: the names the cgroups of the policy may resolve.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// `[a-z0-9_-]{1,32}`, unique; shown in logs, `list`, metrics.
    pub name: String,
    /// cgroup v2 directories of the policy (at least one; each in one policy only).
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
    /// Names the policy's cgroups may resolve: `example.com` exactly, `*.example.org` every name
    /// below example.org.
    #[serde(default)]
    pub allow_domains: Vec<String>,
    /// A file of more such names, one per line, `#` comments.
    pub allow_domains_file: Option<PathBuf>,
    /// Destinations (CIDR) always allowed for the policy's cgroups.
    #[serde(default)]
    pub allow_networks: Vec<String>,
    /// `enforce` or `audit`, checked with the other values so the error names the policy.
    pub mode: Option<String>,
}

/// What a policy does with what it does not allow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    /// Names outside the allow-list are refused, packets to unauthorized destinations dropped.
    #[default]
    Enforce,
    /// Nothing is refused or dropped; what enforcement would refuse is logged and counted.
    Audit,
}

/// Which firewall implementation enforces the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ValueEnum)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FirewallType {
    /// This host's (or the chosen cgroups') outgoing traffic.
    Output,
    /// Traffic routed through this host (gateway mode).
    Forward,
}

/// Transport to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FwdProto {
    /// UDP, with TCP retry for truncated answers.
    Udp,
    /// TCP (required for DoT).
    Tcp,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Parses one of a [`ValueEnum`]'s names, case-insensitively (as the original's OUTPUT/FORWARD).
pub fn parse_choice<T: ValueEnum>(value: &str) -> Result<T, String> {
    T::from_str(value.trim(), true).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_owned()))
            .collect();
        format!("expected one of: {}", names.join(", "))
    })
}

/// Deserializes an enumeration option of the config file with [`parse_choice`].
fn value_enum<'de, D: Deserializer<'de>, T: ValueEnum>(d: D) -> Result<Option<T>, D::Error> {
    let value = String::deserialize(d)?;
    parse_choice(&value)
        .map(Some)
        .map_err(|reason| serde::de::Error::custom(format!("invalid value {value:?}: {reason}")))
}

impl Options {
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

    /// The clap definition of the options alone (for the environment layer and the tests).
    pub fn command() -> clap::Command {
        Self::augment_args(clap::Command::new("nettrust"))
    }
}

/// The names an option is given under: flag, environment variable, config key.
#[derive(Debug, Clone)]
pub struct Names {
    /// `--long`.
    pub flag: String,
    /// `NET_TRUST_<KEY>`, if the option has one.
    pub env: Option<String>,
}

/// Flag and variable names of every option, by field (clap id).
pub fn names() -> std::collections::BTreeMap<String, Names> {
    Options::command()
        .get_arguments()
        .filter_map(|arg| {
            let long = arg.get_long()?;
            Some((
                arg.get_id().to_string(),
                Names {
                    flag: format!("--{long}"),
                    env: arg.get_env().map(|v| v.to_string_lossy().into_owned()),
                },
            ))
        })
        .collect()
}

/// A value and the name it was given under (flag, environment variable or config key), so that
/// an error can name it.
#[derive(Debug, Clone)]
pub struct Given<T> {
    /// The value.
    pub value: T,
    /// Where it came from.
    pub key: String,
}

/// The three sources of an option in precedence order: command line, environment, config file.
pub struct Layers<'a> {
    flags: &'a Options,
    env: &'a Options,
    file: &'a Options,
    names: std::collections::BTreeMap<String, Names>,
}

impl<'a> Layers<'a> {
    /// The layers of one resolution.
    pub fn new(flags: &'a Options, env: &'a Options, file: &'a Options) -> Self {
        Self {
            flags,
            env,
            file,
            names: names(),
        }
    }

    /// The config file's options (for its sections and file-only keys).
    pub fn file(&self) -> &'a Options {
        self.file
    }

    /// The flag name of option `id`.
    pub fn flag(&self, id: &str) -> String {
        self.names
            .get(id)
            .map_or_else(|| id.to_owned(), |n| n.flag.clone())
    }

    /// Option `id` from the highest layer that sets it: the flag, then the environment, then the
    /// config file (key `id`). A flag clap read from the environment is left to the environment
    /// layer.
    pub fn get<T>(&self, id: &str, field: impl Fn(&Options) -> Option<T>) -> Option<Given<T>> {
        let from_env = self.flags.from_env.iter().any(|e| e == id);
        match field(self.flags).filter(|_| !from_env) {
            Some(value) => Some(Given {
                value,
                key: self.flag(id),
            }),
            None => match field(self.env) {
                Some(value) => Some(Given {
                    value,
                    key: self
                        .names
                        .get(id)
                        .and_then(|n| n.env.clone())
                        .unwrap_or_else(|| id.to_owned()),
                }),
                None => field(self.file).map(|value| Given {
                    value,
                    key: id.to_owned(),
                }),
            },
        }
    }
}
