//! [`run`] over [`memory_pair`] for both protocols, both reveal modes, against a plaintext
//! intersection ([`crate::test_support::check`]).

use std::time::Duration;

use super::*;
use crate::channel::{ChannelError, memory_pair};
use crate::test_support::{check, keys};

const PROTOCOLS: [PsiProtocol; 2] = [PsiProtocol::Ecdh, PsiProtocol::Rr22];
const REVEALS: [Reveal; 2] = [Reveal::Both, Reveal::RequesterOnly];
/// No test should come near this; a hang fails instead of blocking the suite.
const DEADLINE: Duration = Duration::from_secs(120);

/// Runs both parties and checks their outputs against the plaintext intersection.
async fn check_run(protocol: PsiProtocol, reveal: Reveal, requester: &[Vec<u8>], responder: &[Vec<u8>]) {
    let (a, b) = memory_pair(8);
    let (config_a, config_b) = (PsiConfig::new(Role::Requester, reveal), PsiConfig::new(Role::Responder, reveal));
    let both = futures::future::join(run(&a, requester, protocol, &config_a), run(&b, responder, protocol, &config_b));
    let (ra, rb) = tokio::time::timeout(DEADLINE, both).await.expect("the protocol hung");
    let (ra, rb) = (ra.expect("requester failed"), rb.expect("responder failed"));
    // Proofs are on: ECDH-PSI returns its evidence, RR22 has none.
    assert_eq!(ra.ecdh_evidence.is_some(), protocol == PsiProtocol::Ecdh, "{protocol:?}");
    assert_eq!(rb.ecdh_evidence.is_some(), protocol == PsiProtocol::Ecdh, "{protocol:?}");
    check(requester, responder, reveal, (Ok::<_, PsiError>(ra.output), Ok(rb.output)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_protocols_match_the_plaintext_intersection() {
    let cases = [
        ("empty", Vec::new(), Vec::new()),
        ("empty vs some", Vec::new(), keys("k", 0..50)),
        ("one item, shared", keys("k", 0..1), keys("k", 0..1)),
        ("one item, not shared", keys("k", 0..1), keys("k", 1..2)),
        ("disjoint", keys("a", 0..300), keys("b", 0..200)),
        ("unequal sizes", keys("k", 7..8), keys("k", 0..3000)),
    ];
    for protocol in PROTOCOLS {
        for reveal in REVEALS {
            for (name, requester, responder) in &cases {
                eprintln!("{protocol:?} {reveal:?} {name}");
                check_run(protocol, reveal, requester, responder).await;
                check_run(protocol, reveal, responder, requester).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_off_gives_no_evidence_and_errors_keep_their_protocol() {
    let items = keys("k", 0..20);
    let (a, b) = memory_pair(8);
    let config = |role| PsiConfig { proofs: false, ..PsiConfig::new(role, Reveal::Both) };
    let (config_a, config_b) = (config(Role::Requester), config(Role::Responder));
    let (ra, rb) =
        futures::join!(run(&a, &items, PsiProtocol::Ecdh, &config_a), run(&b, &items, PsiProtocol::Ecdh, &config_b),);
    assert!(ra.unwrap().ecdh_evidence.is_none());
    assert!(rb.unwrap().ecdh_evidence.is_none());
    // A peer that is gone: each protocol's own channel error, behind one type.
    for protocol in PROTOCOLS {
        let (a, b) = memory_pair(4);
        drop(b);
        let error = run(&a, &items, protocol, &PsiConfig::new(Role::Requester, Reveal::Both)).await.unwrap_err();
        match (protocol, &error) {
            (PsiProtocol::Ecdh, PsiError::Ecdh(ecdh::EcdhPsiError::Channel(ChannelError::Closed)))
            | (PsiProtocol::Rr22, PsiError::Rr22(rr22::Rr22Error::Channel(ChannelError::Closed))) => {}
            _ => panic!("{protocol:?}: {error:?}"),
        }
    }
}

#[test]
fn protocol_names_parse_back() {
    for protocol in PROTOCOLS {
        assert_eq!(protocol.name().parse::<PsiProtocol>(), Ok(protocol));
    }
    let error = "kkrt".parse::<PsiProtocol>().unwrap_err();
    assert!(error.contains("known: ecdh, rr22"), "{error}");
}

#[test]
fn run_is_send() {
    fn assert_send<T: Send>(_: T) {}
    let (a, _b) = memory_pair(1);
    let items = keys("k", 0..1);
    let config = PsiConfig::new(Role::Requester, Reveal::Both);
    assert_send(run(&a, &items, PsiProtocol::Rr22, &config));
    assert_send(run(&a, items.as_slice(), PsiProtocol::Ecdh, &config));
}

/// The job's agreed peer size bounds the peer's hello in both protocols: a set one larger than
/// agreed is refused (each side's run errs, nothing computed), exactly the agreed size runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_announcing_more_than_agreed_is_refused() {
    let small = keys("k", 0..10);
    let large = keys("k", 5..16);
    for protocol in PROTOCOLS {
        for (limit, ok) in [(11u64, true), (10, false)] {
            let (a, b) = memory_pair(8);
            let requester = PsiConfig { max_peer_items: limit, ..PsiConfig::new(Role::Requester, Reveal::Both) };
            let responder = PsiConfig::new(Role::Responder, Reveal::Both);
            let (ra, rb) = futures::join!(
                async {
                    let r = run(&a, &small, protocol, &requester).await;
                    drop(a);
                    r
                },
                async {
                    let r = run(&b, &large, protocol, &responder).await;
                    drop(b);
                    r
                }
            );
            if ok {
                assert_eq!(ra.unwrap().output.intersection.map(|v| v.len()), Some(5), "{protocol:?}");
                assert!(rb.is_ok(), "{protocol:?}");
            } else {
                let error = ra.unwrap_err().to_string();
                assert!(error.contains("more than the 10 agreed"), "{protocol:?}: {error}");
                assert!(rb.is_err(), "{protocol:?}: the honest-looking peer must not finish");
            }
        }
    }
}
