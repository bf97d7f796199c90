//! `allow_clients`: which clients the DNS listeners serve, and the interface subnets of the
//! default.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ipnet::IpNet;

use super::{
    ConfigError, dedup, invalid, loopback_networks,
    options::{Given, Layers},
    validate::parse_network,
};

/// `allow_clients`: the flags (`--allow-client`, repeatable) replace everything; else
/// `NET_TRUST_ALLOW_CLIENTS` (comma- or space-separated); else the file's list. Each entry is a
/// network in CIDR notation or a single address. Unset: loopback plus the subnet of each
/// listener address that is not loopback, as `subnets` reads it from the interfaces.
pub(super) fn allow_clients(
    l: &Layers,
    listeners: impl IntoIterator<Item = Option<SocketAddr>>,
    subnets: impl Fn(IpAddr) -> Vec<IpNet>,
) -> Result<Vec<IpNet>, ConfigError> {
    let Some(Given { value, key }) = l.get("allow_clients", |o| o.allow_clients.clone()) else {
        let mut networks = loopback_networks();
        for ip in listeners.into_iter().flatten().map(|a| a.ip()) {
            if !ip.is_loopback() {
                networks.extend(subnets(ip));
            }
        }
        dedup(&mut networks);
        return Ok(networks);
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
    let mut networks = Vec::new();
    for value in entries {
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
    if unsafe { libc::getifaddrs(&raw mut list) } == 0 {
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
                let v4 = addr.cast::<libc::sockaddr_in>().read_unaligned();
                Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr))))
            }
            libc::AF_INET6 => {
                let v6 = addr.cast::<libc::sockaddr_in6>().read_unaligned();
                Some(IpAddr::V6(std::net::Ipv6Addr::from(v6.sin6_addr.s6_addr)))
            }
            _ => None,
        }
    }
}
