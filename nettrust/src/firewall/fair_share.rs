//! Victims in a map shared by several scopes (the eBPF `GRANTS` map and the nftables policy
//! sets share one capacity between every `[[policy]]`): one policy whose workload resolves many
//! names, or a client flooding names its suffix pattern allows, must not take the room of the
//! others.
//!
//! Each scope holding entries (and the writer) gets a fair share of the capacity: capacity /
//! number of those scopes, so a lone policy may use the whole map and every newcomer lowers the
//! share. A write into a full map:
//! - by a scope at or above its share evicts its own entries only (a flooding policy churns
//!   through its own grants; when none of them is evictable its new addresses are refused);
//! - by a scope below its share evicts from the scopes above their share, furthest above first,
//!   each at most down to its share, then (when that is not enough) its own entries.
//!
//! Within a scope the victims come in [`crate::firewall::evict`]'s order, with its guards:
//! whitelisted entries and entries with recent traffic are never chosen. A map with one scope
//! (the default scope's host maps) behaves exactly as [`evict::victims`] alone.

use std::collections::BTreeMap;

use nettrust_common::HostValue;

use super::{Scope, evict};

/// The fair share of each of `scopes` scopes in `capacity` entries (at least 1).
pub fn share(capacity: usize, scopes: usize) -> usize {
    (capacity / scopes.max(1)).max(1)
}

/// The scopes a write of `writer` into a full map may take entries from, in the order to try
/// them, with at most how many from each; `counts` holds the entries each scope has in the map.
pub fn donors(
    counts: &BTreeMap<Scope, usize>,
    writer: Scope,
    capacity: usize,
) -> Vec<(Scope, usize)> {
    let scopes = counts.len() + usize::from(!counts.contains_key(&writer));
    let share = share(capacity, scopes);
    let own = counts.get(&writer).copied().unwrap_or(0);
    if own >= share {
        return vec![(writer, usize::MAX)];
    }
    let mut above: Vec<(Scope, usize)> = counts
        .iter()
        .filter(|&(&scope, &count)| scope != writer && count > share)
        .map(|(&scope, &count)| (scope, count - share))
        .collect();
    // Furthest above its share first; the lower scope number on a tie (a stable order).
    above.sort_by_key(|&(scope, excess)| (std::cmp::Reverse(excess), scope));
    above.push((writer, usize::MAX));
    above
}

/// A full map shared by scopes, as [`victims`] sees it.
pub struct Shared<'a, K, S, U> {
    /// Every entry, with the value the map holds.
    pub entries: &'a [(K, HostValue)],
    /// The map's capacity.
    pub capacity: usize,
    /// The scope of an entry.
    pub scope_of: S,
    /// Whether an entry's host has an open connection: in use now, whatever its last packet.
    pub in_use: U,
}

impl<K, S: Fn(&K) -> Scope, U: Fn(&K) -> bool> Shared<'_, K, S, U> {
    /// The entries each scope holds.
    fn counts(&self) -> BTreeMap<Scope, usize> {
        let mut counts = BTreeMap::new();
        // Counted by runs: a map of one scope (a host map) costs no tree operation per entry.
        let mut run: Option<(Scope, usize)> = None;
        for (k, _) in self.entries {
            let scope = (self.scope_of)(k);
            match &mut run {
                Some((s, n)) if *s == scope => *n += 1,
                _ => {
                    if let Some((s, n)) = run.replace((scope, 1)) {
                        *counts.entry(s).or_default() += n;
                    }
                }
            }
        }
        if let Some((s, n)) = run {
            *counts.entry(s).or_default() += n;
        }
        counts
    }
}

/// The indices in `map.entries` of the `count` entries to evict for a write of `writer` (fewer
/// when fewer are evictable), first to go first: [`donors`]' scopes in turn, each in the order
/// of [`evict::victims`]; `answered_at` tells when a DNS answer last named an entry.
pub fn victims<K, S: Fn(&K) -> Scope, U: Fn(&K) -> bool>(
    map: &Shared<'_, K, S, U>,
    writer: Scope,
    answered_at: impl Fn(&K) -> u64,
    now: u64,
    count: usize,
) -> Vec<usize> {
    let mut out = Vec::new();
    for (donor, most) in donors(&map.counts(), writer, map.capacity) {
        let wanted = count.saturating_sub(out.len()).min(most);
        if wanted == 0 {
            break;
        }
        let own = map
            .entries
            .iter()
            .enumerate()
            .filter(|(_, (k, _))| (map.scope_of)(k) == donor)
            .map(|(i, (k, v))| {
                let seen = if (map.in_use)(k) { now } else { v.last_seen_ns };
                let ranked = HostValue {
                    last_seen_ns: seen,
                    ..*v
                };
                (i, ranked)
            });
        out.extend(evict::victims(
            own,
            |&i| answered_at(&map.entries[i].0),
            now,
            wanted,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use nettrust_common::FLAG_AUTHORIZED;

    use super::*;

    const S: u64 = 1_000_000_000;
    const NOW: u64 = 1000 * S;

    /// Entry `id` of `scope`, last used at `seen` (0: never); [`pick`] answers it at `id` s.
    fn entry(scope: u32, id: u32, seen: u64) -> ((Scope, u32), HostValue) {
        let value = HostValue {
            expires_ns: 0,
            last_seen_ns: seen,
            flags: FLAG_AUTHORIZED,
            _pad: 0,
        };
        ((Scope(scope), id), value)
    }

    fn pick(
        entries: &[((Scope, u32), HostValue)],
        writer: u32,
        capacity: usize,
        count: usize,
    ) -> Vec<(Scope, u32)> {
        let map = Shared {
            entries,
            capacity,
            scope_of: |k: &(Scope, u32)| k.0,
            in_use: |k: &(Scope, u32)| k.1 >= 1000,
        };
        // Answered in the order of their ids (modulo 1000), long ago; ids from 1000 on have an
        // open connection.
        victims(
            &map,
            Scope(writer),
            |k| u64::from(k.1 % 1000) * S,
            NOW,
            count,
        )
        .into_iter()
        .map(|i| entries[i].0)
        .collect()
    }

    #[test]
    fn shares_split_the_capacity_between_the_scopes_present_and_the_writer() {
        assert_eq!(share(16, 1), 16);
        assert_eq!(share(16, 3), 5);
        assert_eq!(share(2, 5), 1, "never 0");
        let counts = BTreeMap::from([(Scope(1), 16)]);
        // Alone, a scope may fill the map and then evicts its own entries.
        assert_eq!(
            donors(&counts, Scope(1), 16),
            [(Scope(1), usize::MAX)],
            "a lone scope"
        );
        // A newcomer's share is half: it takes from the scope above its share, at most down
        // to that share, then from itself.
        assert_eq!(
            donors(&counts, Scope(2), 16),
            [(Scope(1), 8), (Scope(2), usize::MAX)]
        );
    }

    /// A scope at or above its share evicts its own entries, even when another scope holds
    /// older (more evictable) ones: a flooding policy cannot push the others out.
    #[test]
    fn a_scope_at_its_share_evicts_its_own_entries_first_to_last() {
        let mut entries: Vec<_> = (0..4).map(|i| entry(2, i, 0)).collect();
        entries.extend((10..22).map(|i| entry(1, i, 0)));
        // 16 entries, 2 scopes: share 8; scope 1 holds 12.
        assert_eq!(
            pick(&entries, 1, 16, 3),
            [(Scope(1), 10), (Scope(1), 11), (Scope(1), 12)]
        );
        // Scope 2 at 4 < 8 takes from scope 1 (its oldest), not from its own older entries.
        assert_eq!(pick(&entries, 2, 16, 2), [(Scope(1), 10), (Scope(1), 11)]);
        // A third scope (share 5): scope 1 is 7 above, scope 2 not above at all.
        assert_eq!(pick(&entries, 3, 16, 1), [(Scope(1), 10)]);
        // Three scopes, share 5: scope 1 (7, the newest entries) writes at its share and takes
        // its own, although scope 2 (6, older ones) is above its share too.
        let mut three: Vec<_> = (0..6).map(|i| entry(2, i, 0)).collect();
        three.extend((10..17).map(|i| entry(1, i, 0)));
        three.extend((20..23).map(|i| entry(3, i, 0)));
        assert_eq!(pick(&three, 1, 16, 1), [(Scope(1), 10)]);
    }

    /// A scope below its share takes from the scope furthest above first, each donor at most
    /// down to its share, then from the next one, then from itself.
    #[test]
    fn donors_give_at_most_down_to_their_share_furthest_above_first() {
        let mut entries: Vec<_> = (0..7).map(|i| entry(1, i, 0)).collect();
        entries.extend((20..29).map(|i| entry(2, i, 0)));
        entries.push(entry(3, 40, 0));
        // 17 entries in a capacity of 17, 3 scopes: share 5. Scope 2 is 4 above, scope 1 is 2.
        let got = pick(&entries, 3, 17, 10);
        let expected: Vec<(Scope, u32)> = (20..24)
            .map(|i| (Scope(2), i))
            .chain((0..2).map(|i| (Scope(1), i)))
            .chain([(Scope(3), 40)])
            .collect();
        assert_eq!(got, expected);
    }

    /// Entries with recent traffic are never victims: a scope at its share whose entries are
    /// all in use gets nothing (its new address is refused) rather than another scope's entry;
    /// a donor whose excess is all in use is passed over for the next.
    #[test]
    fn entries_in_use_are_never_chosen_and_a_busy_scope_does_not_spill_over() {
        let mut entries: Vec<_> = (0..8).map(|i| entry(1, i, NOW - S)).collect();
        entries.extend((20..28).map(|i| entry(2, i, 0)));
        entries.extend((30..32).map(|i| entry(3, i, 0)));
        // 18 in 18, share 6: scope 1 writes at its share, all its entries in use: nothing,
        // although scope 2 is above its share with idle ones.
        assert_eq!(pick(&entries, 1, 18, 2), Vec::<(Scope, u32)>::new());
        // Scope 3 (below): scopes 1 and 2 are both 2 above; scope 1's are all in use, so
        // scope 2 gives, at most its 2, then the writer's own.
        assert_eq!(
            pick(&entries, 3, 18, 3),
            [(Scope(2), 20), (Scope(2), 21), (Scope(3), 30)]
        );
    }

    /// With one scope (the default scope's host maps) the choice is `evict::victims`' own; a
    /// host with an open connection (1000, the oldest answer) never goes.
    #[test]
    fn one_scope_is_plain_least_recently_used() {
        let entries: Vec<_> = [3, 1, 1000, 2, 5, 4].map(|i| entry(0, i, 0)).into();
        assert_eq!(
            pick(&entries, 0, 6, 3),
            [(Scope(0), 1), (Scope(0), 2), (Scope(0), 3)]
        );
        // A map refusing before it holds `capacity` entries (the IPv4 table's probe window)
        // still evicts the writer's own.
        assert_eq!(pick(&entries, 0, 64, 1), [(Scope(0), 1)]);
    }
}
