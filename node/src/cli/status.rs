//! How the CLI shows jobs: progress while they run, summaries and JSON when they end, one line per
//! job in `consort jobs`.

use std::time::Duration;

use anyhow::{Context, Result};
use consort_api::JobState;
use consort_api::proto::JobStatus;
use indicatif::{ProgressBar, ProgressStyle};

use super::exit::Exit;
use crate::client::NodeClient;

/// Follows a job with a progress bar on stderr (hidden when stderr is not a terminal).
pub async fn watch_with_progress(client: &NodeClient, job_id: &str, quiet: bool) -> Result<JobStatus> {
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(0) };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:<20} [{bar:30}] {pos}/{len} ({elapsed})")
            .context("progress style")?
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let status = client
        .watch(job_id, |s| {
            bar.set_message(if s.stage.is_empty() { s.job_state().to_string() } else { s.stage.clone() });
            bar.set_length(s.total);
            bar.set_position(s.done);
        })
        .await?;
    bar.finish_and_clear();
    Ok(status)
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// A readable summary of a finished job.
pub fn summary(s: &JobStatus) -> String {
    if s.job_state() != JobState::Done {
        return format!("PSI job {} {} after {:.1} s: {}", s.job_id, s.job_state(), s.seconds, s.error);
    }
    let mut lines = vec![format!(
        "PSI job {} ({}, reveal {}) done in {:.2} s with peer '{}'",
        s.job_id,
        s.protocol_name(),
        s.reveal_name(),
        s.seconds,
        s.peer
    )];
    lines.push(format!("  rows: {} here, {} at the peer", s.local_rows, s.peer_rows));
    if s.has_intersection {
        lines.push(format!("  intersection: {} rows", s.intersection));
    }
    if !s.output.is_empty() {
        lines.push(format!("  wrote {} rows to {}", s.output_rows, s.output));
    }
    if s.peer_output.is_empty() {
        lines.push("  the peer wrote no output".into());
    } else {
        lines.push(format!("  the peer wrote its rows under its node directory: {}", s.peer_output));
    }
    let items = (s.local_rows + s.peer_rows).max(1) as f64;
    lines.push(format!(
        "  sent {}, received {} on the wire ({:.1} bytes per item)",
        mb(s.wire_bytes_sent),
        mb(s.wire_bytes_received),
        (s.wire_bytes_sent + s.wire_bytes_received) as f64 / items
    ));
    let stages: Vec<String> = s.stages.iter().map(|st| format!("{} {:.2}s", st.name, st.seconds)).collect();
    if !stages.is_empty() {
        lines.push(format!("  stages: {}", stages.join(", ")));
    }
    lines.join("\n")
}

/// A job status as one JSON object.
pub fn status_json(s: &JobStatus) -> serde_json::Value {
    serde_json::json!({
        "job_id": s.job_id,
        "kind": s.job_kind().to_string(),
        "protocol": none_if_empty(s.protocol_name()),
        "role": s.role_name(),
        "peer": s.peer,
        "dataset": none_if_empty(&s.dataset),
        "peer_dataset": none_if_empty(&s.peer_dataset),
        "reveal": none_if_empty(s.reveal_name()),
        "state": s.job_state().to_string(),
        "created": s.created,
        "finished": if s.finished == 0 { None } else { Some(s.finished) },
        "error": if s.error.is_empty() { None } else { Some(&s.error) },
        "refused_by_peer": s.refused_by_peer,
        "seconds": s.seconds,
        "local_rows": s.local_rows,
        "peer_rows": s.peer_rows,
        "intersection": if s.has_intersection { Some(s.intersection) } else { None },
        "output": if s.output.is_empty() { None } else { Some(&s.output) },
        "output_rows": s.output_rows,
        "peer_output": if s.peer_output.is_empty() { None } else { Some(&s.peer_output) },
        "bytes_sent": s.bytes_sent,
        "bytes_received": s.bytes_received,
        "wire_bytes_sent": s.wire_bytes_sent,
        "wire_bytes_received": s.wire_bytes_received,
        "stages": s.stages.iter().map(|st| serde_json::json!({"name": st.name, "seconds": st.seconds})).collect::<Vec<_>>(),
        "request": serde_json::from_str::<serde_json::Value>(&s.request).ok(),
    })
}

fn none_if_empty(s: &str) -> Option<&str> {
    if s.is_empty() { None } else { Some(s) }
}

/// One line per job for `consort jobs`: id, kind, role, state, peer, datasets, output, times.
pub fn job_line(j: &JobStatus) -> String {
    let mut line = format!(
        "{}\t{}\t{}\t{}\tpeer={}\tdataset={}",
        j.job_id,
        j.job_kind(),
        j.role_name(),
        j.job_state(),
        j.peer,
        if j.dataset.is_empty() { "-" } else { &j.dataset }
    );
    if !j.peer_dataset.is_empty() {
        line.push_str(&format!("\tpeer_dataset={}", j.peer_dataset));
    }
    if !j.output.is_empty() {
        line.push_str(&format!("\toutput={} ({} rows)", j.output, j.output_rows));
    }
    line.push_str(&format!("\tcreated={}\t{:.1}s", j.created, j.seconds));
    if !j.error.is_empty() {
        line.push_str(&format!("\terror={}", j.error));
    }
    line
}

/// Fails with the job's error unless it is done, with the exit code of how it ended: refused
/// (by the peer, or a responder's record of a request it refused) or failed.
pub fn ensure_done(s: &JobStatus) -> Result<()> {
    let exit = match s.job_state() {
        JobState::Done => return Ok(()),
        JobState::Refused => Exit::Refused,
        _ if s.refused_by_peer => Exit::Refused,
        _ => Exit::JobFailed,
    };
    Err(exit.wrap(anyhow::anyhow!("job {} {}: {}", s.job_id, s.job_state(), s.error)))
}
