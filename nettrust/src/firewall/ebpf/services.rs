//! The eBPF maps of the whitelisted services (`SERVICES`: an address, a port and a transport
//! each) and of the peers that never get replies through flows they opened (`BLOCKED_V4/V6`,
//! checked by the egress program before a reply leaves through `INBOUND_FLOWS`). Both are kept
//! equal to the policy: entries it does not list are removed, the others written.

use std::net::IpAddr;

use aya::maps::{HashMap as AyaHashMap, MapData, lpm_trie::Key};
use ipnet::IpNet;
use nettrust_common::{MAP_BLOCKED_V4, MAP_BLOCKED_V6, MAP_SERVICES, ServiceKey};

use super::types::{EbpfError, NetTrie, map_error};
use crate::firewall::Service;

/// `SERVICES`: a service's key → 1.
pub(super) type ServiceMap = AyaHashMap<MapData, ServiceKey, u32>;

/// The map key of a service.
pub(super) fn service_key(service: &Service) -> ServiceKey {
    let (addr, family) = match service.addr.ip() {
        IpAddr::V4(ip) => {
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&ip.octets());
            (addr, 4)
        }
        IpAddr::V6(ip) => (ip.octets(), 6),
    };
    ServiceKey {
        addr,
        port: service.addr.port(),
        proto: service.transport.proto(),
        family,
        _pad: 0,
    }
}

/// Makes `map` hold exactly `services`.
pub(super) fn sync_services(map: &mut ServiceMap, services: &[Service]) -> Result<(), EbpfError> {
    let wanted: Vec<ServiceKey> = services.iter().map(service_key).collect();
    for service in services {
        map.insert(service_key(service), 1, 0).map_err(|e| {
            map_error(
                MAP_SERVICES,
                format!(
                    "cannot whitelist {} over {:?}",
                    service.addr, service.transport
                ),
                e,
            )
        })?;
    }
    let stale: Vec<ServiceKey> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !wanted.contains(k))
        .collect();
    for key in stale {
        map.remove(&key)
            .map_err(|e| map_error(MAP_SERVICES, "cannot remove a service", e))?;
    }
    Ok(())
}

/// Makes the tries hold exactly the networks of `blocked` (a host is a /32 or /128).
pub(super) fn sync_blocked(
    v4: &mut NetTrie<4>,
    v6: &mut NetTrie<16>,
    blocked: &[IpNet],
) -> Result<(), EbpfError> {
    for net in blocked {
        let net = net.trunc();
        let result = match net {
            IpNet::V4(n) => v4
                .insert(
                    &Key::new(u32::from(n.prefix_len()), n.addr().octets()),
                    1,
                    0,
                )
                .map_err(|e| (MAP_BLOCKED_V4, e)),
            IpNet::V6(n) => v6
                .insert(
                    &Key::new(u32::from(n.prefix_len()), n.addr().octets()),
                    1,
                    0,
                )
                .map_err(|e| (MAP_BLOCKED_V6, e)),
        };
        result.map_err(|(name, e)| map_error(name, format!("cannot block {net}"), e))?;
    }
    remove_stale(v4, blocked, MAP_BLOCKED_V4)?;
    remove_stale(v6, blocked, MAP_BLOCKED_V6)
}

/// Removes the networks of `trie` that `blocked` no longer lists.
fn remove_stale<const N: usize>(
    trie: &mut NetTrie<N>,
    blocked: &[IpNet],
    name: &'static str,
) -> Result<(), EbpfError>
where
    IpAddr: From<[u8; N]>,
    [u8; N]: aya::Pod,
{
    let wanted: Vec<IpNet> = blocked.iter().map(IpNet::trunc).collect();
    for key in stale_networks(trie, &wanted) {
        trie.remove(&key)
            .map_err(|e| map_error(name, "cannot unblock a network", e))?;
    }
    Ok(())
}

/// The keys of `trie` whose network is not in `wanted`.
pub(super) fn stale_networks<const N: usize>(
    trie: &NetTrie<N>,
    wanted: &[IpNet],
) -> Vec<Key<[u8; N]>>
where
    IpAddr: From<[u8; N]>,
    [u8; N]: aya::Pod,
{
    trie.keys()
        .filter_map(Result::ok)
        .filter(|k| {
            IpNet::new(IpAddr::from(k.data()), k.prefix_len() as u8)
                .is_ok_and(|n| !wanted.contains(&n))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::Transport;

    #[test]
    fn service_keys_carry_address_port_and_transport() {
        let key = service_key(&Service {
            addr: "192.0.2.53:853".parse().unwrap(),
            transport: Transport::Tcp,
        });
        assert_eq!(key.addr[..4], [192, 0, 2, 53]);
        assert_eq!(key.addr[4..], [0; 12]);
        assert_eq!((key.port, key.proto, key.family), (853, 6, 4));
        let key = service_key(&Service {
            addr: "[2001:db8::53]:53".parse().unwrap(),
            transport: Transport::Udp,
        });
        assert_eq!(
            key.addr,
            "2001:db8::53"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
        assert_eq!((key.port, key.proto, key.family), (53, 17, 6));
    }
}
