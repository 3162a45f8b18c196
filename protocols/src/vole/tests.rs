use super::*;
use crate::channel::memory_pair;
use crate::ot::gf128;

async fn run_pair(lengths: &[usize]) -> Vec<(u128, Vec<u128>, VoleReceiverOutput)> {
    let (a, b) = memory_pair(16);
    let lengths_s = lengths.to_vec();
    let lengths_r = lengths.to_vec();
    let sender = tokio::spawn(async move {
        let mut s = VoleSender::setup(&a).await.unwrap();
        let mut out = Vec::new();
        for n in lengths_s {
            out.push(s.extend(&a, n).await.unwrap().to_vec());
        }
        (s.delta(), out)
    });
    let receiver = tokio::spawn(async move {
        let mut r = VoleReceiver::setup(&b).await.unwrap();
        let mut out = Vec::new();
        for n in lengths_r {
            out.push(r.extend(&b, n).await.unwrap());
        }
        out
    });
    let (delta, bs) = sender.await.unwrap();
    let rs = receiver.await.unwrap();
    bs.into_iter().zip(rs).map(|(b, r)| (delta, b, r)).collect()
}

fn check(delta: u128, b: &[u128], r: &VoleReceiverOutput, n: usize) {
    assert_eq!(b.len(), n);
    assert_eq!(r.a.len(), n);
    assert_eq!(r.c.len(), n);
    for (i, ((&c, &a), &b)) in r.c.iter().zip(r.a.iter()).zip(b).enumerate() {
        assert_eq!(c, b ^ gf128::mul(a, delta), "correlation broken at {i} of {n}");
    }
    if n >= 64 {
        // a must look random: no zeros, no repeats, roughly balanced bits.
        let mut a = r.a.to_vec();
        a.sort_unstable();
        a.dedup();
        assert_eq!(a.len(), n, "repeated a values");
        assert!(!a.contains(&0));
        let ones: u64 = r.a.iter().map(|x| x.count_ones() as u64).sum();
        let expected = 64 * n as u64;
        assert!(ones.abs_diff(expected) < expected / 20, "a is biased: {ones} ones of {}", 128 * n);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correlations_hold_for_many_lengths_in_one_session() {
    let lengths = [0, 1, 2, 255, 1000, 1 << 14, 100_003];
    for ((delta, b, r), &n) in run_pair(&lengths).await.iter().zip(&lengths) {
        check(*delta, b, r, n);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successive_extensions_are_independent() {
    let runs = run_pair(&[4096, 4096]).await;
    assert_ne!(runs[0].1, runs[1].1);
    assert_ne!(*runs[0].2.a, *runs[1].2.a);
}

#[test]
fn parameters_meet_the_noise_bound_and_code_rate() {
    assert_eq!(min_noise_weight(), 398);
    for n in [1usize, 1000, 1 << 16, 1_153_000, 1 << 22, 10_000_019] {
        let p = VoleParams::for_len(n);
        assert!(p.trees >= 398, "{p:?}");
        assert!(p.code_len() >= 2 * n && p.code_len() >= MIN_CODE_LEN, "{p:?}");
        // Not wastefully long: below 2x the target plus one tree.
        assert!(p.code_len() < 2 * (2 * n).max(MIN_CODE_LEN) + (1 << p.depth), "{p:?}");
    }
}

#[test]
fn gilboa_fold_is_the_field_sum() {
    let x: Vec<u128> = (0..128u128).map(|i| i.wrapping_mul(0x0123_4567_89ab_cdef_fedc_ba98_7654_3211) ^ 77).collect();
    let expected = (0..128).fold(0u128, |acc, i| acc ^ gf128::mul(1u128 << i, x[i]));
    assert_eq!(gilboa_fold(&x), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_tree_frame_is_rejected() {
    let (a, b) = memory_pair(16);
    let sender = tokio::spawn(async move {
        let mut s = VoleSender::setup(&a).await.unwrap();
        s.extend(&a, 1000).await
    });
    // A receiver that expects a different length: the header check fails.
    let mut r = VoleReceiver::setup(&b).await.unwrap();
    let params = VoleParams::for_len(1000);
    let _cot = r.ot.extend_correlated(&b, params.cots()).await.unwrap();
    let wrong = VoleParams { depth: params.depth + 1, ..params };
    let err = recv_tree_messages(&b, &wrong, 0).await.unwrap_err();
    assert!(matches!(err, OtError::Protocol(_)), "{err:?}");
    drop(b);
    let _ = sender.await;
}
