//! The SecureBoost part of `consort demo`: after LR, the two demo nodes train gradient-boosted
//! trees on the LR step's data (a `secureboost` job, granted separately), and the holdout AUC is
//! shown next to the plaintext reference GBDT on the same bins, split and hyper-parameters.

use std::path::Path;

use anyhow::{Result, bail};
use consort_api::JobKind;
use consort_engine::Dataset;
use consort_engine::PsiProtocol;
use consort_engine::secureboost::{SbModelFile, SbParamsWire, plaintext_comparison};

use super::lr_demo::DemoData;
use super::{lr, status};
use crate::client::NodeClient;
use crate::job::secureboost::SbTrainRequest;
use crate::{node, pair};

/// Generates `rows` entities with 5 + 5 features (5% of the bank's ids unknown to the partner),
/// grants them for SecureBoost, trains 3 trees of depth 3 from the bank's node, and compares with
/// the plaintext reference.
pub async fn run(
    root: &Path,
    (a, b): (&node::NodeHandle, &node::NodeHandle),
    (a_dir, b_dir): (&Path, &Path),
    rows: u64,
    json: bool,
) -> Result<serde_json::Value> {
    let say = |s: String| {
        if !json {
            println!("{s}");
        }
    };
    let demo = DemoData {
        dir: "sb-data",
        seed: 12,
        names: ("sb-loans", "sb-partner-features"),
        kinds: "secureboost,secureboost-score",
    };
    let (spec_a, spec_b) = demo.register(root, (a, b), (a_dir, b_dir), rows).await?;
    let params = SbParamsWire { trees: 3, max_depth: 3, max_bins: 17, seed: 5, ..SbParamsWire::default() };
    say(format!(
        "8. SecureBoost: '{}' {rows} loans (label y, 5 features), '{}' 5 other features for 95% of them, granted \
         for secureboost; {} trees of depth {}, {} bins, Okamoto–Uchiyama encrypted gradients",
        pair::A,
        pair::B,
        params.trees,
        params.max_depth,
        params.max_bins
    ));
    let model_a = root.join("bank-sb-model.json");
    let client = NodeClient::connect(a_dir).await?;
    let request = SbTrainRequest { label: "y".into(), features: vec![], params: params.clone() };
    let job_id = client
        .submit(lr::submit_request(
            JobKind::Secureboost,
            (pair::B, &spec_a.name, &spec_b.name),
            PsiProtocol::Ecdh,
            &request,
            &model_a,
        )?)
        .await?;
    let status = status::watch_with_progress(&client, &job_id, json).await?;
    if status.job_state() != consort_api::JobState::Done {
        bail!("demo secureboost job failed: {}", status.error);
    }
    say(lr::summary(&status));
    let (ka, kb) = (&a.state.storage.key, &b.state.storage.key);
    let ma = SbModelFile::load(&model_a, Some(ka))?;
    let mb = SbModelFile::load(&b_dir.join(&status.peer_output), Some(kb))?;
    let (sa, sb) = (spec_a.clone(), spec_b.clone());
    let (da, db) = consort_protocols::cpu::run(move || -> Result<(Dataset, Dataset)> {
        Ok((Dataset::load(&sa)?, Dataset::load(&sb)?))
    })
    .await?;
    let cmp = plaintext_comparison(&da, &db, &ma, &mb, &params).await?;
    let f = |v: Option<f64>| v.map(|x| format!("{x:.6}")).unwrap_or_else(|| "n/a".into());
    say(format!(
        "9. holdout ({} of {} aligned rows): AUC {} (two-node SecureBoost) vs {} (plaintext GBDT, same bins, split and \
         hyper-parameters); largest prediction difference {:.1e}{}",
        cmp.holdout_rows,
        cmp.aligned_rows,
        f(cmp.auc_secure),
        f(cmp.auc_plaintext),
        cmp.max_prediction_diff,
        if cmp.same_bins { "" } else { " (WARNING: different bins)" }
    ));
    if cmp.max_prediction_diff > 1e-6 || !cmp.same_bins {
        bail!("the SecureBoost model does not match the plaintext reference");
    }
    let mut j = lr::status_json(&status);
    j["plaintext_comparison"] = serde_json::to_value(&cmp)?;
    Ok(j)
}
