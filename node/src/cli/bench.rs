//! `consort bench psi`: the real pipeline end to end — two `consort node` processes, TLS gRPC on
//! loopback, CSV in and out — timed, checked against a plaintext intersection, and compared with
//! the curve-arithmetic floor measured in the same run. Prints one JSON line.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use consort_engine::{DatasetSpec, PsiProtocol};

use crate::client::NodeClient;
use crate::{config, pair, setup};
use consort_api::vocab::Vocabulary;
use consort_protocols::Reveal;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Two-node PSI benchmark.
    Psi(BenchPsiArgs),
}

#[derive(Args)]
pub struct BenchPsiArgs {
    /// Rows per party.
    #[arg(long)]
    rows: u64,
    /// Shared ids (default: half of --rows).
    #[arg(long)]
    overlap: Option<u64>,
    /// PSI protocol: ecdh (ECDH-PSI) or rr22 (RR22 over silent VOLE, for large sets).
    #[arg(long, default_value = "ecdh", value_parser = super::vocab::<PsiProtocol>())]
    protocol: PsiProtocol,
    /// Who learns the intersection: both, or requester-only (alias: self).
    #[arg(long, default_value = "both", value_parser = super::vocab::<Reveal>())]
    reveal: Reveal,
    /// Work directory (kept); default a temp dir removed afterwards. Data generated there is reused
    /// by later runs with the same sizes.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print only the JSON line (no progress).
    #[arg(long)]
    json: bool,
    /// Run ECDH-PSI without key commitments and DLEQ proofs (to measure their overhead).
    #[arg(long)]
    no_proofs: bool,
    /// Export both nodes' audit evidence bundles of the job into this directory.
    #[arg(long)]
    evidence: Option<PathBuf>,
    /// A payload join (rr22 or ecdh): the requester also receives these columns of the generated
    /// responder data (`region`, `score`, `balance`; e.g. `score` ≈ 8-byte values).
    #[arg(long, value_delimiter = ',', value_name = "COL,...")]
    peer_columns: Vec<String>,
    /// Generate ids-only inputs (`consort gen psi --ids-only`: about 12 bytes a row).
    #[arg(long)]
    ids_only: bool,
    /// RR22 target items per bucket on both nodes (default: the protocol's, 2^20).
    #[arg(long)]
    bucket_size: Option<usize>,
    /// Join type of the outputs (inner, left, right, full, difference; see `consort psi --help`).
    #[arg(long, default_value = "inner", value_parser = super::psi::parse_join)]
    join: consort_engine::JoinType,
    /// Input (and so output) format: csv or parquet (`consort gen psi --format parquet`).
    #[arg(long, default_value = "csv", value_parser = ["csv", "parquet"])]
    format: String,
    /// Columns of the outputs: rows or keys (see `consort psi --help`).
    #[arg(long, default_value = "rows", value_parser = super::psi::parse_output)]
    output: consort_engine::OutputColumns,
    /// Run the job as N worker pairs (`consort psi --shards N`): each node starts N worker
    /// processes; the stages give each shard's wall and CPU seconds.
    #[arg(long, value_name = "N")]
    shards: Option<u32>,
}

pub async fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Psi(args) => bench_psi(args).await,
    }
}

/// A `consort node` child process, killed on drop.
struct NodeProcess {
    child: Child,
    dir: PathBuf,
}

impl NodeProcess {
    fn spawn(dir: &Path, proofs: bool, bucket_size: Option<usize>) -> Result<NodeProcess> {
        let exe = std::env::current_exe().context("cannot find the consort executable")?;
        let log = std::fs::File::create(dir.join("node.log"))?;
        let mut command = Command::new(exe);
        if let Some(size) = bucket_size {
            command.env("CONSORT_RR22_BUCKET_SIZE", size.to_string());
        }
        let child = command
            .arg("node")
            .arg(dir)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .env(crate::audit::PROOFS_ENV, if proofs { "on" } else { "off" })
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start a node process")?;
        Ok(NodeProcess { child, dir: dir.to_path_buf() })
    }

    /// Waits for the node to write its actual listen address.
    async fn wait_ready(&mut self) -> Result<std::net::SocketAddr> {
        let file = self.dir.join(config::LISTEN_ADDR_FILE);
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait()? {
                bail!("node {} exited ({status}); see {}", self.dir.display(), self.dir.join("node.log").display());
            }
            if let Ok(text) = std::fs::read_to_string(&file)
                && let Ok(addr) = text.trim().parse()
                && self.dir.join(config::CONTROL_SOCKET).exists()
            {
                return Ok(addr);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("node {} did not start within 10 s", self.dir.display())
    }

    /// Peak resident set size so far (VmHWM), in bytes.
    fn peak_rss(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM in /proc status")?;
        let kb: u64 = line.split_whitespace().nth(1).context("bad VmHWM line")?.parse()?;
        Ok(kb * 1024)
    }

    /// CPU seconds (user + system) the process and its waited-for children (a sharded job's
    /// workers) have used so far.
    fn cpu_seconds(&self) -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // Fields after the parenthesized command name; utime, stime, cutime and cstime are
        // fields 14 to 17.
        let rest = stat.rsplit_once(')').context("bad /proc stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let mut ticks = 0u64;
        for i in 11..15 {
            ticks += fields.get(i).context("no CPU times in /proc stat")?.parse::<u64>()?;
        }
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Ok(ticks as f64 / hz)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        // SIGTERM for a clean shutdown, then make sure.
        terminate(&self.child);
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends SIGTERM (the node's clean shutdown signal) to a child process.
pub fn terminate(child: &Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) with a pid we spawned and have not reaped; no memory is involved.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

async fn bench_psi(args: BenchPsiArgs) -> Result<()> {
    let protocol = args.protocol;
    let overlap = args.overlap.unwrap_or(args.rows / 2);
    let tmp = tempfile::tempdir()?;
    let root = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            config::absolute(d)?
        }
        None => tmp.path().to_path_buf(),
    };
    let log = |s: String| {
        if !args.json {
            eprintln!("{s}");
        }
    };

    // Data: generated once per size and reused.
    let data = root.join(format!("data-{}-{}{}", args.rows, overlap, if args.ids_only { "-ids" } else { "" }));
    let ext = if args.format == "parquet" { "parquet" } else { "csv" };
    let (file_a, file_b) = (format!("a.{ext}"), format!("b.{ext}"));
    if !(data.join(&file_a).exists() && data.join(&file_b).exists()) {
        log(format!("generating {} × {} rows ({overlap} shared) in {}", args.rows, args.rows, data.display()));
        let spec = consort_engine::synth::PsiGenSpec {
            rows_a: args.rows,
            rows_b: args.rows,
            overlap,
            seed: 42,
            out_dir: data.clone(),
        };
        let (ids_only, parquet) = (args.ids_only, args.format == "parquet");
        consort_protocols::cpu::run(move || match (parquet, ids_only) {
            (true, _) => consort_engine::synth::generate_psi_parquet(&spec, ids_only),
            (false, true) => consort_engine::synth::generate_psi_ids(&spec),
            (false, false) => consort_engine::synth::generate_psi(&spec),
        })
        .await?;
    }

    // The floor: this machine's per-item curve costs × items ÷ cores, measured now, before the job.
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let costs = consort_protocols::cpu::run(|| consort_protocols::psi::ecdh::measure_curve_costs(4096)).await;
    let items = 2 * args.rows;
    let floor_s = costs.per_item_ns() * items as f64 / cores as f64 / 1e9;
    log(format!(
        "curve floor: {:.2} µs per item per party → {floor_s:.2} s for {items} items on {cores} cores",
        costs.per_item_ns() / 1e3
    ));

    let nodes = root.join(format!("nodes-{}", std::process::id()));
    let (a_dir, b_dir) = pair::init_pair(&nodes)?;
    let spec = |name: &str, file: &str| DatasetSpec::new(name, data.join(file), &["id"]);
    let mut a = NodeProcess::spawn(&a_dir, !args.no_proofs, args.bucket_size)?;
    let mut b = NodeProcess::spawn(&b_dir, !args.no_proofs, args.bucket_size)?;
    let (a_addr, b_addr) = (a.wait_ready().await?, b.wait_ready().await?);
    pair::pin_pair(&a_dir, a_addr, &b_dir, b_addr)?;
    // Registration as an operator does it (`consort dataset add`, a full validation pass),
    // both at once, timed apart from the job (`register_s`): a streaming job on the unchanged
    // file takes its row count from that check instead of reading the file again.
    let mut grant_b = setup::parse_grant(pair::A)?;
    if !args.peer_columns.is_empty() {
        let share = format!("{}:{}", pair::A, args.peer_columns.join(","));
        setup::apply_shares(std::slice::from_mut(&mut grant_b), &[share], &spec("b", &file_b).check_header()?)?;
    }
    let registering = Instant::now();
    let register_a = {
        let (dir, spec, grant) = (a_dir.clone(), spec("a", &file_a), setup::parse_grant(pair::B)?);
        tokio::task::spawn_blocking(move || setup::dataset_add(&dir, spec, vec![grant], true, true))
    };
    let register_b = {
        let (dir, spec) = (b_dir.clone(), spec("b", &file_b));
        tokio::task::spawn_blocking(move || setup::dataset_add(&dir, spec, vec![grant_b], true, true))
    };
    register_a.await??;
    register_b.await??;
    let register_s = registering.elapsed().as_secs_f64();
    let client_a = NodeClient::connect(&a_dir).await?;
    client_a.reload().await?;
    let client_b = NodeClient::connect(&b_dir).await?;
    client_b.reload().await?;

    // Outputs in their own directory, so that the disk sampler sees them and their temp files.
    let outs = root.join(format!("out-{}", std::process::id()));
    std::fs::create_dir_all(&outs)?;
    let _cleanup =
        Cleanup { spill: [a_dir.join(config::SPILL_DIR), b_dir.join(config::SPILL_DIR)], outs: outs.clone() };
    let out_a = outs.join(format!("out-a.{ext}"));
    let cpu_before = (a.cpu_seconds()?, b.cpu_seconds()?);
    let started = Instant::now();
    let mut request = consort_api::proto::SubmitRequest::psi(pair::B, "a", "b", protocol, args.reveal, &out_a);
    if !args.peer_columns.is_empty() || !args.join.is_inner() || !args.output.is_rows() || args.shards.is_some() {
        request.params = serde_json::to_string(&crate::job::psi::PsiParams {
            peer_columns: args.peer_columns.clone(),
            join: args.join,
            output: args.output,
            shards: args.shards,
            ..Default::default()
        })?;
    }
    // Disk sampled while the job runs: per node its spill directory plus the unlinked files the
    // node and its workers hold open (a learning side's input snapshot, output segments: not
    // seen in any directory); for the whole run also both inputs, both node directories (the
    // responder's output is there) and the requester's output directory (its temp file too).
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let inputs_bytes: u64 =
        [&file_a, &file_b].iter().map(|f| std::fs::metadata(data.join(f)).map_or(0, |m| m.len())).sum();
    let sampler = {
        let sampling = sampling.clone();
        let (spill_a, spill_b) = (a_dir.join(config::SPILL_DIR), b_dir.join(config::SPILL_DIR));
        let (pids, nodes, outs) = ([a.child.id(), b.child.id()], nodes.clone(), outs.clone());
        tokio::task::spawn_blocking(move || {
            let mut peak = DiskPeaks::default();
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                let clock = Instant::now();
                let unlinked = pids.map(unlinked_open_bytes);
                // One walk of the node directories, which hold the spill directories (at 10^9
                // thousands of files: walking each three times cost ~190 CPU seconds a run).
                let (in_nodes, spill) = dir_bytes_within(&nodes, [&spill_a, &spill_b]);
                let temp = [spill[0] + unlinked[0], spill[1] + unlinked[1]];
                peak.spill = [peak.spill[0].max(spill[0]), peak.spill[1].max(spill[1])];
                peak.temp = [peak.temp[0].max(temp[0]), peak.temp[1].max(temp[1])];
                let run = inputs_bytes + in_nodes + dir_bytes(&outs) + unlinked[0] + unlinked[1];
                peak.run = peak.run.max(run);
                // Every 200 ms, or less often when a sample is slow, so that the sampler takes
                // at most ~5 % of a core from the nodes it measures (the spill grows and shrinks
                // over seconds; a coarser sample can only under-read a peak by that much).
                std::thread::sleep(Duration::from_millis(200).max(clock.elapsed() * 20));
            }
            peak
        })
    };
    let job_id = client_a.submit(request).await?;
    let status = super::status::watch_with_progress(&client_a, &job_id, args.json).await?;
    let wall_s = started.elapsed().as_secs_f64();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let disk = sampler.await?;
    let (spill_a, spill_b) = (disk.spill[0], disk.spill[1]);
    let (rss_a, rss_b) = (a.peak_rss()?, b.peak_rss()?);
    let cpu = (a.cpu_seconds()? - cpu_before.0, b.cpu_seconds()? - cpu_before.1);
    let stages_b = client_b.job(&job_id).await.map(|s| s.stages).unwrap_or_default();
    if status.job_state() != consort_api::JobState::Done {
        bail!("benchmark job failed: {}", status.error);
    }
    let out_b = (!status.peer_output.is_empty()).then(|| b_dir.join(&status.peer_output));
    let (key_a, key_b) = (crate::at_rest::load_key(&a_dir)?, crate::at_rest::load_key(&b_dir)?);
    // A payload join's output has the peer's columns too: checked by its row count (the generated
    // keys are unique); its correctness against a plaintext join is tested in engine::payload.
    let payload_rows_ok = status.output_rows == overlap && status.intersection == overlap;
    // A join other than inner: checked by its row counts (the generated keys are unique, both
    // sets have --rows rows); join outputs are tested against a plaintext join in engine::join.
    use consort_engine::JoinType;
    let join_rows = match args.join {
        JoinType::Inner => overlap,
        JoinType::Left | JoinType::Right => args.rows,
        JoinType::Full => 2 * args.rows - overlap,
        JoinType::Difference => args.rows - overlap,
    };
    let check_started = Instant::now();
    let check = if !args.join.is_inner() {
        consort_engine::check::VerifyReport {
            expected: join_rows,
            ok: status.output_rows == join_rows && status.intersection == overlap,
            problems: vec![format!("{} output rows, {join_rows} expected", status.output_rows)],
        }
    } else if !args.peer_columns.is_empty() || ext == "parquet" || !args.output.is_rows() {
        // Parquet and key-only outputs: checked by their row counts here; against a plaintext
        // intersection row for row in engine::parquet_io's tests.
        consort_engine::check::VerifyReport {
            expected: overlap,
            ok: payload_rows_ok,
            problems: vec![format!("{} output rows, {overlap} expected", status.output_rows)],
        }
    } else {
        // Whole-row CSV outputs: every row checked in constant memory against the generator
        // (`synth::check`): the inputs are never loaded, so this works at 10^9.
        let gen_spec = consort_engine::synth::PsiGenSpec {
            rows_a: args.rows,
            rows_b: args.rows,
            overlap,
            seed: 42,
            out_dir: data.clone(),
        };
        let (oa, ob, ids_only) = (out_a.clone(), out_b.clone(), args.ids_only);
        consort_protocols::cpu::run(move || {
            use consort_engine::check::OutputFile;
            let oa = OutputFile::sealed(&oa, &key_a);
            let ob = ob.as_deref().map(|p| OutputFile::sealed(p, &key_b));
            consort_engine::synth::check::verify_generated_outputs(&gen_spec, ids_only, Some(oa), ob)
        })
        .await?
    };
    let check_s = check_started.elapsed().as_secs_f64();
    drop((a, b));
    if let Some(dir) = &args.evidence {
        super::audit::export_pair(&a_dir, &b_dir, &job_id, dir).await?;
    }
    let output_bytes = std::fs::metadata(&out_a).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_dir_all(&outs);
    let _ = std::fs::remove_dir_all(&nodes);

    let n = args.rows as f64;
    // The protocol stage per item of one set, per core each party has (the box's cores shared by
    // the two nodes), comparable with the paper's single-thread figure.
    let protocol_ns = status
        .stages
        .iter()
        .find(|s| s.name == "protocol")
        .map(|s| s.seconds * 1e9 * (cores as f64 / 2.0).max(1.0) / n.max(1.0));
    let line = serde_json::json!({
        "protocol": protocol.name(),
        "proofs": !args.no_proofs,
        "n": args.rows,
        "overlap": overlap,
        "reveal": args.reveal.name(),
        "join": args.join.name(),
        "peer_columns": args.peer_columns,
        "intersection": status.intersection,
        "wall_s": round(wall_s, 3),
        "items_per_s": round(items as f64 / wall_s, 0),
        "bytes_per_item": round((status.wire_bytes_sent + status.wire_bytes_received) as f64 / items as f64, 2),
        "bytes_per_item_a_to_b": round(status.wire_bytes_sent as f64 / n, 2),
        "bytes_per_item_b_to_a": round(status.wire_bytes_received as f64 / n, 2),
        "payload_bytes_per_item": round((status.bytes_sent + status.bytes_received) as f64 / items as f64, 2),
        "peak_rss_a_mib": round(rss_a as f64 / 1048576.0, 1),
        "peak_rss_b_mib": round(rss_b as f64 / 1048576.0, 1),
        "total_bytes_per_item": round((status.wire_bytes_sent + status.wire_bytes_received) as f64 / n, 2),
        "curve_ns_per_item": {
            "hash_to_point": round(costs.hash_to_point_ns, 0),
            "multiply_encode": round(costs.multiply_encode_ns, 0),
            "decode": round(costs.decode_ns, 0),
        },
        "cores": cores,
        "cpu_s_a": round(cpu.0, 2),
        "cpu_s_b": round(cpu.1, 2),
        "cpu_utilization": round((cpu.0 + cpu.1) / (wall_s * cores as f64), 3),
        "peak_spill_a_mib": round(spill_a as f64 / 1048576.0, 1),
        "peak_spill_b_mib": round(spill_b as f64 / 1048576.0, 1),
        "input_mib": round(std::fs::metadata(data.join(&file_a)).map(|m| m.len()).unwrap_or(0) as f64 / 1048576.0, 1),
        "format": ext,
        "output": args.output.name(),
        "output_a_mib": round(output_bytes as f64 / 1048576.0, 1),
        "protocol_ns_per_item_per_core": protocol_ns.map(|ns| round(ns, 1)),
        "protocol_ratio_to_rr22_paper": protocol_ns.map(|ns| round(ns / RR22_PAPER_NS_PER_ITEM, 2)),
        "stages_a": status.stages.iter().map(|s| serde_json::json!([s.name, round(s.seconds, 3)])).collect::<Vec<_>>(),
        "stages_b": stages_b.iter().map(|s| serde_json::json!([s.name, round(s.seconds, 3)])).collect::<Vec<_>>(),
        "output_ok": check.ok,
        "shards": args.shards,
        "check_s": round(check_s, 3),
        "peak_temp_disk_a_mib": round(disk.temp[0] as f64 / 1048576.0, 1),
        "peak_temp_disk_b_mib": round(disk.temp[1] as f64 / 1048576.0, 1),
        "peak_temp_disk_a_per_input": round(disk.temp[0] as f64 / (inputs_bytes as f64 / 2.0).max(1.0), 2),
        "peak_temp_disk_b_per_input": round(disk.temp[1] as f64 / (inputs_bytes as f64 / 2.0).max(1.0), 2),
        "run_disk_peak_mib": round(disk.run as f64 / 1048576.0, 1),
        "inputs_mib": round(inputs_bytes as f64 / 1048576.0, 1),
    });
    let mut line = line;
    let floor = match protocol {
        // The ECDH floor: this machine's curve work for the job, perfectly spread over the cores.
        PsiProtocol::Ecdh => {
            serde_json::json!({ "floor_s": round(floor_s, 3), "floor_ratio": round(wall_s / floor_s, 3) })
        }
        // Other protocols are compared with that ECDH floor (a lower bound on any ECDH run).
        _ => serde_json::json!({
            "ecdh_floor_s": round(floor_s, 3),
            "speedup_vs_ecdh_floor": round(floor_s / wall_s, 1),
        }),
    };
    line.as_object_mut().expect("object").extend(floor.as_object().expect("object").clone());
    line["register_s"] = round(register_s, 3).into();
    println!("{line}");
    if !check.ok {
        bail!("benchmark output does not match the plaintext intersection: {}", check.problems.join("; "));
    }
    Ok(())
}

/// Peaks of the disk sampled during a job (bytes).
#[derive(Default)]
struct DiskPeaks {
    /// Each node's spill directory.
    spill: [u64; 2],
    /// Each node's temporary disk: spill directory and unlinked open files (node and workers).
    temp: [u64; 2],
    /// The whole run: inputs, node directories, the requester's outputs, unlinked files.
    run: u64,
}

/// What a benchmark leaves behind whatever happens: a failed run at 10^9 would otherwise keep
/// tens of GB of spill (a failed streaming job keeps its state for a resume) and output.
struct Cleanup {
    spill: [PathBuf; 2],
    outs: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for dir in self.spill.iter().chain([&self.outs]) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Bytes of the unlinked files that process `pid` and its descendants (a node's workers) hold
/// open: temporary files that no directory listing shows.
fn unlinked_open_bytes(pid: u32) -> u64 {
    let mut total = 0;
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        if let Ok(fds) = std::fs::read_dir(format!("/proc/{p}/fd")) {
            for fd in fds.flatten() {
                let Ok(target) = std::fs::read_link(fd.path()) else { continue };
                if target.to_string_lossy().ends_with(" (deleted)")
                    && let Ok(m) = std::fs::metadata(fd.path())
                    && m.is_file()
                {
                    use std::os::unix::fs::MetadataExt;
                    // The same file open twice (or in two processes) counts once.
                    if seen.insert((m.dev(), m.ino())) {
                        total += m.blocks() * 512;
                    }
                }
            }
        }
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for task in tasks.flatten() {
                let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
                stack.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
            }
        }
    }
    total
}

/// RR22's single-thread rate in the paper (2^24 items in 6.99 s, one core per party).
const RR22_PAPER_NS_PER_ITEM: f64 = 6.99e9 / (1u64 << 24) as f64;

/// Bytes of the files under `dir` (recursively); 0 if it does not exist.
fn dir_bytes(dir: &Path) -> u64 {
    walk_bytes(dir, &[], None, &mut [])
}

/// [`dir_bytes`] of `dir`, and of each of `parts` (directories somewhere under it), in one walk.
fn dir_bytes_within(dir: &Path, parts: [&Path; 2]) -> (u64, [u64; 2]) {
    let mut within = [0; 2];
    let total = walk_bytes(dir, &parts, None, &mut within);
    (total, within)
}

/// Bytes under `dir`; those under `parts[i]` also added to `within[i]` (`part`: the one `dir` is in).
fn walk_bytes(dir: &Path, parts: &[&Path], part: Option<usize>, within: &mut [u64]) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut total = 0;
    for e in entries.flatten() {
        total += match e.file_type() {
            Ok(t) if t.is_dir() => {
                let path = e.path();
                let part = part.or_else(|| parts.iter().position(|p| *p == path));
                walk_bytes(&path, parts, part, within)
            }
            _ => {
                let bytes = e.metadata().map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512).unwrap_or(0);
                if let Some(i) = part {
                    within[i] += bytes;
                }
                bytes
            }
        };
    }
    total
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_walk_counts_the_tree_and_its_parts_as_separate_walks_do() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("nodes");
        let (a, b) = (root.join("a").join("spill"), root.join("b").join("spill"));
        for (dir, files) in [(&a, 3usize), (&b, 1), (&root.join("a"), 2)] {
            std::fs::create_dir_all(dir.join("deeper")).unwrap();
            for i in 0..files {
                std::fs::write(dir.join(format!("f{i}")), vec![7u8; 5000 * (i + 1)]).unwrap();
                std::fs::write(dir.join("deeper").join(format!("g{i}")), vec![1u8; 9000]).unwrap();
            }
        }
        // A reference walk of its own: every file's allocated bytes under a directory.
        fn reference(dir: &Path) -> u64 {
            std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .map(|p| match p.is_dir() {
                    true => reference(&p),
                    false => std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&p).unwrap()) * 512,
                })
                .sum()
        }
        let (total, parts) = dir_bytes_within(&root, [&a, &b]);
        assert_eq!((total, parts), (reference(&root), [reference(&a), reference(&b)]));
        assert_eq!((dir_bytes(&root), dir_bytes(&a), dir_bytes(&b)), (total, parts[0], parts[1]));
        assert!(parts[0] > parts[1] && parts[1] > 0 && total > parts[0] + parts[1]);
    }
}
