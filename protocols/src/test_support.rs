//! Checks shared by the PSI protocols' tests: every run is compared with a plaintext intersection
//! (a `HashSet`), and, when both parties learn, with the other party's output: both must list the
//! same items in the same order.

use std::collections::HashSet;
use std::fmt::Debug;

use crate::psi::{PsiOutput, Reveal};

/// Items `prefix0`, `prefix1`, … for the indices in `range`.
pub(crate) fn keys(prefix: &str, range: std::ops::Range<usize>) -> Vec<Vec<u8>> {
    range.map(|i| format!("{prefix}{i}").into_bytes()).collect()
}

/// Indices of `own` whose item is in `peer`: the plaintext answer.
pub(crate) fn plaintext(own: &[Vec<u8>], peer: &[Vec<u8>]) -> Vec<u32> {
    let peer: HashSet<&[u8]> = peer.iter().map(Vec::as_slice).collect();
    (0..own.len()).filter(|&i| peer.contains(own[i].as_slice())).map(|i| i as u32).collect()
}

/// The distinct items listed by `indices`, in order, after checking that copies are adjacent.
pub(crate) fn listed<'a>(items: &'a [Vec<u8>], indices: &[u32]) -> Vec<&'a [u8]> {
    let mut runs: Vec<&[u8]> = indices.iter().map(|&i| items[i as usize].as_slice()).collect();
    runs.dedup();
    let distinct: HashSet<&[u8]> = runs.iter().copied().collect();
    assert_eq!(distinct.len(), runs.len(), "copies of an item are not adjacent");
    runs
}

/// Checks one learning party's output against the plaintext intersection; returns its indices.
pub(crate) fn check_own(own: &[Vec<u8>], peer: &[Vec<u8>], output: &PsiOutput) -> Vec<u32> {
    assert_eq!(output.peer_size, peer.len() as u64);
    let indices = output.intersection.clone().expect("this party learns the intersection");
    let mut sorted = indices.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, plaintext(own, peer), "wrong intersection");
    indices
}

/// Checks both parties' outcomes of one run: right intersections, the same joint order when both
/// learn, nothing for a responder that does not learn.
pub(crate) fn check<E: Debug>(
    requester: &[Vec<u8>],
    responder: &[Vec<u8>],
    reveal: Reveal,
    outcome: (Result<PsiOutput, E>, Result<PsiOutput, E>),
) {
    let (a, b) = (outcome.0.expect("requester failed"), outcome.1.expect("responder failed"));
    let a_indices = check_own(requester, responder, &a);
    let a_items = listed(requester, &a_indices);
    match reveal {
        Reveal::Both => {
            let b_indices = check_own(responder, requester, &b);
            assert_eq!(a_items, listed(responder, &b_indices), "the parties' orders differ");
        }
        Reveal::RequesterOnly => {
            assert_eq!(b.peer_size, requester.len() as u64);
            assert_eq!(b.intersection, None);
        }
    }
}
