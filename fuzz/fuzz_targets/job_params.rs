//! The parameter JSON of every job kind, planned by the kind (`Kind::plan`): psi (no parameters),
//! train (`TrainRequest` on the requester, `LrParams` and its LR config on the responder), score
//! (the responder's `ScoreParams` and model lookup; the requester's `ScoreRequest` parse only, as
//! its plan reads the model file the operator names), deal (`DealParams` and its id checks).
//! Options byte: bits 0–1 kind (psi, train, score, deal), bit 2 requester.
#![no_main]

use consort_api::JobKind;
use consort_node::job::score::ScoreRequest;
use consort_node::job::train::TrainRequest;
use consort_protocols::Role;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&options, rest)) = data.split_first() else { return };
    let Ok(params) = std::str::from_utf8(rest) else { return };
    let kind = [JobKind::Psi, JobKind::Train, JobKind::Score, JobKind::Deal][usize::from(options & 3)];
    let role = if options & 4 == 0 { Role::Responder } else { Role::Requester };
    // A deal job's id names its train job and party (`TRAIN.deal-a`); the seeds name train job
    // `t1` and party A, so the checks after the parse are reached.
    let job_id = if kind == JobKind::Deal { "t1.deal-a" } else { "j1" };
    match (kind, role) {
        (JobKind::Score, Role::Requester) => {
            let _ = serde_json::from_str::<ScoreRequest>(params);
        }
        _ => consort_fuzz::plan(kind, role, job_id, params),
    }
    let _ = serde_json::from_str::<TrainRequest>(params);
});
