//! What the daemon knows `GRANTS` holds: per policy grant it wrote or read, the deadline the
//! entry has. A DNS answer for a policy's client whose grant already reaches the new deadline
//! (within `RENEW_SLACK_NS`) is settled here without a `bpf(2)` call: the read before the write
//! was the second of the two system calls a policy query cost, against none for the default
//! scope's memory-mapped IPv4 table.
//!
//! Why it stays true: only the daemon writes `GRANTS` deadlines (the kernel stamps the last use
//! only; `nettrust flush` refuses to run beside the daemon); `ScopeMaps::grant_get` and
//! `grant_put` note what they read or wrote and every removal goes through
//! `ScopeMaps::grant_delete`, which forgets the entry, all under the backend's host-map lock
//! (reads and writes under the shared one, removals under the exclusive one), so a note never
//! outlives a removal that followed it. A remembered deadline is a value the entry
//! held at the daemon's last write or read; the sweeper only renews (moves it later) or removes
//! an expired one, and an expired memo entry never settles an answer. The memo is bounded: when
//! full it is emptied (the next answers read again).

use std::{collections::HashMap, net::IpAddr, sync::Mutex};

use super::authorizations::RENEW_SLACK_NS;

/// How many grants the memo holds before it starts over (about 40 bytes each).
const CAPACITY: usize = 131_072;

/// A remembered grant: scope and address (an IPv4-mapped address as IPv4, as `GRANTS` keys it).
type Key = (u32, IpAddr);

fn key(scope: u32, addr: IpAddr) -> Key {
    (scope, addr.to_canonical())
}

/// Deadlines of policy grants as the daemon last wrote or read them.
#[derive(Default)]
pub(super) struct GrantMemo {
    deadlines: Mutex<HashMap<Key, u64>>,
}

impl GrantMemo {
    /// Whether the remembered grant of `key` for `scope` is live at `now_ns` and reaches
    /// `expires_ns` within the slack (0 = never), so an answer needs no write.
    pub(super) fn settles(&self, scope: u32, addr: IpAddr, expires_ns: u64, now_ns: u64) -> bool {
        let Some(deadline) = self.lock().get(&key(scope, addr)).copied() else {
            return false;
        };
        match (deadline, expires_ns) {
            (0, new) => new == 0,
            (_, 0) => false,
            (old, new) => old > now_ns && old >= new.saturating_sub(RENEW_SLACK_NS),
        }
    }

    /// Remembers that the grant of `addr` for `scope` holds `deadline_ns`.
    pub(super) fn note(&self, scope: u32, addr: IpAddr, deadline_ns: u64) {
        let mut deadlines = self.lock();
        if deadlines.len() >= CAPACITY {
            deadlines.clear();
        }
        deadlines.insert(key(scope, addr), deadline_ns);
    }

    /// Forgets the grant of `addr` for `scope` (removed from the map).
    pub(super) fn forget(&self, scope: u32, addr: IpAddr) {
        self.lock().remove(&key(scope, addr));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, u64>> {
        self.deadlines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const KEY: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    #[test]
    fn settles_only_live_deadlines_that_reach_the_new_one() {
        let memo = GrantMemo::default();
        let now = 100 * S;
        assert!(
            !memo.settles(1, KEY, now + 60 * S, now),
            "nothing remembered"
        );
        memo.note(1, KEY, now + 60 * S);
        assert!(memo.settles(1, KEY, now + 60 * S, now));
        assert!(
            memo.settles(1, KEY, now + 60 * S + S / 2, now),
            "within the slack"
        );
        assert!(
            !memo.settles(1, KEY, now + 62 * S, now),
            "a later deadline is written"
        );
        assert!(!memo.settles(2, KEY, now + 60 * S, now), "another scope");
        assert!(!memo.settles(1, KEY, 0, now), "never expiring is written");
        assert!(!memo.settles(1, KEY, now + 30 * S, now + 61 * S), "expired");
        let mapped = IpAddr::V6(std::net::Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        assert!(memo.settles(1, mapped, now + 60 * S, now), "mapped is IPv4");
        memo.forget(1, mapped);
        assert!(!memo.settles(1, KEY, now + 60 * S, now), "forgotten");
        memo.note(1, KEY, 0);
        assert!(memo.settles(1, KEY, 0, now), "never stays never");
        assert!(
            !memo.settles(1, KEY, now + 60 * S, now),
            "never is not rewritten to a deadline"
        );
    }

    #[test]
    fn a_full_memo_starts_over() {
        let memo = GrantMemo::default();
        for i in 0..CAPACITY as u32 {
            memo.note(i + 1, KEY, 10 * S);
        }
        memo.note(0, KEY, 10 * S);
        assert_eq!(memo.lock().len(), 1);
    }
}
