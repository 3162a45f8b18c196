//! A flood of connections that never start TLS: the node keeps at most
//! `MAX_PENDING_HANDSHAKES` of them (the oldest give way), so its file descriptors stay bounded and
//! a legitimate job still runs. A real `consort node` process on loopback.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::{NodeProc, ok, psi_args, two_nodes};
use consort_node::node::{MAX_PENDING_HANDSHAKES, MAX_PENDING_HANDSHAKES_PER_ADDRESS};

fn open_fds(node: &NodeProc) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", node.pid())).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn idle_connections_cannot_exhaust_a_nodes_descriptors() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = two_nodes(tmp.path(), 2000, 500);
    let (a, nb, addr_b) = (&nodes.a, &nodes.nb, &nodes.addr_b);

    let baseline = open_fds(nb);
    let idle: Vec<TcpStream> = (0..300).map(|_| TcpStream::connect(addr_b).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(1500));
    let during = open_fds(nb);
    // All from one address: it holds at most its share of the pending handshakes.
    assert!(
        during <= baseline + MAX_PENDING_HANDSHAKES_PER_ADDRESS.min(MAX_PENDING_HANDSHAKES) + 8,
        "300 idle connections hold {during} descriptors (baseline {baseline})"
    );
    let out = tmp.path().join("shared.csv");
    let json = ok(&psi_args(a, &out));
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!((v["state"].as_str(), v["intersection"].as_u64()), (Some("done"), Some(500)), "{v}");
    drop(idle);
}
