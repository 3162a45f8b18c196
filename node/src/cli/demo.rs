//! `consort demo`: the main job on an embedded default. Two nodes in this process on loopback with
//! real mutual TLS gRPC, generated data, an ECDH-PSI job through the control socket, and a check of
//! both outputs against a plaintext intersection.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use consort_engine::DatasetSpec;
use consort_engine::check::OutputFile;
use consort_engine::sealed::StorageKey;

use consort_engine::PsiProtocol;
use consort_protocols::Reveal;

use super::status;
use crate::client::NodeClient;
use crate::{node, pair, setup};
use consort_api::proto::SubmitRequest;

#[derive(Args)]
pub struct DemoArgs {
    /// Rows at the bank (the partner has 80% as many; 30% of the bank's ids are shared).
    #[arg(long, default_value_t = 100_000)]
    rows: u64,
    /// Keep everything (node directories, data, outputs) in this directory instead of a temp dir.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Rows of the joint logistic regression part (0 skips it).
    #[arg(long, default_value_t = 20_000)]
    lr_rows: u64,
    /// Rows of the SecureBoost part (0 skips it).
    #[arg(long, default_value_t = 3_000)]
    sb_rows: u64,
    #[arg(long)]
    json: bool,
}

pub async fn run(args: DemoArgs) -> Result<()> {
    let started = Instant::now();
    let tmp = tempfile::tempdir()?;
    let root = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            crate::config::absolute(d)?
        }
        None => tmp.path().to_path_buf(),
    };
    let say = |s: String| {
        if !args.json {
            println!("{s}");
        }
    };
    let (rows_a, rows_b, overlap) = (args.rows, args.rows * 8 / 10, args.rows * 3 / 10);
    say(format!(
        "consort demo — two nodes, '{}' and '{}', on loopback with mutual TLS 1.3 and pinned certificates",
        pair::A,
        pair::B
    ));

    let data = root.join("data");
    let spec = consort_engine::synth::PsiGenSpec { rows_a, rows_b, overlap, seed: 7, out_dir: data.clone() };
    consort_protocols::cpu::run(move || consort_engine::synth::generate_psi(&spec)).await?;
    say(format!(
        "1. generated {rows_a} customer rows for '{}' and {rows_b} for '{}' ({overlap} shared ids) in {}",
        pair::A,
        pair::B,
        data.display()
    ));

    let (a_dir, b_dir) = pair::init_pair(&root.join("nodes"))?;
    let a = node::start(&a_dir).await?;
    let b = node::start(&b_dir).await?;
    pair::pin_pair(&a_dir, a.peer_addr(), &b_dir, b.peer_addr())?;
    a.state.reload()?;
    b.state.reload()?;
    say(format!("2. started nodes at {} and {}; each pinned the other's certificate", a.peer_addr(), b.peer_addr()));

    let spec_a = DatasetSpec::new("customers", data.join("a.csv"), &["id"]);
    let spec_b = DatasetSpec::new("accounts", data.join("b.csv"), &["id"]);
    setup::dataset_add(&a_dir, spec_a.clone(), vec![setup::parse_grant(pair::B)?], true, true)?;
    setup::dataset_add(&b_dir, spec_b.clone(), vec![setup::parse_grant(pair::A)?], true, true)?;
    a.state.reload()?;
    b.state.reload()?;
    say(format!(
        "3. registered '{}' at {} and '{}' at {}, each granted to the other for PSI",
        spec_a.name,
        pair::A,
        spec_b.name,
        pair::B
    ));

    let out_a = root.join("bank-intersection.csv");
    let client = NodeClient::connect(&a_dir).await?;
    let job_id = client
        .submit(SubmitRequest::psi(pair::B, &spec_a.name, &spec_b.name, PsiProtocol::Ecdh, Reveal::Both, &out_a))
        .await?;
    say(format!("4. '{}' submitted ECDH-PSI job {job_id} through its control socket", pair::A));
    let status = status::watch_with_progress(&client, &job_id, args.json).await?;
    if status.job_state() != consort_api::JobState::Done {
        a.shutdown(Duration::from_secs(1)).await;
        b.shutdown(Duration::from_secs(1)).await;
        bail!("demo job failed: {}", status.error);
    }
    let out_b = b_dir.join(&status.peer_output);
    // Each output is sealed under its own node's storage key.
    let (key_a, key_b) = (a.state.storage.key.clone(), b.state.storage.key.clone());
    let check = {
        let (sa, sb, oa, ob) = (spec_a.clone(), spec_b.clone(), out_a.clone(), out_b.clone());
        let (ka, kb) = (key_a.clone(), key_b.clone());
        consort_protocols::cpu::run(move || {
            let (oa, ob) = (OutputFile::sealed(&oa, &ka), OutputFile::sealed(&ob, &kb));
            consort_engine::check::verify_psi_outputs(&sa, &sb, Some(oa), Some(ob))
        })
        .await?
    };
    if !args.json {
        println!("{}", status::summary(&status));
        println!(
            "5. plaintext check: expected {} shared rows; both outputs {} ",
            check.expected,
            if check.ok { "contain exactly those rows, in the same order on both sides" } else { "are WRONG" }
        );
        for p in &check.problems {
            println!("   problem: {p}");
        }
        print_aligned((&out_a, &key_a), (&out_b, &key_b))?;
    }
    let lr = match args.lr_rows {
        0 => Ok(None),
        rows => super::lr_demo::run(&root, (&a, &b), (&a_dir, &b_dir), rows, args.json).await.map(Some),
    };
    let sb = match (&lr, args.sb_rows) {
        (Err(_), _) | (_, 0) => Ok(None),
        (Ok(_), rows) => super::sb_demo::run(&root, (&a, &b), (&a_dir, &b_dir), rows, args.json).await.map(Some),
    };
    a.shutdown(Duration::from_secs(2)).await;
    b.shutdown(Duration::from_secs(2)).await;
    let lr = lr?;
    let sb = sb?;
    if args.json {
        let mut j = status::status_json(&status);
        j["plaintext_check"] =
            serde_json::json!({"expected": check.expected, "ok": check.ok, "problems": check.problems});
        j["lr"] = serde_json::json!(lr);
        j["secureboost"] = serde_json::json!(sb);
        j["demo_seconds"] = serde_json::json!(started.elapsed().as_secs_f64());
        println!("{j}");
    } else {
        println!(
            "demo finished in {:.1} s{}",
            started.elapsed().as_secs_f64(),
            if args.dir.is_some() { format!("; files kept in {}", root.display()) } else { String::new() }
        );
    }
    if !check.ok {
        bail!("the PSI outputs do not match the plaintext intersection");
    }
    Ok(())
}

/// Shows the first rows of both outputs side by side: row i is the same customer on both sides.
fn print_aligned(a: (&Path, &StorageKey), b: (&Path, &StorageKey)) -> Result<()> {
    let read = |(p, key): (&Path, &StorageKey)| -> Result<Vec<String>> {
        let file =
            consort_engine::storage::open_data(p, Some(key)).with_context(|| format!("cannot read {}", p.display()))?;
        std::io::BufRead::lines(std::io::BufReader::new(file))
            .take(4)
            .collect::<std::io::Result<Vec<String>>>()
            .with_context(|| format!("cannot read {}", p.display()))
    };
    let (la, lb) = (read(a)?, read(b)?);
    println!("   first rows of each side's output (same order on both sides):");
    for (x, y) in la.iter().zip(lb.iter()) {
        println!("   {x:<40} | {y}");
    }
    Ok(())
}
