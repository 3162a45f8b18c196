//! Logistic regression against peers that send the fuzzer's frames: the parameter handshake
//! (the LR "hello"), OT setup, the per-batch messages and the weight reveal of `mpc::lr::train`
//! (party A or B, dealer-free or with a dealer whose frames are the script's second peer), the
//! dealer's side (`run_dealer`, its hello from both parties) and the score exchange.
//! Options byte: bits 0–1 mode (0 party A, 1 party B, 2 dealer, 3 scores as A); bit 2 train with
//! a dealer.
#![no_main]

use consort_fuzz::lr::{ROWS, config, input};
use consort_fuzz::{Script, ScriptedPeer};
use consort_protocols::mpc::Party;
use consort_protocols::mpc::dealer::run_dealer;
use consort_protocols::mpc::lr::{exchange_partial_scores, train, train_with_dealer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(script) = Script::parse(data) else { return };
    let (peer, other) = (ScriptedPeer::new(script.first), ScriptedPeer::new(script.second));
    let config = config();
    futures::executor::block_on(async {
        let party = if script.options & 3 == 1 { Party::B } else { Party::A };
        match script.options & 3 {
            0 | 1 if script.options & 4 != 0 => {
                let _ = train_with_dealer(&peer, &other, input(party, &config), &config, None).await;
            }
            0 | 1 => {
                let _ = train(&peer, input(party, &config), &config, None).await;
            }
            2 => {
                let _ = run_dealer(&peer, &other).await;
            }
            _ => {
                let _ = exchange_partial_scores(&peer, Party::A, &[0.25; ROWS]).await;
            }
        }
    });
});
