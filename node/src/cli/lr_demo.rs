//! The LR part of `consort demo`: after the PSI, the two demo nodes train a joint logistic
//! regression on generated vertical data and the result is compared with a plaintext baseline.

use std::path::Path;

use anyhow::{Result, bail};
use consort_engine::lr::{LrParams, ModelFile, plaintext_comparison};
use consort_engine::lr_synth::{LrGenSpec, generate_lr};
use consort_engine::{Dataset, DatasetSpec};

use consort_api::JobKind;
use consort_engine::PsiProtocol;

use super::{lr, status};
use crate::client::NodeClient;
use crate::job::train::TrainRequest;
use crate::{node, pair, setup};

/// Generates `rows` entities with 5 + 5 features (5% of the bank's ids unknown to the partner),
/// registers them, trains from the bank's node, and compares with plaintext LR.
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
    let demo = DemoData { dir: "lr-data", seed: 11, names: ("loans", "partner-features"), kinds: "train,score" };
    let (spec_a, spec_b) = demo.register(root, (a, b), (a_dir, b_dir), rows).await?;
    say(format!(
        "6. joint model: '{}' holds {rows} loans (label y, 5 features), '{}' 5 other features for 95% of them",
        pair::A,
        pair::B
    ));
    let params = LrParams { epochs: 5, batch_size: 1024, learning_rate: 0.5, split_seed: 3, ..LrParams::default() };
    let model_a = root.join("bank-model.json");
    let client = NodeClient::connect(a_dir).await?;
    let job_id = client
        .submit(lr::submit_request(
            JobKind::Train,
            (pair::B, &spec_a.name, &spec_b.name),
            PsiProtocol::Ecdh,
            &TrainRequest { label: "y".into(), features: vec![], params },
            &model_a,
        )?)
        .await?;
    let status = status::watch_with_progress(&client, &job_id, json).await?;
    if status.job_state() != consort_api::JobState::Done {
        bail!("demo train job failed: {}", status.error);
    }
    say(lr::summary(&status));
    let (ka, kb) = (&a.state.storage.key, &b.state.storage.key);
    let (ma, mb) = (ModelFile::load(&model_a, Some(ka))?, ModelFile::load(&b_dir.join(&status.peer_output), Some(kb))?);
    let (sa, sb) = (spec_a.clone(), spec_b.clone());
    let (da, db) = consort_protocols::cpu::run(move || -> Result<(Dataset, Dataset)> {
        Ok((Dataset::load(&sa)?, Dataset::load(&sb)?))
    })
    .await?;
    let cmp = plaintext_comparison(&da, &db, &ma, &mb).await?;
    say(format!(
        "7. on all {} aligned rows: AUC {:.4} (secure, Taylor sigmoid) vs {:.4} (plaintext LR, exact sigmoid, same \
         hyper-parameters); KS {:.4} vs {:.4}",
        cmp.aligned_rows, cmp.auc_secure, cmp.auc_plaintext, cmp.ks_secure, cmp.ks_plaintext
    ));
    let mut j = lr::status_json(&status);
    j["plaintext_comparison"] = serde_json::to_value(&cmp)?;
    Ok(j)
}

/// A demo model step's generated data: `rows` entities with 5 + 5 features (5% of the bank's ids
/// unknown to the partner) under `root/dir`, registered on both demo nodes and granted to each
/// other for `kinds`.
pub(super) struct DemoData {
    pub dir: &'static str,
    pub seed: u64,
    /// The bank's and the partner's dataset names.
    pub names: (&'static str, &'static str),
    pub kinds: &'static str,
}

impl DemoData {
    /// Generates, registers and grants the data; returns both dataset specs.
    pub async fn register(
        &self,
        root: &Path,
        (a, b): (&node::NodeHandle, &node::NodeHandle),
        (a_dir, b_dir): (&Path, &Path),
        rows: u64,
    ) -> Result<(DatasetSpec, DatasetSpec)> {
        let data = root.join(self.dir);
        let spec = LrGenSpec {
            rows,
            features_a: 5,
            features_b: 5,
            missing_b: rows / 20,
            seed: self.seed,
            out_dir: data.clone(),
        };
        consort_protocols::cpu::run(move || generate_lr(&spec)).await?;
        let spec_a = DatasetSpec::new(self.names.0, data.join("a.csv"), &["id"]);
        let spec_b = DatasetSpec::new(self.names.1, data.join("b.csv"), &["id"]);
        let grant = |peer: &str| setup::parse_grant(&format!("{peer}:{}", self.kinds));
        setup::dataset_add(a_dir, spec_a.clone(), vec![grant(pair::B)?], true, true)?;
        setup::dataset_add(b_dir, spec_b.clone(), vec![grant(pair::A)?], true, true)?;
        a.state.reload()?;
        b.state.reload()?;
        Ok((spec_a, spec_b))
    }
}
