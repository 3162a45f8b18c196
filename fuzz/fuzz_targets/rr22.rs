//! RR22-PSI, one party against a peer that sends the fuzzer's frames: the hello decoder and
//! checks, then base OTs, VOLE, OKVS cells, values and positions frames, all reached through
//! `psi::rr22::run`. Options byte: bit 0 role (responder), bit 1 reveal requester-only, bit 2
//! buckets of 4 items (several buckets, padded) instead of one, bit 3 a job bound of 6 peer items.
#![no_main]

use consort_fuzz::{Script, ScriptedPeer, announced_size};
use consort_protocols::psi::rr22::{Rr22Config, run};
use consort_protocols::{Reveal, Role};
use libfuzzer_sys::fuzz_target;

const ITEMS: [&[u8]; 6] = [b"alice", b"bob", b"carol", b"dave", b"erin", b"frank"];
/// The work of an RR22 party grows with the peer's announced set (that is the protocol; memory
/// stays per bucket): larger announcements are skipped so each run stays in milliseconds.
const MAX_ANNOUNCED: u64 = 1 << 12;

fuzz_target!(|data: &[u8]| {
    let Some(script) = Script::parse(data) else { return };
    if announced_size(&script).is_some_and(|n| n > MAX_ANNOUNCED) {
        return;
    }
    let mut config = Rr22Config::new(
        if script.options & 1 == 0 { Role::Requester } else { Role::Responder },
        if script.options & 2 == 0 { Reveal::Both } else { Reveal::RequesterOnly },
    );
    if script.options & 4 != 0 {
        config.bucket_size = 4;
    }
    // Bit 3: a job's agreed bound, so the refusal of a larger hello is reached too.
    if script.options & 8 != 0 {
        config.max_peer_items = ITEMS.len() as u64;
    }
    let peer = ScriptedPeer::new(script.first);
    let _ = futures::executor::block_on(run(&peer, &ITEMS[..], &config));
});
