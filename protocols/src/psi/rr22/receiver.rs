//! R, the OPRF receiver (the requester): per bucket it encodes its OKVS, masks it with its VOLE
//! share and sends it, then matches S's values against its own (RR22 Fig. 4, steps 1, 3 and 5).

use std::time::Instant;

use rand::RngExt;
use rand::rngs::StdRng;
use rayon::prelude::*;

use super::bucket::Buckets;
use super::matching::join_values;
use super::oprf::{okvs_values, output_hash, value_mask};
use super::wire::{recv_values, send_cells};
use super::{Layout, Rr22Error, os_rng};
use crate::channel::Channel;
use crate::cpu;
use crate::okvs::{self, Okvs, OkvsError, OkvsSeed};
use crate::psi::{Progress, Timings};
use crate::vole::VoleReceiver;

/// R's result: own indices in the joint order and the matched S positions in the same order.
pub(super) struct ReceiverResult {
    pub(super) own: Vec<u32>,
    pub(super) sender_positions: Vec<u32>,
}

/// R's bucket keys: its digests padded with random dummies to the capacity.
fn padded_keys(digests: &[u128], cap: usize, rng: &mut StdRng) -> Vec<u128> {
    let mut keys = Vec::with_capacity(cap);
    keys.extend_from_slice(digests);
    keys.extend((digests.len()..cap).map(|_| rng.random::<u128>()));
    keys
}

/// Fig. 4, step 1: P := Encode({(d, v(d))}, r) over R's bucket keys, retrying with a fresh seed
/// `r` if the band system is singular.
fn encode_bucket(keys: &[u128]) -> Result<(OkvsSeed, Vec<u128>), Rr22Error> {
    let mut rng = os_rng();
    let mut values = vec![0u128; keys.len()];
    okvs_values(keys, &mut values);
    let mut cells = vec![0u128; okvs::cells_for(keys.len())];
    for _ in 0..4 {
        let seed = OkvsSeed::random(&mut rng);
        match okvs::encode_into(keys, &values, seed, &mut rng, &mut cells) {
            Ok(()) => return Ok((seed, cells)),
            Err(OkvsError::Singular { .. }) => continue,
            Err(e) => return Err(Rr22Error::Input(e.to_string())),
        }
    }
    Err(Rr22Error::Input("the OKVS failed four times in a row (probability below 2^-160)".into()))
}

pub(super) async fn run_receiver<C: Channel>(
    channel: &C,
    buckets: &Buckets,
    layout: &Layout,
    progress: &Progress<'_>,
    timings: &mut Timings,
) -> Result<ReceiverResult, Rr22Error> {
    let clock = Instant::now();
    let mut vole = VoleReceiver::setup(channel).await?;
    timings.add("vole setup", clock);
    let mask = value_mask(layout.value_bytes);
    let cap = layout.cap_receiver;
    let m = okvs::cells_for(cap);
    let total = buckets.items;
    // Own indices and S positions of every match, in the joint order (4 bytes per match each).
    let mut own_matches: Vec<u32> = Vec::new();
    let mut sender_matches: Vec<u32> = Vec::new();
    let mut done = 0usize;
    let spawn_encode = |b: usize| {
        let keys = std::sync::Arc::new(padded_keys(buckets.bucket(b).0, cap, &mut os_rng()));
        let task = {
            let keys = keys.clone();
            cpu::spawn(move || encode_bucket(&keys))
        };
        (keys, task)
    };
    let mut next = (layout.buckets > 0).then(|| spawn_encode(0));
    // Fig. 4, step 2 (the VOLE; R gets A and C = B + A·Δ), one per bucket.
    // Bucket b + 1's VOLE starts (its OT extension goes out) right after bucket b's OKVS, and is
    // finished after bucket b's values arrive, while bucket b is matched.
    let clock = Instant::now();
    let mut vole_next = match layout.buckets {
        0 => None,
        _ => {
            let pending = vole.extend_start(channel, m).await?;
            Some(VoleReceiver::extend_finish(channel, pending).await?)
        }
    };
    timings.add("vole", clock);
    for b in 0..layout.buckets {
        let (digests, indices) = buckets.bucket(b);
        let (keys, encode) = next.take().expect("spawned");
        let vole_out = vole_next.take().expect("extended");
        let clock = Instant::now();
        let (seed, cells) = encode.await?;
        timings.add("okvs encode (beyond other work)", clock);
        // Fig. 4, step 3: R sends r and A' = A − P (= A ⊕ P in characteristic 2).
        let clock = Instant::now();
        let a = vole_out.a;
        let masked = cpu::run(move || {
            let mut masked = cells;
            masked.par_iter_mut().zip(a.par_iter()).for_each(|(p, a)| *p ^= a);
            masked
        })
        .await;
        send_cells(channel, b, seed, &masked).await?;
        drop(masked);
        timings.add("mask and send okvs", clock);
        // While the sender works: this bucket's own values, the next bucket's OKVS and VOLE.
        let real = digests.len();
        let c = vole_out.c;
        // Fig. 4, step 5, R's side: H^o(Decode(C, x)) for its own keys.
        let own_values = cpu::spawn(move || {
            let store = Okvs::from_cells(seed, &c[..]).expect("m cells");
            let mut own = vec![0u128; real];
            store.decode_batch(&keys[..real], &mut own);
            output_hash(&keys[..real], &mut own, mask);
            own
        });
        if b + 1 < layout.buckets {
            next = Some(spawn_encode(b + 1));
        }
        let clock = Instant::now();
        let pending = match b + 1 < layout.buckets {
            true => Some(vole.extend_start(channel, m).await?),
            false => None,
        };
        timings.add("vole", clock);
        let clock = Instant::now();
        let peer_values = recv_values(channel, b, layout).await?;
        timings.add("wait for and receive values", clock);
        let clock = Instant::now();
        let own_values = own_values.await;
        timings.add("own values (beyond wait)", clock);
        let base = (b * layout.cap_sender) as u32;
        let indices = indices.to_vec();
        // Fig. 4, step 5: R keeps its items whose value is among S's.
        let matching = cpu::spawn(move || {
            // The joint order within a bucket: by F value (ties: copies of one item, by index).
            let (mut own, mut peer) = join_values(&own_values, &indices, &peer_values, base);
            own.par_sort_unstable();
            peer.par_sort_unstable();
            (
                own.into_iter().map(|(_, i)| i).collect::<Vec<u32>>(),
                peer.into_iter().map(|(_, p)| p).collect::<Vec<u32>>(),
            )
        });
        if let Some(pending) = pending {
            let clock = Instant::now();
            vole_next = Some(VoleReceiver::extend_finish(channel, pending).await?);
            timings.add("vole", clock);
        }
        let clock = Instant::now();
        let (own, peer) = matching.await;
        timings.add("match (beyond vole)", clock);
        own_matches.extend(own);
        sender_matches.extend(peer);
        done += digests.len();
        progress.report("intersect buckets", done, total);
    }
    Ok(ReceiverResult { own: own_matches, sender_positions: sender_matches })
}
