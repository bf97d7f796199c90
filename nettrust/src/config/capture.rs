//! `listen_addrs` (more DNS listen addresses) and `dns_capture` (answer every DNS query of the
//! filtered cgroups, whatever resolver they ask), checked against the listener and the firewall.

use std::net::SocketAddr;

use super::{
    ConfigError, invalid,
    options::{Backend, FirewallType, Given, Layers},
    validate::parse_socket_addr,
};

/// `listen_addrs`: each an `IP:PORT` (or an address, port 53), none equal to `listen_addr`,
/// `listen_tls_addr` or another entry. `NET_TRUST_LISTEN_ADDRS` is comma- or space-separated.
pub(super) fn listen_addrs(
    l: &Layers,
    listen_addr: SocketAddr,
    listen_tls_addr: Option<SocketAddr>,
) -> Result<Vec<SocketAddr>, ConfigError> {
    let Some(Given { value, key }) = l.get("listen_addrs", |o| o.listen_addrs.clone()) else {
        return Ok(Vec::new());
    };
    let entries: Vec<String> = if key.starts_with("NET_TRUST_") {
        value
            .iter()
            .flat_map(|v| v.split(|c: char| c == ',' || c.is_whitespace()))
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect()
    } else {
        value
    };
    let mut out: Vec<SocketAddr> = Vec::new();
    for entry in entries {
        let addr = parse_socket_addr(&key, &entry)?;
        if addr == listen_addr || Some(addr) == listen_tls_addr || out.contains(&addr) {
            return Err(invalid(
                &key,
                &entry,
                "listed twice (listen_addr, listen_tls_addr and listen_addrs must all differ)",
            ));
        }
        out.push(addr);
    }
    Ok(out)
}

/// `dns_capture`: needs the eBPF backend (socket-address programs; the nftables backend and
/// gateway mode have no equivalent), so it is refused with `firewall_backend = "nftables"` or
/// `firewall_type = "forward"`. With `auto`, a fallback to nftables is refused at start.
pub(super) fn dns_capture(
    l: &Layers,
    backend: Backend,
    firewall_type: FirewallType,
) -> Result<bool, ConfigError> {
    let Some(Given { value, key }) = l.get("dns_capture", |o| o.dns_capture) else {
        return Ok(false);
    };
    if value && backend == Backend::Nftables {
        return Err(invalid(
            key,
            "true",
            "DNS capture needs the eBPF backend (socket-address hooks); firewall_backend is nftables",
        ));
    }
    if value && firewall_type == FirewallType::Forward {
        return Err(invalid(
            key,
            "true",
            "DNS capture works on the filtered cgroups' sockets; gateway mode (firewall_type = forward) has none",
        ));
    }
    Ok(value)
}
