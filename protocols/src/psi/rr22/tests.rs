//! Every run is checked against a plaintext intersection and, when both parties learn, against
//! the other party's output ([`crate::test_support::check`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::bucket::{bucket_of, bucketize, digest};
use super::*;
use crate::channel::{Metered, memory_pair};
use crate::test_support::{check, keys};

const DEADLINE: Duration = Duration::from_secs(300);

type Outcome = Result<PsiOutput, Rr22Error>;

fn config(role: Role, reveal: Reveal, bucket_size: usize) -> Rr22Config {
    Rr22Config { role, reveal, progress: None, bucket_size, max_peer_items: u64::MAX }
}

async fn party<C: Channel>(channel: C, items: &[Vec<u8>], config: Rr22Config) -> Outcome {
    let outcome = run(&channel, items, &config).await;
    drop(channel);
    outcome
}

async fn run_both(
    requester: &[Vec<u8>],
    responder: &[Vec<u8>],
    reveal: Reveal,
    bucket_size: usize,
) -> (Outcome, Outcome) {
    let (a, b) = memory_pair(8);
    let both = futures::future::join(
        party(a, requester, config(Role::Requester, reveal, bucket_size)),
        party(b, responder, config(Role::Responder, reveal, bucket_size)),
    );
    tokio::time::timeout(DEADLINE, both).await.expect("the protocol hung")
}

async fn check_run(requester: &[Vec<u8>], responder: &[Vec<u8>], reveal: Reveal, bucket_size: usize) {
    let outcome = run_both(requester, responder, reveal, bucket_size).await;
    check(requester, responder, reveal, outcome);
}

const BOTH: [Reveal; 2] = [Reveal::Both, Reveal::RequesterOnly];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_sets() {
    for reveal in BOTH {
        check_run(&[], &[], reveal, DEFAULT_BUCKET_SIZE).await;
        check_run(&[], &keys("k", 0..100), reveal, DEFAULT_BUCKET_SIZE).await;
        check_run(&keys("k", 0..100), &[], reveal, DEFAULT_BUCKET_SIZE).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_item() {
    for reveal in BOTH {
        check_run(&keys("k", 0..1), &keys("k", 0..1), reveal, DEFAULT_BUCKET_SIZE).await;
        check_run(&keys("k", 0..1), &keys("k", 1..2), reveal, DEFAULT_BUCKET_SIZE).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_to_the_10_overlapping_disjoint_identical() {
    for reveal in BOTH {
        check_run(&keys("k", 0..1024), &keys("k", 512..1536), reveal, DEFAULT_BUCKET_SIZE).await;
        check_run(&keys("k", 0..1024), &keys("j", 0..1024), reveal, DEFAULT_BUCKET_SIZE).await;
        check_run(&keys("k", 0..1024), &keys("k", 0..1024), reveal, DEFAULT_BUCKET_SIZE).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_to_the_16_and_unequal_sizes() {
    let big = keys("k", 0..1 << 16);
    check_run(&big, &keys("k", 30_000..100_000), Reveal::Both, DEFAULT_BUCKET_SIZE).await;
    check_run(&keys("k", 7..8), &big, Reveal::Both, DEFAULT_BUCKET_SIZE).await;
    check_run(&big, &keys("k", 65_535..65_536), Reveal::RequesterOnly, DEFAULT_BUCKET_SIZE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_to_the_16_vs_two_to_the_20() {
    let big = keys("k", 0..1 << 20);
    check_run(&keys("k", (1 << 20) - 1000..(1 << 20) + (1 << 16) - 1000), &big, Reveal::Both, DEFAULT_BUCKET_SIZE)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_buckets_with_padding() {
    // 20 000 vs 13 000 items in buckets of ~1000: 20 buckets, padded on both sides.
    for reveal in BOTH {
        check_run(&keys("k", 0..20_000), &keys("k", 7_000..20_000), reveal, 1000).await;
        check_run(&keys("k", 0..3_000), &keys("k", 1_000..50_000), reveal, 1000).await;
    }
    let layout = Layout::new(20_000, 13_000, 1000);
    assert_eq!(layout.buckets, 20);
    assert!(layout.cap_receiver > 1000 && layout.cap_receiver < 1400, "{layout:?}");
    assert!(layout.cap_sender > 650 && layout.cap_sender < 1000, "{layout:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_list_every_copy_adjacent() {
    let mut a = keys("k", 0..300);
    a.extend(keys("k", 100..150));
    let mut b = keys("k", 120..400);
    b.extend(keys("k", 140..160));
    check_run(&a, &b, Reveal::Both, DEFAULT_BUCKET_SIZE).await;
    check_run(&a, &b, Reveal::Both, 64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucketing_keeps_every_item_once_and_refuses_overflow() {
    let items = keys("k", 0..10_000);
    let layout = Layout::new(10_000, 10_000, 1000);
    let buckets = bucketize(&items, [9; 32], &layout, Role::Requester).await.unwrap();
    let mut seen: Vec<u32> = (0..layout.buckets).flat_map(|b| buckets.bucket(b).1.to_vec()).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..10_000).collect::<Vec<u32>>());
    for b in 0..layout.buckets {
        let (digests, indices) = buckets.bucket(b);
        for (&d, &i) in digests.iter().zip(indices) {
            assert_eq!(bucket_of(d, layout.buckets), b);
            assert_eq!(d, digest(&[9; 32], &items[i as usize]));
        }
    }
    let tight = Layout { cap_receiver: 900, ..layout };
    let err = bucketize(&items, [9; 32], &tight, Role::Requester).await.err().expect("overflow");
    assert!(matches!(err, Rr22Error::BucketOverflow { capacity: 900, .. }), "{err}");
}

#[test]
fn bucket_capacity_bounds_overflow() {
    // Bernstein: mean + about sqrt(2 mean L); L = ln(B) + 40 ln 2.
    let cap = bucket_capacity(100_000_000, 96);
    let mean = 100_000_000.0f64 / 96.0;
    assert!((cap as f64) > mean + 6.0 * mean.sqrt() && (cap as f64) < mean * 1.01, "{cap}");
    assert_eq!(bucket_capacity(10, 1), 10);
    // Value width grows with the comparisons: 40 + log2(B·cap_R·cap_S) bits.
    assert_eq!(Layout::new(1 << 20, 1 << 20, 1 << 20).value_bytes, 10);
    assert_eq!(Layout::new(1, 1, 1 << 20).value_bytes, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn communication_is_about_30_bytes_per_item() {
    let n = 1 << 16;
    let (a, b) = memory_pair(8);
    let (a, b) = (Metered::new(a), Metered::new(b));
    let (ka, kb) = (keys("k", 0..n), keys("k", n / 2..n + n / 2));
    let (ra, rb) = futures::future::join(
        run(&a, &ka, &config(Role::Requester, Reveal::Both, DEFAULT_BUCKET_SIZE)),
        run(&b, &kb, &config(Role::Responder, Reveal::Both, DEFAULT_BUCKET_SIZE)),
    )
    .await;
    ra.unwrap();
    rb.unwrap();
    let s = a.stats();
    let total = (s.bytes_sent + s.bytes_received) as f64 / n as f64;
    // OKVS 1.1·16 = 17.7, values 9, positions 2, VOLE 21: the VOLE's base correlations cost a
    // fixed ~1.4 MB per bucket, 21 bytes per item here but about 1.3 at 2^20 items per bucket.
    assert!(total > 45.0 && total < 55.0, "{total} bytes per item");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_reaches_every_item() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let progress: ProgressFn = Arc::new(move |p: crate::psi::PsiProgress| sink.lock().unwrap().push(p));
    let (a, b) = memory_pair(8);
    let mut ca = config(Role::Requester, Reveal::Both, 1000);
    ca.progress = Some(progress);
    let (ra, rb) = futures::future::join(
        run(&a, &keys("k", 0..5000), &ca),
        run(&b, &keys("k", 0..10), &config(Role::Responder, Reveal::Both, 1000)),
    )
    .await;
    ra.unwrap();
    rb.unwrap();
    let seen = seen.lock().unwrap();
    let last = seen.iter().rev().find(|p| p.stage == "intersect buckets").unwrap();
    assert_eq!((last.done, last.total), (5000, 5000));
}

fn protocol_error(outcome: Outcome, needle: &str) {
    match outcome {
        Err(Rr22Error::Protocol(m)) => assert!(m.contains(needle), "'{m}' does not mention '{needle}'"),
        other => panic!("expected a protocol error about '{needle}', got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatched_configs_fail_on_both_sides() {
    let items = keys("k", 0..10);
    let (a, b) = memory_pair(8);
    let (ra, rb) = futures::future::join(
        party(a, &items, config(Role::Requester, Reveal::Both, 1000)),
        party(b, &items, config(Role::Requester, Reveal::Both, 1000)),
    )
    .await;
    protocol_error(ra, "role");
    protocol_error(rb, "role");
    let (a, b) = memory_pair(8);
    let (ra, rb) = futures::future::join(
        party(a, &items, config(Role::Requester, Reveal::Both, 1000)),
        party(b, &items, config(Role::Responder, Reveal::RequesterOnly, 1000)),
    )
    .await;
    protocol_error(ra, "reveal");
    protocol_error(rb, "reveal");
    let (a, b) = memory_pair(8);
    let (ra, rb) = futures::future::join(
        party(a, &items, config(Role::Requester, Reveal::Both, 1000)),
        party(b, &items, config(Role::Responder, Reveal::Both, 999)),
    )
    .await;
    protocol_error(ra, "bucket");
    protocol_error(rb, "bucket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_hello_is_rejected() {
    let (a, b) = memory_pair(8);
    let items = keys("k", 0..10);
    let fake = async move {
        let _ = b.send(Bytes::from_static(b"\x01consort/ecdh-psi\x00\x01")).await;
        let _ = b.recv().await;
    };
    let (outcome, _) = futures::future::join(party(a, &items, config(Role::Requester, Reveal::Both, 1000)), fake).await;
    protocol_error(outcome, "RR22");
}

/// Runs an honest pair through a relay that forwards everything from the victim's peer until
/// `budget` frames have passed, then drops both channel ends. Returns the victim's outcome and
/// how many frames the peer sent in all.
async fn relayed(victim: Role, budget: u64) -> (Outcome, u64) {
    let a_items = keys("k", 0..3000);
    let b_items = keys("k", 1000..4000);
    let (honest, relay_near) = memory_pair(8);
    let (relay_far, peer) = memory_pair(8);
    let forwarded = Arc::new(AtomicU64::new(0));
    let count = forwarded.clone();
    let relay = async move {
        loop {
            tokio::select! {
                f = relay_near.recv() => match f {
                    Ok(f) => if relay_far.send(f).await.is_err() { break },
                    Err(_) => break,
                },
                f = relay_far.recv() => match f {
                    Ok(f) => {
                        if count.load(Ordering::SeqCst) == budget { break }
                        count.fetch_add(1, Ordering::SeqCst);
                        if relay_near.send(f).await.is_err() { break }
                    }
                    Err(_) => break,
                },
            }
        }
    };
    let other = if victim == Role::Requester { Role::Responder } else { Role::Requester };
    let (h_items, p_items) = if victim == Role::Requester { (&a_items, &b_items) } else { (&b_items, &a_items) };
    let all = futures::future::join3(
        party(honest, h_items, config(victim, Reveal::Both, 1000)),
        party(peer, p_items, config(other, Reveal::Both, 1000)),
        relay,
    );
    let (outcome, _, _) = tokio::time::timeout(DEADLINE, all).await.expect("hung");
    (outcome, forwarded.load(Ordering::SeqCst))
}

/// A peer that goes away at any point of the protocol (after its first frame, in the middle,
/// before its very last frame) makes the honest side fail with a channel error: no hang, no
/// result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_aborting_mid_protocol_fails_cleanly() {
    for victim in [Role::Requester, Role::Responder] {
        let (honest, total) = relayed(victim, u64::MAX).await;
        assert!(honest.is_ok(), "the relay itself breaks the run: {honest:?}");
        assert!(total >= 6, "{total} frames");
        for budget in [1, total / 2, total - 1] {
            let (outcome, _) = relayed(victim, budget).await;
            assert!(
                matches!(outcome, Err(Rr22Error::Channel(ChannelError::Closed))),
                "{victim:?} after {budget} of {total} peer frames: {:?}",
                outcome.map(|o| o.intersection.map(|i| i.len()))
            );
        }
    }
}

#[test]
fn run_is_send() {
    fn assert_send<T: Send>(_: T) {}
    let (a, _b) = memory_pair(1);
    let items = keys("k", 0..1);
    let config = config(Role::Requester, Reveal::Both, 1000);
    assert_send(run(&a, &items, &config));
}
