//! Every query is checked against a plaintext membership test (a `HashSet`); the malicious-peer
//! tests send each message malformed and expect a protocol error, never a panic.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use bytes::Bytes;

use super::*;
use crate::channel::{Metered, memory_pair};

fn strs(items: &[&str]) -> Vec<Vec<u8>> {
    items.iter().map(|s| s.as_bytes().to_vec()).collect()
}

fn ids(prefix: &str, range: std::ops::Range<usize>) -> Vec<Vec<u8>> {
    range.map(|i| format!("{prefix}{i}").into_bytes()).collect()
}

const LIMITS: FetchLimits = FetchLimits { max_items: 1 << 30, max_bytes: 1 << 34, max_label_bytes: MAX_LABEL_BYTES };

/// Setup, fetch over a channel, then one query: the matches.
async fn fetch_and_query(
    list: &[Vec<u8>],
    labels: Option<&Payloads>,
    query_items: Vec<Vec<u8>>,
) -> (Vec<QueryMatch>, Arc<OprfSet>) {
    let key = Arc::new(OprfKey::random());
    let owned = evaluate_set(&key, list, labels, 1 << 20).unwrap();
    let (a, b) = memory_pair(4);
    let (sent, fetched) = tokio::join!(serve_fetch(&a, &owned), fetch(&b, &LIMITS));
    assert_eq!(sent.unwrap(), owned.records.len() as u64);
    let fetched = Arc::new(fetched.unwrap());
    assert_eq!(fetched.records, owned.records);
    assert_eq!(fetched.id(), owned.id());
    let matches = run_query(&key, &owned.params, &fetched, query_items).await.unwrap();
    (matches, fetched)
}

async fn run_query(
    key: &Arc<OprfKey>,
    current: &SetupParams,
    fetched: &Arc<OprfSet>,
    query_items: Vec<Vec<u8>>,
) -> Result<Vec<QueryMatch>, UnbalancedError> {
    let m = query_items.len() as u64;
    let (a, b) = memory_pair(4);
    let items = Arc::new(query_items);
    let owner = async move {
        let r = answer(&a, key, current, u64::MAX).await;
        drop(a);
        r
    };
    let querier = async move {
        let r = query(&b, fetched, &items).await;
        drop(b);
        r
    };
    let (answered, matches) = tokio::join!(owner, querier);
    if let Ok(n) = answered {
        assert_eq!(n, m);
    }
    matches
}

fn expected(list: &[Vec<u8>], query_items: &[Vec<u8>]) -> Vec<u32> {
    let set: HashSet<&Vec<u8>> = list.iter().collect();
    (0..query_items.len() as u32).filter(|&i| set.contains(&query_items[i as usize])).collect()
}

async fn check(list: &[Vec<u8>], query_items: Vec<Vec<u8>>) {
    let want = expected(list, &query_items);
    let (matches, _) = fetch_and_query(list, None, query_items).await;
    let got: Vec<u32> = matches.iter().map(|m| m.index).collect();
    assert_eq!(got, want);
    assert!(matches.iter().all(|m| m.label.is_none()));
}

#[tokio::test(flavor = "multi_thread")]
async fn queries_match_a_plaintext_membership_test() {
    let list = ids("id-", 0..3000);
    // Several frames (2048 points each), a mix of members and non-members.
    let mut q = ids("id-", 2500..3500);
    q.extend(ids("other-", 0..3000));
    check(&list, q).await;
    check(&list, Vec::new()).await; // empty query
    check(&list, strs(&["id-7"])).await; // one item, in the list
    check(&list, strs(&["nope"])).await; // one item, not in it
    check(&list, ids("x-", 0..50)).await; // disjoint
    check(&list, ids("id-", 0..3000)).await; // all in the list
    check(&list, strs(&["id-1", "id-1", "zz", "id-1", "id-2999"])).await; // duplicates
    check(&[], strs(&["a", "b"])).await; // empty list
    check(&strs(&["only"]), strs(&["only", "other"])).await; // one-item list
    check(&strs(&["", "é", "a,b"]), strs(&["", "é", "a,b", "e"])).await; // awkward bytes
}

#[tokio::test(flavor = "multi_thread")]
async fn labels_of_matched_items_open_and_only_those() {
    let list = strs(&["alice", "bob", "carol", "dave"]);
    let mut labels = Payloads::new();
    for l in [&b"risk,high"[..], b"\"quoted\"", b"", "\u{e9}t\u{e9} \u{4e2d}".as_bytes()] {
        labels.push(l);
    }
    let q = strs(&["carol", "mallory", "alice", "dave", "bob"]);
    let (matches, fetched) = fetch_and_query(&list, Some(&labels), q.clone()).await;
    let by_item: HashMap<&[u8], &[u8]> = list.iter().map(|x| &x[..]).zip(labels.iter()).collect();
    let want: Vec<(u32, Vec<u8>)> =
        expected(&list, &q).into_iter().map(|i| (i, by_item[&q[i as usize][..]].to_vec())).collect();
    let got: Vec<(u32, Vec<u8>)> = matches.into_iter().map(|m| (m.index, m.label.unwrap())).collect();
    assert_eq!(got, want);
    // No label appears in clear in the fetched set.
    for l in labels.iter().filter(|l| l.len() > 2) {
        assert!(!fetched.records.windows(l.len()).any(|w| w == l));
    }
}

#[test]
fn tag_bytes_bound_false_positives() {
    // n·B·2^-8t ≤ 2^-40, smallest t.
    assert_eq!(tag_bytes(1, 1), Some(MIN_TAG_BYTES));
    assert_eq!(tag_bytes(100_000_000, 1_000_000_000), Some(13)); // 40 + 27 + 30 = 97 bits
    assert_eq!(tag_bytes(1 << 20, 1 << 20), Some(10)); // 80 bits
    assert_eq!(tag_bytes(1 << 20, (1 << 20) + 1), Some(11)); // 81 bits
    assert_eq!(tag_bytes(u64::MAX, u64::MAX), None);
}

#[test]
fn setup_ids_bind_the_key_and_the_list() {
    let list = ids("id-", 0..10);
    let k1 = OprfKey::random();
    let a = evaluate_set(&k1, &list, None, 100).unwrap();
    let b = evaluate_set(&k1, &list, None, 100).unwrap();
    assert_eq!(a.id(), b.id(), "same key, same list: same id");
    assert_eq!(a.records, b.records);
    let c = evaluate_set(&OprfKey::random(), &list, None, 100).unwrap();
    assert_ne!(a.id(), c.id(), "a rotated key gives a new id");
    let d = evaluate_set(&k1, &list[1..], None, 100).unwrap();
    assert_ne!(a.id(), d.id(), "another list gives a new id");
    let mut e = evaluate_set(&k1, &list, None, 100).unwrap().records;
    e[0] ^= 1;
    assert!(OprfSet::new(a.params, e).unwrap_err().contains("digest"), "a changed record is refused");
    let bytes = k1.to_bytes();
    assert_eq!(OprfKey::from_bytes(&bytes).unwrap().commitment(), k1.commitment());
    assert!(OprfKey::from_bytes(&[0; 32]).is_none());
    assert!(OprfKey::from_bytes(&[0xff; 32]).is_none(), "not canonical");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_key_refuses_the_old_setup() {
    let list = ids("id-", 0..20);
    let old_key = Arc::new(OprfKey::random());
    let old = Arc::new(evaluate_set(&old_key, &list, None, 1000).unwrap());
    let new_key = Arc::new(OprfKey::random());
    let new = evaluate_set(&new_key, &list, None, 1000).unwrap();
    let err = run_query(&new_key, &new.params, &old, strs(&["id-1"])).await.unwrap_err();
    assert!(
        err.to_string().contains("not the owner's current one") || matches!(err, UnbalancedError::Channel(_)),
        "{err}"
    );
    // The owner's error, on its side, names the superseded setup.
    let (a, b) = memory_pair(4);
    let items = Arc::new(strs(&["id-1"]));
    let (owner, _) = tokio::join!(
        async {
            let r = answer(&a, &new_key, &new.params, u64::MAX).await;
            drop(a);
            r
        },
        async {
            let r = query(&b, &old, &items).await;
            drop(b);
            r
        }
    );
    assert!(owner.unwrap_err().to_string().contains("superseded"));
    // A key that does not belong to the setup is refused before anything is read.
    let (a, _b) = memory_pair(4);
    assert!(matches!(answer(&a, &old_key, &new.params, 10).await, Err(UnbalancedError::Input(_))));
}

// ------------------------------------------------------------------------------------------------
// Malicious peers
// ------------------------------------------------------------------------------------------------

/// Sends `frames` as the peer, then waits (so the side under test sees them, not a closed channel).
async fn as_peer<T>(frames: Vec<Vec<u8>>, under_test: impl AsyncFnOnce(&crate::channel::MemoryChannel) -> T) -> T {
    let (a, b) = memory_pair(64);
    for f in frames {
        b.send(Bytes::from(f)).await.unwrap();
    }
    let r = under_test(&a).await;
    drop(b);
    r
}

fn query_hello(id: [u8; 32], m: u64) -> Vec<u8> {
    let mut body = id.to_vec();
    body.extend_from_slice(&m.to_be_bytes());
    hello(MODE_QUERY, &body)
}

fn points_frame(kind: u8, points: &[[u8; 32]]) -> Vec<u8> {
    let mut f = vec![kind];
    for p in points {
        f.extend_from_slice(p);
    }
    f
}

fn valid_point(i: u64) -> [u8; 32] {
    hash_to_point(&i.to_be_bytes()).compress().to_bytes()
}

async fn owner_error(frames: Vec<Vec<u8>>, max_items: u64) -> String {
    let key = Arc::new(OprfKey::random());
    let set = evaluate_set(&key, &ids("id-", 0..5), None, 1000).unwrap();
    let frames = frames.into_iter().map(|f| f.to_vec()).collect::<Vec<_>>();
    let frames: Vec<Vec<u8>> =
        frames.into_iter().map(|f| if f == b"HELLO" { query_hello(set.id(), 2) } else { f }).collect();
    as_peer(frames, async |c| answer(c, &key, &set.params, max_items).await).await.unwrap_err().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_owner_refuses_malformed_queries() {
    let identity = [0u8; 32];
    let not_canonical = [0xffu8; 32];
    let good = valid_point(1);
    let cases: Vec<(Vec<Vec<u8>>, &str)> = vec![
        (vec![b"HELLO".to_vec(), points_frame(POINTS, &[good, identity])], "query point 2 is not a valid point"),
        (vec![b"HELLO".to_vec(), points_frame(POINTS, &[not_canonical, good])], "query point 1 is not a valid point"),
        (vec![b"HELLO".to_vec(), points_frame(POINTS, &[good, good, good])], "more points than it announced"),
        (vec![b"HELLO".to_vec(), vec![POINTS, 1, 2, 3]], "whole points"),
        (vec![b"HELLO".to_vec(), vec![POINTS]], "whole points"),
        (vec![b"HELLO".to_vec(), points_frame(EVALUATED, &[good])], "expected a points frame"),
        (vec![query_hello([9; 32], 1)], "superseded"),
        (vec![vec![HELLO, 1, 2]], "does not speak"),
        (vec![vec![RECORDS]], "not an unbalanced PSI hello"),
        (vec![hello(MODE_FETCH, &[0; 40])], "another step"),
    ];
    for (frames, want) in cases {
        let err = owner_error(frames, u64::MAX).await;
        assert!(err.contains(want), "{err} (wanted {want})");
    }
    // A query larger than the job's declared size is refused before any point is read.
    let err = owner_error(vec![b"HELLO".to_vec()], 1).await;
    assert!(err.contains("larger than the 1 allowed"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_querier_refuses_malformed_answers() {
    let key = OprfKey::random();
    let set = Arc::new(evaluate_set(&key, &ids("id-", 0..5), None, 1000).unwrap());
    let run = async |frames: Vec<Vec<u8>>| {
        let set = set.clone();
        let items = Arc::new(strs(&["id-1", "x"]));
        as_peer(frames, async move |c| query(c, &set, &items).await).await.unwrap_err().to_string()
    };
    let ok_hello = query_hello(set.id(), 2);
    let cases: Vec<(Vec<Vec<u8>>, &str)> = vec![
        (vec![query_hello([1; 32], 2)], "another setup"),
        (vec![query_hello(set.id(), 3)], "another number"),
        (vec![ok_hello.clone(), points_frame(EVALUATED, &[valid_point(1)])], "one point per query point"),
        (
            vec![ok_hello.clone(), points_frame(EVALUATED, &[valid_point(1), [0; 32]])],
            "evaluated point 2 is not a valid",
        ),
        (vec![ok_hello.clone(), points_frame(POINTS, &[valid_point(1), valid_point(2)])], "one point per query point"),
    ];
    for (frames, want) in cases {
        let err = run(frames).await;
        assert!(err.contains(want), "{err} (wanted {want})");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_querier_refuses_malformed_fetches() {
    let key = OprfKey::random();
    let set = evaluate_set(&key, &ids("id-", 0..40), None, 1000).unwrap();
    let fetch_err = async |frames: Vec<Vec<u8>>, limits: FetchLimits| {
        as_peer(frames, async |c| fetch(c, &limits).await).await.unwrap_err().to_string()
    };
    let with = |mut p: SetupParams, f: &dyn Fn(&mut SetupParams)| {
        f(&mut p);
        hello(MODE_FETCH, &p.encode())
    };
    let records = |body: &[u8]| {
        let mut f = vec![RECORDS];
        f.extend_from_slice(body);
        f
    };
    let r = set.params.record_bytes();
    let good_hello = hello(MODE_FETCH, &set.params.encode());
    // Oversized announcements are refused before anything is sized by them.
    let small = FetchLimits { max_items: 39, ..LIMITS };
    assert!(fetch_err(vec![good_hello.clone()], small).await.contains("larger than the 39 allowed"));
    let few_bytes = FetchLimits { max_bytes: 100, ..LIMITS };
    assert!(fetch_err(vec![good_hello.clone()], few_bytes).await.contains("bytes allowed"));
    let huge = with(set.params, &|p| {
        p.items = u64::MAX / 2;
        p.tag_bytes = tag_bytes(p.items, p.query_budget).unwrap();
    });
    assert!(
        fetch_err(vec![huge], FetchLimits { max_items: u64::MAX, max_bytes: u64::MAX, ..LIMITS })
            .await
            .contains("larger")
    );
    let labels = with(set.params, &|p| p.label_width = 1 << 20);
    assert!(fetch_err(vec![labels], LIMITS).await.contains("out of range"));
    let short_tags = with(set.params, &|p| p.tag_bytes -= 1);
    assert!(fetch_err(vec![short_tags], LIMITS).await.contains("do not bound false positives"));
    let bad_commitment = with(set.params, &|p| p.commitment = [0; 32]);
    assert!(fetch_err(vec![bad_commitment], LIMITS).await.contains("commitment"));
    // Records: partial, too many, wrong kind, unsorted.
    let all = &set.records;
    assert!(fetch_err(vec![good_hello.clone(), records(&all[..r + 1])], LIMITS).await.contains("whole records"));
    let mut extra = all.clone();
    extra.extend_from_slice(&all[..r]);
    assert!(fetch_err(vec![good_hello.clone(), records(&extra)], LIMITS).await.contains("more records"));
    assert!(fetch_err(vec![good_hello.clone(), points_frame(POINTS, &[])], LIMITS).await.contains("records frame"));
    let mut unsorted = all.clone();
    unsorted.rotate_left(r);
    assert!(fetch_err(vec![good_hello.clone(), records(&unsorted)], LIMITS).await.contains("digest"));
    let unsorted_hello = with(set.params, &|p| p.digest = records_digest(&unsorted));
    assert!(fetch_err(vec![unsorted_hello, records(&unsorted)], LIMITS).await.contains("not sorted"));
    let mut flipped = all.clone();
    flipped[r * 3 + 1] ^= 0x40;
    assert!(fetch_err(vec![good_hello, records(&flipped)], LIMITS).await.contains("digest"));
}

/// Captures every frame one side sends.
struct Capture<C> {
    inner: C,
    sent: Mutex<Vec<u8>>,
}

impl<C: Channel> Channel for Capture<C> {
    async fn send(&self, frame: Bytes) -> Result<(), ChannelError> {
        self.sent.lock().unwrap().extend_from_slice(&frame);
        self.inner.send(frame).await
    }
    async fn recv(&self) -> Result<Bytes, ChannelError> {
        self.inner.recv().await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_raw_id_on_the_wire_and_bytes_proportional_to_the_query() {
    let list = ids("customer-0000", 0..500);
    let key = Arc::new(OprfKey::random());
    let set = Arc::new(evaluate_set(&key, &list, None, 1000).unwrap());
    let q = ids("customer-0000", 400..600);
    let (a, b) = memory_pair(4);
    let (a, b) =
        (Capture { inner: a, sent: Mutex::default() }, Metered::new(Capture { inner: b, sent: Mutex::default() }));
    let items = Arc::new(q.clone());
    let (answered, matches) = tokio::join!(answer(&a, &key, &set.params, 1000), query(&b, &set, &items));
    answered.unwrap();
    assert_eq!(matches.unwrap().len(), 100);
    let stats = b.stats();
    // 32 bytes per item each way, plus hellos and frame kinds.
    assert_eq!(stats.bytes_sent, (HELLO_HEAD + 40 + 1 + 32 * 200) as u64);
    assert_eq!(stats.bytes_received, (HELLO_HEAD + 40 + 1 + 32 * 200) as u64);
    for sent in [&*a.sent.lock().unwrap(), &*b.inner().sent.lock().unwrap()] {
        for item in q.iter().chain(&list) {
            assert!(!sent.windows(item.len()).any(|w| w == &item[..]), "an id went over the wire");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_queries_of_one_id_send_unrelated_points() {
    // Additive blinding: X = 2·(H(y) + r·G) with a fresh r, so the owner cannot link two queries
    // of the same id; both still find it.
    let list = ids("id-", 0..50);
    let key = Arc::new(OprfKey::random());
    let set = Arc::new(evaluate_set(&key, &list, None, 1000).unwrap());
    let mut sent = Vec::new();
    for _ in 0..2 {
        let (a, b) = memory_pair(4);
        let b = Capture { inner: b, sent: Mutex::default() };
        let items = Arc::new(strs(&["id-7", "id-7", "nope"]));
        let (answered, matches) = tokio::join!(answer(&a, &key, &set.params, 10), query(&b, &set, &items));
        answered.unwrap();
        assert_eq!(matches.unwrap().iter().map(|m| m.index).collect::<Vec<_>>(), [0, 1]);
        sent.push(b.sent.into_inner().unwrap());
    }
    let points = |s: &[u8]| s[HELLO_HEAD + 40 + 1..].chunks(32).map(<[u8]>::to_vec).collect::<Vec<_>>();
    let (p0, p1) = (points(&sent[0]), points(&sent[1]));
    assert_eq!(p0.len(), 3);
    let all: HashSet<&Vec<u8>> = p0.iter().chain(&p1).collect();
    assert_eq!(all.len(), 6, "the same id twice, in one query or two, gives different points");
    // None is the unblinded hash (times 1 or 2).
    let h = hash_to_point(b"id-7");
    for p in p0.iter().chain(&p1) {
        assert!(p[..] != h.compress().as_bytes()[..] && p[..] != (h + h).compress().as_bytes()[..]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_of_version_one_is_refused_by_both_sides() {
    let key = Arc::new(OprfKey::random());
    let set = Arc::new(evaluate_set(&key, &ids("id-", 0..5), None, 1000).unwrap());
    let mut old = query_hello(set.id(), 2);
    old[17..19].copy_from_slice(&1u16.to_be_bytes());
    let err = as_peer(vec![old.clone()], async |c| answer(c, &key, &set.params, 10).await).await.unwrap_err();
    assert!(err.to_string().contains("version 1 is not supported"), "{err}");
    let items = Arc::new(strs(&["id-1", "x"]));
    let err = as_peer(vec![old], async |c| query(c, &set, &items).await).await.unwrap_err();
    assert!(err.to_string().contains("version 1 is not supported"), "{err}");
}
