//! ECDH-PSI in process (memory channel) with and without DLEQ proofs, alternated, with the time at
//! which each stage of the requester ends: the proof overhead without TLS, gRPC or CSV.
//!
//! `cargo run --release -p consort-protocols --example proof_cost -- 100000`

use consort_protocols::psi::ecdh::{self, EcdhPsiConfig};
use consort_protocols::{PsiProgress, Reveal, Role, memory_pair};
use std::sync::{Arc, Mutex};
use std::time::Instant;
fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let a: Vec<Vec<u8>> = (0..n).map(|i| format!("k{i}").into_bytes()).collect();
    let b: Vec<Vec<u8>> = (n / 2..n + n / 2).map(|i| format!("k{i}").into_bytes()).collect();
    for proofs in [false, true, false, true, false, true] {
        let (ca, cb) = memory_pair(8);
        let t = Instant::now();
        let marks: Arc<Mutex<Vec<String>>> = Arc::default();
        let m = marks.clone();
        let progress = Arc::new(move |p: PsiProgress| {
            if p.done == p.total {
                m.lock().unwrap().push(format!("{} {:.2}", p.stage, t.elapsed().as_secs_f64()));
            }
        });
        let ca_cfg = EcdhPsiConfig {
            role: Role::Requester,
            reveal: Reveal::Both,
            progress: Some(progress),
            proofs,
            max_peer_items: u64::MAX,
        };
        let cb_cfg = EcdhPsiConfig {
            role: Role::Responder,
            reveal: Reveal::Both,
            progress: None,
            proofs,
            max_peer_items: u64::MAX,
        };
        let (ra, rb) = rt.block_on(async {
            tokio::join!(ecdh::run_with_evidence(&ca, &a, &ca_cfg), ecdh::run_with_evidence(&cb, &b, &cb_cfg))
        });
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        let mut marks = marks.lock().unwrap().clone();
        marks.dedup_by(|x, y| x.split(' ').next() == y.split(' ').next());
        println!(
            "n={n} proofs={proofs} {:.2}s [{}] |I|={}",
            t.elapsed().as_secs_f64(),
            marks.join(", "),
            ra.0.intersection.unwrap().len()
        );
        drop(rb);
    }
}
