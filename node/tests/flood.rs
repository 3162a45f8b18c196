//! A flood of connections that never start TLS: the node keeps at most
//! `MAX_PENDING_HANDSHAKES` of them (the oldest give way), so its file descriptors stay bounded and
//! a legitimate job still runs. A real `consort node` process on loopback.

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{NodeProc, ok, s, start_node};
use consort_node::node::MAX_PENDING_HANDSHAKES;

fn open_fds(node: &NodeProc) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", node.pid())).map(|d| d.count()).unwrap_or(0)
}

fn setup(root: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (a, b, data) = (root.join("bank"), root.join("partner"), root.join("data"));
    ok(&["init", s(&a), "--name", "bank", "--listen", "127.0.0.1:0"]);
    ok(&["init", s(&b), "--name", "partner", "--listen", "127.0.0.1:0"]);
    ok(&["gen", "psi", "--rows", "2000", "--overlap", "500", "--seed", "2", "--out", s(&data)]);
    (a, b, data)
}

#[test]
fn idle_connections_cannot_exhaust_a_nodes_descriptors() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, data) = setup(tmp.path());
    let (_na, addr_a) = start_node(&a);
    let (nb, addr_b) = start_node(&b);
    ok(&["peer", "add", s(&a), "--name", "partner", "--addr", &addr_b, "--cert", s(&b.join("node.crt"))]);
    ok(&["peer", "add", s(&b), "--name", "bank", "--addr", &addr_a, "--cert", s(&a.join("node.crt"))]);
    let add = |dir: &Path, name: &str, file: &str, grant: &str| {
        ok(&["dataset", "add", s(dir), "--name", name, "--file", s(&data.join(file)), "--key", "id", "--grant", grant]);
    };
    add(&a, "customers", "a.csv", "partner");
    add(&b, "accounts", "b.csv", "bank");

    let baseline = open_fds(&nb);
    let idle: Vec<TcpStream> = (0..300).map(|_| TcpStream::connect(&addr_b).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(1500));
    let during = open_fds(&nb);
    assert!(
        during <= baseline + MAX_PENDING_HANDSHAKES + 8,
        "300 idle connections hold {during} descriptors (baseline {baseline})"
    );
    let out = tmp.path().join("shared.csv");
    let json = ok(&[
        "psi",
        s(&a),
        "--peer",
        "partner",
        "--dataset",
        "customers",
        "--peer-dataset",
        "accounts",
        "--out",
        s(&out),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!((v["state"].as_str(), v["intersection"].as_u64()), (Some("done"), Some(500)), "{v}");
    drop(idle);
}
