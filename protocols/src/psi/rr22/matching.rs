//! Step 5 of RR22 Fig. 4: R looks up S's values among its own, in a partitioned hash join.

use rayon::prelude::*;

/// (F value, index or position) pairs.
type Matches = Vec<(u128, u32)>;

/// Matches R's F values of a bucket against S's: returns (value, own index) of every own item
/// whose value S sent, and (value, `base` + position) of every S position whose value R has.
///
/// A partitioned hash join: both lists are split by the values' low bits into partitions of a
/// few thousand (F values are pseudorandom), so each partition's table stays in cache, and the
/// partitions run in parallel. Equal values (duplicate items) all match.
pub(super) fn join_values(own: &[u128], own_index: &[u32], peer: &[u128], base: u32) -> (Matches, Matches) {
    let parts = (own.len() / 2048).next_power_of_two().clamp(1, 1 << 12);
    let bits = parts.trailing_zeros();
    let split = |values: &[u128], id: &dyn Fn(usize) -> u32| -> (Vec<(u128, u32)>, Vec<usize>) {
        let mut counts = vec![0usize; parts + 1];
        for &v in values {
            counts[(v as usize & (parts - 1)) + 1] += 1;
        }
        for p in 0..parts {
            counts[p + 1] += counts[p];
        }
        let mut next = counts.clone();
        let mut out = vec![(0u128, 0u32); values.len()];
        for (k, &v) in values.iter().enumerate() {
            let p = v as usize & (parts - 1);
            out[next[p]] = (v, id(k));
            next[p] += 1;
        }
        (out, counts)
    };
    let (own_parts, own_at) = split(own, &|k| own_index[k]);
    let (peer_parts, peer_at) = split(peer, &|k| base + k as u32);
    (0..parts)
        .into_par_iter()
        .map(|p| {
            let own = &own_parts[own_at[p]..own_at[p + 1]];
            let peer = &peer_parts[peer_at[p]..peer_at[p + 1]];
            let size = (2 * own.len()).next_power_of_two().max(8);
            let mask = size - 1;
            let mut slots = vec![u32::MAX; size];
            for (e, &(v, _)) in own.iter().enumerate() {
                let mut s = (v >> bits) as usize & mask;
                while slots[s] != u32::MAX {
                    s = (s + 1) & mask;
                }
                slots[s] = e as u32;
            }
            let mut matched = vec![false; own.len()];
            let mut peer_matches = Vec::new();
            for &(v, position) in peer {
                let mut s = (v >> bits) as usize & mask;
                let mut found = false;
                while slots[s] != u32::MAX {
                    let e = slots[s] as usize;
                    if own[e].0 == v {
                        matched[e] = true;
                        found = true;
                    }
                    s = (s + 1) & mask;
                }
                if found {
                    peer_matches.push((v, position));
                }
            }
            let own_matches: Vec<(u128, u32)> =
                own.iter().zip(&matched).filter(|&(_, &m)| m).map(|(&entry, _)| entry).collect();
            (own_matches, peer_matches)
        })
        .reduce(
            || (Vec::new(), Vec::new()),
            |mut a, b| {
                a.0.extend(b.0);
                a.1.extend(b.1);
                a
            },
        )
}
