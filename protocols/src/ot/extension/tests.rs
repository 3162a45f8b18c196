//! Extension tests: every output is checked against its plaintext relation.

use std::sync::Mutex;
use std::time::Duration;

use super::*;
use crate::channel::{ChannelError, MemoryChannel, Metered, memory_pair};

/// Fails a test that would otherwise hang.
const LIMIT: Duration = Duration::from_secs(120);

async fn setup(security: Security) -> (IknpSender, IknpReceiver, MemoryChannel, MemoryChannel) {
    let (a, b) = memory_pair(8);
    let (s, r) = futures::join!(IknpSender::setup(&a, security), IknpReceiver::setup(&b, security));
    (s.unwrap(), r.unwrap(), a, b)
}

async fn correlated(
    s: &mut IknpSender,
    r: &mut IknpReceiver,
    a: &impl Channel,
    b: &impl Channel,
    n: usize,
) -> (CorrelatedSenderOutput, CorrelatedReceiverOutput) {
    let (x, y) =
        tokio::time::timeout(LIMIT, async { futures::join!(s.extend_correlated(a, n), r.extend_correlated(b, n)) })
            .await
            .expect("extension hung");
    (x.unwrap(), y.unwrap())
}

fn check_correlated(s: &CorrelatedSenderOutput, r: &CorrelatedReceiverOutput, n: usize) {
    assert_eq!((s.len(), r.len(), r.choices().len()), (n, n, n));
    let delta = s.delta();
    for i in 0..n {
        let expected = s.q()[i] ^ if r.choices().get(i) { delta } else { 0 };
        assert!(r.t()[i] == expected, "t_{i} != q_{i} ⊕ b_{i}·Δ (n = {n})");
    }
    if n >= 1000 {
        let ones = r.choices().iter().filter(|&b| b).count();
        let (lo, hi) = (n * 4 / 10, n * 6 / 10);
        assert!((lo..=hi).contains(&ones), "{ones} of {n} choice bits set");
    }
    if n >= 2 {
        assert_ne!(s.q()[0], s.q()[1]);
    }
    // Bits past n are clear in the packed choice bits.
    if !n.is_multiple_of(8) {
        assert_eq!(r.choices().as_bytes().last().unwrap() >> (n % 8), 0);
    }
}

fn check_random(s: &RandomSenderOutput, r: &RandomReceiverOutput, n: usize) {
    assert_eq!((s.len(), r.len(), r.choices().len()), (n, n, n));
    for i in 0..n {
        let b = r.choices().get(i) as usize;
        let pair = s.messages(i);
        assert!(r.messages()[i] == pair[b], "OT {i}: the chosen message differs");
        assert!(r.messages()[i] != pair[1 - b], "OT {i}: the other message is the chosen one");
    }
    if n >= 2 {
        assert_ne!(s.m0()[0], s.m0()[1]);
    }
}

#[tokio::test]
async fn correlated_ots_satisfy_t_equals_q_xor_b_delta() {
    let (mut s, mut r, a, b) = setup(Security::SemiHonest).await;
    for n in [0, 1, 127, 128, 1000, 1 << 20] {
        let (x, y) = correlated(&mut s, &mut r, &a, &b, n).await;
        check_correlated(&x, &y, n);
        assert_eq!(x.delta(), s.delta());
    }
}

#[tokio::test]
async fn malicious_mode_correlated_ots_satisfy_the_relation() {
    let (mut s, mut r, a, b) = setup(Security::Malicious).await;
    // 2^16 + 5 OTs span two chunks, and the padding rows straddle the chunk boundary.
    for n in [0, 1, 127, 128, 1000, (1 << 16) + 5, 1 << 20] {
        let (x, y) = correlated(&mut s, &mut r, &a, &b, n).await;
        check_correlated(&x, &y, n);
    }
}

#[tokio::test]
async fn random_ots_are_consistent() {
    for security in [Security::SemiHonest, Security::Malicious] {
        let (mut s, mut r, a, b) = setup(security).await;
        for n in [0, 1, 127, 128, 1000, 1 << 20] {
            let (x, y) =
                tokio::time::timeout(LIMIT, async { futures::join!(s.extend_random(&a, n), r.extend_random(&b, n)) })
                    .await
                    .expect("extension hung");
            check_random(&x.unwrap(), &y.unwrap(), n);
        }
    }
}

/// Recycled output buffers (larger, equal or smaller than the next call needs, full of stale
/// values) are overwritten entirely: the next OTs are consistent and carry nothing stale.
#[tokio::test]
async fn recycled_buffers_are_overwritten_entirely() {
    const STALE: u128 = u128::MAX;
    for security in [Security::SemiHonest, Security::Malicious] {
        let (mut s, mut r, a, b) = setup(security).await;
        for n in [1000, 1000, 700, 1 << 17, 5, 0, 300] {
            let (x, y) =
                tokio::time::timeout(LIMIT, async { futures::join!(s.extend_random(&a, n), r.extend_random(&b, n)) })
                    .await
                    .expect("extension hung");
            let (x, y) = (x.unwrap(), y.unwrap());
            check_random(&x, &y, n);
            assert!(x.m0().iter().chain(x.m1()).chain(y.messages()).all(|&m| m != STALE), "stale block in an output");
            let (mut m0, mut m1) = x.into_parts();
            let mut t = y.into_messages();
            for buf in [&mut m0, &mut m1, &mut t] {
                buf.fill(STALE);
            }
            s.recycle(m0);
            s.recycle(m1);
            r.recycle(t);
        }
    }
}

#[tokio::test]
async fn random_ots_hash_the_correlated_ones_with_their_session_index() {
    let (mut s, mut r, a, b) = setup(Security::SemiHonest).await;
    let (x0, _) = correlated(&mut s, &mut r, &a, &b, 300).await;
    let (x, y) = correlated(&mut s, &mut r, &a, &b, 200).await;
    assert_eq!((x0.first_index(), x.first_index(), y.first_index()), (0, 300, 300));
    let (q, delta) = (x.q().to_vec(), x.delta());
    let (xr, yr) = (x.into_random(), y.into_random());
    check_random(&xr, &yr, 200);
    let pi = FixedKeyAes::fixed();
    for (i, &q) in q.iter().enumerate() {
        let tweak = 300 + i as u128;
        assert_eq!(xr.messages(i), [pi.tccr_hash(tweak, q), pi.tccr_hash(tweak, q ^ delta)]);
    }
}

#[tokio::test]
async fn repeated_extensions_use_fresh_streams() {
    let (mut s, mut r, a, b) = setup(Security::SemiHonest).await;
    let (x1, y1) = correlated(&mut s, &mut r, &a, &b, 256).await;
    let (x2, y2) = correlated(&mut s, &mut r, &a, &b, 256).await;
    check_correlated(&x1, &y1, 256);
    check_correlated(&x2, &y2, 256);
    assert_eq!(x1.delta(), x2.delta());
    assert!(x1.q().iter().zip(x2.q()).all(|(p, q)| p != q));
}

#[tokio::test]
async fn a_given_delta_is_used() {
    let delta = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210u128;
    let (a, b) = memory_pair(8);
    let (s, r) = futures::join!(
        IknpSender::setup_with_delta(&a, Security::Malicious, delta),
        IknpReceiver::setup(&b, Security::Malicious)
    );
    let (mut s, mut r) = (s.unwrap(), r.unwrap());
    assert_eq!(s.delta(), delta);
    let (x, y) = correlated(&mut s, &mut r, &a, &b, 500).await;
    assert_eq!(x.delta(), delta);
    check_correlated(&x, &y, 500);
}

#[tokio::test]
async fn communication_is_16_bytes_per_ot() {
    let (a, b) = memory_pair(8);
    let (a, b) = (Metered::new(a), Metered::new(b));
    let (s, r) =
        futures::join!(IknpSender::setup(&a, Security::SemiHonest), IknpReceiver::setup(&b, Security::SemiHonest));
    let (mut s, mut r) = (s.unwrap(), r.unwrap());
    let before = b.stats().bytes_sent;
    let n = 3 << 16;
    let _ = correlated(&mut s, &mut r, &a, &b, n).await;
    let stats = (a.stats(), b.stats());
    assert_eq!(stats.1.bytes_sent - before, (16 * n + 3 * U_HEADER) as u64);
    assert_eq!(stats.1.frames_sent, 1 + 3);
    // The sender sends nothing during a semi-honest extension (only its base-OT message).
    assert_eq!(stats.0.bytes_sent, 5 + 128 * 64);
}

#[tokio::test]
async fn parties_that_disagree_get_a_protocol_error_not_a_hang() {
    // Different counts.
    let (mut s, mut r, a, b) = setup(Security::SemiHonest).await;
    let (x, _) = tokio::time::timeout(LIMIT, async {
        futures::join!(s.extend_correlated(&a, 1000), r.extend_correlated(&b, 5000))
    })
    .await
    .expect("hang");
    assert!(matches!(x, Err(OtError::Protocol(_))), "{x:?}");

    // Different security modes.
    let (a, b) = memory_pair(8);
    let (s, r) =
        futures::join!(IknpSender::setup(&a, Security::SemiHonest), IknpReceiver::setup(&b, Security::Malicious));
    let (mut s, mut r) = (s.unwrap(), r.unwrap());
    // A real node closes the channel when its side fails; the receiver then sees the close.
    let sender = async move {
        let x = s.extend_correlated(&a, 1000).await;
        drop(a);
        x
    };
    let (x, y) = tokio::time::timeout(LIMIT, async { futures::join!(sender, r.extend_correlated(&b, 1000)) })
        .await
        .expect("hang");
    assert!(matches!(x, Err(OtError::Protocol(_))), "{x:?}");
    assert_eq!(y.unwrap_err(), OtError::Channel(ChannelError::Closed));
}

#[tokio::test]
async fn a_peer_that_drops_the_channel_is_an_error_not_a_hang() {
    for security in [Security::SemiHonest, Security::Malicious] {
        // The receiver vanishes after setup: the sender's extension fails.
        let (mut s, r, a, b) = setup(security).await;
        drop((r, b));
        let x = tokio::time::timeout(LIMIT, s.extend_correlated(&a, 1 << 18)).await.expect("hang");
        assert_eq!(x.unwrap_err(), OtError::Channel(ChannelError::Closed));

        // The sender vanishes after setup: in malicious mode the receiver waits for the sender's
        // seed and must see the close; in semi-honest mode it fails once the buffer is full.
        let (s, mut r, a, b) = setup(security).await;
        drop((s, a));
        let y = tokio::time::timeout(LIMIT, r.extend_correlated(&b, 1 << 20)).await.expect("hang");
        assert_eq!(y.unwrap_err(), OtError::Channel(ChannelError::Closed));

        // The receiver vanishes in the middle of the stream.
        let (mut s, mut r, a, b) = setup(security).await;
        let x = tokio::time::timeout(LIMIT, async {
            let receiver = async move {
                let _ = futures::future::select(
                    Box::pin(r.extend_correlated(&b, 1 << 20)),
                    Box::pin(tokio::time::sleep(Duration::from_millis(1))),
                )
                .await;
                drop(b);
            };
            futures::join!(s.extend_correlated(&a, 1 << 20), receiver).0
        })
        .await
        .expect("hang");
        assert!(matches!(x, Err(OtError::Channel(_)) | Err(OtError::Protocol(_))), "{x:?}");
    }
}

type Rewrite = Box<dyn FnMut(Vec<u8>) -> Vec<u8> + Send>;

/// A channel end that rewrites the frames it sends (a receiver deviating from the protocol).
struct Tamper<C> {
    inner: C,
    rewrite: Mutex<Rewrite>,
}

impl<C: Channel> Channel for Tamper<C> {
    async fn send(&self, frame: Bytes) -> Result<(), ChannelError> {
        let frame = (self.rewrite.lock().unwrap())(frame.to_vec());
        self.inner.send(Bytes::from(frame)).await
    }
    async fn recv(&self) -> Result<Bytes, ChannelError> {
        self.inner.recv().await
    }
}

/// Flips bit `row` of the u column `column` in the first u chunk the receiver sends: as if the
/// receiver had used a different choice bit for that row in that column only.
fn flip_u_bit(column: usize, row: usize) -> Rewrite {
    let mut done = false;
    Box::new(move |mut frame: Vec<u8>| {
        if !done && frame[0] == KIND_U {
            let rows = u32::from_be_bytes(frame[10..14].try_into().unwrap()) as usize;
            frame[U_HEADER + column * rows / 8 + row / 8] ^= 1 << (row % 8);
            done = true;
        }
        frame
    })
}

async fn cheat(
    security: Security,
    delta: u128,
    column: usize,
) -> (Result<CorrelatedSenderOutput, OtError>, IknpSender, Tamper<MemoryChannel>, MemoryChannel) {
    let (a, b) = memory_pair(8);
    let b = Tamper { inner: b, rewrite: Mutex::new(Box::new(|f| f)) };
    let (s, r) = futures::join!(IknpSender::setup_with_delta(&a, security, delta), IknpReceiver::setup(&b, security));
    let (mut s, mut r) = (s.unwrap(), r.unwrap());
    *b.rewrite.lock().unwrap() = flip_u_bit(column, 77);
    let (x, _) = tokio::time::timeout(LIMIT, async {
        futures::join!(s.extend_correlated(&a, 1000), r.extend_correlated(&b, 1000))
    })
    .await
    .expect("hang");
    (x, s, b, a)
}

#[tokio::test]
async fn the_kos_check_catches_an_inconsistent_receiver() {
    // Δ_5 = 1: the flipped bit changes q_77 and the check must fail...
    let delta = 1u128 << 5 | 1 << 100;
    let (x, mut s, _b, a) = cheat(Security::Malicious, delta, 5).await;
    assert_eq!(x.unwrap_err(), OtError::ConsistencyCheck);
    // ...and the sender refuses to go on with this setup.
    assert_eq!(s.extend_correlated(&a, 10).await.unwrap_err(), OtError::Aborted);

    // Semi-honest IKNP does not notice: the outputs are silently inconsistent.
    let (x, ..) = cheat(Security::SemiHonest, delta, 5).await;
    assert!(x.is_ok());
}

#[tokio::test]
async fn the_kos_check_passes_when_the_guessed_delta_bit_is_zero() {
    // The selective failure KOS allows: flipping column j goes unnoticed iff Δ_j = 0, so a
    // cheating receiver that is not caught learns Δ_j = 0 (one bit, at the risk of abort).
    let delta = 1u128 << 5 | 1 << 100;
    let (x, ..) = cheat(Security::Malicious, delta, 6).await;
    assert!(x.is_ok());
}

#[test]
fn chunk_hashing_uses_one_tweak_per_row_across_pieces() {
    // More rows than one rayon piece, so piece offsets matter.
    let n = 2 * PAR_ROWS + 77;
    let mut rows = vec![0u128; n];
    AesPrg::new(9).fill_blocks(0, &mut rows);
    let (delta, tweak) = (0x5eed_u128 << 64 | 3, 1_000_003u128);
    let pi = FixedKeyAes::fixed();
    let (mut q, mut m1) = (rows.clone(), vec![0u128; n]);
    hash_pairs(tweak, delta, &mut q, &mut m1);
    let mut h = rows.clone();
    hash_rows(tweak, &mut h);
    for (k, &x) in rows.iter().enumerate() {
        let i = tweak + k as u128;
        assert_eq!(h[k], pi.tccr_hash(i, x));
        assert_eq!([q[k], m1[k]], [pi.tccr_hash(i, x), pi.tccr_hash(i, x ^ delta)]);
    }
}
