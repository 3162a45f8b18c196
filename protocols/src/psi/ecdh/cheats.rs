//! Dishonest parties for the tests of the proofs (feature `test-cheats`; never in a real node).

use super::flow::run_framed;
use super::{Behaviour, EcdhEvidence, EcdhPsiConfig, EcdhPsiError, Framing};
use crate::channel::Channel;
use crate::items::Items;
use crate::psi::PsiOutput;

/// A dishonest party, for tests of the proofs (feature `test-cheats`; never in a real node).
#[cfg(feature = "test-cheats")]
#[derive(Debug, Clone, Copy)]
pub enum Cheat {
    /// Multiply the peer's points from this index on by a second key (the committed key's proof
    /// is still sent).
    SecondKeyFrom(usize),
    /// Send random scalars as the DLEQ proof.
    ForgedProof,
}

/// [`run_with_evidence`] for a cheating party (feature `test-cheats`).
#[cfg(feature = "test-cheats")]
pub async fn run_cheating<C: Channel, I: Items + ?Sized>(
    channel: &C,
    items: &I,
    config: &EcdhPsiConfig,
    cheat: Cheat,
) -> Result<(PsiOutput, Option<EcdhEvidence>), EcdhPsiError> {
    let behaviour = match cheat {
        Cheat::SecondKeyFrom(index) => Behaviour::SecondKeyFrom(index),
        Cheat::ForgedProof => Behaviour::ForgedProof,
    };
    run_framed(channel, items, config, Framing::DEFAULT, behaviour).await
}
