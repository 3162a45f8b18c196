//! Unbalanced PSI, one party against a peer that sends the fuzzer's frames, through the protocol's
//! public entry points as a real peer would reach them. Options byte, bits 0–1: 0 the querier's
//! fetch (a malicious owner's hello and record frames), 1 the querier's query (the owner's
//! confirming hello and evaluated frames), 2 or 3 the owner's answer (a malicious querier's hello
//! and points). Bit 2: the list carries labels. The list and the key are fixed (so a seed's setup
//! id matches), see [`consort_fuzz::unbalanced`].
#![no_main]

use std::sync::Arc;

use consort_fuzz::unbalanced::{LIMITS, QUERY, set_and_key};
use consort_fuzz::{Script, ScriptedPeer};
use consort_protocols::psi::unbalanced::{answer, fetch, query};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(script) = Script::parse(data) else { return };
    let (set, key) = set_and_key(script.options & 4 != 0);
    let peer = ScriptedPeer::new(script.first);
    // Errors are the expected outcome of most inputs; a panic, hang or huge allocation is a bug.
    futures::executor::block_on(async {
        match script.options & 3 {
            0 => drop(fetch(&peer, &LIMITS).await),
            1 => drop(query(&peer, set, &Arc::new(QUERY.map(<[u8]>::to_vec).to_vec())).await),
            _ => drop(answer(&peer, key, &set.params, 1 << 16).await),
        }
    });
});
