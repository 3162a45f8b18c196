//! Not a fuzz target: writes the seed corpora (`fuzz/seeds/TARGET/`) — real frames, requests and
//! files made by the project's own code, a few per target — and exits. It is built like the targets
//! (so it needs no second build of the project); rerun it after a wire format changes:
//! `cargo fuzz run seeds -s none` from the repository root. `.ci/fuzz` skips it.
#![no_main]

use std::path::{Path, PathBuf};

use bytes::Bytes;
use consort_api::proto::JobRequest;
use consort_api::{JOB_PROTOCOL_VERSION, JobKind};
use consort_engine::audit::{AuditLog, events, export};
use consort_fuzz::lr::{ROWS, config, input};
use consort_fuzz::{Recording, audit_key, encode_script};
use consort_protocols::mpc::Party;
use consort_protocols::mpc::dealer::run_dealer;
use consort_protocols::mpc::lr::{exchange_partial_scores, train, train_with_dealer};
use consort_protocols::psi::ecdh::{self, EcdhPsiConfig};
use consort_protocols::psi::rr22::{self, Rr22Config};
use consort_protocols::{Metered, Reveal, Role, memory_pair};
use prost::Message;

const OURS: [&[u8]; 4] = [b"alice", b"bob", b"carol", b"dave"];
const PEERS: [&[u8]; 5] = [b"bob", b"dave", b"zed", b"yan", b"xi"];

libfuzzer_sys::fuzz_target!(init: write_and_exit(), |_data: &[u8]| {});

fn write_and_exit() {
    write_seeds();
    std::process::exit(0);
}

fn write_seeds() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds");
    futures::executor::block_on(async {
        ecdh_seeds(&root.join("ecdh")).await;
        rr22_seeds(&root.join("rr22")).await;
        lr_seeds(&root.join("lr")).await;
        unbalanced_seeds(&root.join("unbalanced")).await;
        sb_seeds(&root.join("sb")).await;
    });
    job_seeds(&root);
    csv_seeds(&root.join("csv_rows"));
    audit_seeds(&root);
    key_seeds(&root);
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
    println!("{} ({} bytes)", dir.join(name).display(), bytes.len());
}

fn first(frames: Vec<Bytes>) -> Vec<(bool, Bytes)> {
    frames.into_iter().map(|f| (false, f)).collect()
}

fn role(options: u8) -> (Role, Role) {
    if options & 1 == 0 { (Role::Requester, Role::Responder) } else { (Role::Responder, Role::Requester) }
}

fn reveal(options: u8) -> Reveal {
    if options & 2 == 0 { Reveal::Both } else { Reveal::RequesterOnly }
}

/// The frames a real peer sends the party the target plays, per options byte.
async fn ecdh_seeds(dir: &Path) {
    for options in [0u8, 1, 2 | 4, 1 | 4] {
        let (ours, theirs) = role(options);
        let config = |role| EcdhPsiConfig {
            role,
            reveal: reveal(options),
            progress: None,
            proofs: options & 4 != 0,
            max_peer_items: u64::MAX,
        };
        let (a, b) = memory_pair(64);
        let a = Recording::new(a);
        let (ours, theirs) = (config(ours), config(theirs));
        let (x, y) = futures::join!(ecdh::run(&a, &OURS[..], &ours), ecdh::run(&b, &PEERS[..], &theirs));
        x.unwrap();
        y.unwrap();
        write(dir, &format!("options-{options}"), &encode_script(options, &first(a.frames())));
    }
}

async fn rr22_seeds(dir: &Path) {
    // The responder's seed holds the requester's 1 MiB VOLE frame (its minimum size): one is enough.
    for options in [0u8, 1, 2 | 4] {
        let (ours, theirs) = role(options);
        let config = |role| {
            let mut c = Rr22Config::new(role, reveal(options));
            if options & 4 != 0 {
                c.bucket_size = 4;
            }
            c
        };
        let (a, b) = memory_pair(64);
        let a = Recording::new(a);
        let (ours, theirs) = (config(ours), config(theirs));
        let (x, y) = futures::join!(rr22::run(&a, &OURS[..], &ours), rr22::run(&b, &PEERS[..], &theirs));
        x.unwrap();
        y.unwrap();
        write(dir, &format!("options-{options}"), &encode_script(options, &first(a.frames())));
    }
}

/// The frames a real owner sends a querier (fetch, query) and a real querier sends an owner.
async fn unbalanced_seeds(dir: &Path) {
    use consort_fuzz::unbalanced::{LIMITS, QUERY, set_and_key};
    use consort_protocols::psi::unbalanced::{answer, fetch, query, serve_fetch};
    use std::sync::Arc;
    for labels in [0u8, 4] {
        let (set, key) = set_and_key(labels != 0);
        let items = Arc::new(QUERY.map(<[u8]>::to_vec).to_vec());
        // The querier's fetch (options 0) and query (1): what the owner sends.
        let (a, b) = memory_pair(64);
        let a = Recording::new(a);
        let (x, y) = futures::join!(fetch(&a, &LIMITS), serve_fetch(&b, set));
        x.unwrap();
        y.unwrap();
        write(dir, &format!("options-{}", labels), &encode_script(labels, &first(a.frames())));
        let (a, b) = memory_pair(64);
        let a = Recording::new(a);
        let (x, y) = futures::join!(query(&a, set, &items), answer(&b, key, &set.params, 1 << 16));
        x.unwrap();
        y.unwrap();
        write(dir, &format!("options-{}", labels | 1), &encode_script(labels | 1, &first(a.frames())));
        // The owner's answer (2): what the querier sends.
        let (a, b) = memory_pair(64);
        let a = Recording::new(a);
        let (x, y) = futures::join!(answer(&a, key, &set.params, 1 << 16), query(&b, set, &items));
        x.unwrap();
        y.unwrap();
        write(dir, &format!("options-{}", labels | 2), &encode_script(labels | 2, &first(a.frames())));
    }
}

// The same shapes as the lr target.
async fn lr_seeds(dir: &Path) {
    let config = config();
    // Dealer-free: the frames A receives (options 0) and B receives (options 1).
    let (a, b) = memory_pair(64);
    let (a, b) = (Recording::new(a), Recording::new(b));
    let (x, y) = futures::join!(
        train(&a, input(Party::A, &config), &config, None),
        train(&b, input(Party::B, &config), &config, None)
    );
    x.unwrap();
    y.unwrap();
    write(dir, "options-0", &encode_script(0, &first(a.frames())));
    write(dir, "options-1", &encode_script(1, &first(b.frames())));
    // With a dealer: A's frames from B and the dealer (options 4), the dealer's from A and B (2).
    let (a, b) = memory_pair(64);
    let (a_dealer, dealer_a) = memory_pair(64);
    let (b_dealer, dealer_b) = memory_pair(64);
    let (a, a_dealer) = (Recording::new(a), Recording::new(a_dealer));
    let (dealer_a, dealer_b) = (Recording::new(dealer_a), Recording::new(dealer_b));
    let (x, y, z) = futures::join!(
        train_with_dealer(&a, &a_dealer, input(Party::A, &config), &config, None),
        train_with_dealer(&b, &b_dealer, input(Party::B, &config), &config, None),
        run_dealer(&dealer_a, &dealer_b)
    );
    x.unwrap();
    y.unwrap();
    z.unwrap();
    let mut frames = first(a.frames());
    frames.extend(a_dealer.frames().into_iter().map(|f| (true, f)));
    write(dir, "options-4", &encode_script(4, &frames));
    // The dealer reads both hellos first: interleave so each channel's frames stay in order.
    let mut frames = first(dealer_a.frames());
    frames.extend(dealer_b.frames().into_iter().map(|f| (true, f)));
    write(dir, "options-2", &encode_script(2, &frames));
    // Scores: B's partial scores as A receives them.
    let (a, b) = memory_pair(64);
    let a = Recording::new(a);
    let (x, y) = futures::join!(
        exchange_partial_scores(&a, Party::A, &[0.25; ROWS]),
        exchange_partial_scores(&b, Party::B, &[-1.5; ROWS])
    );
    x.unwrap();
    y.unwrap();
    write(dir, "options-3", &encode_script(3, &first(a.frames())));
}

/// The frames a real peer sends the party the `sb` target plays: training with either backend
/// (kept trees or not) as A and as B, and the prediction exchange.
async fn sb_seeds(dir: &Path) {
    use consort_fuzz::sb::{HE, HIDE, KEEP, PARTY_B, PREDICT, config, features, input, model, party};
    use consort_protocols::mpc::secureboost::{predict, train};
    for options in [0u8, PARTY_B, HE, HE | PARTY_B, KEEP, KEEP | PARTY_B, HIDE, HIDE | PARTY_B] {
        let (a, b) = memory_pair(64);
        let a = Recording::new(a);
        let theirs = options ^ PARTY_B;
        let (ours_config, theirs_config) = (config(options), config(theirs));
        let (x, y) = futures::join!(
            train(&a, input(options), &ours_config, None),
            train(&b, input(theirs), &theirs_config, None)
        );
        x.unwrap();
        y.unwrap();
        write(dir, &format!("options-{options}"), &encode_script(options, &first(a.frames())));
    }
    for options in [PREDICT, PREDICT | PARTY_B] {
        let (ours, theirs) = (party(options), party(options ^ PARTY_B));
        let (our_model, their_model) = (model(ours), model(theirs));
        let (our_x, their_x) = (features(ours), features(theirs));
        let (a, b) = memory_pair(64);
        let a = Recording::new(a);
        let (x, y) = futures::join!(predict(&a, ours, &our_model, &our_x), predict(&b, theirs, &their_model, &their_x));
        x.unwrap();
        y.unwrap();
        write(dir, &format!("options-{options}"), &encode_script(options, &first(a.frames())));
    }
}

fn job_seeds(root: &Path) {
    let train = consort_engine::lr::LrParams::default();
    let train_json = serde_json::to_string(&train).unwrap();
    let deal = r#"{"party":"A","peer":"bank","train_job":"t1"}"#;
    let request = |id: &str, kind: JobKind, params: &str| JobRequest {
        version: JOB_PROTOCOL_VERSION,
        job_id: id.into(),
        kind: kind as i32,
        protocol: consort_api::proto::PsiProtocol::Ecdh as i32,
        reveal: consort_api::proto::Reveal::Both as i32,
        responder_dataset: if kind == JobKind::Deal { String::new() } else { "accounts".into() },
        params: params.into(),
        rows: OURS.len() as u64,
    };
    let dir = root.join("job_request");
    write(&dir, "psi", &request("j1", JobKind::Psi, "").encode_to_vec());
    write(&dir, "train", &request("j2", JobKind::Train, &train_json).encode_to_vec());
    write(&dir, "score", &request("j3", JobKind::Score, r#"{"model_job":"j2"}"#).encode_to_vec());
    write(&dir, "deal", &request("t1.deal-a", JobKind::Deal, deal).encode_to_vec());
    let dir = root.join("job_params");
    let with = |options: u8, text: &str| [&[options][..], text.as_bytes()].concat();
    write(&dir, "psi", &with(0, ""));
    write(&dir, "train-responder", &with(1, &train_json));
    let dealer = consort_engine::lr::LrParams { dealer: Some("dealer".into()), ..train };
    write(&dir, "train-responder-dealer", &with(1, &serde_json::to_string(&dealer).unwrap()));
    let request = consort_node::job::train::TrainRequest {
        label: "y".into(),
        features: vec!["x1".into(), "x2".into()],
        params: consort_engine::lr::LrParams::default(),
    };
    write(&dir, "train-requester", &with(4 | 1, &serde_json::to_string(&request).unwrap()));
    write(&dir, "score-responder", &with(2, r#"{"model_job":"j2"}"#));
    write(&dir, "score-requester", &with(4 | 2, r#"{"model":"/nonexistent/model.json"}"#));
    write(&dir, "deal", &with(3, deal));
    let dir = root.join("sb_params");
    let sb = consort_engine::secureboost::SbParamsWire::default();
    write(&dir, "secureboost-responder", &with(0, &serde_json::to_string(&sb).unwrap()));
    let request =
        consort_node::job::secureboost::SbTrainRequest { label: "y".into(), features: vec!["x1".into()], params: sb };
    write(&dir, "secureboost-requester", &with(2, &serde_json::to_string(&request).unwrap()));
    write(&dir, "secureboost-score-responder", &with(1, r#"{"model_job":"j2","model_id":"00"}"#));
    write(&dir, "secureboost-score-requester", &with(3, r#"{"model":"/nonexistent/model.json"}"#));
}

fn csv_seeds(dir: &Path) {
    write(dir, "plain", b"id,v\n1,a\n2,b\n");
    write(dir, "quoted-crlf", b"id,name\r\n\"7\",\"a, \"\"b\"\"\"\r\n\r\n8,c\r\n");
    write(dir, "blank-lines", b"\n\nid , v\n  x1  ,1\n\nx2,\"multi\nline\"\n");
    write(dir, "errors", b"id,id\n1,\"open\n");
}

/// An audit log with a job's entries (signed with the targets' key), and bundles exported from it.
fn audit_seeds(root: &Path) {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = AuditLog::open(tmp.path(), audit_key()).unwrap();
    log.append("j1", "request", serde_json::json!({"peer": "bank", "kind": "psi"})).unwrap();
    log.append("j1", "grant", serde_json::json!({"granted": true})).unwrap();
    let (a, b) = memory_pair(64);
    let (a, b) = (Metered::new(a), Metered::new(b));
    let config =
        |role| EcdhPsiConfig { role, reveal: Reveal::Both, progress: None, proofs: true, max_peer_items: u64::MAX };
    let (responder, requester) = (config(Role::Responder), config(Role::Requester));
    let (x, y) = futures::executor::block_on(async {
        futures::join!(ecdh::run_with_evidence(&a, &OURS[..], &responder), ecdh::run(&b, &PEERS[..], &requester))
    });
    let (_, evidence) = x.unwrap();
    y.unwrap();
    events::record_transcript(&mut log, "j1", &a.stats()).unwrap();
    events::record_ecdh(&mut log, "j1", &evidence.expect("proofs on")).unwrap();
    log.append("j1", "end", serde_json::json!({"output_rows": 2})).unwrap();
    log.append("j2", "request", serde_json::json!({"peer": "bank", "kind": "train"})).unwrap();
    let audit = log.dir().to_path_buf();
    let read = |name: &str| std::fs::read(audit.join(name)).unwrap();
    let (lines, heads) = (read("log.jsonl"), read("heads.jsonl"));
    let dir = root.join("audit_log");
    write(&dir, "log-and-heads", &[&lines[..], b"\0", &heads[..]].concat());
    write(&dir, "torn-tail", &[&lines[..], b"{\"seq\":9", b"\0", &heads[..]].concat());
    let out = tmp.path().join("bundle.json");
    export(&audit, "partner", &audit_key().verifying_key(), "j1", &out).unwrap();
    let bundle = std::fs::read(&out).unwrap();
    let dir = root.join("audit_bundle");
    write(&dir, "one", &bundle);
    write(&dir, "two", &[&bundle[..], b"\0", &bundle[..]].concat());
}

/// config.toml and key files of a node made by `consort init`, pinned and with a dataset.
fn key_seeds(root: &Path) {
    let node = consort_fuzz::node();
    let read = |name: &str| std::fs::read(node.dir.join(name)).unwrap();
    write(&root.join("config"), "node", &read(consort_node::config::CONFIG_FILE));
    let dir = root.join("pem");
    let (cert, key) = (read(consort_node::config::TLS_CERT_FILE), read(consort_node::config::TLS_KEY_FILE));
    write(&dir, "cert-and-key", &[&cert[..], &key[..]].concat());
    write(&dir, "identity-key", &read(consort_node::config::IDENTITY_KEY_FILE));
}
