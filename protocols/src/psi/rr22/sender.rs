//! S, the OPRF sender (the responder): per bucket it unmasks R's OKVS with its VOLE share and Δ,
//! evaluates the OPRF on its own items and sends the values in a secret random order (RR22
//! Fig. 4, steps 3 and 4).

use std::ops::Range;
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::{Rng, RngExt};
use rayon::prelude::*;
use zeroize::Zeroizing;

use super::oprf::{okvs_values, output_hash, value_mask};
use super::receiver::check_bucket;
use super::wire::{recv_cells, send_payloads, send_values};
use super::{BucketSink, BucketSource, DUMMY, Layout, PayloadKeys, Rr22Error, os_rng};
use crate::channel::Channel;
use crate::cpu;
use crate::okvs::{self, Okvs};
use crate::ot::gf128;
use crate::psi::payload::{Payloads, TAG_BYTES, item_keys, seal_item};
use crate::psi::{Progress, Timings};
use crate::vole::VoleSender;
use std::sync::Arc;

/// A bucket's digests and ids, as the source gives them.
type Loaded = Result<(Vec<u128>, Vec<u32>), Rr22Error>;

/// Loads bucket `b` from the source on rayon.
fn load(source: &Arc<dyn BucketSource>, b: usize, cap: usize) -> cpu::Task<Loaded> {
    let source = source.clone();
    cpu::spawn(move || {
        let (digests, ids) = source.bucket(b)?;
        check_bucket(b, &digests, &ids, cap)?;
        Ok((digests, ids))
    })
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn run_sender<C: Channel>(
    channel: &C,
    source: &Arc<dyn BucketSource>,
    layout: &Layout,
    range: Range<usize>,
    payloads: Option<(Arc<Payloads>, PayloadKeys)>,
    keep_orders: bool,
    sink: &mut dyn BucketSink,
    total: usize,
    progress: &Progress<'_>,
    timings: &mut Timings,
    kept: &mut Option<VoleSender>,
) -> Result<(), Rr22Error> {
    let clock = Instant::now();
    // A setup kept from the job's previous range (taken: put back only if this range succeeds).
    let mut vole = match kept.take() {
        Some(vole) => vole,
        None => VoleSender::setup(channel).await?,
    };
    timings.add("vole setup", clock);
    let delta = vole.delta();
    let mask = value_mask(layout.value_bytes);
    let m = okvs::cells_for(layout.cap_receiver);
    let cap = layout.cap_sender;
    let mut done = 0usize;
    let mut next = (!range.is_empty()).then(|| load(source, range.start, cap));
    // Bucket b + 1's VOLE is received and its trees built while bucket b's OPRF values are
    // computed; its tree messages go out after bucket b's values (the receiver reads in that order).
    let clock = Instant::now();
    // Fig. 4, step 2 (the VOLE; S gets Δ, once per job, and B), one per bucket.
    let first = match range.is_empty() {
        true => None,
        false => Some(vole.extend_start(channel, m).await?),
    };
    let mut vole_next = match first {
        Some(pending) => Some(VoleSender::extend_finish(channel, pending).await?),
        None => None,
    };
    timings.add("vole", clock);
    for b in range.clone() {
        let vole_b = vole_next.take().expect("extended");
        let clock = Instant::now();
        let (seed, masked) = recv_cells(channel, b, m).await?;
        timings.add("wait for and receive okvs", clock);
        let clock = Instant::now();
        let (digests_owned, indices_owned) = next.take().expect("spawned").await?;
        timings.add("load bucket (beyond wait)", clock);
        // The next bucket is read while this one runs (two buckets in memory at most).
        if b + 1 < range.end {
            next = Some(load(source, b + 1, cap));
        }
        let clock = Instant::now();
        let real_items = digests_owned.len();
        let bucket_payloads = payloads.clone();
        let oprf = cpu::spawn(move || -> Result<_, Rr22Error> {
            // Fig. 4, step 3: K = B' = B + A'·Δ with A' = A + P.
            // Step 4: F(y) = H^o(Decode(K, y) + Δ·v(y)) (the paper's minus is XOR here).
            let mut key = Zeroizing::new(masked);
            key.par_iter_mut().zip(vole_b.par_iter()).for_each(|(k, &b)| *k = b ^ gf128::mul(*k, delta));
            let store = Okvs::from_cells(seed, &key[..]).expect("m cells");
            let mut out = vec![0u128; digests_owned.len()];
            store.decode_batch(&digests_owned, &mut out);
            let mut v = vec![0u128; digests_owned.len()];
            okvs_values(&digests_owned, &mut v);
            out.par_iter_mut().zip(v.par_iter()).for_each(|(o, &v)| *o ^= gf128::mul(delta, v));
            // Labeled PSI: each item's payload sealed under a key from its OPRF input z = out[k]
            // (before the output hash), see `crate::psi::payload`.
            let sealed = bucket_payloads
                .as_ref()
                .map(|(p, keys)| seal_payloads(p, keys, &digests_owned, &indices_owned, &out))
                .transpose()?;
            output_hash(&digests_owned, &mut out, mask);
            // The stream (step 4, "in a random order"): own values and random dummies, in a secret
            // random order.
            let mut rng = os_rng();
            let mut order: Vec<u32> = (0..cap as u32).collect();
            order.shuffle(&mut rng);
            let real = digests_owned.len() as u32;
            let values: Vec<u128> =
                order.iter().map(|&k| if k < real { out[k as usize] } else { rng.random::<u128>() & mask }).collect();
            // Payloads in the same secret order; a dummy's is random bytes.
            let stream = sealed.map(|(sealed, each)| {
                let mut stream = vec![0u8; cap * each];
                stream.par_chunks_mut(each).zip(order.par_iter()).for_each_init(os_rng, |rng, (dst, &k)| {
                    if k < real {
                        dst.copy_from_slice(&sealed[k as usize * each..(k as usize + 1) * each]);
                    } else {
                        rng.fill_bytes(dst);
                    }
                });
                stream
            });
            let order: Vec<u32> =
                order.iter().map(|&k| if k < real { indices_owned[k as usize] } else { DUMMY }).collect();
            Ok((values, order, stream))
        });
        let pending = match b + 1 < range.end {
            true => Some(vole.extend_start(channel, m).await?),
            false => None,
        };
        let (values, order, stream) = oprf.await?;
        timings.add("oprf values and next vole", clock);
        let clock = Instant::now();
        send_values(channel, b, layout.value_bytes, &values).await?;
        timings.add("send values", clock);
        if let (Some(stream), Some((_, keys))) = (stream, &payloads) {
            let clock = Instant::now();
            send_payloads(channel, b, keys.width, &stream).await?;
            timings.add("send payloads", clock);
        }
        if let Some(pending) = pending {
            let clock = Instant::now();
            vole_next = Some(VoleSender::extend_finish(channel, pending).await?);
            timings.add("vole", clock);
        }
        if keep_orders {
            sink.keep_order(b, order)?;
        }
        done += real_items;
        progress.report("intersect buckets", done, total);
    }
    *kept = Some(vole);
    Ok(())
}

/// Seals each item's payload under its key (bucket order); returns the ciphertexts and their
/// size. Fails if two items are equal: their keys would be equal too.
fn seal_payloads(
    payloads: &Payloads,
    keys: &PayloadKeys,
    digests: &[u128],
    indices: &[u32],
    z: &[u128],
) -> Result<(Vec<u8>, usize), Rr22Error> {
    let mut sorted = digests.to_vec();
    sorted.par_sort_unstable();
    if sorted.windows(2).any(|w| w[0] == w[1]) {
        return Err(Rr22Error::Input(
            "a responder sending payloads must hold distinct items (group the rows of a key into one payload)".into(),
        ));
    }
    let each = keys.width + TAG_BYTES;
    let mut sealed = vec![0u8; digests.len() * each];
    sealed.par_chunks_mut(each).enumerate().for_each(|(k, dst)| {
        seal_item(&item_keys(&keys.salt, digests[k], z[k]), payloads.get(indices[k] as usize), keys.width, dst);
    });
    Ok((sealed, each))
}
