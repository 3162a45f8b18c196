//! SecureBoost against peers that send the fuzzer's frames: the hello (parameter digest, feature
//! and bin counts), A's key (`he`) or the kept correlations' setup (`ot`: base OTs, the KOS
//! check, the one-hot setup), every level's messages (A's gradients or one-hot messages, B's
//! histograms or shares, decisions, partitions and their check), the trees' directions for
//! unsampled and holdout rows, the early-stopping flag, and the prediction exchange.
//! Options byte (`consort_fuzz::sb`): bit 0 party B (else A), bit 1 `he` (else `ot`), bit 2 the
//! prediction exchange (else training), bit 3 kept one-hot trees, bit 4 hidden partitions (`ot`).
#![no_main]

use consort_fuzz::sb::{PREDICT, config, features, input, model, party};
use consort_fuzz::{Script, ScriptedPeer};
use consort_protocols::mpc::secureboost::{predict, train};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(script) = Script::parse(data) else { return };
    let peer = ScriptedPeer::new(script.first);
    let options = script.options & 31;
    futures::executor::block_on(async {
        if options & PREDICT != 0 {
            let party = party(options);
            let _ = predict(&peer, party, &model(party), &features(party)).await;
        } else {
            let _ = train(&peer, input(options), &config(options), None).await;
        }
    });
});
