//! Value parsers and one validator per section of the settings (listener, upstreams, firewall,
//! lifetimes, lists, operations, capacities). Each takes its options from [`Layers`] and names the
//! key and the value it refuses.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;

use super::domains::{domain_list, parse_domain};
use super::{
    Backend, Blacklist, ConfigError, DEFAULT_BPFFS_DIR, DEFAULT_FWD_TIMEOUT_MS,
    DEFAULT_TTL_CHECK_INTERVAL, DEFAULT_UDP_BUFFER, DNS_PORT, DOT_PORT, Env, FirewallType,
    FwdProto, FwdTls, ListenTls, LogFormat, dedup, invalid,
    options::{Given, Layers, parse_choice},
};
use crate::blacklist::BlockResponse;

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

pub(super) fn parse_host(key: &str, value: &str) -> Result<IpAddr, ConfigError> {
    value
        .trim()
        .parse()
        .map_err(|_| invalid(key, value, "expected an IPv4 or IPv6 address"))
}

pub(super) fn parse_network(key: &str, value: &str) -> Result<IpNet, ConfigError> {
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

/// `given`'s value when `valid` accepts it, else an error naming key and value; `default` when
/// unset.
fn checked<T: ToString>(
    given: Option<Given<T>>,
    default: T,
    valid: impl Fn(&T) -> bool,
    reason: &str,
) -> Result<T, ConfigError> {
    match given {
        Some(Given { value, key }) if !valid(&value) => {
            Err(invalid(key, value.to_string(), reason))
        }
        Some(given) => Ok(given.value),
        None => Ok(default),
    }
}

/// A boolean option, `default` when unset.
fn flag(l: &Layers, id: &str, field: fn(&super::Options) -> Option<bool>, default: bool) -> bool {
    l.get(id, field).map_or(default, |g| g.value)
}

/// The DNS listener: its address, DoT certificate and dedicated DoT address.
pub(super) fn listener(
    l: &Layers,
) -> Result<(SocketAddr, Option<ListenTls>, Option<SocketAddr>), ConfigError> {
    let listen_addr = match l.get("listen_addr", |o| o.listen_addr.clone()) {
        Some(Given { value, key }) => parse_socket_addr(&key, &value)?,
        None => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DNS_PORT),
    };
    let listen_tls = match l.get("listen_tls", |o| o.listen_tls) {
        Some(Given { value: true, .. }) => {
            let cert = l.get("listen_cert", |o| o.listen_cert.clone())
                .ok_or(ConfigError::Missing("listen_tls is enabled but no certificate was given (--listen-cert / listen_cert)"))?;
            let key = l.get("listen_cert_key", |o| o.listen_cert_key.clone())
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
    let listen_tls_addr = match l.get("listen_tls_addr", |o| o.listen_tls_addr.clone()) {
        Some(Given { value, key }) => {
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
    Ok((listen_addr, listen_tls, listen_tls_addr))
}

/// The upstream servers, in failover order: flags replace everything; else the environment's
/// one address; else the file's `fwd_addr` then `fwd_addrs`.
pub(super) fn upstreams(
    l: &Layers,
    listen_addr: SocketAddr,
) -> Result<Vec<SocketAddr>, ConfigError> {
    let given = l.get("fwd_addrs", |o| {
        Some(o.fwd_addrs.clone()).filter(|v| !v.is_empty())
    });
    let upstreams: Vec<(String, String)> = match given {
        Some(Given { value, key }) if key != "fwd_addrs" => {
            value.into_iter().map(|a| (key.clone(), a)).collect()
        }
        _ => {
            let file = l.file();
            let first = file
                .fwd_addr
                .iter()
                .map(|a| ("fwd_addr".to_owned(), a.clone()));
            let rest = file
                .fwd_addrs
                .iter()
                .map(|a| ("fwd_addrs".to_owned(), a.clone()));
            first.chain(rest).collect()
        }
    };
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
    Ok(fwd)
}

/// How the upstreams are asked: transport, DoT, EDNS0 payload size, timeout.
pub(super) fn upstream_transport(
    l: &Layers,
) -> Result<(FwdProto, Option<FwdTls>, u16, Duration), ConfigError> {
    let fwd_proto = l
        .get("fwd_proto", |o| o.fwd_proto)
        .map_or(FwdProto::Udp, |g| g.value);
    let fwd_tls = match l.get("fwd_tls", |o| o.fwd_tls) {
        Some(Given { value: true, key }) => {
            if fwd_proto != FwdProto::Tcp {
                return Err(invalid(
                    key,
                    "true",
                    "DNS over TLS to the upstream requires fwd_proto = \"tcp\"",
                ));
            }
            let ca = l.get("fwd_tls_cert", |o| o.fwd_tls_cert.clone());
            if let Some(ca) = &ca {
                check_pem(&ca.key, &ca.value, "CERTIFICATE")?;
            }
            let name = l.get("fwd_tls_name", |o| o.fwd_tls_name.clone());
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
    let buffer = checked(
        l.get("fwd_udp_buffer_size", |o| o.fwd_udp_buffer_size),
        DEFAULT_UDP_BUFFER,
        |v| *v >= 512,
        "must be between 512 and 65535 (RFC 6891 §6.2.5)",
    )?;
    let timeout = checked(
        l.get("fwd_timeout_ms", |o| o.fwd_timeout_ms),
        DEFAULT_FWD_TIMEOUT_MS,
        |v| (10..=60_000).contains(v),
        "must be between 10 and 60000 milliseconds",
    )?;
    Ok((fwd_proto, fwd_tls, buffer, Duration::from_millis(timeout)))
}

/// The firewall: backend, hook, inbound drop and the default policy's cgroups (`cgroup2_root`
/// when none is configured and there is no `[[policy]]`; none when there are policies: only
/// theirs are filtered then).
pub(super) fn firewall(
    l: &Layers,
    has_policies: bool,
    cgroup2_root: impl FnOnce() -> Result<PathBuf, crate::cgroup::CgroupError>,
) -> Result<(Backend, FirewallType, bool, Vec<PathBuf>), ConfigError> {
    let backend = l
        .get("firewall_backend", |o| o.firewall_backend)
        .map_or(Backend::Auto, |g| g.value);
    let firewall_type = match l.get("firewall_type", |o| o.firewall_type) {
        Some(Given {
            value: FirewallType::Forward,
            key,
        }) if backend == Backend::Ebpf => {
            return Err(invalid(
                key,
                "forward",
                "gateway mode filters routed traffic, which cgroup programs never see: use the nftables backend",
            ));
        }
        Some(given) => given.value,
        None => FirewallType::Output,
    };
    let drop_input = flag(l, "firewall_drop_input", |o| o.firewall_drop_input, false);
    let cgroups = match l.get("cgroups", |o| {
        Some(o.cgroups.clone()).filter(|c| !c.is_empty())
    }) {
        Some(given) => given.value,
        None if has_policies => Vec::new(),
        None => vec![cgroup2_root().map_err(|e| invalid("cgroups", "", e.to_string()))?],
    };
    Ok((backend, firewall_type, drop_input, cgroups))
}

/// Lifetimes: the answer cache cap, the authorization lifetime and the sweep interval.
pub(super) fn lifetimes(
    l: &Layers,
) -> Result<(Option<Duration>, Option<Duration>, Duration), ConfigError> {
    let secs = |v: i64| (v > 0).then(|| Duration::from_secs(v.unsigned_abs()));
    let dns_ttl_cache = checked(
        l.get("dns_ttl_cache", |o| o.dns_ttl_cache),
        -1,
        |v| *v >= -1,
        "must be -1 (off), 0 (off) or a number of seconds",
    )?;
    let authorized_ttl = checked(
        l.get("authorized_ttl", |o| o.authorized_ttl),
        -1,
        |v| *v == -1 || *v > 0,
        "must be -1 (never expire) or a number of seconds >= 1",
    )?;
    let interval = checked(
        l.get("ttl_check_interval", |o| o.ttl_check_interval),
        DEFAULT_TTL_CHECK_INTERVAL.cast_signed(),
        |v| *v >= 1,
        "the expiry sweep interval must be >= 1 second",
    )?;
    Ok((
        secs(dns_ttl_cache),
        secs(authorized_ttl),
        Duration::from_secs(interval.unsigned_abs()),
    ))
}

/// What stays on exit: (`do_not_flush_table`, `do_not_flush_authorized_hosts`).
pub(super) fn exit_mode(l: &Layers) -> Result<(bool, bool), ConfigError> {
    let table = flag(l, "do_not_flush_table", |o| o.do_not_flush_table, false);
    match l.get("do_not_flush_authorized_hosts", |o| {
        o.do_not_flush_authorized_hosts
    }) {
        Some(Given { value: true, key }) if !table => Err(invalid(
            key,
            "true",
            "keeping the authorized hosts needs do_not_flush_table = true (the table holding them is removed otherwise)",
        )),
        given => Ok((table, given.is_some_and(|g| g.value))),
    }
}

/// The whitelists: (hosts, networks). Hosts: the listeners plus the environment's and the
/// file's; networks: loopback and private when enabled, then the environment's and the file's.
pub(super) fn whitelist(
    l: &Layers,
    env: &Env,
    listeners: impl IntoIterator<Item = Option<SocketAddr>>,
) -> Result<(Vec<IpAddr>, Vec<IpNet>), ConfigError> {
    let section = &l.file().whitelist;
    let mut networks = Vec::new();
    if flag(l, "whitelist_loopback", |o| o.whitelist_loopback, true) {
        networks.extend(super::loopback_networks());
    }
    if flag(l, "whitelist_private", |o| o.whitelist_private, true) {
        networks.extend(super::private_networks());
    }
    networks.extend(env.whitelist_networks.iter().copied());
    for net in &section.networks {
        networks.push(parse_network("whitelist.networks", net)?);
    }
    let mut hosts: Vec<IpAddr> = listeners.into_iter().flatten().map(|a| a.ip()).collect();
    // The upstream servers are not whitelisted hosts: the firewall allows them on their DNS
    // port and transport only (`firewall::upstream_services`).
    hosts.extend(env.whitelist_hosts.iter().copied());
    for host in &section.hosts {
        hosts.push(parse_host("whitelist.hosts", host)?);
    }
    hosts.retain(|ip| !ip.is_unspecified());
    dedup(&mut hosts);
    dedup(&mut networks);
    Ok((hosts, networks))
}

/// The never-authorize rules; none of them may name a whitelisted, listen or forward address.
pub(super) fn blacklist(
    l: &Layers,
    env: &Env,
    allowed: &[IpAddr],
) -> Result<Blacklist, ConfigError> {
    let section = &l.file().blacklist;
    let mut hosts = env.blacklist_hosts.clone();
    for host in &section.hosts {
        hosts.push(parse_host("blacklist.hosts", host)?);
    }
    let mut networks = env.blacklist_networks.clone();
    for net in &section.networks {
        networks.push(parse_network("blacklist.networks", net)?);
    }
    let mut domains = Vec::with_capacity(section.domains.len());
    for domain in &section.domains {
        domains.push(parse_domain("blacklist.domains", domain)?);
    }
    let matcher = domain_list(
        ("blacklist.domains", &section.domains),
        ("blacklist.domains_file", section.domains_file.as_deref()),
    )?;
    let response = match l.get("blacklist_response", |o| o.blacklist_response) {
        Some(given) => given.value,
        None => match &section.response {
            Some(value) => parse_choice::<BlockResponse>(value)
                .map_err(|reason| invalid("blacklist.response", value, reason))?,
            None => BlockResponse::Refused,
        },
    };
    dedup(&mut hosts);
    dedup(&mut networks);
    dedup(&mut domains);
    if let Some(host) = allowed.iter().find(|h| hosts.contains(h)) {
        return Err(invalid(
            "blacklist.hosts",
            host.to_string(),
            "also whitelisted (or a listen/forward address); remove one of the two",
        ));
    }
    Ok(Blacklist {
        hosts,
        networks,
        domains,
        domains_file: section.domains_file.clone(),
        matcher,
        response,
    })
}

/// Operations: PTR authorization, the bpffs directory, the metrics endpoint, the log format.
pub(super) fn operations(
    l: &Layers,
    listen_addr: SocketAddr,
) -> Result<(bool, PathBuf, Option<SocketAddr>, LogFormat), ConfigError> {
    let authorize_ptr = flag(l, "authorize_ptr", |o| o.authorize_ptr, false);
    let bpffs_dir = match l.get("bpffs_dir", |o| o.bpffs_dir.clone()) {
        Some(Given { value, key })
            if !value.is_absolute() || value.parent().is_none_or(|p| p == Path::new("/")) =>
        {
            return Err(invalid(
                key,
                value.display().to_string(),
                "must be an absolute path inside a bpf filesystem, e.g. /sys/fs/bpf/nettrust",
            ));
        }
        Some(given) => given.value,
        None => PathBuf::from(DEFAULT_BPFFS_DIR),
    };
    let metrics_addr = match l.get("metrics_addr", |o| o.metrics_addr.clone()) {
        Some(Given { value, key }) => {
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
    let log_format = l
        .get("log_format", |o| o.log_format)
        .map_or(LogFormat::Text, |g| g.value);
    Ok((authorize_ptr, bpffs_dir, metrics_addr, log_format))
}

/// Threads serving DNS unless `worker_threads` says otherwise (UDP engine threads, and runtime
/// threads). One: at full load on 2 cores one UDP engine thread serves about 10 % more queries/s
/// than two (the client and the upstream need the other core), and a current-thread runtime
/// 3–8 % more than a multi-thread one with 9 % less CPU per query (docs/benchmark-history.md).
pub const DEFAULT_WORKER_THREADS: usize = 1;
/// Largest accepted `worker_threads`.
pub const MAX_WORKER_THREADS: usize = 256;

/// Largest accepted `max_tcp_connections`: each connection holds a file descriptor, and the
/// daemon's limit is usually 1024 soft / 524288 hard.
const MAX_TCP_CONNECTIONS: usize = 65_536;

/// Counts: (`dns_cache_size`, `max_tcp_connections`, `worker_threads`).
pub(super) fn counts(l: &Layers) -> Result<(usize, usize, usize), ConfigError> {
    let cache = checked(
        l.get("dns_cache_size", |o| o.dns_cache_size),
        crate::dns::cache::DEFAULT_CAPACITY,
        |v| *v > 0,
        "must be at least 1",
    )?;
    let tcp = checked(
        l.get("max_tcp_connections", |o| o.max_tcp_connections),
        crate::dns::server::DEFAULT_MAX_TCP_CONNECTIONS,
        |v| (1..=MAX_TCP_CONNECTIONS).contains(v),
        &format!("must be between 1 and {MAX_TCP_CONNECTIONS}"),
    )?;
    let threads = checked(
        l.get("worker_threads", |o| o.worker_threads),
        DEFAULT_WORKER_THREADS,
        |v| (1..=MAX_WORKER_THREADS).contains(v),
        &format!("must be between 1 and {MAX_WORKER_THREADS}"),
    )?;
    Ok((cache, tcp, threads))
}

/// Largest accepted `max_hosts` (per family; at 16 Mi the IPv4 table alone takes 358 MB of kernel
/// memory, and the IPv6 map about 1.7 GB when full).
pub const MAX_HOSTS_LIMIT: u32 = 1 << 24;
/// Largest accepted `max_networks` (per family).
pub const MAX_NETWORKS_LIMIT: u32 = 1 << 20;

pub use crate::authorizer::DEFAULT_MAX_ANSWER_ADDRESSES;

/// One map capacity: within `1..=limit`, and at least `min` for the `whitelisted` entries of one
/// address family it holds.
fn capacity(
    given: Option<Given<u32>>,
    default: u32,
    limit: u32,
    (whitelisted, min, what): (usize, usize, &str),
) -> Result<u32, ConfigError> {
    let Some(Given { value, key }) = given else {
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

/// `max_hosts`, `max_networks` and `max_answer_addresses`: within range, the maps large enough
/// for the whitelists they hold (a host map also needs room for one authorization), and one
/// answer never needing more room than the host map has.
pub(super) fn capacities(
    l: &Layers,
    whitelist_hosts: &[IpAddr],
    whitelist_networks: &[IpNet],
) -> Result<(u32, u32, u32), ConfigError> {
    let per_family = |v4: usize, total: usize| v4.max(total - v4);
    let hosts = per_family(
        whitelist_hosts.iter().filter(|h| h.is_ipv4()).count(),
        whitelist_hosts.len(),
    );
    let nets = per_family(
        whitelist_networks
            .iter()
            .filter(|n| matches!(n, IpNet::V4(_)))
            .count(),
        whitelist_networks.len(),
    );
    let max_hosts = capacity(
        l.get("max_hosts", |o| o.max_hosts),
        nettrust_common::DEFAULT_MAX_HOSTS,
        MAX_HOSTS_LIMIT,
        (hosts, hosts + 1, "hosts"),
    )?;
    let max_networks = capacity(
        l.get("max_networks", |o| o.max_networks),
        nettrust_common::DEFAULT_MAX_NETS,
        MAX_NETWORKS_LIMIT,
        (nets, nets, "networks"),
    )?;
    let answer = checked(
        l.get("max_answer_addresses", |o| o.max_answer_addresses),
        DEFAULT_MAX_ANSWER_ADDRESSES.min(max_hosts),
        |v| (1..=max_hosts).contains(v),
        &format!("must be between 1 and max_hosts ({max_hosts})"),
    )?;
    Ok((max_hosts, max_networks, answer))
}
