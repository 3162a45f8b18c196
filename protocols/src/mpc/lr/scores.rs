//! Evaluation and scoring after training: B's partial scores to A.
use crate::channel::Channel;
use crate::mpc::wire::{recv_u64s, send_u64s};
use crate::mpc::{MpcError, Party, violation};

/// Evaluation and scoring: B sends its partial scores x_B·w_B (one per row) to A, who gets them
/// back; B gets `None`. Reveals B's partial score per row to A (see the module docs).
pub async fn exchange_partial_scores<C: Channel>(
    channel: &C,
    party: Party,
    partial: &[f64],
) -> Result<Option<Vec<f64>>, MpcError> {
    let n = partial.len();
    match party {
        Party::B => {
            send_u64s(channel, &partial.iter().map(|v| v.to_bits()).collect::<Vec<_>>()).await?;
            Ok(None)
        }
        Party::A => {
            let v = recv_u64s(channel, n).await?;
            let v: Vec<f64> = v.into_iter().map(f64::from_bits).collect();
            if v.iter().any(|s| !s.is_finite()) {
                return Err(violation("the peer sent a non-finite score"));
            }
            Ok(Some(v))
        }
    }
}
