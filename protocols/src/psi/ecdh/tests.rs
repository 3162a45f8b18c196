//! Every run is checked against a plaintext intersection (a `HashSet`), and, when both parties
//! learn, against the other party's output: both must list the same items in the same order.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use curve25519_dalek::ristretto::RistrettoPoint;

use super::flow::{encrypt_peer, run_framed};
use super::hello::Hello;
use super::key::HalfKey;
use super::proofs::{Proving, prove_returned};
use super::*;
use crate::channel::{Metered, memory_pair};
use crate::dleq;
use crate::test_support::{check, keys};

/// Small frames, so that modest sets exercise the multi-frame pipeline.
const SMALL: Framing = Framing { points_per_frame: 7, tags_per_frame: 5 };
/// No test should come near this; a hang fails instead of blocking the suite.
const DEADLINE: Duration = Duration::from_secs(120);

type Outcome = Result<PsiOutput, EcdhPsiError>;

fn config(role: Role, reveal: Reveal) -> EcdhPsiConfig {
    EcdhPsiConfig { role, reveal, progress: None, proofs: true, max_peer_items: u64::MAX }
}

fn without_proofs(role: Role, reveal: Reveal) -> EcdhPsiConfig {
    EcdhPsiConfig { proofs: false, ..config(role, reveal) }
}

fn strs(items: &[&str]) -> Vec<Vec<u8>> {
    items.iter().map(|s| s.as_bytes().to_vec()).collect()
}

/// Runs one party over its channel end and drops the end when done, as a node would, so that
/// an error on one side ends the other side's run too.
async fn party<C: Channel>(channel: C, items: &[Vec<u8>], config: EcdhPsiConfig, framing: Framing) -> Outcome {
    let outcome = run_framed(&channel, items, &config, framing, Behaviour::Honest).await.map(|r| r.0);
    drop(channel);
    outcome
}

async fn run_both(
    requester: &[Vec<u8>],
    responder: &[Vec<u8>],
    reveal: Reveal,
    framing: Framing,
) -> (Outcome, Outcome) {
    let (a, b) = memory_pair(4);
    let both = futures::future::join(
        party(a, requester, config(Role::Requester, reveal), framing),
        party(b, responder, config(Role::Responder, reveal), framing),
    );
    tokio::time::timeout(DEADLINE, both).await.expect("the protocol hung")
}

async fn check_run(requester: &[Vec<u8>], responder: &[Vec<u8>], reveal: Reveal, framing: Framing) {
    let outcome = run_both(requester, responder, reveal, framing).await;
    check(requester, responder, reveal, outcome);
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_vs_empty() {
    for reveal in [Reveal::Both, Reveal::RequesterOnly] {
        check_run(&[], &[], reveal, Framing::DEFAULT).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_vs_many_either_way() {
    let many = keys("k", 0..100);
    for reveal in [Reveal::Both, Reveal::RequesterOnly] {
        check_run(&[], &many, reveal, SMALL).await;
        check_run(&many, &[], reveal, SMALL).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_item_matching_and_not() {
    check_run(&strs(&["alice"]), &strs(&["alice"]), Reveal::Both, Framing::DEFAULT).await;
    check_run(&strs(&["alice"]), &strs(&["bob"]), Reveal::Both, Framing::DEFAULT).await;
    check_run(&strs(&[""]), &strs(&[""]), Reveal::Both, Framing::DEFAULT).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn disjoint_sets() {
    check_run(&keys("a", 0..300), &keys("b", 0..200), Reveal::Both, SMALL).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn identical_sets() {
    let set = keys("k", 0..500);
    check_run(&set, &set, Reveal::Both, SMALL).await;
    check_run(&set, &set, Reveal::Both, Framing::DEFAULT).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn overlapping_sets_over_many_frames() {
    let mut requester = keys("k", 0..1000);
    requester.reverse();
    let responder = keys("k", 600..1700);
    check_run(&requester, &responder, Reveal::Both, SMALL).await;
    check_run(&requester, &responder, Reveal::RequesterOnly, SMALL).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unequal_sizes_1_vs_10_000() {
    let large = keys("k", 0..10_000);
    check_run(&strs(&["k4242"]), &large, Reveal::Both, Framing::DEFAULT).await;
    check_run(&large, &strs(&["k17", "absent"]), Reveal::Both, Framing::DEFAULT).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicates_list_every_copy_adjacent() {
    let requester = strs(&["x", "y", "x", "z", "x", "w", "z"]);
    let responder = strs(&["z", "x", "v", "x", "z", "u"]);
    check_run(&requester, &responder, Reveal::Both, SMALL).await;
    check_run(&requester, &responder, Reveal::Both, Framing::DEFAULT).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn requester_only_reveal() {
    let requester = keys("k", 0..200);
    let responder = keys("k", 150..400);
    check_run(&requester, &responder, Reveal::RequesterOnly, SMALL).await;
    check_run(&responder, &requester, Reveal::RequesterOnly, Framing::DEFAULT).await;
}

/// Bytes on the wire are as documented: a 62-byte hello, 32 per own item, then per peer item (if
/// the peer learns) 32 and a 129-byte proof frame with proofs, 16 without; with proofs a party that
/// learns sends a 97-byte challenge frame; 1 per frame.
#[tokio::test(flavor = "multi_thread")]
async fn wire_bytes_match_the_documented_format() {
    let requester = keys("k", 0..30);
    let responder = keys("k", 20..45);
    for proofs in [true, false] {
        for reveal in [Reveal::Both, Reveal::RequesterOnly] {
            let (a, b) = memory_pair(4);
            let (a, b) = (Metered::new(a), Metered::new(b));
            let config_a = EcdhPsiConfig { proofs, ..config(Role::Requester, reveal) };
            let config_b = EcdhPsiConfig { proofs, ..config(Role::Responder, reveal) };
            let (ra, rb) = futures::join!(
                run_framed(&a, &requester, &config_a, SMALL, Behaviour::Honest),
                run_framed(&b, &responder, &config_b, SMALL, Behaviour::Honest)
            );
            check(&requester, &responder, reveal, (ra.map(|r| r.0), rb.map(|r| r.0)));
            let frames = |n: usize, per: usize| n.div_ceil(per) as u64;
            let points = |n: usize| 32 * n as u64 + frames(n, SMALL.points_per_frame);
            let back = |n: usize| match proofs {
                true => points(n) + 129,
                false => 16 * n as u64 + frames(n, SMALL.tags_per_frame),
            };
            let challenge = if proofs { 97 } else { 0 };
            let requester_sends = 62 + points(30) + challenge + if reveal == Reveal::Both { back(25) } else { 0 };
            let responder_sends = 62 + points(25) + back(30) + if reveal == Reveal::Both { challenge } else { 0 };
            assert_eq!(a.stats().bytes_sent, requester_sends);
            assert_eq!(b.stats().bytes_sent, responder_sends);
            assert_eq!(a.stats().sent_digest, b.stats().received_digest);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_without_proofs_give_the_same_results() {
    let requester = keys("k", 0..300);
    let responder = keys("k", 100..350);
    for reveal in [Reveal::Both, Reveal::RequesterOnly] {
        let (a, b) = memory_pair(4);
        let (ra, rb) = futures::join!(
            party(a, &requester, without_proofs(Role::Requester, reveal), SMALL),
            party(b, &responder, without_proofs(Role::Responder, reveal), SMALL),
        );
        check(&requester, &responder, reveal, (ra, rb));
    }
    // Both parties must agree on proofs.
    let (a, b) = memory_pair(4);
    let (ra, rb) = futures::join!(
        party(a, &requester, without_proofs(Role::Requester, Reveal::Both), SMALL),
        party(b, &responder, config(Role::Responder, Reveal::Both), SMALL),
    );
    protocol_error(ra, "proofs mismatch");
    protocol_error(rb, "proofs mismatch");
}

type Evidenced = Result<(PsiOutput, Option<EcdhEvidence>), EcdhPsiError>;

async fn run_behaving(
    requester: &[Vec<u8>],
    responder: &[Vec<u8>],
    reveal: Reveal,
    cheat: Behaviour,
) -> (Evidenced, Evidenced) {
    let (a, b) = memory_pair(4);
    let a_run = async {
        let config = config(Role::Requester, reveal);
        let outcome = run_framed(&a, requester, &config, SMALL, cheat).await;
        drop(a);
        outcome
    };
    let b_run = async {
        let config = config(Role::Responder, reveal);
        let outcome = run_framed(&b, responder, &config, SMALL, Behaviour::Honest).await;
        drop(b);
        outcome
    };
    tokio::time::timeout(DEADLINE, futures::future::join(a_run, b_run)).await.expect("the protocol hung")
}

/// Honest runs: both parties' evidence agrees and every record verifies, sampled and in full.
#[tokio::test(flavor = "multi_thread")]
async fn honest_evidence_agrees_and_verifies() {
    let requester = keys("k", 0..400);
    let responder = keys("k", 300..700);
    for reveal in [Reveal::Both, Reveal::RequesterOnly] {
        let (ra, rb) = run_behaving(&requester, &responder, reveal, Behaviour::Honest).await;
        let (ea, eb) = (ra.unwrap().1.unwrap(), rb.unwrap().1.unwrap());
        assert_eq!(ea.own_commitment, eb.peer_commitment);
        assert_eq!(eb.own_commitment, ea.peer_commitment);
        // B returned A's points; A verified that proof.
        let (b_sent, a_received) = (eb.sent.as_ref().unwrap(), ea.received.as_ref().unwrap());
        assert_eq!((b_sent.pairs, b_sent.pairs_root), (400, a_received.pairs_root));
        assert_eq!(b_sent.sample, a_received.sample);
        assert_eq!(b_sent.sample.len(), SAMPLE_SIZE);
        verify_record(&eb.own_commitment, b_sent, true).unwrap();
        verify_record(&eb.own_commitment, a_received, true).unwrap();
        match reveal {
            Reveal::Both => {
                let a_sent = ea.sent.as_ref().unwrap();
                assert_eq!(a_sent.pairs_root, eb.received.as_ref().unwrap().pairs_root);
                verify_record(&ea.own_commitment, a_sent, true).unwrap();
            }
            Reveal::RequesterOnly => assert!(ea.sent.is_none() && eb.received.is_none()),
        }
        // The other party's key does not verify this party's record.
        assert!(verify_record(&ea.own_commitment, b_sent, false).is_err());
    }
}

/// A party that multiplies part of the peer's points by a second key is caught by the peer during
/// the run, and its own record fails an auditor's check.
#[tokio::test(flavor = "multi_thread")]
async fn a_party_using_two_keys_is_caught() {
    let requester = keys("k", 0..300);
    let responder = keys("k", 100..400);
    let (ra, rb) = run_behaving(&requester, &responder, Reveal::Both, Behaviour::SecondKeyFrom(140)).await;
    match rb {
        Err(EcdhPsiError::Protocol(message)) => {
            assert!(message.contains("DLEQ proof over the 300 points it returned does not verify"), "{message}")
        }
        other => panic!("the honest responder accepted a cheating requester: {other:?}"),
    }
    // The cheater itself may or may not finish (the peer hangs up); if it recorded evidence, an
    // auditor rejects it.
    if let Ok((_, Some(evidence))) = ra {
        let record = evidence.sent.unwrap();
        let error = verify_record(&evidence.own_commitment, &record, true).unwrap_err();
        assert!(error.contains("DLEQ proof"), "{error}");
    }
}

/// The returning party's answer to a challenge over the given pairs (its record).
fn answer(
    key: &Arc<HalfKey>,
    peer_points: Vec<u8>,
    joint: Vec<u8>,
    m: RistrettoPoint,
    z: RistrettoPoint,
    behaviour: Behaviour,
) -> Result<ProofRecord, String> {
    let challenge = [5u8; 32];
    let body = [challenge.as_slice(), m.compress().as_bytes(), z.compress().as_bytes()].concat();
    let proving = Proving {
        key: Arc::clone(key),
        commitment: key.commitment(),
        peer_points: Bytes::from(peer_points),
        joint: Bytes::from(joint),
        behaviour,
    };
    prove_returned(proving, &body).map(|(record, _)| record)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cheaters_record_fails_the_sampled_and_full_audit() {
    // The cheater's pairs: the second key on pairs 50..; the honest verifier's composite of them.
    let key = Arc::new(HalfKey::random());
    let second = HalfKey::random();
    let commitment = key.commitment();
    let peer_points: Vec<u8> = honest_points(100).concat();
    let honest_part = encrypt_peer(&peer_points[..32 * 50], &key.0).unwrap();
    let cheat_part = encrypt_peer(&peer_points[32 * 50..], &second.0).unwrap();
    let joint = [honest_part.joint, cheat_part.joint].concat();
    let coefficients = dleq::Coefficients::new(DLEQ_CONTEXT, &[5u8; 32]);
    let (m, z) = dleq::composite_pairs(&coefficients, &peer_points, &joint).unwrap();
    // An honest prover refuses to prove a composite that is not k·M.
    let refused = answer(&key, peer_points.clone(), joint.clone(), m, z, Behaviour::Honest).unwrap_err();
    assert!(refused.contains("refusing to prove"), "{refused}");
    // A cheater proves anyway: the proof and the sample fail an auditor's check.
    let record = answer(&key, peer_points.clone(), joint.clone(), m, z, Behaviour::SecondKeyFrom(50)).unwrap();
    let sampled = verify_record(&commitment, &record, false).unwrap_err();
    assert!(sampled.contains("sampled pairs"), "{sampled}");
    let full = verify_record(&commitment, &record, true).unwrap_err();
    assert!(full.contains("sampled pairs"), "{full}");
    // A record whose composite is some other (M', k·M') passes the proof but not the full check,
    // which recomputes the composite from the pairs.
    let honest_joint = encrypt_peer(&peer_points, &key.0).unwrap().joint;
    let other = RistrettoPoint::hash_from_bytes::<sha2::Sha512>(b"another point");
    let k = key.0 + key.0;
    let record = answer(&key, peer_points, honest_joint, other, other * k, Behaviour::Honest).unwrap();
    verify_record(&commitment, &record, false).unwrap();
    let full = verify_record(&commitment, &record, true).unwrap_err();
    assert!(full.contains("not the combination"), "{full}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_proof_is_caught() {
    let requester = keys("k", 0..50);
    let responder = keys("k", 10..60);
    let (_, rb) = run_behaving(&requester, &responder, Reveal::Both, Behaviour::ForgedProof).await;
    match rb {
        Err(EcdhPsiError::Protocol(message)) => assert!(message.contains("DLEQ proof"), "{message}"),
        other => panic!("the honest responder accepted a forged proof: {other:?}"),
    }
}

/// Tampering with any part of a record is caught by the audit check, naming the part.
#[tokio::test(flavor = "multi_thread")]
async fn tampered_records_are_rejected() {
    let requester = keys("k", 0..300);
    let responder = keys("k", 0..10);
    let (_, rb) = run_behaving(&requester, &responder, Reveal::RequesterOnly, Behaviour::Honest).await;
    let evidence = rb.unwrap().1.unwrap();
    let b = evidence.own_commitment;
    let good = evidence.sent.unwrap();
    type Tamper = Box<dyn Fn(&mut ProofRecord)>;
    let cases: Vec<(Tamper, &str)> = vec![
        (Box::new(|r| r.proof[3] ^= 1), "DLEQ proof over the composite"),
        (Box::new(|r| r.z[3] ^= 1), "composite"),
        (Box::new(|r| r.challenge[0] ^= 1), "sampled indices"),
        (Box::new(|r| r.sample_proof[40] ^= 1), "sampled pairs"),
        (Box::new(|r| r.sample[5].d[7] ^= 1), "audit path"),
        (Box::new(|r| r.sample[5].leaf[64 * 15 + 3] ^= 1), "audit path"),
        (Box::new(|r| r.sample[5].path[0][0] ^= 1), "audit path"),
        (Box::new(|r| r.pairs_root[0] ^= 1), "sampled indices"),
        (Box::new(|r| r.sample.swap(1, 2)), "sampled indices"),
        (Box::new(|r| r.d[32 * 299] ^= 1), "Merkle root"),
        (Box::new(|r| r.d.truncate(32)), "bytes of points"),
    ];
    for (tamper, needle) in cases {
        let mut record = good.clone();
        tamper(&mut record);
        let error = verify_record(&b, &record, true).unwrap_err();
        assert!(error.contains(needle), "{error:?} does not mention {needle:?}");
    }
    verify_record(&b, &good, true).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn progress_is_reported_per_stage() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let progress: ProgressFn = Arc::new(move |p| sink.lock().unwrap().push(p));
    let requester = keys("k", 0..40);
    let responder = keys("k", 10..30);
    let (a, b) = memory_pair(4);
    let with_progress = EcdhPsiConfig { progress: Some(progress), ..config(Role::Requester, Reveal::Both) };
    let (ra, rb) = futures::join!(
        party(a, &requester, with_progress, SMALL),
        party(b, &responder, config(Role::Responder, Reveal::Both), SMALL),
    );
    check(&requester, &responder, Reveal::Both, (ra, rb));
    let seen = seen.lock().unwrap();
    for (stage, total) in [("encrypt own set", 40), ("encrypt peer set", 20), ("match", 40)] {
        let reports: Vec<_> = seen.iter().filter(|p| p.stage == stage).collect();
        assert!(reports.len() > 1, "{stage}: {reports:?}");
        assert!(reports.windows(2).all(|w| w[0].done <= w[1].done), "{stage}: {reports:?}");
        assert!(reports.iter().all(|p| p.total == total), "{stage}: {reports:?}");
        assert_eq!(reports.last().unwrap().done, total, "{stage}");
    }
}

fn protocol_error(outcome: Outcome, needle: &str) {
    match outcome {
        Err(EcdhPsiError::Protocol(message)) => {
            assert!(message.contains(needle), "error {message:?} does not mention {needle:?}")
        }
        other => panic!("expected a protocol error mentioning {needle:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mismatched_configs_fail_on_both_sides() {
    let items = keys("k", 0..10);
    let cases = [
        ((Role::Requester, Reveal::Both), (Role::Requester, Reveal::Both), "both parties claim the requester"),
        ((Role::Responder, Reveal::Both), (Role::Responder, Reveal::Both), "both parties claim the responder"),
        ((Role::Requester, Reveal::Both), (Role::Responder, Reveal::RequesterOnly), "reveal mode mismatch"),
    ];
    for ((role_a, reveal_a), (role_b, reveal_b), needle) in cases {
        let (a, b) = memory_pair(4);
        let (ra, rb) = futures::join!(
            party(a, &items, config(role_a, reveal_a), SMALL),
            party(b, &items, config(role_b, reveal_b), SMALL),
        );
        protocol_error(ra, needle);
        protocol_error(rb, needle);
    }
}

/// Runs the real protocol as requester against `fake`, a hand-written responder, and returns the
/// requester's outcome (after at most [`DEADLINE`]).
async fn against<F, Fut>(items: &[Vec<u8>], reveal: Reveal, fake: F) -> Outcome
where
    F: FnOnce(crate::channel::MemoryChannel) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (a, b) = memory_pair(4);
    let both = futures::future::join(party(a, items, without_proofs(Role::Requester, reveal), SMALL), fake(b));
    tokio::time::timeout(DEADLINE, both).await.expect("the protocol hung").0
}

/// Reads until the real party closes its end (so its errors are not masked by ours).
async fn drain<C: Channel>(channel: &C) {
    while channel.recv().await.is_ok() {}
}

fn hello(role: Role, reveal: Reveal, size: u64) -> Bytes {
    Hello { role, reveal, size, proofs: false, commitment: [0; 32] }.encode()
}

fn points_frame(points: &[[u8; 32]]) -> Bytes {
    let mut frame = vec![POINTS];
    for point in points {
        frame.extend_from_slice(point);
    }
    Bytes::from(frame)
}

/// Valid-looking points: `enc(k·H(x))` for a fresh key.
fn honest_points(n: usize) -> Vec<[u8; 32]> {
    let key = HalfKey::random();
    let mut points: Vec<_> = (0..n).map(|i| kernels::hash_to_point(&i.to_le_bytes())).collect();
    let mut out = vec![0u8; 32 * n];
    kernels::multiply_encode(&mut points, &key.0, &mut out);
    out.chunks_exact(32).map(|c| c.try_into().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_version_or_protocol_is_rejected() {
    let items = keys("k", 0..5);
    let mut other_version = hello(Role::Responder, Reveal::Both, 5).to_vec();
    other_version[17..19].copy_from_slice(&1u16.to_be_bytes());
    let outcome = against(&items, Reveal::Both, |c| async move {
        let _ = c.send(Bytes::from(other_version)).await;
        drain(&c).await;
    })
    .await;
    protocol_error(outcome, "version 1");

    let outcome = against(&items, Reveal::Both, |c| async move {
        let _ = c.send(Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n")).await;
        drain(&c).await;
    })
    .await;
    protocol_error(outcome, "not an ECDH-PSI hello");

    let outcome = against(&items, Reveal::Both, |c| async move {
        let _ = c.send(hello(Role::Responder, Reveal::Both, u64::from(u32::MAX) + 1)).await;
        drain(&c).await;
    })
    .await;
    protocol_error(outcome, "at most");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_huge_announced_size_reserves_nothing_before_points_arrive() {
    // A peer announcing 2^32 − 1 items, with proofs (so this party keeps the pairs it proves), then
    // a few points and gone: a clean error, not an abort on a 137 GB reservation.
    let items = keys("k", 0..50);
    let (a, b) = memory_pair(4);
    let commitment = curve25519_dalek::constants::RISTRETTO_BASEPOINT_COMPRESSED.to_bytes();
    let fake = async move {
        let huge =
            Hello { role: Role::Responder, reveal: Reveal::Both, size: u64::from(u32::MAX), proofs: true, commitment };
        let _ = b.send(huge.encode()).await;
        let _ = b.send(points_frame(&honest_points(10))).await;
        let _ = b.recv().await;
    };
    let both = futures::future::join(party(a, &items, config(Role::Requester, Reveal::Both), SMALL), fake);
    let outcome = tokio::time::timeout(DEADLINE, both).await.expect("the protocol hung").0;
    assert!(matches!(outcome, Err(EcdhPsiError::Channel(ChannelError::Closed))), "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn peer_dropping_the_channel_is_an_error_not_a_hang() {
    let items = keys("k", 0..50);
    // Gone right after the hello.
    let outcome = against(&items, Reveal::Both, |c| async move {
        let _ = c.send(hello(Role::Responder, Reveal::Both, 100)).await;
        let _ = c.recv().await;
    })
    .await;
    assert!(matches!(outcome, Err(EcdhPsiError::Channel(ChannelError::Closed))), "{outcome:?}");
    // Gone in the middle of its points.
    let outcome = against(&items, Reveal::Both, |c| async move {
        let _ = c.send(hello(Role::Responder, Reveal::Both, 100)).await;
        let _ = c.send(points_frame(&honest_points(10))).await;
        let _ = c.recv().await;
    })
    .await;
    assert!(matches!(outcome, Err(EcdhPsiError::Channel(ChannelError::Closed))), "{outcome:?}");
    // Gone before sending the tags back (after reading everything).
    let outcome = against(&items, Reveal::Both, |c| async move {
        let _ = c.send(hello(Role::Responder, Reveal::Both, 3)).await;
        let _ = c.send(points_frame(&honest_points(3))).await;
        while c.recv().await.is_ok_and(|f| f[0] != TAGS) {}
    })
    .await;
    assert!(matches!(outcome, Err(EcdhPsiError::Channel(ChannelError::Closed))), "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_points_are_rejected() {
    let items = keys("k", 0..5);
    let mut points = honest_points(20);
    points[13] = [0xff; 32]; // not canonical: s >= p
    let outcome = against(&items, Reveal::Both, |c| async move {
        let _ = c.send(hello(Role::Responder, Reveal::Both, 20)).await;
        let _ = c.send(points_frame(&points[..7])).await;
        let _ = c.send(points_frame(&points[7..])).await;
        drain(&c).await;
    })
    .await;
    protocol_error(outcome, "point 13 is not");

    let mut points = honest_points(3);
    points[0] = [0; 32]; // the identity
    let outcome = against(&items, Reveal::Both, |c| async move {
        let _ = c.send(hello(Role::Responder, Reveal::Both, 3)).await;
        let _ = c.send(points_frame(&points)).await;
        drain(&c).await;
    })
    .await;
    protocol_error(outcome, "point 0 is not");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_counts_and_frames_are_rejected() {
    let items = keys("k", 0..3);
    let outcome = against(&items, Reveal::Both, |c| async move {
        let _ = c.send(hello(Role::Responder, Reveal::Both, 2)).await;
        let _ = c.send(points_frame(&honest_points(3))).await;
        drain(&c).await;
    })
    .await;
    protocol_error(outcome, "more than the 2 points it announced");

    let outcome = against(&items, Reveal::Both, |c| async move {
        let _ = c.send(hello(Role::Responder, Reveal::Both, 2)).await;
        let _ = c.send(Bytes::from(vec![TAGS; 33])).await;
        drain(&c).await;
    })
    .await;
    protocol_error(outcome, "expected a points frame");

    let outcome = against(&items, Reveal::Both, |c| async move {
        let _ = c.send(hello(Role::Responder, Reveal::Both, 2)).await;
        let _ = c.send(Bytes::from(vec![POINTS; 40])).await;
        drain(&c).await;
    })
    .await;
    protocol_error(outcome, "not a positive multiple of 32");

    // A responder with no items of its own sends back one tag too many...
    let outcome = against(&items, Reveal::Both, |c| async move {
        let _ = c.send(hello(Role::Responder, Reveal::Both, 0)).await;
        let _ = c.send(Bytes::from(vec![TAGS; 1 + 16 * 4])).await;
        drain(&c).await;
    })
    .await;
    protocol_error(outcome, "more than 3 tags");

    // ... or a truncated tag.
    let outcome = against(&items, Reveal::Both, |c| async move {
        let _ = c.send(hello(Role::Responder, Reveal::Both, 0)).await;
        let _ = c.send(Bytes::from(vec![TAGS; 1 + 15])).await;
        drain(&c).await;
    })
    .await;
    protocol_error(outcome, "not a positive multiple of 16");
}

#[test]
fn kernels_compute_k_times_h_of_x() {
    let key = HalfKey::random();
    let k = key.0 + key.0;
    let items: Vec<[u8; 8]> = (0..300u64).map(u64::to_le_bytes).collect();
    let mut points: Vec<_> = items.iter().map(|x| kernels::hash_to_point(x)).collect();
    let expected: Vec<_> = points.iter().map(|p| (p * k).compress()).collect();
    let mut out = vec![0u8; 32 * points.len()];
    kernels::multiply_encode(&mut points, &key.0, &mut out);
    for (encoding, expected) in out.chunks_exact(32).zip(&expected) {
        assert_eq!(encoding, expected.as_bytes());
        assert_eq!(kernels::decode(encoding).unwrap().compress(), *expected);
    }
    // Domain separation: not the undecorated hash of the item.
    let plain = RistrettoPoint::hash_from_bytes::<sha2::Sha512>(&items[0]);
    assert_ne!(kernels::hash_to_point(&items[0]), plain);
    assert_eq!(kernels::tag(&out[..32]), kernels::tag(expected[0].as_bytes()));
    assert_ne!(kernels::tag(&out[..32]), kernels::tag(&out[32..64]));
    assert!(kernels::decode(&[0u8; 31]).is_none());
}

#[test]
fn curve_costs_are_measured() {
    let costs = measure_curve_costs(16);
    for ns in [costs.hash_to_point_ns, costs.multiply_encode_ns, costs.decode_ns] {
        assert!(ns.is_finite() && ns > 0.0, "{costs:?}");
    }
    assert!(costs.per_item_ns() > costs.multiply_encode_ns * 2.0);
}

#[test]
fn run_is_send() {
    fn assert_send<T: Send>(_: T) {}
    let (a, _b) = memory_pair(1);
    let items = keys("k", 0..1);
    let config = config(Role::Requester, Reveal::Both);
    assert_send(run(&a, &items, &config));
    assert_send(run(&a, items.as_slice(), &config));
}
