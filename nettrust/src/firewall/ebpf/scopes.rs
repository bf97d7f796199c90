//! Policies in the eBPF data path, from userspace: which policy ("scope") each listed cgroup
//! belongs to (`POLICY_OF`, with the generation in `CONFIG` that makes the program's per-cgroup
//! cache `SCOPES` stale), the policies' own networks (`POLICY_NETS_V4/V6`), the grants of the
//! policies (`GRANTS`; the default policy's stay in the host maps), the DNS proxy's listeners
//! (`LISTENERS` and their ports in `CONFIG`) and the clients the egress program saw sending to
//! them (`CLIENTS`). Every element operation goes through [`super::syscalls`] on a shared
//! reference: the kernel makes each one atomic.
//!
//! With cgroup patterns, `POLICY_OF` also holds what classification found ([`PatternEntries`],
//! flagged `POLICY_PATTERN`: attach points with `POLICY_UNFILTERED`, matched cgroups with their
//! pattern's policy); the compiled patterns themselves are in [`PatternMaps`].

use std::{
    collections::{HashMap, HashSet},
    io,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Mutex,
};

use aya::maps::{Array, HashMap as AyaHashMap, LpmTrie, Map, MapData, lpm_trie::Key};
use ipnet::IpNet;
use nettrust_common::{
    CONFIG_DEEP_MATCHES, CONFIG_LISTEN_PORTS, CONFIG_SCOPE_GENERATION, ClientValue,
    FLAG_AUTHORIZED, GrantKey, HostName, HostValue, MAP_CLIENTS, MAP_CONFIG, MAP_GRANT_NAMES,
    MAP_GRANTS, MAP_LISTENERS, MAP_POLICY_NAMES, MAP_POLICY_NETS_V4, MAP_POLICY_NETS_V6,
    MAP_POLICY_OF, MAX_SCOPE, POLICY_AUDIT, POLICY_NAME_LEN, POLICY_PATTERN, PolicyRef,
    SCOPE_PREFIX_BITS, ServiceKey,
};

use super::{
    adopt::open_pinned,
    denied_events::PolicyNames,
    grant_memo::GrantMemo,
    pattern_maps::PatternMaps,
    syscalls::{self, BPF_ANY, BPF_NOEXIST},
    types::{EbpfError, GrantNameMap, map_error},
};

/// A listed cgroup and its policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupScope {
    /// cgroup v2 id (inode of the cgroup directory).
    pub cgroup_id: u64,
    /// 0 = the default policy, 1..=[`MAX_SCOPE`] a configured policy.
    pub scope: u32,
    /// The policy is in audit mode.
    pub audit: bool,
}

/// Who sent a packet to a listener of the DNS proxy, as the egress program recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientRecord {
    /// cgroup v2 id of the sending socket.
    pub cgroup_id: u64,
    /// Its scope when the packet left.
    pub scope: u32,
    /// Its policy was in audit mode.
    pub audit: bool,
}

/// What cgroup pattern classification adds to `POLICY_OF`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatternEntries {
    /// Each pattern's attach point (`POLICY_UNFILTERED`) and each cgroup a pattern matched (its
    /// pattern's policy), all with `POLICY_PATTERN`.
    pub entries: Vec<(u64, PolicyRef)>,
    /// The pattern entries `POLICY_OF` held before the tree was walked: one of these the walk
    /// did not produce is stale (removed); one written meanwhile by the tracepoint is kept.
    pub before: HashSet<u64>,
    /// The attach points, with their cgroup ids.
    pub attach_points: Vec<(PathBuf, u64)>,
    /// Whether any pattern is configured: the programs must then walk each packet's ancestry
    /// (generation on) even while no cgroup matches yet.
    pub active: bool,
}

/// A policy network's trie, `D` bytes of data (scope then address).
type PolicyTrie<const D: usize> = LpmTrie<MapData, [u8; D], u32>;

/// The policy maps, opened from the pins of the loaded (or adopted) programs.
pub struct ScopeMaps {
    policy_of: AyaHashMap<MapData, u64, PolicyRef>,
    grants: AyaHashMap<MapData, GrantKey, HostValue>,
    nets_v4: PolicyTrie<8>,
    nets_v6: PolicyTrie<20>,
    listeners: AyaHashMap<MapData, ServiceKey, u32>,
    clients: AyaHashMap<MapData, ServiceKey, ClientValue>,
    /// The pinned copy of the names, for `nettrust list` and `status`.
    pinned_names: AyaHashMap<MapData, u32, [u8; POLICY_NAME_LEN]>,
    /// The names that authorized the grants (none in a directory pinned by a version without
    /// them).
    grant_names: Option<GrantNameMap>,
    config: Array<MapData, u32>,
    /// The compiled patterns' maps.
    pub(super) patterns: PatternMaps,
    /// What the last pattern classification found, merged into `POLICY_OF` by
    /// [`ScopeMaps::set_policies`].
    pattern_entries: Mutex<PatternEntries>,
    /// The directory the maps and programs are pinned in.
    pin_dir: PathBuf,
    /// Policy names by scope, for the audit and denied log lines.
    names: PolicyNames,
    /// Serializes [`ScopeMaps::set_policies`] and [`ScopeMaps::set_listeners`]: each rewrites a
    /// whole map and reads then bumps a `CONFIG` word.
    write: Mutex<()>,
    /// The deadlines the daemon knows `GRANTS` holds (see `grant_memo`).
    pub(super) memo: GrantMemo,
}

impl ScopeMaps {
    /// Opens the maps pinned in `pin_dir` (call before dropping privileges).
    pub(super) fn open(pin_dir: &Path) -> Result<Self, EbpfError> {
        Ok(Self {
            policy_of: open_pinned(pin_dir, MAP_POLICY_OF, Map::HashMap)?,
            grants: open_pinned(pin_dir, MAP_GRANTS, Map::HashMap)?,
            nets_v4: open_pinned(pin_dir, MAP_POLICY_NETS_V4, Map::LpmTrie)?,
            nets_v6: open_pinned(pin_dir, MAP_POLICY_NETS_V6, Map::LpmTrie)?,
            listeners: open_pinned(pin_dir, MAP_LISTENERS, Map::HashMap)?,
            clients: open_pinned(pin_dir, MAP_CLIENTS, Map::LruHashMap)?,
            pinned_names: open_pinned(pin_dir, MAP_POLICY_NAMES, Map::HashMap)?,
            config: open_pinned(pin_dir, MAP_CONFIG, Map::Array)?,
            patterns: PatternMaps::open(pin_dir)?,
            pattern_entries: Mutex::new(PatternEntries::default()),
            pin_dir: pin_dir.to_owned(),
            names: PolicyNames::default(),
            write: Mutex::new(()),
            memo: GrantMemo::default(),
            grant_names: open_pinned(pin_dir, MAP_GRANT_NAMES, Map::HashMap).ok(),
        })
    }

    /// The policy names the denied/audit log shows (shared with its task).
    pub(super) fn names(&self) -> PolicyNames {
        self.names.clone()
    }

    /// Sets the names the log lines, `nettrust list` and `status` show for each scope (a scope
    /// without a name shows its number).
    pub fn set_names(
        &self,
        names: impl IntoIterator<Item = (u32, String)>,
    ) -> Result<(), EbpfError> {
        let names: HashMap<u32, String> = names.into_iter().collect();
        let fd = syscalls::fd_of(&self.pinned_names);
        for (scope, name) in &names {
            let mut value = [0u8; POLICY_NAME_LEN];
            let len = name.len().min(POLICY_NAME_LEN);
            value[..len].copy_from_slice(&name.as_bytes()[..len]);
            syscalls::update(fd, scope, &value, BPF_ANY).map_err(|e| {
                map_error(MAP_POLICY_NAMES, format!("cannot name scope {scope}"), e)
            })?;
        }
        let present = syscalls::hash_entries(&self.pinned_names)
            .map_err(|e| map_error(MAP_POLICY_NAMES, "cannot read", e))?;
        for (scope, _) in present {
            if !names.contains_key(&scope) {
                syscalls::delete(fd, &scope)
                    .map_err(|e| map_error(MAP_POLICY_NAMES, "cannot remove a name", e))?;
            }
        }
        *self.names.write().expect("policy names lock poisoned") = names;
        Ok(())
    }

    /// Makes `POLICY_OF` hold exactly `cgroups` and the policy tries exactly `nets` (scope,
    /// network), then turns policies on (`on`: any `[[policy]]` configured) with a new generation,
    /// which makes every cached scope stale so the next packet of each cgroup sees the new
    /// assignment, or off (generation 0: the program skips scopes and client records). List the
    /// top-level filtered cgroups of the default policy with scope 0, so a default cgroup below a
    /// policy's cgroup resolves to the default policy.
    ///
    /// The entries of the last [`ScopeMaps::set_pattern_entries`] are listed too (a configured
    /// cgroup's own entry wins), and any pattern entry keeps the generation on.
    pub fn set_policies(
        &self,
        cgroups: &[CgroupScope],
        nets: &[(u32, IpNet)],
        on: bool,
    ) -> Result<(), EbpfError> {
        check_scopes(cgroups, nets).map_err(|e| map_error(MAP_POLICY_OF, "refused", e))?;
        let _write = self.write.lock().expect("scope maps lock poisoned");
        let fd = syscalls::fd_of(&self.policy_of);
        let mut wanted: HashMap<u64, PolicyRef> = cgroups
            .iter()
            .map(|c| (c.cgroup_id, policy_ref(c.scope, c.audit)))
            .collect();
        let patterns = self.pattern_entries.lock().expect("poisoned").clone();
        for (id, policy) in &patterns.entries {
            wanted.entry(*id).or_insert(*policy);
        }
        let on = on || patterns.active || !patterns.entries.is_empty();
        for (id, policy) in &wanted {
            syscalls::update(fd, id, policy, BPF_ANY)
                .map_err(|e| map_error(MAP_POLICY_OF, format!("cannot list cgroup id {id}"), e))?;
        }
        let present = syscalls::hash_entries(&self.policy_of)
            .map_err(|e| map_error(MAP_POLICY_OF, "cannot read", e))?;
        for (id, policy) in present {
            // A pattern entry the walk did not see was written by the tracepoint meanwhile.
            let fresh = policy.flags & POLICY_PATTERN != 0 && !patterns.before.contains(&id);
            if !wanted.contains_key(&id) && !fresh {
                syscalls::delete(fd, &id)
                    .map_err(|e| map_error(MAP_POLICY_OF, format!("cannot unlist {id}"), e))?;
            }
        }
        sync_trie(&self.nets_v4, nets, MAP_POLICY_NETS_V4)?;
        sync_trie(&self.nets_v6, nets, MAP_POLICY_NETS_V6)?;
        let generation = if on {
            next_generation(self.config_word(CONFIG_SCOPE_GENERATION)?)
        } else {
            0
        };
        self.set_config_word(CONFIG_SCOPE_GENERATION, generation)
    }

    /// The directory the maps and programs are pinned in.
    pub(super) fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The `POLICY_OF` entry of cgroup `id`.
    pub(super) fn policy_of(&self, id: u64) -> Result<Option<PolicyRef>, EbpfError> {
        syscalls::lookup(syscalls::fd_of(&self.policy_of), &id)
            .map_err(|e| map_error(MAP_POLICY_OF, "cannot read", e))
    }

    /// Adds `entries` to `POLICY_OF` (an id already listed keeps its entry) and starts a new
    /// generation, so the programs walk again (`nettrust attach` with a pattern).
    pub(super) fn add_entries(&self, entries: &[(u64, PolicyRef)]) -> Result<(), EbpfError> {
        let _write = self.write.lock().expect("scope maps lock poisoned");
        let fd = syscalls::fd_of(&self.policy_of);
        for (id, policy) in entries {
            match syscalls::update(fd, id, policy, BPF_NOEXIST) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(map_error(MAP_POLICY_OF, format!("cannot list {id}"), e));
                }
                _ => {}
            }
        }
        let generation = next_generation(self.config_word(CONFIG_SCOPE_GENERATION)?);
        self.set_config_word(CONFIG_SCOPE_GENERATION, generation)
    }

    /// The ids of the pattern entries (`POLICY_PATTERN`) `POLICY_OF` holds now.
    pub(super) fn pattern_entry_ids(&self) -> Result<HashSet<u64>, EbpfError> {
        Ok(syscalls::hash_entries(&self.policy_of)
            .map_err(|e| map_error(MAP_POLICY_OF, "cannot read", e))?
            .into_iter()
            .filter(|(_, p)| p.flags & POLICY_PATTERN != 0)
            .map(|(id, _)| id)
            .collect())
    }

    /// Records what pattern classification found, for the next [`ScopeMaps::set_policies`];
    /// returns the previous record.
    pub(super) fn set_pattern_entries(&self, entries: PatternEntries) -> PatternEntries {
        std::mem::replace(
            &mut *self.pattern_entries.lock().expect("poisoned"),
            entries,
        )
    }

    /// The attach points of the last classification.
    pub fn pattern_attach_points(&self) -> Vec<(PathBuf, u64)> {
        self.pattern_entries
            .lock()
            .expect("poisoned")
            .attach_points
            .clone()
    }

    /// Makes `LISTENERS` hold exactly the proxy's `listeners` (address and port, IP protocol
    /// number; an unspecified address stands for every address of its family) and records their
    /// ports (at most two distinct ones) in `CONFIG`.
    pub fn set_listeners(&self, listeners: &[(SocketAddr, u8)]) -> Result<(), EbpfError> {
        let ports = listen_ports(listeners).map_err(|e| map_error(MAP_LISTENERS, "refused", e))?;
        let _write = self.write.lock().expect("scope maps lock poisoned");
        let fd = syscalls::fd_of(&self.listeners);
        let wanted: Vec<ServiceKey> = listeners
            .iter()
            .map(|&(addr, proto)| endpoint_key(addr, proto))
            .collect();
        for (key, &(addr, _)) in wanted.iter().zip(listeners) {
            syscalls::update(fd, key, &1u32, BPF_ANY).map_err(|e| {
                map_error(MAP_LISTENERS, format!("cannot record listener {addr}"), e)
            })?;
        }
        let present = syscalls::hash_entries(&self.listeners)
            .map_err(|e| map_error(MAP_LISTENERS, "cannot read", e))?;
        for (key, _) in present {
            if !wanted.contains(&key) {
                syscalls::delete(fd, &key)
                    .map_err(|e| map_error(MAP_LISTENERS, "cannot remove a listener", e))?;
            }
        }
        self.set_config_word(CONFIG_LISTEN_PORTS, ports)
    }

    /// The cgroup and scope that sent the last packet from `src` over `proto` (6 or 17) to a
    /// listener, if the egress program recorded one (policies on, a filtered sender, an entry the
    /// LRU map has not evicted). An IPv4-mapped IPv6 source is looked up as IPv4.
    pub fn client(&self, proto: u8, src: SocketAddr) -> io::Result<Option<ClientRecord>> {
        let key = endpoint_key(src, proto);
        let value: Option<ClientValue> = syscalls::lookup(syscalls::fd_of(&self.clients), &key)?;
        Ok(value.map(|v| ClientRecord {
            cgroup_id: v.cgroup_id,
            scope: v.scope,
            audit: v.flags & POLICY_AUDIT != 0,
        }))
    }

    /// The grant of `addr` for `scope`; the memo notes its deadline (callers hold the host-map
    /// lock, so a removal under the exclusive one cannot come between the read and the note).
    pub fn grant_get(&self, scope: u32, addr: IpAddr) -> io::Result<Option<HostValue>> {
        let value: Option<HostValue> =
            syscalls::lookup(syscalls::fd_of(&self.grants), &grant_key(scope, addr)?)?;
        if let Some(value) = value.filter(|v| v.flags & FLAG_AUTHORIZED != 0) {
            self.memo.note(scope, addr, value.expires_ns);
        }
        Ok(value)
    }

    /// Writes the grant of `addr` for `scope` (≠ 0) with the `BPF_*` update `flags`; a full map
    /// refuses a new grant with `E2BIG`.
    pub fn grant_put(
        &self,
        scope: u32,
        addr: IpAddr,
        value: &HostValue,
        flags: u64,
    ) -> io::Result<()> {
        syscalls::update(
            syscalls::fd_of(&self.grants),
            &grant_key(scope, addr)?,
            value,
            flags,
        )?;
        // Noted under the caller's host-map lock, like the write (see `grant_get`).
        if value.flags & FLAG_AUTHORIZED != 0 {
            self.memo.note(scope, addr, value.expires_ns);
        }
        Ok(())
    }

    /// Removes the grant of `addr` for `scope` (with its name and the memo's note of it);
    /// whether there was one.
    pub fn grant_delete(&self, scope: u32, addr: IpAddr) -> io::Result<bool> {
        self.memo.forget(scope, addr);
        let key = grant_key(scope, addr)?;
        if let Some(names) = &self.grant_names {
            let _ = syscalls::delete(syscalls::fd_of(names), &key);
        }
        syscalls::delete(syscalls::fd_of(&self.grants), &key)
    }

    /// The name that authorized the grant of `addr` for `scope`, if recorded.
    pub fn grant_name(&self, scope: u32, addr: IpAddr) -> Option<String> {
        let key = grant_key(scope, addr).ok()?;
        let name: HostName = self.grant_names.as_ref()?.get(&key, 0).ok()?;
        Some(super::pins::unpadded(&name.name))
    }

    /// Every grant: scope, address, value.
    pub fn grants(&self) -> io::Result<Vec<(u32, IpAddr, HostValue)>> {
        Ok(syscalls::hash_entries(&self.grants)?
            .into_iter()
            .map(|(key, value)| (key.scope, key_addr(key.family, key.addr), value))
            .collect())
    }

    /// Tells the programs whether a configured pattern holds `**` (`CONFIG_DEEP_MATCHES`): a
    /// cgroup deeper than the walk and not listed itself is then out of reach of its policy.
    pub(super) fn set_deep_matches(&self, on: bool) -> Result<(), EbpfError> {
        self.set_config_word(CONFIG_DEEP_MATCHES, u32::from(on))
    }

    fn config_word(&self, index: u32) -> Result<u32, EbpfError> {
        syscalls::lookup::<u32, u32>(syscalls::fd_of(&self.config), &index)
            .map(Option::unwrap_or_default)
            .map_err(|e| map_error(MAP_CONFIG, format!("cannot read entry {index}"), e))
    }

    fn set_config_word(&self, index: u32, value: u32) -> Result<(), EbpfError> {
        syscalls::update(syscalls::fd_of(&self.config), &index, &value, BPF_ANY).map_err(|e| {
            map_error(
                MAP_CONFIG,
                format!("cannot set entry {index} (a CONFIG pinned by an older nettrust is too small: `nettrust flush` rebuilds it)"),
                e,
            )
        })
    }
}

/// Refuses scopes above [`MAX_SCOPE`] and networks of the default scope (0: its networks are the
/// global whitelist).
fn check_scopes(cgroups: &[CgroupScope], nets: &[(u32, IpNet)]) -> io::Result<()> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    if let Some(c) = cgroups.iter().find(|c| c.scope > MAX_SCOPE) {
        return Err(invalid(format!(
            "cgroup id {} has scope {} (at most {MAX_SCOPE})",
            c.cgroup_id, c.scope
        )));
    }
    if let Some((scope, net)) = nets.iter().find(|(s, _)| *s == 0 || *s > MAX_SCOPE) {
        return Err(invalid(format!(
            "network {net} has scope {scope} (policy networks need 1..={MAX_SCOPE})"
        )));
    }
    Ok(())
}

fn policy_ref(scope: u32, audit: bool) -> PolicyRef {
    PolicyRef {
        scope,
        flags: if audit { POLICY_AUDIT } else { 0 },
    }
}

/// The generation after `current`, never 0 (which means "no policies").
fn next_generation(current: u32) -> u32 {
    current.wrapping_add(1).max(1)
}

/// The listen ports as `CONFIG[CONFIG_LISTEN_PORTS]` holds them (low and high half).
fn listen_ports(listeners: &[(SocketAddr, u8)]) -> io::Result<u32> {
    let mut ports: Vec<u16> = listeners.iter().map(|(a, _)| a.port()).collect();
    ports.sort_unstable();
    ports.dedup();
    match ports[..] {
        [] => Ok(0),
        [a] => Ok(u32::from(a)),
        [a, b] => Ok(u32::from(a) | (u32::from(b) << 16)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("listeners on {} ports ({ports:?}); at most 2", ports.len()),
        )),
    }
}

/// An address as the maps hold it: 16 bytes (IPv4 in the first 4) and the family; an
/// IPv4-mapped IPv6 address as IPv4, as the packet carried it.
fn addr_bytes(addr: IpAddr) -> ([u8; 16], u8) {
    match addr.to_canonical() {
        IpAddr::V4(ip) => {
            let mut bytes = [0u8; 16];
            bytes[..4].copy_from_slice(&ip.octets());
            (bytes, 4)
        }
        IpAddr::V6(ip) => (ip.octets(), 6),
    }
}

fn key_addr(family: u8, addr: [u8; 16]) -> IpAddr {
    if family == 4 {
        IpAddr::from([addr[0], addr[1], addr[2], addr[3]])
    } else {
        IpAddr::from(addr)
    }
}

/// The `LISTENERS`/`CLIENTS` key of an endpoint (an unspecified address is all zero).
fn endpoint_key(addr: SocketAddr, proto: u8) -> ServiceKey {
    let (bytes, family) = addr_bytes(addr.ip());
    ServiceKey {
        addr: bytes,
        port: addr.port(),
        proto,
        family,
        _pad: 0,
    }
}

/// The `GRANTS` key of `addr` for `scope`; scope 0 is refused (its grants are the host maps').
pub(super) fn grant_key(scope: u32, addr: IpAddr) -> io::Result<GrantKey> {
    if scope == 0 || scope > MAX_SCOPE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("grant of {addr} for scope {scope}: GRANTS holds scopes 1..={MAX_SCOPE}"),
        ));
    }
    let (bytes, family) = addr_bytes(addr);
    Ok(GrantKey {
        scope,
        family,
        _pad: [0; 3],
        addr: bytes,
    })
}

/// The trie key of a policy network: the scope (big-endian) then the network's `N` address
/// bytes, prefix length [`SCOPE_PREFIX_BITS`] + the network's.
fn trie_key<const D: usize>(scope: u32, net: &IpNet) -> Key<[u8; D]> {
    let mut data = [0u8; D];
    data[..4].copy_from_slice(&scope.to_be_bytes());
    match net.trunc().addr() {
        IpAddr::V4(ip) => data[4..].copy_from_slice(&ip.octets()),
        IpAddr::V6(ip) => data[4..].copy_from_slice(&ip.octets()),
    }
    Key::new(SCOPE_PREFIX_BITS + u32::from(net.prefix_len()), data)
}

/// Makes the `D`-byte policy trie (8: IPv4, 20: IPv6) hold exactly the `nets` of its family.
fn sync_trie<const D: usize>(
    trie: &PolicyTrie<D>,
    nets: &[(u32, IpNet)],
    name: &'static str,
) -> Result<(), EbpfError>
where
    [u8; D]: aya::Pod,
{
    let v4 = D == 8;
    let wanted: Vec<(Key<[u8; D]>, u32, IpNet)> = nets
        .iter()
        .filter(|(_, net)| matches!(net, IpNet::V4(_)) == v4)
        .map(|&(scope, net)| (trie_key(scope, &net), scope, net))
        .collect();
    let fd = syscalls::fd_of(trie);
    for (key, scope, net) in &wanted {
        syscalls::update(fd, key, &1u32, BPF_ANY)
            .map_err(|e| map_error(name, format!("cannot allow {net} for scope {scope}"), e))?;
    }
    let present: Vec<Key<[u8; D]>> = trie.keys().filter_map(Result::ok).collect();
    for key in present {
        let stale = !wanted
            .iter()
            .any(|(w, _, _)| w.prefix_len() == key.prefix_len() && w.data() == key.data());
        if stale {
            syscalls::delete(fd, &key)
                .map_err(|e| map_error(name, "cannot remove a policy network", e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_keys_refuse_the_default_scope_and_fold_mapped_addresses() {
        assert!(grant_key(0, "192.0.2.1".parse().unwrap()).is_err());
        assert!(grant_key(MAX_SCOPE + 1, "192.0.2.1".parse().unwrap()).is_err());
        let v4 = grant_key(3, "192.0.2.1".parse().unwrap()).unwrap();
        let mapped = grant_key(3, "::ffff:192.0.2.1".parse().unwrap()).unwrap();
        assert_eq!(v4, mapped);
        assert_eq!((v4.scope, v4.family), (3, 4));
        assert_eq!(v4.addr[..4], [192, 0, 2, 1]);
        assert_eq!(
            key_addr(v4.family, v4.addr),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
        let v6 = grant_key(1, "2001:db8::1".parse().unwrap()).unwrap();
        assert_eq!(v6.family, 6);
        assert_eq!(
            key_addr(v6.family, v6.addr),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn listener_ports_pack_two_halves() {
        let l = |s: &str| (s.parse::<SocketAddr>().unwrap(), 17u8);
        assert_eq!(listen_ports(&[]).unwrap(), 0);
        assert_eq!(
            listen_ports(&[l("127.0.0.1:53"), l("[::1]:53")]).unwrap(),
            53
        );
        assert_eq!(
            listen_ports(&[l("127.0.0.1:53"), l("127.0.0.1:853")]).unwrap(),
            53 | (853 << 16)
        );
        let err = listen_ports(&[l("127.0.0.1:53"), l("127.0.0.1:54"), l("127.0.0.1:55")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("[53, 54, 55]"), "{err}");
    }

    #[test]
    fn wildcard_listeners_have_a_zero_address() {
        let key = endpoint_key("0.0.0.0:53".parse().unwrap(), 17);
        assert_eq!(
            (key.addr, key.port, key.proto, key.family),
            ([0; 16], 53, 17, 4)
        );
        let key = endpoint_key("[::]:53".parse().unwrap(), 6);
        assert_eq!((key.addr, key.family), ([0; 16], 6));
    }

    #[test]
    fn policy_networks_key_on_scope_then_address() {
        let key: Key<[u8; 8]> = trie_key(0x0102, &"192.0.2.77/24".parse().unwrap());
        assert_eq!(key.prefix_len(), 32 + 24);
        assert_eq!(key.data(), [0, 0, 1, 2, 192, 0, 2, 0]);
        let key: Key<[u8; 20]> = trie_key(1, &"2001:db8::/32".parse().unwrap());
        assert_eq!(key.prefix_len(), 32 + 32);
        assert_eq!(key.data()[..8], [0, 0, 0, 1, 0x20, 0x01, 0x0d, 0xb8]);
    }

    #[test]
    fn scopes_are_checked_before_anything_is_written() {
        let net: IpNet = "192.0.2.0/24".parse().unwrap();
        let ok = CgroupScope {
            cgroup_id: 1,
            scope: 1,
            audit: false,
        };
        assert!(check_scopes(&[ok], &[(1, net)]).is_ok());
        let err = check_scopes(&[ok], &[(0, net)]).unwrap_err().to_string();
        assert!(
            err.contains("192.0.2.0/24") && err.contains("scope 0"),
            "{err}"
        );
        let big = CgroupScope {
            scope: MAX_SCOPE + 1,
            ..ok
        };
        let err = check_scopes(&[big], &[]).unwrap_err().to_string();
        assert!(err.contains("cgroup id 1"), "{err}");
        assert_eq!(next_generation(0), 1);
        assert_eq!(next_generation(7), 8);
        assert_eq!(next_generation(u32::MAX), 1);
        assert_eq!(policy_ref(2, true).flags, POLICY_AUDIT);
    }
}
