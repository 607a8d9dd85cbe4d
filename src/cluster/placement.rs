//! Placement: which node owns a key, by rendezvous (highest random weight) hashing.
//!
//! # What this module owns
//!
//! [`owner`] and `ranked`: pure functions from an opaque key and a member list to the owning member. Every node
//! computes them on its own, so the hash is part of the cluster's contract: it is fixed here (FNV-1a 64 over the
//! bytes, then MurmurHash3's `fmix64` finalizer), never `std`'s randomly keyed or unspecified hashers, and must not
//! change between versions that may run in one cluster. A golden-value test pins it.
//!
//! # Semantics
//!
//! * The weight of a member for a key depends on the key and the member's **name only**, not its generation: a
//!   restarted node gets back exactly the keys it owned, and while two generations of one name are listed the
//!   newer one wins.
//! * When a member leaves, only the keys it owned move (each to its second choice); when one joins, only the keys
//!   it now wins move to it. The other keys keep their owner.
//! * Keys spread evenly: each of `n` members owns about `1/n` of them.
//!
//! # What it may call
//!
//! Nothing but [`NodeId`]. It keeps no state; the caller decides which members are eligible
//! (for example, live and serving).

use super::membership::NodeId;

/// The member of `members` that owns `key`, or `None` if `members` is empty.
///
/// The result does not depend on the order of `members`.
pub fn owner<'a>(key: &[u8], members: &'a [NodeId]) -> Option<&'a NodeId> {
    let key_hash = hash_bytes(key);
    members
        .iter()
        .max_by(|a, b| rank_key(key_hash, a).cmp(&rank_key(key_hash, b)))
}

/// `members` from the owner of `key` down to its last choice: the owner first, then the member that would own the key
/// if the owner left, and so on.
pub fn ranked<'a>(key: &[u8], members: &'a [NodeId]) -> Vec<&'a NodeId> {
    let key_hash = hash_bytes(key);
    let mut ranked: Vec<&NodeId> = members.iter().collect();
    ranked.sort_by(|a, b| rank_key(key_hash, b).cmp(&rank_key(key_hash, a)));
    ranked
}

/// The weight of the member named `node_name` for `key`: the member with the highest weight owns the key.
#[cfg(any(test, feature = "internals"))]
pub fn weight(key: &[u8], node_name: &str) -> u64 {
    combine(hash_bytes(key), node_name)
}

/// What members are compared by: the weight, then the id (so ties, including two generations of one name, are
/// broken the same way everywhere, in favour of the newer generation).
fn rank_key(key_hash: u64, member: &NodeId) -> (u64, &NodeId) {
    (combine(key_hash, &member.name), member)
}

fn combine(key_hash: u64, node_name: &str) -> u64 {
    fmix64(key_hash ^ hash_bytes(node_name.as_bytes()))
}

fn hash_bytes(bytes: &[u8]) -> u64 {
    fmix64(fnv1a64(bytes))
}

/// FNV-1a, 64 bits.
fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET_BASIS, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(PRIME))
}

/// MurmurHash3's 64-bit finalizer: a bijection in which every input bit affects every output bit.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn nodes(names: &[&str]) -> Vec<NodeId> {
        names.iter().map(|name| NodeId::new(*name, 1)).collect()
    }

    fn keys(count: usize) -> impl Iterator<Item = Vec<u8>> {
        (0..count).map(|i| format!("chat/group-{i}").into_bytes())
    }

    #[test]
    fn hash_is_pinned() {
        // Known FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        // The full weight: changing it changes placement across a mixed-version cluster.
        assert_eq!(weight(b"chat/lobby", "node-1"), PINNED_WEIGHT);
    }

    const PINNED_WEIGHT: u64 = 13_566_419_285_987_228_172;

    #[test]
    fn empty_members_have_no_owner() {
        assert_eq!(owner(b"k", &[]), None);
        assert!(ranked(b"k", &[]).is_empty());
    }

    #[test]
    fn deterministic_and_order_independent() {
        let members = nodes(&["node-1", "node-2", "node-3"]);
        let mut reversed = members.clone();
        reversed.reverse();
        for key in keys(1000) {
            let first = owner(&key, &members).unwrap();
            assert_eq!(owner(&key, &members), Some(first));
            assert_eq!(owner(&key, &reversed), Some(first));
            assert_eq!(ranked(&key, &members)[0], first);
            assert_eq!(ranked(&key, &members), ranked(&key, &reversed));
        }
    }

    #[test]
    fn balanced_over_10k_keys() {
        let members = nodes(&["node-1", "node-2", "node-3"]);
        let mut counts: HashMap<&NodeId, usize> = HashMap::new();
        for key in keys(10_000) {
            *counts.entry(owner(&key, &members).unwrap()).or_default() += 1;
        }
        println!("10k keys over 3 nodes: {counts:?}");
        assert_eq!(counts.len(), 3);
        for (node, count) in counts {
            // 3333 expected; ±8% is over 8 standard deviations.
            assert!((3066..=3600).contains(&count), "{node} owns {count} keys");
        }
    }

    #[test]
    fn only_the_leavers_keys_move() {
        let members = nodes(&["node-1", "node-2", "node-3"]);
        let survivors = nodes(&["node-1", "node-3"]);
        let mut moved = 0;
        for key in keys(10_000) {
            let before = owner(&key, &members).unwrap();
            let after = owner(&key, &survivors).unwrap();
            if &*before.name == "node-2" {
                moved += 1;
                assert_eq!(
                    ranked(&key, &members)[1],
                    after,
                    "a key moved to a member other than its second choice"
                );
            } else {
                assert_eq!(before, after, "a key not owned by the leaver moved");
            }
        }
        assert!(moved > 3000, "node-2 owned only {moved} keys");
    }

    #[test]
    fn only_keys_won_by_a_joiner_move() {
        let before_members = nodes(&["node-1", "node-2"]);
        let after_members = nodes(&["node-1", "node-2", "node-3"]);
        for key in keys(5_000) {
            let before = owner(&key, &before_members).unwrap();
            let after = owner(&key, &after_members).unwrap();
            assert!(before == after || &*after.name == "node-3");
        }
    }

    #[test]
    fn restarted_node_gets_its_keys_back_and_newest_generation_wins() {
        let members = nodes(&["node-1", "node-2", "node-3"]);
        let mut restarted = members.clone();
        restarted[1] = NodeId::new("node-2", 2);
        let both = [members.clone(), vec![NodeId::new("node-2", 2)]].concat();
        for key in keys(2_000) {
            let before = owner(&key, &members).unwrap();
            let after = owner(&key, &restarted).unwrap();
            assert_eq!(before.name, after.name);
            if &*before.name == "node-2" {
                assert_eq!(owner(&key, &both), Some(&NodeId::new("node-2", 2)));
            }
        }
    }
}
