//! R, the OPRF receiver (the requester): per bucket it encodes its OKVS, masks it with its VOLE
//! share and sends it, then matches S's values against its own (RR22 Fig. 4, steps 1, 3 and 5).

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use rand::RngExt;
use rand::rngs::StdRng;
use rayon::prelude::*;

use super::matching::join_values;
use super::oprf::{okvs_values, output_hash, value_mask};
use super::wire::{recv_payloads, recv_values, send_cells};
use super::{BucketSource, Layout, PayloadKeys, Rr22Error, os_rng, violation};
use crate::channel::Channel;
use crate::cpu;
use crate::okvs::{self, Okvs, OkvsError, OkvsSeed};
use crate::psi::payload::{LEN_BYTES, Payloads, TAG_BYTES, item_keys, open_item};
use crate::psi::{Progress, Timings};
use crate::vole::VoleReceiver;

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

/// What R does with a finished bucket: its own matched ids and S's matched stream positions,
/// both in the joint order.
pub(super) type OnMatched<'a> = dyn FnMut(usize, Vec<u32>, Vec<u32>) -> Result<(), Rr22Error> + Send + 'a;

/// Bucket `b` from the source, padded, encoded: (padded keys, ids, OKVS seed, cells).
type Encoded = (Arc<Vec<u128>>, Vec<u32>, OkvsSeed, Vec<u128>);

/// Loads bucket `b` from the source and encodes its OKVS (Fig. 4, step 1), on rayon.
fn load_and_encode(source: &Arc<dyn BucketSource>, b: usize, cap: usize) -> cpu::Task<Result<Encoded, Rr22Error>> {
    let source = source.clone();
    cpu::spawn(move || {
        let (digests, ids) = source.bucket(b)?;
        check_bucket(b, &digests, &ids, cap)?;
        let keys = Arc::new(padded_keys(&digests, cap, &mut os_rng()));
        drop(digests);
        let (seed, cells) = encode_bucket(&keys)?;
        Ok((keys, ids, seed, cells))
    })
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn run_receiver<C: Channel>(
    channel: &C,
    source: &Arc<dyn BucketSource>,
    layout: &Layout,
    range: Range<usize>,
    payload_keys: Option<PayloadKeys>,
    total: usize,
    progress: &Progress<'_>,
    timings: &mut Timings,
    on_matched: &mut OnMatched<'_>,
    kept: &mut Option<VoleReceiver>,
    joint_order: bool,
) -> Result<Option<Payloads>, Rr22Error> {
    let clock = Instant::now();
    // A setup kept from the job's previous range (taken: put back only if this range succeeds).
    let mut vole = match kept.take() {
        Some(vole) => vole,
        None => VoleReceiver::setup(channel).await?,
    };
    timings.add("vole setup", clock);
    let mask = value_mask(layout.value_bytes);
    let cap = layout.cap_receiver;
    let m = okvs::cells_for(cap);
    let mut payloads = payload_keys.map(|_| Payloads::new());
    let mut done = 0usize;
    let mut next = (!range.is_empty()).then(|| load_and_encode(source, range.start, cap));
    // Fig. 4, step 2 (the VOLE; R gets A and C = B + A·Δ), one per bucket.
    // Bucket b + 1's VOLE starts (its OT extension goes out) right after bucket b's OKVS, and is
    // finished after bucket b's values arrive, while bucket b is matched.
    let clock = Instant::now();
    let mut vole_next = match range.is_empty() {
        true => None,
        false => {
            let pending = vole.extend_start(channel, m).await?;
            Some(VoleReceiver::extend_finish(channel, pending).await?)
        }
    };
    timings.add("vole", clock);
    for b in range.clone() {
        let encode = next.take().expect("spawned");
        let vole_out = vole_next.take().expect("extended");
        let clock = Instant::now();
        let (keys, indices, seed, cells) = encode.await?;
        timings.add("load and okvs encode (beyond other work)", clock);
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
        let real = indices.len();
        let c = vole_out.c;
        // Fig. 4, step 5, R's side: H^o(Decode(C, x)) for its own keys.
        let with_payloads = payload_keys.is_some();
        let keys_for_values = keys.clone();
        let own_values = cpu::spawn(move || {
            let keys = keys_for_values;
            let store = Okvs::from_cells(seed, &c[..]).expect("m cells");
            let mut own = vec![0u128; real];
            store.decode_batch(&keys[..real], &mut own);
            // Labeled PSI: the OPRF inputs z, for the payload keys of the matches.
            let z = with_payloads.then(|| own.clone());
            output_hash(&keys[..real], &mut own, mask);
            (own, z)
        });
        if b + 1 < range.end {
            next = Some(load_and_encode(source, b + 1, cap));
        }
        let clock = Instant::now();
        let pending = match b + 1 < range.end {
            true => Some(vole.extend_start(channel, m).await?),
            false => None,
        };
        timings.add("vole", clock);
        let clock = Instant::now();
        let peer_values = recv_values(channel, b, layout).await?;
        timings.add("wait for and receive values", clock);
        let sealed = match payload_keys {
            Some(pk) => {
                let clock = Instant::now();
                let sealed = recv_payloads(channel, b, layout.cap_sender, pk.width).await?;
                timings.add("receive payloads", clock);
                Some((sealed, pk))
            }
            None => None,
        };
        let clock = Instant::now();
        let (own_values, z) = own_values.await;
        timings.add("own values (beyond wait)", clock);
        let base = (b * layout.cap_sender) as u32;
        if let (Some((sealed, pk)), Some(z)) = (sealed, z) {
            let own_keys = keys.clone();
            // Matched and opened on rayon while the next bucket's VOLE finishes.
            let matching = cpu::spawn(move || {
                match_with_payloads(&own_values, &indices, &peer_values, base, &own_keys[..real], &z, &sealed, pk)
            });
            if let Some(pending) = pending {
                let clock = Instant::now();
                vole_next = Some(VoleReceiver::extend_finish(channel, pending).await?);
                timings.add("vole", clock);
            }
            let clock = Instant::now();
            let (own, peer, opened) = matching.await?;
            if let Some(p) = payloads.as_mut() {
                p.append(&opened);
            }
            on_matched(b, own, peer)?;
            timings.add("match and open payloads (beyond vole)", clock);
            done += real;
            progress.report("intersect buckets", done, total);
            continue;
        }
        // Fig. 4, step 5: R keeps its items whose value is among S's.
        let matching = cpu::spawn(move || {
            // The joint order within a bucket: by F value (ties: copies of one item, by index).
            // (Any order will do when the caller orders the matches itself.)
            let (mut own, mut peer) = join_values(&own_values, &indices, &peer_values, base);
            if joint_order {
                own.par_sort_unstable();
                peer.par_sort_unstable();
            }
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
        let clock = Instant::now();
        on_matched(b, own, peer)?;
        timings.add("hand over matches", clock);
        done += real;
        progress.report("intersect buckets", done, total);
    }
    *kept = Some(vole);
    Ok(payloads)
}

/// A bucket from the source: one id per digest, no more than the capacity.
pub(super) fn check_bucket(b: usize, digests: &[u128], ids: &[u32], cap: usize) -> Result<(), Rr22Error> {
    if digests.len() != ids.len() {
        return Err(Rr22Error::Input(format!("bucket {b}: {} digests, {} ids", digests.len(), ids.len())));
    }
    if digests.len() > cap {
        return Err(Rr22Error::BucketOverflow { bucket: b, capacity: cap });
    }
    Ok(())
}

/// Step 5 with payloads: the matches in the joint order (as without payloads), and for each own
/// match the payload sealed at the matching S position, opened with the key of the own item.
#[allow(clippy::too_many_arguments)]
fn match_with_payloads(
    own_values: &[u128],
    indices: &[u32],
    peer_values: &[u128],
    base: u32,
    digests: &[u128],
    z: &[u128],
    sealed: &[u8],
    pk: PayloadKeys,
) -> Result<(Vec<u32>, Vec<u32>, Payloads), Rr22Error> {
    let local: Vec<u32> = (0..own_values.len() as u32).collect();
    let (own, mut peer) = join_values(own_values, &local, peer_values, 0);
    // (value, own item index, position in the bucket), in the joint order.
    let mut own: Vec<(u128, u32, u32)> = own.into_iter().map(|(v, k)| (v, indices[k as usize], k)).collect();
    own.par_sort_unstable();
    peer.par_sort_unstable();
    let (width, each) = (pk.width, pk.width + TAG_BYTES);
    // Opened in place into one buffer (no allocation per item), then copied into `Payloads`.
    let mut bodies = vec![0u8; own.len() * width];
    let lengths: Vec<usize> = bodies
        .par_chunks_mut(width.max(1))
        .zip(own.par_iter())
        .map(|(body, &(v, _, k))| {
            let at = peer.partition_point(|&(pv, _)| pv < v);
            let position = match peer.get(at) {
                Some(&(pv, p)) if pv == v => p as usize,
                _ => return Err(violation("a matched value has no position")),
            };
            let keys = item_keys(&pk.salt, digests[k as usize], z[k as usize]);
            open_item(&keys, &sealed[position * each..(position + 1) * each], body)
                .ok_or_else(|| violation("a matched payload does not open (wrong key or a corrupted payload)"))
        })
        .collect::<Result<_, _>>()?;
    let mut payloads = Payloads::new();
    for (body, len) in bodies.chunks(width.max(1)).zip(lengths) {
        payloads.push(&body[LEN_BYTES..LEN_BYTES + len]);
    }
    Ok((own.into_iter().map(|(_, i, _)| i).collect(), peer.into_iter().map(|(_, p)| base + p).collect(), payloads))
}
