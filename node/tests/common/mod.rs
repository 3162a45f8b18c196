//! Helpers shared by the tests that drive the real `consort` binary and node processes.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub fn consort(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_consort")).args(args).output().expect("run consort")
}

/// Runs `consort ARGS`, which must succeed; its stdout.
pub fn ok(args: &[&str]) -> String {
    let out = consort(args);
    assert!(out.status.success(), "consort {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `consort ARGS`, which must fail with a one-line cause on stderr; that line.
pub fn fails(args: &[&str]) -> String {
    let out = consort(args);
    assert!(!out.status.success(), "consort {args:?} should have failed");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.starts_with("error: ") && err.trim_end().lines().count() == 1, "one-line cause expected: {err}");
    err
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A `consort node` process, stopped cleanly (SIGTERM) when dropped.
pub struct NodeProc(Child);

impl NodeProc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Kills the node without warning (SIGKILL), as a crash would.
    pub fn kill9(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        std::mem::forget(self);
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        consort_node::cli::bench::terminate(&self.0);
        let _ = self.0.wait();
    }
}

/// Starts `consort node DIR` and waits until it listens; the process and its peer address.
pub fn start_node(dir: &Path) -> (NodeProc, String) {
    let _ = std::fs::remove_file(dir.join("listen.addr"));
    let child = Command::new(env!("CARGO_BIN_EXE_consort"))
        .arg("node")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wrapped at once, so the process is reaped on every path (including the panic below).
    let node = NodeProc(child);
    for _ in 0..400 {
        if let Ok(addr) = std::fs::read_to_string(dir.join("listen.addr"))
            && dir.join("control.sock").exists()
        {
            return (node, addr.trim().to_string());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("node in {} did not start", dir.display());
}

/// Two running node processes, "bank" (dataset "customers", a.csv) and "partner" ("accounts",
/// b.csv), pinning each other, each dataset granted to the other for PSI.
pub struct TwoNodes {
    pub a: std::path::PathBuf,
    pub b: std::path::PathBuf,
    pub na: NodeProc,
    pub nb: NodeProc,
    pub addr_a: String,
    pub addr_b: String,
}

/// [`TwoNodes`] under `root`, on generated data of `rows` ids per side with `overlap` shared.
pub fn two_nodes(root: &Path, rows: u64, overlap: u64) -> TwoNodes {
    let (a, b, data) = (root.join("bank"), root.join("partner"), root.join("data"));
    ok(&["init", s(&a), "--name", "bank", "--listen", "127.0.0.1:0"]);
    ok(&["init", s(&b), "--name", "partner", "--listen", "127.0.0.1:0"]);
    let (rows, overlap) = (rows.to_string(), overlap.to_string());
    ok(&["gen", "psi", "--rows", &rows, "--overlap", &overlap, "--seed", "3", "--out", s(&data)]);
    let (na, addr_a) = start_node(&a);
    let (nb, addr_b) = start_node(&b);
    ok(&["peer", "add", s(&a), "--name", "partner", "--addr", &addr_b, "--cert", s(&b.join("node.crt"))]);
    ok(&["peer", "add", s(&b), "--name", "bank", "--addr", &addr_a, "--cert", s(&a.join("node.crt"))]);
    let add = |dir: &Path, name: &str, file: &str, grant: &str| {
        ok(&["dataset", "add", s(dir), "--name", name, "--file", s(&data.join(file)), "--key", "id", "--grant", grant]);
    };
    add(&a, "customers", "a.csv", "partner");
    add(&b, "accounts", "b.csv", "bank");
    TwoNodes { a, b, na, nb, addr_a, addr_b }
}

/// `consort psi` from the bank against the partner's "accounts", writing `out`, with `--json`.
pub fn psi_args<'a>(a: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec![
        "psi",
        s(a),
        "--peer",
        "partner",
        "--dataset",
        "customers",
        "--peer-dataset",
        "accounts",
        "--out",
        s(out),
        "--json",
    ]
}
