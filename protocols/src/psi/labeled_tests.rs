//! ECDH payload joins against a plaintext join (a `HashMap` of the responder's payloads), and
//! malicious peers: every message malformed gives a protocol error, never a panic.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;

use super::*;
use crate::channel::{ChannelError, MemoryChannel, memory_pair};
use crate::psi::unbalanced::{OprfSet, records_digest};

fn ids(prefix: &str, range: std::ops::Range<usize>) -> Vec<Vec<u8>> {
    range.map(|i| format!("{prefix}{i}").into_bytes()).collect()
}

/// Awkward payloads: commas, quotes, newlines, empty, non-ASCII, lengths 0..=40.
fn payload_of(item: &[u8]) -> Vec<u8> {
    let mut p = match item.len() % 4 {
        0 => b"a,\"b\"\n".to_vec(),
        1 => Vec::new(),
        2 => "Zürich 東京".as_bytes().to_vec(),
        _ => item.to_vec(),
    };
    p.extend(std::iter::repeat_n(b'x', item.iter().map(|&b| b as usize).sum::<usize>() % 30));
    p
}

fn payloads(items: &[Vec<u8>]) -> Arc<Payloads> {
    let mut p = Payloads::new();
    items.iter().for_each(|i| p.push(&payload_of(i)));
    Arc::new(p)
}

fn config(role: Role, reveal: Reveal, payload: PayloadMode) -> LabeledConfig {
    LabeledConfig { role, reveal, progress: None, max_peer_items: u64::MAX, payload }
}

const RECEIVE: PayloadMode = PayloadMode::Receive { max_bytes: 1 << 16 };

async fn join(own: &[Vec<u8>], peer: &[Vec<u8>], reveal: Reveal) -> (PsiOutput, PsiOutput) {
    let (a, b) = memory_pair(4);
    let (ca, cb) =
        (config(Role::Requester, reveal, RECEIVE), config(Role::Responder, reveal, PayloadMode::Send(payloads(peer))));
    let (ra, rb) = tokio::join!(run(&a, own, &ca), run(&b, peer, &cb));
    (ra.unwrap(), rb.unwrap())
}

/// Checks both outputs against the plaintext join; returns the requester's matches.
async fn check(own: &[Vec<u8>], peer: &[Vec<u8>], reveal: Reveal) -> usize {
    let (ra, rb) = join(own, peer, reveal).await;
    let by_item: HashMap<&[u8], Vec<u8>> = peer.iter().map(|p| (p.as_slice(), payload_of(p))).collect();
    let mut want: Vec<u32> =
        (0..own.len() as u32).filter(|&i| by_item.contains_key(own[i as usize].as_slice())).collect();
    let got = ra.intersection.clone().unwrap();
    let payloads = ra.payloads.clone().unwrap();
    assert_eq!(payloads.len(), got.len());
    for (&i, p) in got.iter().zip(payloads.iter()) {
        assert_eq!(p, by_item[own[i as usize].as_slice()], "the payload of the matched item");
    }
    let mut sorted = got.clone();
    sorted.sort_unstable();
    want.sort_unstable();
    assert_eq!(sorted, want, "the requester's intersection");
    assert_eq!((ra.peer_size, rb.peer_size), (peer.len() as u64, own.len() as u64));
    assert!(rb.payloads.is_none());
    match reveal {
        Reveal::RequesterOnly => assert!(rb.intersection.is_none()),
        Reveal::Both => {
            // The joint order: the requester's entities (copies adjacent) in the responder's order.
            let mut entities: Vec<&[u8]> = got.iter().map(|&i| own[i as usize].as_slice()).collect();
            entities.dedup();
            let theirs: Vec<&[u8]> = rb.intersection.unwrap().iter().map(|&i| peer[i as usize].as_slice()).collect();
            assert_eq!(entities, theirs, "both sides list the intersection in the joint order");
        }
    }
    got.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_joins_match_a_plaintext_join() {
    let dup: Vec<Vec<u8>> = ids("k", 0..30).into_iter().flat_map(|i| [i.clone(), i]).collect();
    type Case = (Vec<Vec<u8>>, Vec<Vec<u8>>, usize);
    let cases: Vec<Case> = vec![
        (vec![], vec![], 0),
        (ids("k", 0..20), vec![], 0),
        (vec![], ids("k", 0..20), 0),
        (ids("k", 0..1), ids("k", 0..1), 1),
        (ids("k", 0..1), ids("k", 1..2), 0),
        (ids("k", 0..200), ids("j", 0..200), 0),
        (ids("k", 0..200), ids("k", 0..200), 200),
        (ids("k", 0..300), ids("k", 100..2500), 200),
        (ids("k", 0..3000), ids("k", 2900..3100), 100),
        // Copies of an item on the requester's side: every copy matches.
        (dup, ids("k", 20..50), 20),
    ];
    for reveal in [Reveal::RequesterOnly, Reveal::Both] {
        for (own, peer, expect) in &cases {
            assert_eq!(check(own, peer, reveal).await, *expect, "{} × {} {reveal:?}", own.len(), peer.len());
        }
    }
}

/// A payload of the largest allowed size, and the requester's limit refusing a wider one before
/// anything is sized.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payload_width_is_checked_against_the_limit() {
    let peer = ids("k", 0..5);
    let mut p = Payloads::new();
    for (i, _) in peer.iter().enumerate() {
        p.push(&vec![b'v'; if i == 2 { 100 } else { 3 }]);
    }
    let p = Arc::new(p);
    for (max_bytes, ok) in [(100, true), (99, false)] {
        let (a, b) = memory_pair(4);
        let ca = config(Role::Requester, Reveal::RequesterOnly, PayloadMode::Receive { max_bytes });
        let cb = config(Role::Responder, Reveal::RequesterOnly, PayloadMode::Send(p.clone()));
        let requester = async {
            let r = run(&a, &peer[1..3], &ca).await;
            drop(a);
            r
        };
        let (ra, _) = tokio::join!(requester, run(&b, &peer, &cb));
        match ra {
            Ok(out) => {
                assert!(ok);
                // The joint order is the records' order: find the payload of own item 1 (k2).
                let payloads = out.payloads.unwrap();
                let at = out.intersection.unwrap().iter().position(|&i| i == 1).unwrap();
                assert_eq!(payloads.get(at), &[b'v'; 100][..]);
            }
            Err(e) => assert!(!ok && e.to_string().contains("larger than the 99 allowed"), "{e}"),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Malicious peers
// ------------------------------------------------------------------------------------------------

/// Runs `under_test` against a peer that sends `frames`, drains what it gets and closes once
/// nothing came for half a second.
async fn as_peer<T>(frames: Vec<Vec<u8>>, under_test: impl AsyncFnOnce(&MemoryChannel) -> T) -> T {
    let (a, b) = memory_pair(64);
    let peer = async move {
        for f in frames {
            if b.send(Bytes::from(f)).await.is_err() {
                break;
            }
        }
        while let Ok(Ok(_)) = tokio::time::timeout(std::time::Duration::from_millis(500), b.recv()).await {}
    };
    let tested = async move {
        let r = under_test(&a).await;
        drop(a);
        r
    };
    let (r, ()) = tokio::join!(tested, peer);
    r
}

async fn requester_error(frames: Vec<Vec<u8>>, own: &[Vec<u8>], reveal: Reveal) -> String {
    let own = own.to_vec();
    as_peer(frames, async move |c| {
        let r = run(c, &own[..], &config(Role::Requester, reveal, RECEIVE)).await;
        r.expect_err("the requester must refuse").to_string()
    })
    .await
}

async fn responder_error(frames: Vec<Vec<u8>>, own: &[Vec<u8>], reveal: Reveal, max_peer_items: u64) -> String {
    let own = own.to_vec();
    as_peer(frames, async move |c| {
        let cfg =
            LabeledConfig { max_peer_items, ..config(Role::Responder, reveal, PayloadMode::Send(payloads(&own))) };
        run(c, &own[..], &cfg).await.expect_err("the responder must refuse").to_string()
    })
    .await
}

fn expect(error: &str, part: &str) {
    assert!(error.contains(part), "expected '{part}' in: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_hellos_are_refused_by_both_sides() {
    let own = ids("k", 0..10);
    let good = |role: Role| hello(role, Reveal::RequesterOnly, 10);
    let mut plain = vec![0x01];
    plain.extend_from_slice(super::super::ecdh::PROTOCOL_ID);
    plain.extend_from_slice(&[0; 45]);
    let mut version = good(Role::Responder);
    version[18] = 9;
    let mut long = good(Role::Responder);
    long.push(0);
    let mut role = good(Role::Responder);
    role[19] = 7;
    let huge = hello(Role::Responder, Reveal::RequesterOnly, u64::from(u32::MAX) + 1);
    for (frame, part) in [
        (plain, "plain ECDH-PSI"),
        (vec![HELLO], "not an ECDH payload join hello"),
        (version, "version 9"),
        (long, "expected 29"),
        (role, "unknown role 7"),
        (good(Role::Requester), "same role"),
        (hello(Role::Responder, Reveal::Both, 10), "another reveal mode"),
        (huge, "at most 4294967295"),
    ] {
        expect(&requester_error(vec![frame], &own, Reveal::RequesterOnly).await, part);
    }
    // The responder refuses a requester above the job's bound before evaluating anything.
    let e = responder_error(vec![hello(Role::Requester, Reveal::Both, 11)], &own, Reveal::Both, 10).await;
    expect(&e, "more than the 10 agreed");
    expect(&responder_error(vec![good(Role::Responder)], &own, Reveal::RequesterOnly, 100).await, "same role");
    // Wrong payload sides are this party's own error, before any message.
    let (a, _b) = memory_pair(4);
    let e = run(&a, &own[..], &config(Role::Requester, Reveal::Both, PayloadMode::None)).await.unwrap_err();
    assert!(matches!(e, EcdhPsiError::Input(_)), "{e}");
}

/// A responder that sends its hello, then the unbalanced fetch of a set `tamper` altered, then
/// answers the query honestly (or not at all if the requester stopped).
async fn cheating_responder(
    own: &[Vec<u8>],
    requester_items: &[Vec<u8>],
    reveal: Reveal,
    tamper: impl FnOnce(&mut OprfSet, &mut u64),
) -> Result<PsiOutput, EcdhPsiError> {
    let (a, b) = memory_pair(64);
    let key = Arc::new(OprfKey::random());
    let labels = payloads(own);
    let (mut set, _) = evaluate_set_ordered(&key, own, Some(&labels), requester_items.len() as u64).unwrap();
    let mut announced = own.len() as u64;
    tamper(&mut set, &mut announced);
    let params = set.params;
    let responder = async move {
        b.send(hello(Role::Responder, reveal, announced).into()).await.unwrap();
        let _ = b.recv().await;
        if serve_fetch(&b, &set).await.is_ok() {
            let _ = answer(&b, &key, &params, u64::MAX).await;
        }
        while b.recv().await.is_ok() {}
    };
    let requester = async move {
        let r = run(&a, requester_items, &config(Role::Requester, reveal, RECEIVE)).await;
        drop(a);
        r
    };
    tokio::join!(requester, responder).0
}

fn redigest(set: &mut OprfSet) {
    set.params.digest = records_digest(&set.records);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_requester_refuses_malformed_sets() {
    let own = ids("k", 0..50);
    let query_items = ids("k", 25..75);
    let record = |s: &OprfSet| s.params.record_bytes();
    // Sizes that disagree with the hello or the requester's own size.
    let e = cheating_responder(&own, &query_items, Reveal::RequesterOnly, |_, n| *n = 49).await.unwrap_err();
    expect(&e.to_string(), "larger than the 49 allowed");
    let e = cheating_responder(&own, &query_items, Reveal::RequesterOnly, |_, n| *n = 51).await.unwrap_err();
    expect(&e.to_string(), "another number of records");
    let e = cheating_responder(&own, &query_items, Reveal::RequesterOnly, |s, _| {
        let labels = payloads(&own);
        *s = evaluate_set_ordered(&OprfKey::random(), &own, Some(&labels), 1 << 40).unwrap().0;
    })
    .await
    .unwrap_err();
    expect(&e.to_string(), "another set size");
    // A records frame cut short, unsorted tags, records that do not hash to the digest.
    let e = cheating_responder(&own, &query_items, Reveal::RequesterOnly, |s, _| {
        s.records.truncate(s.records.len() - 1);
    })
    .await
    .unwrap_err();
    expect(&e.to_string(), "whole records");
    let e = cheating_responder(&own, &query_items, Reveal::RequesterOnly, |s, _| {
        let r = record(s);
        let (first, rest) = s.records.split_at_mut(r);
        first.swap_with_slice(&mut rest[..r]);
        if s.records[..r] != s.records[r..2 * r] {
            let t = s.params.tag_bytes as usize;
            s.records[..t].fill(0xff);
        }
        redigest(s);
    })
    .await
    .unwrap_err();
    expect(&e.to_string(), "not sorted");
    let e = cheating_responder(&own, &query_items, Reveal::RequesterOnly, |s, _| s.records[3] ^= 1).await.unwrap_err();
    expect(&e.to_string(), "digest");
}

/// A tampered label or a wrong tag drops that item (it cannot open), never panics or hands out a
/// wrong payload; the other items still join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_labels_and_wrong_tags_do_not_match() {
    let own = ids("k", 0..50);
    let query_items = ids("k", 25..75);
    let honest = cheating_responder(&own, &query_items, Reveal::RequesterOnly, |_, _| {}).await.unwrap();
    assert_eq!(honest.intersection.as_ref().unwrap().len(), 25);
    let t = |s: &OprfSet| s.params.tag_bytes as usize;
    // Flip a bit of every label's ciphertext, or of its GCM tag.
    for offset in [0usize, 1] {
        let out = cheating_responder(&own, &query_items, Reveal::RequesterOnly, |s, _| {
            let (r, t) = (s.params.record_bytes(), t(s));
            for rec in s.records.chunks_exact_mut(r) {
                let at = if offset == 0 { t + 2 } else { r - 1 };
                rec[at] ^= 0x40;
            }
            redigest(s);
        })
        .await
        .unwrap();
        assert_eq!(out.intersection.unwrap(), Vec::<u32>::new());
    }
    // Labels moved to other records (each sealed under another item's key): none opens.
    let out = cheating_responder(&own, &query_items, Reveal::RequesterOnly, |s, _| {
        let (r, t) = (s.params.record_bytes(), t(s));
        let first_label = s.records[t..r].to_vec();
        let n = s.records.len() / r;
        for i in 0..n - 1 {
            let next = s.records[(i + 1) * r + t..(i + 2) * r].to_vec();
            s.records[i * r + t..(i + 1) * r].copy_from_slice(&next);
        }
        s.records[(n - 1) * r + t..].copy_from_slice(&first_label);
        redigest(s);
    })
    .await
    .unwrap();
    assert_eq!(out.intersection.unwrap(), Vec::<u32>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_requester_refuses_malformed_answers() {
    let own = ids("k", 0..20);
    let query_items = ids("k", 10..30);
    // Fetch honestly, then answer with invalid points / a short frame / a closed channel.
    for (bad, part) in [(0u8, "not a valid point"), (1, "one point per query point"), (2, "closed")] {
        let (a, b) = memory_pair(64);
        let key = Arc::new(OprfKey::random());
        let labels = payloads(&own);
        let (set, _) = evaluate_set_ordered(&key, &own, Some(&labels), 20).unwrap();
        let responder = async move {
            b.send(hello(Role::Responder, Reveal::RequesterOnly, 20).into()).await.unwrap();
            let _ = b.recv().await;
            serve_fetch(&b, &set).await.unwrap();
            let query_hello = b.recv().await.unwrap();
            let mut confirm = query_hello.to_vec();
            confirm.truncate(query_hello.len());
            b.send(confirm.into()).await.unwrap();
            let points = b.recv().await.unwrap();
            match bad {
                0 => {
                    let mut frame = vec![0x04];
                    frame.extend(std::iter::repeat_n(0xffu8, points.len() - 1));
                    b.send(frame.into()).await.unwrap();
                }
                1 => b.send(Bytes::from(points[..points.len() - 32].to_vec())).await.unwrap(),
                _ => drop(b),
            }
        };
        let query_items = query_items.clone();
        let requester = async move {
            let r = run(&a, &query_items[..], &config(Role::Requester, Reveal::RequesterOnly, RECEIVE)).await;
            drop(a);
            r
        };
        let e = tokio::join!(requester, responder).0.unwrap_err().to_string();
        let e = e.to_lowercase();
        assert!(e.contains(part), "{part}: {e}");
    }
}

/// With reveal both: a requester's positions frame that is malformed, out of order, out of range
/// or longer than announced is refused; so are invalid query points.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_responder_refuses_malformed_positions_and_points() {
    let own = ids("k", 0..10);
    for (positions, part) in [
        (vec![vec![MATCHED, 0, 0, 0, 0, 0, 0, 0, 11]], "more than 10 possible"),
        (vec![vec![POSITIONS, 0, 0, 0, 1]], "count of matched records"),
        (vec![vec![MATCHED, 0, 0, 0, 0, 0, 0, 0, 2], vec![POSITIONS, 0, 0, 0, 3, 0, 0, 0, 3]], "out of order"),
        (vec![vec![MATCHED, 0, 0, 0, 0, 0, 0, 0, 1], vec![POSITIONS, 0, 0, 0, 10]], "out of range"),
        (vec![vec![MATCHED, 0, 0, 0, 0, 0, 0, 0, 1], vec![POSITIONS, 0, 0, 0, 1, 0, 0, 0, 2]], "more record positions"),
        (vec![vec![MATCHED, 0, 0, 0, 0, 0, 0, 0, 1], vec![POSITIONS, 0, 0, 1]], "whole record positions"),
        (vec![vec![MATCHED, 0, 0, 0, 0, 0, 0, 0, 1]], "closed"),
    ] {
        // A requester that runs honestly up to the positions, then sends `positions`.
        let (a, b) = memory_pair(64);
        let requester = async move {
            a.send(hello(Role::Requester, Reveal::Both, 10).into()).await.unwrap();
            let _ = a.recv().await.unwrap();
            let limits = FetchLimits { max_items: 10, max_bytes: u64::MAX, max_label_bytes: 1 << 16 };
            let set = Arc::new(fetch(&a, &limits).await.unwrap());
            let items = Arc::new(ids("k", 5..15));
            query(&a, &set, &items).await.unwrap();
            for p in positions {
                let _ = a.send(p.into()).await;
            }
            drop(a);
        };
        let cfg = config(Role::Responder, Reveal::Both, PayloadMode::Send(payloads(&own)));
        let own = own.clone();
        let responder = async move {
            let r = run(&b, &own[..], &cfg).await;
            drop(b);
            r
        };
        let (_, r) = tokio::join!(requester, responder);
        let e = r.unwrap_err().to_string().to_lowercase();
        assert!(e.contains(part), "{part}: {e}");
    }
    // A requester that closes right after its hello: a channel error, not a panic.
    let e =
        responder_error(vec![hello(Role::Requester, Reveal::RequesterOnly, 1)], &own, Reveal::RequesterOnly, 99).await;
    expect(&e.to_lowercase(), "closed");
}

/// Invalid points in the requester's query are refused by the responder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_responder_refuses_invalid_query_points() {
    let own = ids("k", 0..10);
    let (a, b) = memory_pair(64);
    let requester = async move {
        a.send(hello(Role::Requester, Reveal::RequesterOnly, 2).into()).await.unwrap();
        let _ = a.recv().await.unwrap();
        let limits = FetchLimits { max_items: 10, max_bytes: u64::MAX, max_label_bytes: 1 << 16 };
        let set = fetch(&a, &limits).await.unwrap();
        let mut body = vec![0x01];
        body.extend_from_slice(crate::psi::unbalanced::PROTOCOL_ID);
        body.extend_from_slice(&crate::psi::unbalanced::VERSION.to_be_bytes());
        body.push(2);
        body.extend_from_slice(&set.id());
        body.extend_from_slice(&2u64.to_be_bytes());
        a.send(body.into()).await.unwrap();
        let _ = a.recv().await;
        let mut points = vec![0x03];
        points.extend_from_slice(&[0xff; 64]);
        a.send(points.into()).await.unwrap();
        while a.recv().await.is_ok() {}
    };
    let cfg = config(Role::Responder, Reveal::RequesterOnly, PayloadMode::Send(payloads(&own)));
    let responder = async move {
        let r = run(&b, &own[..], &cfg).await;
        drop(b);
        r
    };
    let (_, r) = tokio::join!(requester, responder);
    expect(&r.unwrap_err().to_string(), "query point 1 is not a valid point");
}

/// A channel that keeps every frame it sends.
struct Capture {
    inner: MemoryChannel,
    sent: Mutex<Vec<Bytes>>,
}

impl Channel for Capture {
    async fn send(&self, frame: Bytes) -> Result<(), ChannelError> {
        self.sent.lock().unwrap().push(frame.clone());
        self.inner.send(frame).await
    }
    async fn recv(&self) -> Result<Bytes, ChannelError> {
        self.inner.recv().await
    }
}

/// Neither side sends an item or a payload in clear; the bytes per item are as documented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_item_or_payload_in_clear_on_the_wire() {
    let own = ids("requester-secret-", 0..300);
    let peer = ids("requester-secret-", 200..700);
    let mut labels = Payloads::new();
    peer.iter().for_each(|p| labels.push(&[b"PAYLOAD-", &p[..]].concat()));
    let (a, b) = memory_pair(8);
    let (a, b) = (Capture { inner: a, sent: Mutex::default() }, Capture { inner: b, sent: Mutex::default() });
    let ca = config(Role::Requester, Reveal::Both, RECEIVE);
    let cb = config(Role::Responder, Reveal::Both, PayloadMode::Send(Arc::new(labels)));
    let (ra, rb) = tokio::join!(run(&a, &own[..], &ca), run(&b, &peer[..], &cb));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!((ra.intersection.unwrap().len(), rb.intersection.unwrap().len()), (100, 100));
    let all = |c: &Capture| c.sent.lock().unwrap().iter().flat_map(|f| f.to_vec()).collect::<Vec<u8>>();
    let (sent_a, sent_b) = (all(&a), all(&b));
    for needle in [&b"PAYLOAD-"[..], b"requester-secret-", b"secret"] {
        assert!(!sent_a.windows(needle.len()).any(|w| w == needle), "requester sent {needle:?}");
        assert!(!sent_b.windows(needle.len()).any(|w| w == needle), "responder sent {needle:?}");
    }
    // Requester: 29 + 32 per own item (+ the fetch/query hellos and 4 per matched record).
    assert!(sent_a.len() < 29 + 60 + 32 * 300 + 9 + 4 * 100 + 64, "{}", sent_a.len());
    assert!(sent_a.len() >= 32 * 300);
}
