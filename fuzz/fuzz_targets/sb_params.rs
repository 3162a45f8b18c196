//! The parameter JSON of the SecureBoost job kinds, planned by the kind (`Kind::plan`):
//! `secureboost` (`SbTrainRequest` on the requester, `SbParamsWire` and its `SbConfig` validation
//! on the responder), `secureboost-score` (the responder's `SbScoreParams`, id check and model
//! lookup; the requester's `SbScoreRequest` parse only, as its plan reads the model file the
//! operator names). Options byte: bit 0 kind (secureboost, secureboost-score), bit 1 requester.
#![no_main]

use consort_api::JobKind;
use consort_engine::secureboost::SbParamsWire;
use consort_node::job::secureboost::{SbScoreParams, SbScoreRequest, SbTrainRequest};
use consort_protocols::Role;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&options, rest)) = data.split_first() else { return };
    let Ok(params) = std::str::from_utf8(rest) else { return };
    let kind = if options & 1 == 0 { JobKind::Secureboost } else { JobKind::SecureboostScore };
    let role = if options & 2 == 0 { Role::Responder } else { Role::Requester };
    match (kind, role) {
        (JobKind::SecureboostScore, Role::Requester) => {
            let _ = serde_json::from_str::<SbScoreRequest>(params);
        }
        _ => consort_fuzz::plan(kind, role, "j1", params),
    }
    if let Ok(p) = serde_json::from_str::<SbParamsWire>(params) {
        let _ = p.config();
    }
    let _ = serde_json::from_str::<SbTrainRequest>(params);
    let _ = serde_json::from_str::<SbScoreParams>(params);
});
