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
    Rr22Config { bucket_size, ..Rr22Config::new(role, reveal) }
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

/// An honest responder behind a relay that rewrites the requester's positions frames (those that
/// carry positions) with `tamper`; returns the responder's outcome.
async fn positions_tampered(tamper: fn(Vec<u8>) -> Vec<u8>) -> Outcome {
    let requester = keys("k", 0..300);
    let responder = keys("k", 100..400);
    let (honest, relay_near) = memory_pair(8);
    let (relay_far, peer) = memory_pair(8);
    let relay = async move {
        loop {
            tokio::select! {
                f = relay_near.recv() => match f {
                    Ok(f) => if relay_far.send(f).await.is_err() { break },
                    Err(_) => break,
                },
                f = relay_far.recv() => match f {
                    Ok(f) => {
                        let f = if f.first() == Some(&POSITIONS) && f.len() > 5 { Bytes::from(tamper(f.to_vec())) } else { f };
                        if relay_near.send(f).await.is_err() { break }
                    }
                    Err(_) => break,
                },
            }
        }
    };
    let all = futures::future::join3(
        party(honest, &responder, config(Role::Responder, Reveal::Both, 64)),
        party(peer, &requester, config(Role::Requester, Reveal::Both, 64)),
        relay,
    );
    let (outcome, _, _) = tokio::time::timeout(DEADLINE, all).await.expect("hung");
    outcome
}

/// The responder hands its matches over bucket by bucket as the positions arrive: positions out
/// of bucket order, outside the buckets, or a frame cut short are protocol errors, not panics
/// (an honest requester sends them in the joint order, bucket after bucket).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_matched_positions_are_errors_not_panics() {
    let honest = positions_tampered(|f| f).await;
    assert_eq!(honest.unwrap().intersection.unwrap().len(), 200);
    let reversed = |mut f: Vec<u8>| {
        let mut positions: Vec<[u8; 4]> = f[5..].chunks_exact(4).map(|c| c.try_into().unwrap()).collect();
        positions.reverse();
        f.truncate(5);
        f.extend(positions.concat());
        f
    };
    protocol_error(positions_tampered(reversed).await, "out of bucket order");
    let outside = |mut f: Vec<u8>| {
        f[5..9].copy_from_slice(&(u32::MAX - 1).to_be_bytes());
        f
    };
    protocol_error(positions_tampered(outside).await, "outside");
    let cut = |mut f: Vec<u8>| {
        f.pop();
        f
    };
    protocol_error(positions_tampered(cut).await, "bad positions frame");
}

/// A requester that claims every stream position of its buckets as a match (a malicious one, or
/// a false positive on a dummy) gets the responder to hand over real items only: a position whose
/// kept order entry is a dummy is skipped, whatever the sink (the engine's spill sink keeps only
/// each order's dummy bits and answers `take_order` in this same form).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claimed_dummy_positions_are_skipped() {
    let layout = Layout::new(40, 40, 8);
    let cap = layout.cap_sender;
    let mut sink = CollectMatches::default();
    let mut expected = Vec::new();
    // Buckets 0 and 1: an even position holds a real id, an odd one a dummy.
    for b in 0..2 {
        let order = (0..cap).map(|p| if p % 2 == 0 { (b * cap + p) as u32 } else { DUMMY }).collect::<Vec<_>>();
        expected.extend(order.iter().copied().filter(|&id| id != DUMMY));
        sink.keep_order(b, order).unwrap();
    }
    let claimed = (0..2 * cap as u32).collect::<Vec<_>>();
    let (requester, responder) = memory_pair(8);
    let (sent, received) =
        futures::join!(send_positions(&requester, &claimed), recv_positions(&responder, &mut sink, &layout, 0..2));
    sent.unwrap();
    received.unwrap();
    assert!(expected.len() < claimed.len() && !expected.is_empty());
    assert_eq!(sink.matched, expected);
}

#[test]
fn run_is_send() {
    fn assert_send<T: Send>(_: T) {}
    let (a, _b) = memory_pair(1);
    let items = keys("k", 0..1);
    let config = config(Role::Requester, Reveal::Both, 1000);
    assert_send(run(&a, &items, &config));
}

// ------------------------------------------------------------------------------------------------
// Labeled PSI (payloads), against a plaintext join
// ------------------------------------------------------------------------------------------------

mod payloads {
    use std::collections::HashMap;

    use super::*;
    use crate::psi::payload::{PayloadMode, Payloads};
    use crate::test_support::plaintext;

    /// A payload for responder item `i` with commas, quotes, newlines, empty values and non-ASCII,
    /// of varying length (including empty).
    fn payload_of(i: usize) -> Vec<u8> {
        match i % 5 {
            0 => Vec::new(),
            1 => format!("risk,{i}").into_bytes(),
            2 => format!("\"q\"\n{i}").into_bytes(),
            3 => format!("Zürich-東京-{i}").into_bytes(),
            _ => vec![b'x'; i % 37],
        }
    }

    fn payloads_for(items: &[Vec<u8>]) -> Payloads {
        let mut p = Payloads::new();
        for i in 0..items.len() {
            p.push(&payload_of(i));
        }
        p
    }

    async fn run_payload(
        requester: &[Vec<u8>],
        responder: &[Vec<u8>],
        payloads: Payloads,
        reveal: Reveal,
        bucket_size: usize,
    ) -> (Outcome, Outcome) {
        let (a, b) = memory_pair(8);
        let receive = Rr22Config {
            payload: PayloadMode::Receive { max_bytes: 1 << 10 },
            ..config(Role::Requester, reveal, bucket_size)
        };
        let send = Rr22Config {
            payload: PayloadMode::Send(Arc::new(payloads)),
            ..config(Role::Responder, reveal, bucket_size)
        };
        let both = futures::future::join(party(a, requester, receive), party(b, responder, send));
        tokio::time::timeout(DEADLINE, both).await.expect("the protocol hung")
    }

    /// The requester's rows with the responder's payload of the same item, against a plaintext
    /// hash join; with `Reveal::Both` the responder's rows too.
    async fn check_payload_run(requester: &[Vec<u8>], responder: &[Vec<u8>], reveal: Reveal, bucket_size: usize) {
        let (ra, rb) = run_payload(requester, responder, payloads_for(responder), reveal, bucket_size).await;
        let (ra, rb) = (ra.expect("requester"), rb.expect("responder"));
        let own = ra.intersection.clone().expect("the requester learns");
        let got = ra.payloads.clone().expect("payloads");
        assert_eq!(got.len(), own.len(), "one payload per matched row");
        let by_item: HashMap<&[u8], usize> = responder.iter().enumerate().map(|(j, x)| (x.as_slice(), j)).collect();
        for (k, &i) in own.iter().enumerate() {
            let j = by_item[requester[i as usize].as_slice()];
            assert_eq!(got.get(k), payload_of(j).as_slice(), "row {k}: the payload of the same item");
        }
        let mut sorted = own.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, plaintext(requester, responder), "the intersection");
        assert_eq!(rb.payloads, None);
        match reveal {
            Reveal::Both => {
                let theirs = rb.intersection.expect("the responder learns");
                let pairs: Vec<(&[u8], &[u8])> = own
                    .iter()
                    .zip(&theirs)
                    .map(|(&i, &j)| (&requester[i as usize][..], &responder[j as usize][..]))
                    .collect();
                assert!(pairs.iter().all(|(a, b)| a == b), "joint order");
            }
            Reveal::RequesterOnly => assert_eq!(rb.intersection, None, "the responder learns no rows"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn payload_joins_match_a_plaintext_join() {
        for reveal in BOTH {
            check_payload_run(&[], &[], reveal, DEFAULT_BUCKET_SIZE).await;
            check_payload_run(&[], &keys("k", 0..50), reveal, DEFAULT_BUCKET_SIZE).await;
            check_payload_run(&keys("k", 0..50), &[], reveal, DEFAULT_BUCKET_SIZE).await;
            check_payload_run(&keys("k", 0..1), &keys("k", 0..1), reveal, DEFAULT_BUCKET_SIZE).await;
            check_payload_run(&keys("k", 0..1), &keys("k", 1..2), reveal, DEFAULT_BUCKET_SIZE).await;
            check_payload_run(&keys("k", 0..500), &keys("j", 0..500), reveal, DEFAULT_BUCKET_SIZE).await;
            check_payload_run(&keys("k", 0..500), &keys("k", 0..500), reveal, DEFAULT_BUCKET_SIZE).await;
            check_payload_run(&keys("k", 0..700), &keys("k", 300..1200), reveal, DEFAULT_BUCKET_SIZE).await;
            // Several buckets, padded with dummies.
            check_payload_run(&keys("k", 0..3000), &keys("k", 1000..5000), reveal, 512).await;
        }
    }

    /// Duplicates on the requester's side: every copy gets the payload. The responder's side
    /// must hold distinct items (the engine groups a key's rows into one payload).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requester_copies_all_get_the_payload_and_responder_copies_are_refused() {
        let mut requester = keys("k", 0..20);
        requester.extend(keys("k", 5..10));
        check_payload_run(&requester, &keys("k", 0..8), Reveal::RequesterOnly, DEFAULT_BUCKET_SIZE).await;
        let mut responder = keys("k", 0..8);
        responder.push(b"k3".to_vec());
        let (ra, rb) =
            run_payload(&keys("k", 0..5), &responder, payloads_for(&responder), Reveal::RequesterOnly, 1000).await;
        assert!(matches!(rb, Err(Rr22Error::Input(ref m)) if m.contains("distinct")), "{rb:?}");
        assert!(ra.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_payload_count_that_does_not_fit_the_items_is_refused_locally() {
        let items = keys("k", 0..10);
        let (ra, rb) = run_payload(&items, &items, payloads_for(&items[..9]), Reveal::RequesterOnly, 1000).await;
        assert!(matches!(rb, Err(Rr22Error::Input(ref m)) if m.contains("9 payloads for 10 items")), "{rb:?}");
        assert!(ra.is_err());
    }

    /// A relay between an honest requester and an honest responder that rewrites the responder's
    /// frames of one kind with `tamper`.
    async fn tampered(tamper: impl Fn(Bytes) -> Option<Bytes> + Send + Sync, max_bytes: usize) -> (Outcome, Outcome) {
        let requester = keys("k", 0..300);
        let responder = keys("k", 100..400);
        let (honest, relay_near) = memory_pair(8);
        let (relay_far, peer) = memory_pair(8);
        let relay = async move {
            loop {
                tokio::select! {
                    f = relay_near.recv() => match f {
                        Ok(f) => if relay_far.send(f).await.is_err() { break },
                        Err(_) => break,
                    },
                    f = relay_far.recv() => match f {
                        Ok(f) => match tamper(f) {
                            Some(f) => if relay_near.send(f).await.is_err() { break },
                            None => break,
                        },
                        Err(_) => break,
                    },
                }
            }
        };
        let receive = Rr22Config {
            payload: PayloadMode::Receive { max_bytes },
            ..config(Role::Requester, Reveal::RequesterOnly, DEFAULT_BUCKET_SIZE)
        };
        let send = Rr22Config {
            payload: PayloadMode::Send(Arc::new(payloads_for(&responder))),
            ..config(Role::Responder, Reveal::RequesterOnly, DEFAULT_BUCKET_SIZE)
        };
        let all = futures::future::join3(party(honest, &requester, receive), party(peer, &responder, send), relay);
        let (ra, rb, _) = tokio::time::timeout(DEADLINE, all).await.expect("hung");
        (ra, rb)
    }

    fn with_kind(
        kind: u8,
        f: impl Fn(Vec<u8>) -> Vec<u8> + Send + Sync,
    ) -> impl Fn(Bytes) -> Option<Bytes> + Send + Sync {
        move |frame: Bytes| {
            if frame.first() == Some(&kind) { Some(Bytes::from(f(frame.to_vec()))) } else { Some(frame) }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_honest_relay_changes_nothing() {
        let (ra, rb) = tampered(Some, 1 << 10).await;
        assert_eq!(ra.unwrap().payloads.unwrap().len(), 200);
        assert!(rb.is_ok());
    }

    /// The announced width above the requester's limit (up to 2^32 - 1) is refused before any
    /// buffer is sized by it; a width below the length field too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_announced_payload_width_over_the_limit_is_refused_before_allocating() {
        for width in [u32::MAX, 1 << 20, 36 + 4 + 1, 3, 0] {
            let set = move |mut f: Vec<u8>| {
                f[1..5].copy_from_slice(&width.to_be_bytes());
                f
            };
            let (ra, _) = tampered(with_kind(PAYLOAD_HEAD, set), 36).await;
            protocol_error(ra, "payloads of");
        }
        // The honest width of this job (36 bytes of payload at most) passes a limit of 36.
        let (ra, _) = tampered(Some, 36).await;
        assert!(ra.is_ok(), "{ra:?}");
        let (ra, _) = tampered(Some, 35).await;
        protocol_error(ra, "more than the 35 allowed");
    }

    /// A responder sealing in another format (format 1's 5-byte width frame, or another format
    /// byte) is refused before any payload is read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_sealing_format_is_refused() {
        let (ra, _) = tampered(with_kind(PAYLOAD_HEAD, |f: Vec<u8>| f[..5].to_vec()), 36).await;
        protocol_error(ra, "format 1");
        let (ra, _) = tampered(
            with_kind(PAYLOAD_HEAD, |mut f: Vec<u8>| {
                f[5] = 3;
                f
            }),
            36,
        )
        .await;
        protocol_error(ra, "format 3");
    }

    /// Truncated, overlong, misnumbered and garbage payload frames are protocol errors, not
    /// panics; a flipped bit in a matched payload fails its tag.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_payload_frames_are_errors_not_panics() {
        type Tamper = Box<dyn Fn(Vec<u8>) -> Vec<u8> + Send + Sync>;
        let cases: Vec<(Tamper, &str)> = vec![
            (Box::new(|f: Vec<u8>| f[..f.len() - 1].to_vec()), "bad payload frame"),
            (Box::new(|f: Vec<u8>| f[..5].to_vec()), "bad payload frame"),
            (Box::new(|f: Vec<u8>| f[..9].to_vec()), "bad payload frame"),
            (
                Box::new(|mut f: Vec<u8>| {
                    f.extend_from_slice(&[0u8; 56]);
                    f
                }),
                "bad payload frame",
            ),
            (
                Box::new(|mut f: Vec<u8>| {
                    f[4] ^= 1;
                    f
                }),
                "bad payload frame",
            ),
            (
                Box::new(|mut f: Vec<u8>| {
                    f[8] ^= 1;
                    f
                }),
                "bad payload frame",
            ),
            (
                Box::new(|f: Vec<u8>| {
                    let mut g = vec![PAYLOADS];
                    g.extend(f[1..].iter().map(|b| b ^ 0x5a));
                    g[1..9].copy_from_slice(&f[1..9]);
                    g
                }),
                "does not open",
            ),
        ];
        for (tamper, expect) in cases {
            let (ra, _) = tampered(with_kind(PAYLOADS, tamper), 1 << 10).await;
            protocol_error(ra, expect);
        }
        // A plain responder where one sending payloads is expected: the width is missing.
        let items = keys("k", 0..10);
        let (a, b) = memory_pair(8);
        let receive = Rr22Config {
            payload: PayloadMode::Receive { max_bytes: 10 },
            ..config(Role::Requester, Reveal::RequesterOnly, 1000)
        };
        let (ra, _) = futures::future::join(
            party(a, &items, receive),
            party(b, &items, config(Role::Responder, Reveal::RequesterOnly, 1000)),
        )
        .await;
        protocol_error(ra, "expected the payload width");
    }

    /// No payload byte in clear on the wire, matched or not; and every unmatched payload's
    /// ciphertext differs from a matched one only in being unopenable (sizes are uniform).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_payload_appears_in_clear_and_sizes_are_uniform() {
        let requester = keys("k", 0..50);
        let responder = keys("k", 25..75);
        let mut payloads = Payloads::new();
        for i in 0..responder.len() {
            payloads.push(format!("SECRET-PAYLOAD-{i:04}").as_bytes());
        }
        let frames = Arc::new(Mutex::new(Vec::<Bytes>::new()));
        let (honest, relay_near) = memory_pair(8);
        let (relay_far, peer) = memory_pair(8);
        let seen = frames.clone();
        let relay = async move {
            loop {
                tokio::select! {
                    f = relay_near.recv() => match f {
                        Ok(f) => if relay_far.send(f).await.is_err() { break },
                        Err(_) => break,
                    },
                    f = relay_far.recv() => match f {
                        Ok(f) => {
                            seen.lock().unwrap().push(f.clone());
                            if relay_near.send(f).await.is_err() { break }
                        }
                        Err(_) => break,
                    },
                }
            }
        };
        let receive = Rr22Config {
            payload: PayloadMode::Receive { max_bytes: 64 },
            ..config(Role::Requester, Reveal::RequesterOnly, DEFAULT_BUCKET_SIZE)
        };
        let send = Rr22Config {
            payload: PayloadMode::Send(Arc::new(payloads)),
            ..config(Role::Responder, Reveal::RequesterOnly, DEFAULT_BUCKET_SIZE)
        };
        let (ra, rb, _) =
            futures::future::join3(party(honest, &requester, receive), party(peer, &responder, send), relay).await;
        assert_eq!(ra.unwrap().payloads.unwrap().len(), 25);
        rb.unwrap();
        let frames = frames.lock().unwrap();
        let payload_frames: Vec<&Bytes> = frames.iter().filter(|f| f[0] == PAYLOADS).collect();
        assert_eq!(payload_frames.len(), 1);
        assert_eq!(payload_frames[0].len(), 9 + 50 * (4 + 19 + 16), "50 ciphertexts of one width");
        for f in frames.iter() {
            assert!(!f.windows(7).any(|w| w == b"SECRET-" || w == b"PAYLOAD"), "a payload in clear on the wire");
        }
    }
}

/// A saved session comes back as it was: same layout, hashing and fingerprint on both sides;
/// saved values out of range are refused, and payload sessions cannot be saved.
#[tokio::test]
async fn a_saved_session_is_restored_with_the_same_parameters() {
    let (a, b) = memory_pair(8);
    let (ca, cb) = (config(Role::Requester, Reveal::Both, 64), config(Role::Responder, Reveal::Both, 64));
    let (sa, sb) = futures::future::join(start(&a, 1000, &ca), start(&b, 300, &cb)).await;
    let (sa, sb) = (sa.unwrap(), sb.unwrap());
    assert_eq!(sa.fingerprint(), sb.fingerprint(), "both sides of one session agree");
    for (session, config) in [(&sa, &ca), (&sb, &cb)] {
        let state = session.state(64).unwrap();
        let again = resume_session(&state, config).unwrap();
        assert_eq!(again.layout, session.layout);
        assert_eq!(again.fingerprint(), session.fingerprint());
        assert_eq!(again.hasher().digest(b"id-7"), session.hasher().digest(b"id-7"));
        assert_eq!((again.own_size, again.peer_size), (session.own_size, session.peer_size));
    }
    let state = sa.state(64).unwrap();
    let other = resume_session(&SessionState { peer_size: 301, ..state.clone() }, &ca).unwrap();
    assert_ne!(other.fingerprint(), sa.fingerprint(), "another size, another fingerprint");
    let other = resume_session(&SessionState { salt: [9; 32], ..state.clone() }, &ca).unwrap();
    assert_ne!(other.fingerprint(), sa.fingerprint(), "another salt, another fingerprint");
    let limited = Rr22Config { max_peer_items: 299, ..ca.clone() };
    assert!(resume_session(&state, &limited).is_err(), "the peer's size is checked against the job's limit");
    assert!(resume_session(&SessionState { bucket_size: 0, ..state.clone() }, &ca).is_err());
    assert!(resume_session(&SessionState { own_size: u64::from(u32::MAX), ..state.clone() }, &ca).is_err());
    let payload = Rr22Config { payload: PayloadMode::Receive { max_bytes: 16 }, ..ca.clone() };
    assert!(resume_session(&state, &payload).is_err(), "labeled sessions are not resumed");
}
