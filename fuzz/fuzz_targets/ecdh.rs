//! ECDH-PSI, one party against a peer that sends the fuzzer's frames: the hello decoder and
//! compatibility checks, the points, tags, challenge and proof frames, all reached through
//! `psi::ecdh::run` as a real peer would reach them. Options byte: bit 0 role (responder),
//! bit 1 reveal requester-only, bit 2 proofs.
#![no_main]

use consort_fuzz::{Script, ScriptedPeer};
use consort_protocols::psi::ecdh::{EcdhPsiConfig, run};
use consort_protocols::{Reveal, Role};
use libfuzzer_sys::fuzz_target;

const ITEMS: [&[u8]; 4] = [b"alice", b"bob", b"carol", b"dave"];

fuzz_target!(|data: &[u8]| {
    let Some(script) = Script::parse(data) else { return };
    let config = EcdhPsiConfig {
        role: if script.options & 1 == 0 { Role::Requester } else { Role::Responder },
        reveal: if script.options & 2 == 0 { Reveal::Both } else { Reveal::RequesterOnly },
        progress: None,
        proofs: script.options & 4 != 0,
        // Only the protocol's own bound: a huge announcement must be refused by it, not by a job's.
        max_peer_items: u64::MAX,
    };
    let peer = ScriptedPeer::new(script.first);
    // Errors are the expected outcome of most inputs; a panic, hang or huge allocation is a bug.
    let _ = futures::executor::block_on(run(&peer, &ITEMS[..], &config));
});
