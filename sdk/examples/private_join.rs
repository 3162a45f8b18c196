//! Two parties run a private join in one process over an in-memory channel.
//!
//! `cargo run -p consort-sdk --example private_join`
//!
//! In a real deployment each party runs its half in its own domain and the channel is a network
//! transport (a consort node provides a mutually authenticated gRPC one); the code of each half is
//! the same.

use consort_sdk::{PsiProtocol, Reveal, Role, intersect, memory_pair};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bank: Vec<String> = ["15550000001", "15550000002", "15550000003", "15550000004"].map(String::from).to_vec();
    let insurer: Vec<String> = ["15550000003", "15550000009", "15550000001"].map(String::from).to_vec();

    let (bank_end, insurer_end) = memory_pair(8);
    let (bank_result, insurer_result) = tokio::join!(
        intersect(&bank_end, &bank, PsiProtocol::Rr22, Role::Requester, Reveal::Both),
        intersect(&insurer_end, &insurer, PsiProtocol::Rr22, Role::Responder, Reveal::Both),
    );
    let (bank_result, insurer_result) = (bank_result?, insurer_result?);

    println!("bank: {} own ids, insurer has {}", bank.len(), bank_result.peer_size);
    let shared_bank = bank_result.intersection.unwrap_or_default();
    let shared_insurer = insurer_result.intersection.unwrap_or_default();
    for (i, (&a, &b)) in shared_bank.iter().zip(&shared_insurer).enumerate() {
        // Row i is the same customer on both sides: each side only sees its own rows.
        println!("shared #{i}: bank row {a} ({}), insurer row {b} ({})", bank[a as usize], insurer[b as usize]);
    }
    Ok(())
}
