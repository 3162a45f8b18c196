//! A job request as the responder receives it: the `JobRequest` protobuf decode, the envelope's
//! structure check (version, id and dataset name syntax, parameter size), then, for a request that
//! passes, the typed fields and the kind's parameter parsing (`Kind::plan`) as admission runs it.
#![no_main]

use consort_api::JobKind;
use consort_api::proto::JobRequest;
use consort_api::vocab::wire;
use consort_node::job::envelope::check_structure;
use consort_protocols::Role;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = JobRequest::decode(data) else { return };
    if check_structure(&request).is_err() {
        return;
    }
    let Ok(kind) = wire::<JobKind>("job kind", request.kind) else { return };
    consort_fuzz::plan(kind, Role::Responder, &request.job_id, &request.params);
});
