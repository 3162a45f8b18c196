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
    start_node_with(dir, |_| {})
}

/// [`start_node`], with the command adjusted by `setup` first (e.g. resource limits).
pub fn start_node_with(dir: &Path, setup: impl FnOnce(&mut Command)) -> (NodeProc, String) {
    let _ = std::fs::remove_file(dir.join("listen.addr"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_consort"));
    command.arg("node").arg(dir).stdout(Stdio::null()).stderr(Stdio::null());
    setup(&mut command);
    let child = command.spawn().unwrap();
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
    two_nodes_with(root, rows, overlap, |_| {})
}

/// [`two_nodes`], each node's command adjusted by `setup` first (e.g. `--metrics`).
pub fn two_nodes_with(root: &Path, rows: u64, overlap: u64, setup: impl Fn(&mut Command)) -> TwoNodes {
    let (a, b, data) = (root.join("bank"), root.join("partner"), root.join("data"));
    ok(&["init", s(&a), "--name", "bank", "--listen", "127.0.0.1:0"]);
    ok(&["init", s(&b), "--name", "partner", "--listen", "127.0.0.1:0"]);
    let (rows, overlap) = (rows.to_string(), overlap.to_string());
    ok(&["gen", "psi", "--rows", &rows, "--overlap", &overlap, "--seed", "3", "--out", s(&data)]);
    let (na, addr_a) = start_node_with(&a, &setup);
    let (nb, addr_b) = start_node_with(&b, &setup);
    ok(&["peer", "add", s(&a), "--name", "partner", "--addr", &addr_b, "--cert", s(&b.join("node.crt"))]);
    ok(&["peer", "add", s(&b), "--name", "bank", "--addr", &addr_a, "--cert", s(&a.join("node.crt"))]);
    let add = |dir: &Path, name: &str, file: &str, grant: &str| {
        ok(&["dataset", "add", s(dir), "--name", name, "--file", s(&data.join(file)), "--key", "id", "--grant", grant]);
    };
    add(&a, "customers", "a.csv", "partner");
    add(&b, "accounts", "b.csv", "bank");
    TwoNodes { a, b, na, nb, addr_a, addr_b }
}

/// Restarts the partner's node (after `setup` adjusts its command, e.g. resource limits or
/// `[limits]` written to its config) and re-pins its new address at the bank.
pub fn restart_partner(nodes: TwoNodes, setup: impl FnOnce(&mut Command)) -> TwoNodes {
    let TwoNodes { a, b, na, nb, addr_a, .. } = nodes;
    drop(nb);
    let (nb, addr_b) = start_node_with(&b, setup);
    ok(&["peer", "add", s(&a), "--name", "partner", "--addr", &addr_b, "--cert", s(&b.join("node.crt")), "--replace"]);
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

pub mod rogue;

/// `consort jobs DIR --json`, one object per job.
pub fn jobs(dir: &Path) -> Vec<serde_json::Value> {
    ok(&["jobs", s(dir), "--json"]).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Job `id` as `consort jobs DIR --json` lists it.
pub fn job(dir: &Path, id: &str) -> Option<serde_json::Value> {
    jobs(dir).into_iter().find(|j| j["job_id"] == id)
}

pub const FINAL_STATES: [&str; 4] = ["done", "failed", "refused", "interrupted"];

/// Waits (up to `limit`) until job `id` of the node in `dir` is in a final state: its record.
pub fn wait_final(dir: &Path, id: &str, limit: Duration) -> serde_json::Value {
    let started = std::time::Instant::now();
    loop {
        let record = job(dir, id);
        if let Some(r) = &record
            && FINAL_STATES.contains(&r["state"].as_str().unwrap_or_default())
        {
            return record.unwrap();
        }
        assert!(started.elapsed() < limit, "job {id} not final after {limit:?}: {record:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Peak resident set size of a process (`VmHWM` in /proc/PID/status), in MiB.
pub fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process is alive");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
}

/// CPU seconds (user + system) a process has used so far (/proc/PID/stat).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the process is alive");
    // Fields after the parenthesized command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// `consort audit verify --log DIR/audit --key KEY` with the node's own key: must pass.
pub fn audit_verifies(dir: &Path) {
    let key = ok(&["audit", "key", s(dir)]);
    ok(&["audit", "verify", "--log", s(&dir.join("audit")), "--key", key.trim()]);
}

/// Sets `[limits]` in DIR/config.toml (read when the node starts).
pub fn set_limits(dir: &Path, max_concurrent_jobs: Option<u32>, peer_idle_seconds: Option<u64>) {
    let path = dir.join("config.toml");
    let mut config: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    let limits = config.entry("limits").or_insert_with(|| toml::Value::Table(Default::default()));
    let limits = limits.as_table_mut().unwrap();
    if let Some(n) = max_concurrent_jobs {
        limits.insert("max_concurrent_jobs".into(), toml::Value::Integer(n.into()));
    }
    if let Some(secs) = peer_idle_seconds {
        limits.insert("peer_idle_seconds".into(), toml::Value::Integer(secs as i64));
    }
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
}

/// A PSI job from the bank to the partner ([`two_nodes`]) that must succeed with `overlap` rows.
pub fn legit_psi_succeeds(nodes: &TwoNodes, out: &Path, overlap: u64) {
    let _ = std::fs::remove_file(out);
    let v: serde_json::Value = serde_json::from_str(ok(&psi_args(&nodes.a, out)).trim()).unwrap();
    assert_eq!((v["state"].as_str(), v["intersection"].as_u64()), (Some("done"), Some(overlap)), "{v}");
}

/// What every malicious-peer case ends with: the victim process is alive, answers `consort jobs`,
/// its peak RSS stayed under `max_rss_mib`, a legitimate job with the honest node still runs, and
/// its audit log verifies. The victim's peak RSS (MiB).
pub fn victim_survives(nodes: &TwoNodes, out: &Path, overlap: u64, max_rss_mib: u64) -> u64 {
    let pid = nodes.nb.pid();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "the victim died");
    jobs(&nodes.b);
    let rss = peak_rss_mib(pid);
    assert!(rss < max_rss_mib, "the victim's peak RSS is {rss} MiB");
    legit_psi_succeeds(nodes, out, overlap);
    audit_verifies(&nodes.b);
    rss
}

/// The address a node started with `--metrics HOST:0` serves metrics on (`DIR/metrics.addr`).
pub fn metrics_addr(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("metrics.addr")).expect("the node serves metrics").trim().to_string()
}

/// A plain HTTP/1.1 GET over TCP (no client library): the status code and the body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the metrics address");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("a status code");
    (status, body.to_string())
}

/// The value of the sample `name{labels}` (labels as the text format writes them, e.g.
/// `kind="psi",role="requester",state="done"`; empty for none) in a metrics scrape.
pub fn sample(scrape: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() { name.to_string() } else { format!("{name}{{{labels}}}") };
    scrape.lines().find_map(|l| l.strip_prefix(&key)?.strip_prefix(' ')?.split_whitespace().next()?.parse().ok())
}
