use super::*;

/// Hashes spread over the whole range (a multiplicative sequence), and the edges.
fn spread(n: u64) -> Vec<u64> {
    let mut hashes: Vec<u64> = (1..=n)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect();
    hashes.extend([0, 1, u64::MAX, u64::MAX - 1, 1 << 63, (1 << 63) - 1]);
    hashes
}

fn sealed(hashes: &[u64]) -> NameSet {
    let mut set = NameSet::default();
    for &hash in hashes {
        set.push(hash);
    }
    set.seal();
    set
}

#[test]
fn an_empty_set_holds_nothing() {
    for set in [NameSet::default(), sealed(&[])] {
        assert!(set.is_empty());
        assert!(!set.contains(0) && !set.contains(u64::MAX) && !set.contains(42));
    }
}

#[test]
fn every_hash_is_found_and_its_neighbours_are_not() {
    for n in [1, 7, 8, 9, 100, 4096, 100_000] {
        let hashes = spread(n);
        let set = sealed(&hashes);
        assert_eq!(set.len(), hashes.len(), "{n}");
        let reference: std::collections::HashSet<u64> = hashes.iter().copied().collect();
        for &hash in &hashes {
            assert!(set.contains(hash), "{hash:#x} of {n}");
            for near in [hash.wrapping_add(1), hash.wrapping_sub(1)] {
                assert_eq!(
                    set.contains(near),
                    reference.contains(&near),
                    "{near:#x} of {n}"
                );
            }
        }
    }
}

#[test]
fn buckets_hold_a_handful_and_the_index_a_byte_per_name() {
    let set = sealed(&spread(1_000_000));
    let buckets = set.index.len() - 1;
    assert!(
        (set.len() / 8..=set.len() / 4).contains(&buckets),
        "{buckets}"
    );
    let largest = set.index.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(largest <= 64, "a bucket of {largest}");
    // 8 bytes per hash, at most 1 for the index.
    assert!(set.memory() <= set.len() * 9, "{} bytes", set.memory());
}

#[test]
fn duplicates_are_held_once_however_they_come() {
    let mut set = sealed(&[5, 3, 5, 9, 3, 3]);
    assert_eq!(set.len(), 3);
    assert!(!set.insert(5));
    assert!(set.insert(7));
    assert!(!set.insert(7));
    set.push(7);
    set.push(9);
    set.push(11);
    set.seal();
    assert_eq!(set.len(), 5);
    assert_eq!(set, sealed(&[3, 5, 7, 9, 11]));
}

#[test]
fn one_at_a_time_and_in_bulk_give_the_same_set() {
    let hashes = spread(10_000);
    let mut one = NameSet::default();
    for (i, &hash) in hashes.iter().enumerate() {
        assert!(one.insert(hash));
        // Found at once, before and after the merge of the recent ones.
        assert!(one.contains(hash) && one.contains(hashes[i / 2]));
    }
    assert_eq!(one.len(), hashes.len());
    assert_eq!(one, sealed(&hashes));
    assert_eq!(sealed(&hashes), one);
    assert!(one.hashes.is_sorted());
    assert_ne!(one, sealed(&hashes[1..]));
}

#[test]
fn a_roll_back_forgets_what_was_pushed_since_the_mark() {
    let mut set = sealed(&[10, 20, 30]);
    assert!(set.insert(40));
    let mark = set.mark();
    set.push(50);
    set.push(60);
    set.roll_back(mark);
    assert_eq!(set, sealed(&[10, 20, 30, 40]));
    assert!(set.contains(40) && !set.contains(50) && !set.contains(60));
}
