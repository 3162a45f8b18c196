//! Joint prediction with a trained model: B routes the rows through its own splits, A walks the
//! trees and adds the leaf weights.
use super::active::walk;
use super::binning::BinnedFeatures;
use super::wire::{pack_bits, unpack_bits};
use super::{Split, Tree};
use crate::channel::Channel;
use crate::mpc::wire::{recv_bytes, send_bytes};
use crate::mpc::{MpcError, Party, violation};

/// Each party's trees (its side of one model) and its binned features of the same rows (binned
/// with the edges the model was trained with). Both first send (rows, trees, B-split nodes) and
/// stop on a mismatch; then B sends, per split node of its own (trees in order, nodes by id), the
/// direction of every row (a bit each). A gets the margin of every row (σ of it is the
/// probability), B an empty vector.
pub async fn predict<C: Channel>(
    channel: &C,
    party: Party,
    trees: &[Tree],
    x: &BinnedFeatures,
) -> Result<Vec<f64>, MpcError> {
    let split_nodes =
        |s: fn(&Split) -> bool| trees.iter().map(|t| t.nodes.iter().filter(|n| s(&n.split)).count()).sum();
    let b_nodes: usize = match party {
        Party::A => split_nodes(|s| matches!(s, Split::Peer { .. })),
        Party::B => split_nodes(|s| matches!(s, Split::Own { .. })),
    };
    for t in trees {
        for n in &t.nodes {
            if let Split::Own { feature, bin } = n.split
                && (feature as usize >= x.features() || u32::from(bin) + 1 >= x.bins[feature as usize])
            {
                return Err(MpcError::Invalid("the model splits on a feature or bin the data does not have".into()));
            }
        }
    }
    let mut hello = Vec::with_capacity(24);
    for v in [x.rows as u64, trees.len() as u64, b_nodes as u64] {
        hello.extend_from_slice(&v.to_le_bytes());
    }
    let (sent, theirs) = futures::join!(send_bytes(channel, &hello), recv_bytes(channel, 24));
    sent?;
    if theirs? != hello {
        return Err(violation("the parties disagree on the rows, the number of trees or B's split nodes"));
    }
    let per_node = x.rows.div_ceil(8);
    match party {
        Party::B => {
            let mut bytes = Vec::with_capacity(per_node * b_nodes);
            for t in trees {
                for n in &t.nodes {
                    if let Split::Own { feature, bin } = n.split {
                        let col = &x.columns[feature as usize];
                        bytes.extend(pack_bits(col.iter().map(|&v| v <= bin)));
                    }
                }
            }
            send_bytes(channel, &bytes).await?;
            Ok(Vec::new())
        }
        Party::A => {
            let bytes = recv_bytes(channel, per_node * b_nodes).await?;
            let mut directions = Vec::with_capacity(b_nodes);
            for k in 0..b_nodes {
                directions.push(unpack_bits(&bytes[k * per_node..(k + 1) * per_node], x.rows)?);
            }
            let mut margins = vec![0.0; x.rows];
            let mut at = 0;
            for t in trees {
                let peer_ids: Vec<u32> =
                    t.nodes.iter().filter(|n| matches!(n.split, Split::Peer { .. })).map(|n| n.id).collect();
                let dirs = &directions[at..at + peer_ids.len()];
                at += peer_ids.len();
                for (r, m) in margins.iter_mut().enumerate() {
                    *m += walk(t, |id, split| match split {
                        Split::Own { feature, bin } => x.columns[feature as usize][r] <= bin,
                        _ => dirs[peer_ids.binary_search(&id).expect("a peer node")][r],
                    });
                }
            }
            Ok(margins)
        }
    }
}
