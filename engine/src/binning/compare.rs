//! The plaintext check of a bin job (tests, demos): join the two datasets by key in the clear, bin
//! each feature with the edges of the bins file that owns it (A's own edges, B's file for
//! `peer:K`), and compare every count, event count, WOE and IV of A's file with a plaintext
//! computation on those bins; also that B's file holds nothing derived from the labels.
use std::collections::HashMap;

use consort_protocols::mpc::binning::{BinCounts, FeatureBins, woe_iv};

use super::{BinnedFeature, BinsFile};
use crate::dataset::Dataset;
use crate::lr::{ColumnChoice, Missing, load_features_as};

/// Checks A's file `fa` and B's file `fb` of one job against datasets `a` (with label column
/// `label`) and `b`; returns the number of aligned rows, or what differs.
pub async fn check_against_plaintext(
    a: &Dataset,
    b: &Dataset,
    fa: &BinsFile,
    fb: &BinsFile,
    label: &str,
) -> Result<usize, String> {
    if (fa.party.as_str(), fb.party.as_str()) != ("A", "B") || fa.bins_id != fb.bins_id {
        return Err("the files are not A's and B's of one job".into());
    }
    let b_index: HashMap<String, u32> = (0..b.len() as u32).map(|i| (b.key_of(i as usize), i)).collect();
    let (mut rows_a, mut rows_b) = (Vec::new(), Vec::new());
    for i in 0..a.len() as u32 {
        if let Some(&j) = b_index.get(&a.key_of(i as usize)) {
            rows_a.push(i);
            rows_b.push(j);
        }
    }
    let own: Vec<&BinnedFeature> = fa.features.iter().filter(|f| f.owner == "self").collect();
    let peer: Vec<&BinnedFeature> = fa.features.iter().filter(|f| f.owner == "peer").collect();
    let names = |fs: &[&BinnedFeature]| Some(fs.iter().map(|f| f.name.clone()).collect());
    let choice = ColumnChoice { label: Some(label.into()), features: names(&own) };
    let ta = load_features_as(a, &rows_a, &choice, Missing::Keep).await.map_err(|e| e.to_string())?;
    let b_feats: Vec<&BinnedFeature> = fb.features.iter().collect();
    let choice = ColumnChoice { label: None, features: names(&b_feats) };
    let tb = load_features_as(b, &rows_b, &choice, Missing::Keep).await.map_err(|e| e.to_string())?;
    let labels = ta.labels.expect("the label column was read");
    let n = labels.len();
    if fa.rows != n as u64 || fb.rows != n as u64 {
        return Err(format!("rows: files {} / {}, plaintext join {n}", fa.rows, fb.rows));
    }
    let check = |f: &BinnedFeature, edges: &[f64], values: Vec<f64>| -> Result<(), String> {
        let e = FeatureBins { edges: edges.to_vec() };
        let col: Vec<u8> = values.iter().map(|&x| e.bin(x)).collect();
        let expect = BinCounts::of(&col, &labels, e.bins() as usize);
        let w = woe_iv(&expect);
        let got: Vec<_> = f.bins.iter().map(|b| (b.bin, b.count, b.events, b.non_events, b.woe, b.iv)).collect();
        let want: Vec<_> = (0..expect.counts.len())
            .map(|j| {
                let (c, e) = (expect.counts[j], expect.events[j]);
                (j as u32, Some(c), Some(e), Some(c - e), Some(w.woe[j]), Some(w.iv_bins[j]))
            })
            .collect();
        if got != want || f.iv != Some(w.iv) {
            return Err(format!("feature {}: file {got:?} (IV {:?}), plaintext {want:?} (IV {})", f.name, f.iv, w.iv));
        }
        Ok(())
    };
    let (da, db) = (own.len(), b_feats.len());
    for (k, f) in own.iter().enumerate() {
        check(f, f.edges.as_deref().unwrap_or_default(), (0..n).map(|i| ta.values[i * da + k]).collect())?;
    }
    if peer.len() != db {
        return Err(format!("A's file has {} peer features, B's file {db}", peer.len()));
    }
    for f in &peer {
        if f.edges.is_some() || f.bins.iter().any(|b| b.range.is_some()) {
            return Err(format!("A's file holds edges of {}", f.name));
        }
        let k = f.index as usize;
        let theirs = b_feats.get(k).ok_or_else(|| format!("B's file has no feature {k}"))?;
        if f.name != format!("peer:{}", theirs.index) {
            return Err(format!("{} is not B's feature {}", f.name, theirs.index));
        }
        check(f, theirs.edges.as_deref().unwrap_or_default(), (0..n).map(|i| tb.values[i * db + k]).collect())?;
    }
    let label_derived = fb.events.is_some()
        || fb.label.is_some()
        || fb.selection.is_some()
        || fb.woe_definition.is_some()
        || fb.features.iter().any(|f| {
            f.iv.is_some()
                || f.selected.is_some()
                || f.reason.is_some()
                || f.bins.iter().any(|b| b.count.is_some() || b.events.is_some() || b.woe.is_some() || b.iv.is_some())
        });
    if label_derived {
        return Err("B's file holds label-derived figures".into());
    }
    Ok(n)
}
