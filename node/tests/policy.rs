//! The data owner's controls through the real CLI and two node processes: grants with a policy,
//! approval of each job, revocation, removal of a peer, and a key rotation on both sides without
//! a failed job.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{fails, ok, psi_args, s, start_node, two_nodes};

fn psi_ok(a: &Path, out: &Path) -> serde_json::Value {
    serde_json::from_str(ok(&psi_args(a, out)).trim()).unwrap()
}

/// The node's whole audit log verifies against its own key.
fn verify_log(dir: &Path) {
    let key = ok(&["audit", "key", s(dir)]);
    ok(&["audit", "verify", "--log", s(&dir.join("audit")), "--key", key.trim()]);
}

/// The responder's record of its latest job, as `consort jobs --json` lists it.
fn last_job(dir: &Path) -> serde_json::Value {
    let jobs = ok(&["jobs", s(dir), "--json"]);
    jobs.lines().last().map(|l| serde_json::from_str(l).unwrap()).unwrap_or_default()
}

#[test]
fn grants_bound_jobs_and_revocation_and_removal_take_effect_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let t = two_nodes(tmp.path(), 300, 100);
    let out = tmp.path().join("out.csv");
    // A grant allowing only RR22: the default ECDH request is refused, RR22 runs.
    let set = ok(&[
        "grant",
        "set",
        s(&t.b),
        "--dataset",
        "accounts",
        "--peer",
        "bank",
        "--jobs",
        "psi",
        "--protocols",
        "rr22",
        "--max-peer-rows",
        "1000",
        "--jobs-per-day",
        "50",
    ]);
    assert!(set.contains("bank:psi protocols=rr22 max-peer-rows=1000 jobs-per-day=50"), "{set}");
    assert!(set.contains("running node reloaded"), "{set}");
    let err = fails(&psi_args(&t.a, &out));
    assert!(err.contains("protocol ecdh is not allowed"), "{err}");
    let mut rr22 = psi_args(&t.a, &out);
    rr22.extend(["--protocol", "rr22"]);
    let done: serde_json::Value = serde_json::from_str(ok(&rr22).trim()).unwrap();
    assert_eq!(done["intersection"], 100, "{done}");
    let listed = ok(&["grant", "list", s(&t.b)]);
    assert!(listed.starts_with("accounts\tbank:psi protocols=rr22"), "{listed}");
    // A set larger than the grant allows is refused before anything is loaded or computed.
    ok(&[
        "grant",
        "set",
        s(&t.b),
        "--dataset",
        "accounts",
        "--peer",
        "bank",
        "--jobs",
        "psi",
        "--max-peer-rows",
        "299",
    ]);
    let err = fails(&psi_args(&t.a, &out));
    assert!(err.contains("the peer's set of 300 rows is larger than the 299 allowed"), "{err}");
    // Revoked: refused.
    ok(&["grant", "revoke", s(&t.b), "--dataset", "accounts", "--peer", "bank"]);
    let err = fails(&psi_args(&t.a, &out));
    assert!(err.contains("has no grant for peer 'bank'") || err.contains("no dataset 'accounts' is shared"), "{err}");
    fails(&["grant", "revoke", s(&t.b), "--dataset", "accounts", "--peer", "bank"]);
    // The peer removed: its pin and grants are gone, its connections refused at the handshake.
    ok(&["grant", "set", s(&t.b), "--dataset", "accounts", "--peer", "bank", "--jobs", "psi"]);
    let removed = ok(&["peer", "remove", s(&t.b), "--name", "bank"]);
    assert!(removed.contains("grant on dataset 'accounts'"), "{removed}");
    assert!(!ok(&["peer", "list", s(&t.b)]).contains("bank"));
    let err = fails(&psi_args(&t.a, &out));
    assert!(err.contains("did not take the job") || err.contains("cannot connect"), "{err}");
    // The responder is alive and its audit log verifies.
    verify_log(&t.b);
}

#[test]
fn with_approval_the_operator_approves_or_denies_each_job() {
    let tmp = tempfile::tempdir().unwrap();
    let t = two_nodes(tmp.path(), 200, 50);
    ok(&["grant", "set", s(&t.b), "--dataset", "accounts", "--peer", "bank", "--jobs", "psi", "--approval"]);
    for approve in [true, false] {
        let out = tmp.path().join(format!("out-{approve}.csv"));
        let requester = Command::new(env!("CARGO_BIN_EXE_consort"))
            .args(psi_args(&t.a, &out))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The job waits on the responder, its request shown in full.
        let started = Instant::now();
        let job = loop {
            let job = last_job(&t.b);
            if job["state"] == "awaiting-approval" {
                break job;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "no job awaits approval: {job}");
            std::thread::sleep(Duration::from_millis(100));
        };
        let id = job["job_id"].as_str().unwrap().to_string();
        let shown: serde_json::Value = serde_json::from_str(&ok(&["job", s(&t.b), &id, "--json"])).unwrap();
        assert_eq!(shown["state"], "awaiting-approval");
        assert_eq!(shown["request"]["kind"], "psi", "the request shown in full: {shown}");
        assert_eq!(shown["request"]["dataset"], "accounts", "{shown}");
        if approve {
            ok(&["approve", s(&t.b), &id]);
        } else {
            ok(&["deny", s(&t.b), &id, "--reason", "not this quarter"]);
        }
        let result = requester.wait_with_output().unwrap();
        if approve {
            assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
            let done: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
            assert_eq!(done["intersection"], 50);
        } else {
            assert!(!result.status.success());
            let err = String::from_utf8_lossy(&result.stderr);
            assert!(err.contains("denied the job: not this quarter"), "{err}");
            assert!(!out.exists());
        }
        // A decided job cannot be decided again.
        fails(&["approve", s(&t.b), &id]);
    }
    verify_log(&t.b);
}

#[test]
fn a_key_rotation_on_either_side_fails_no_job() {
    let tmp = tempfile::tempdir().unwrap();
    let common::TwoNodes { a, b, na: _na, nb, addr_b, .. } = two_nodes(tmp.path(), 200, 50);
    let out = tmp.path().join("out.csv");
    // The partner prepares its next key; the bank pins it beside the current one.
    let prepared = ok(&["init", s(&b), "--rotate-key"]);
    assert!(prepared.contains("node.next.crt"), "{prepared}");
    fails(&["init", s(&b), "--rotate-key"]);
    let next = b.join("node.next.crt");
    let add = |addr: &str, cert: &Path| {
        ok(&["peer", "add", s(&a), "--name", "partner", "--addr", addr, "--cert", s(cert), "--rotate"])
    };
    let rotated = add(&addr_b, &next);
    assert!(rotated.contains("previous certificate accepted for 7 days"), "{rotated}");
    let config = std::fs::read_to_string(a.join("config.toml")).unwrap();
    assert!(config.contains("[peers.previous]"), "{config}");
    // Before the partner switches: it still presents its current key, accepted as the previous pin.
    assert_eq!(psi_ok(&a, &out)["intersection"], 50);
    // The partner activates the new key and restarts: now accepted as the current pin.
    let activated = ok(&["init", s(&b), "--rotate-key", "--activate"]);
    assert!(activated.contains("restart the node"), "{activated}");
    fails(&["init", s(&b), "--rotate-key", "--activate"]);
    drop(nb);
    let (_nb, addr_b) = start_node(&b);
    ok(&["peer", "add", s(&a), "--name", "partner", "--addr", &addr_b, "--cert", s(&b.join("node.crt")), "--replace"]);
    assert_eq!(psi_ok(&a, &out)["intersection"], 50);
    // Pinning the same certificate again as a rotation is refused.
    let again = common::fails(&[
        "peer",
        "add",
        s(&a),
        "--name",
        "partner",
        "--addr",
        &addr_b,
        "--cert",
        s(&b.join("node.crt")),
        "--rotate",
    ]);
    assert!(again.contains("already pinned"), "{again}");
}

/// Issue 11 finding 7: after `peer add --replace` (or `peer remove`) the connections that
/// presented the old certificate are closed on reload, not just refused per request.
#[test]
fn replacing_or_removing_a_pin_closes_the_open_connections() {
    use consort_node::{job::connect, node, setup, state::NodeState};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (a, b) = consort_node::pair::init_pair(root).unwrap();
    let any: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    consort_node::pair::pin_pair(&a, any, &b, any).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let server = node::start(&b).await.unwrap();
        let client = NodeState::open(&a, any).await.unwrap();
        let mut entry = client.config().peer(consort_node::pair::B).unwrap().clone();
        entry.addr = server.peer_addr().to_string();
        let open_now = || server.state.pinned.open_connections();
        let wait_for = |n: usize| async move {
            for _ in 0..200 {
                if open_now() == n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("expected {n} open connections, have {}", open_now());
        };
        // Two connections of the bank; then its pin is replaced by another certificate.
        let (_c1, _) = connect::connect(&client, &entry).await.unwrap();
        let (_c2, _) = connect::connect(&client, &entry).await.unwrap();
        wait_for(2).await;
        let other = root.join("other");
        consort_node::identity::init(&other, "other", "127.0.0.1:0").unwrap();
        let bank = consort_node::pair::A;
        setup::peer_add(&b, bank, "127.0.0.1:9", &other.join("node.crt"), true).unwrap();
        server.state.reload().unwrap();
        wait_for(0).await;
        // A new connection with the old certificate fails at the handshake; the pin removed,
        // the same for the new one.
        let request = consort_node::proto::JobRequest {
            version: consort_api::JOB_PROTOCOL_VERSION,
            job_id: "after-replace".into(),
            kind: consort_api::JobKind::Psi as i32,
            ..Default::default()
        };
        assert!(connect::open(&client, &entry, request, None).await.is_err(), "the old certificate was accepted");
        setup::peer_remove(&b, bank).unwrap();
        server.state.reload().unwrap();
        assert_eq!(open_now(), 0);
        server.shutdown(Duration::from_secs(2)).await;
    });
}

/// A pinned peer holds at most `MAX_CONNECTIONS_PER_PEER` connections; more are refused at the
/// handshake, and a slot frees when a connection closes.
#[test]
fn a_peer_cannot_hold_more_than_its_share_of_connections() {
    use consort_node::tls::MAX_CONNECTIONS_PER_PEER;
    use consort_node::{job::connect, node, state::NodeState};
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = consort_node::pair::init_pair(tmp.path()).unwrap();
    let any: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    consort_node::pair::pin_pair(&a, any, &b, any).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let server = node::start(&b).await.unwrap();
        let client = NodeState::open(&a, any).await.unwrap();
        let mut entry = client.config().peer(consort_node::pair::B).unwrap().clone();
        entry.addr = server.peer_addr().to_string();
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS_PER_PEER {
            held.push(connect::connect(&client, &entry).await.unwrap());
        }
        for _ in 0..200 {
            if server.state.pinned.open_connections() == MAX_CONNECTIONS_PER_PEER {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(server.state.pinned.open_connections(), MAX_CONNECTIONS_PER_PEER);
        let request = |id: &str| consort_node::proto::JobRequest {
            version: consort_api::JOB_PROTOCOL_VERSION,
            job_id: id.into(),
            kind: consort_api::JobKind::Psi as i32,
            ..Default::default()
        };
        let over = connect::open(&client, &entry, request("over"), None).await;
        assert!(over.is_err(), "a connection over the cap was served");
        assert_eq!(server.state.pinned.open_connections(), MAX_CONNECTIONS_PER_PEER);
        drop(held.pop());
        tokio::time::sleep(Duration::from_millis(200)).await;
        // A slot is free again: the request is served (and refused by policy: no dataset).
        let (_, answer, _) = connect::open(&client, &entry, request("after"), None).await.unwrap();
        assert!(matches!(answer, connect::Answer::Refused(_)));
        server.shutdown(Duration::from_secs(2)).await;
    });
}
