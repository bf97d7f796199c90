//! Which policy a DNS client belongs to: its socket's cgroup (one `NETLINK_SOCK_DIAG` round trip,
//! see [`super::sockdiag`]) and the deepest listed ancestor-or-self of that cgroup.
//!
//! A listed cgroup's id is its directory's inode. For any other cgroup the listed cgroups'
//! subtrees are walked once, recording the scope of every cgroup found (a cgroup is in the scope
//! of the deepest listed directory above it), so later queries from the same cgroups cost one
//! hash lookup. A cgroup id not found by a walk done after its socket existed is below no listed
//! cgroup; it is remembered as such until the policies change (cgroups keep their place in the
//! tree and ids are never reused).

use std::{
    collections::HashMap,
    net::SocketAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use super::{policies::Policies, sockdiag::SockDiag};
use crate::firewall::{ClientScope, Scope, Transport};

/// Most cgroup ids remembered; beyond, the cache starts again (a host creating cgroups without
/// end must not grow it forever).
const CACHE_MAX: usize = 65_536;

/// The sock_diag socket, the listen addresses and the cgroup → scope cache.
#[derive(Debug, Default)]
pub(super) struct Clients {
    /// `None` when the socket could not be opened (then every client is unknown).
    diag: Option<SockDiag>,
    /// The DNS server's listen addresses with their IP protocol: the remote end of every client
    /// socket.
    listen: Vec<(SocketAddr, u8)>,
    /// Listed cgroups: directory, id, scope, audit mode; shallowest first (the walk's roots).
    listed: Vec<(PathBuf, u64, Scope, bool)>,
    /// Scope and mode of each cgroup id seen (`None`: below no listed cgroup).
    cache: HashMap<u64, Option<(Scope, bool)>>,
}

impl Clients {
    /// Opens the sock_diag socket in the caller's network namespace (the daemon's).
    pub(super) fn open() -> Self {
        let diag = SockDiag::open()
            .inspect_err(|e| {
                tracing::warn!("cannot open a sock_diag socket; [[policy]] clients unknown: {e}");
            })
            .ok();
        Self {
            diag,
            ..Self::default()
        }
    }

    pub(super) fn set_listen(&mut self, listeners: &[(SocketAddr, Transport)]) {
        self.listen = listeners
            .iter()
            .map(|&(addr, transport)| (addr, transport.proto()))
            .collect();
    }

    /// Takes the listed cgroups of `policies` and forgets what was cached.
    pub(super) fn set_policies(&mut self, policies: &Policies) {
        let mut listed: Vec<_> = policies
            .listed
            .iter()
            .map(|l| (l.path.clone(), l.m.id, l.scope, l.audit))
            .collect();
        listed.sort_by_key(|(path, ..)| path.components().count());
        self.listed = listed;
        self.cache.clear();
    }

    /// The policy of the socket that sent from `client` (protocol `proto`) to a listen address.
    pub(super) fn client_scope(&mut self, proto: u8, client: SocketAddr) -> Option<ClientScope> {
        if self.listed.is_empty() {
            return None;
        }
        let id = self.cgroup_id(proto, client)?;
        let (scope, audit) = self.scope_of(id)?;
        Some(ClientScope {
            cgroup_id: id,
            scope,
            audit,
        })
    }

    /// The cgroup id of the client's socket: tried against each listen address of its family.
    fn cgroup_id(&mut self, proto: u8, client: SocketAddr) -> Option<u64> {
        let client = SocketAddr::new(client.ip().to_canonical(), client.port());
        let diag = self.diag.as_mut()?;
        for (listen, _) in self.listen.iter().filter(|(_, p)| *p == proto) {
            let ip = listen.ip().to_canonical();
            let remote = if ip.is_unspecified() {
                // A local client reaching a wildcard listener sends from the address it sent to.
                SocketAddr::new(client.ip(), listen.port())
            } else if ip.is_ipv6() == client.is_ipv6() {
                SocketAddr::new(ip, listen.port())
            } else {
                continue;
            };
            match diag.cgroup_id(proto, client, remote) {
                Ok(Some(id)) => return Some(id),
                Ok(None) => {}
                Err(e) => tracing::debug!(%client, "sock_diag lookup failed: {e}"),
            }
        }
        None
    }

    /// The scope of cgroup `id`: cached, else found by walking the listed subtrees.
    fn scope_of(&mut self, id: u64) -> Option<(Scope, bool)> {
        if let Some(known) = self.cache.get(&id) {
            return *known;
        }
        if self.cache.len() >= CACHE_MAX {
            self.cache.clear();
        }
        let roots = self.listed.clone();
        let scopes: HashMap<u64, (Scope, bool)> = roots
            .iter()
            .map(|&(_, id, scope, audit)| (id, (scope, audit)))
            .collect();
        for (path, root_id, ..) in &roots {
            if !self.cache.contains_key(root_id) {
                walk(path, None, &scopes, &mut self.cache);
            }
        }
        *self.cache.entry(id).or_insert(None)
    }
}

/// Records the scope of `dir` and every cgroup below it: the scope of the deepest listed
/// directory on the way (`inherited` above `dir`).
fn walk(
    dir: &Path,
    inherited: Option<(Scope, bool)>,
    listed: &HashMap<u64, (Scope, bool)>,
    cache: &mut HashMap<u64, Option<(Scope, bool)>>,
) {
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    let scope = listed.get(&meta.ino()).copied().or(inherited);
    cache.insert(meta.ino(), scope);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&entry.path(), scope, listed, cache);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deepest_listed_directory_decides_and_misses_are_remembered() {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["p/a/n/x", "p/a/y", "p/c", "other"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let ino = |sub: &str| std::fs::metadata(dir.path().join(sub)).unwrap().ino();
        let listed = |sub: &str, scope: u32, audit: bool| {
            (dir.path().join(sub), ino(sub), Scope(scope), audit)
        };
        let mut clients = Clients {
            listed: vec![
                listed("p", 0, false),
                listed("p/a", 1, true),
                listed("p/a/n", 0, false),
            ],
            ..Clients::default()
        };
        assert_eq!(clients.scope_of(ino("p/a/y")), Some((Scope(1), true)));
        assert_eq!(clients.scope_of(ino("p/a/n/x")), Some((Scope(0), false)));
        assert_eq!(clients.scope_of(ino("p/c")), Some((Scope(0), false)));
        assert_eq!(clients.scope_of(ino("other")), None);
        assert_eq!(clients.cache.get(&ino("other")), Some(&None));
        // Cached: a directory removed since is still known.
        std::fs::remove_dir(dir.path().join("p/a/y")).unwrap();
        assert_eq!(clients.cache.len(), 7);
        assert_eq!(clients.scope_of(ino("p/a")), Some((Scope(1), true)));
    }
}
