//! The hyper-parameters of a train job as they travel in the job request and sit in model files,
//! and their validation into the protocol's [`LrConfig`].
use consort_protocols::mpc::lr::{LrConfig, Sigmoid};
use consort_protocols::ot::Security;
use serde::{Deserialize, Serialize};

use crate::error::DataError;

/// Hyper-parameters as they travel in a job request and sit in model files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrParams {
    pub epochs: u32,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub l2: f64,
    pub feature_bits: u32,
    pub feature_frac_bits: u32,
    /// Early stopping tolerance on the holdout loss (0: off).
    pub tolerance: f64,
    /// Fraction of aligned rows held out for the loss, early stopping and AUC/KS.
    pub holdout: f64,
    /// Seed of the holdout split and batch order (public).
    pub split_seed: u64,
    /// Dealer mode: the node (pinned by both parties) that supplies the correlations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dealer: Option<String>,
    /// The sigmoid approximation: "taylor1" (default) or "poly3" (see
    /// [`consort_protocols::mpc::lr::Sigmoid`] for their errors). Absent in older files: taylor1.
    #[serde(default = "default_sigmoid")]
    pub sigmoid: String,
}

fn default_sigmoid() -> String {
    Sigmoid::Taylor1.name().into()
}

impl Default for LrParams {
    fn default() -> Self {
        let c = LrConfig::default();
        Self {
            epochs: c.epochs,
            batch_size: c.batch_size,
            learning_rate: c.learning_rate,
            l2: c.l2,
            feature_bits: c.feature_bits,
            feature_frac_bits: c.feature_frac_bits,
            tolerance: c.tolerance,
            holdout: 0.2,
            split_seed: 0,
            dealer: None,
            sigmoid: c.sigmoid.name().into(),
        }
    }
}

impl LrParams {
    pub fn config(&self) -> Result<LrConfig, DataError> {
        let sigmoid = Sigmoid::parse(&self.sigmoid).ok_or_else(|| {
            DataError::Invalid(format!("unknown sigmoid approximation '{}' (taylor1, poly3)", self.sigmoid))
        })?;
        let c = LrConfig {
            epochs: self.epochs,
            batch_size: self.batch_size,
            learning_rate: self.learning_rate,
            l2: self.l2,
            feature_bits: self.feature_bits,
            feature_frac_bits: self.feature_frac_bits,
            tolerance: self.tolerance,
            sigmoid,
            security: Security::SemiHonest,
            ..LrConfig::default()
        };
        c.validate().map_err(|e| DataError::Invalid(e.to_string()))?;
        if !(0.0..0.9).contains(&self.holdout) {
            return Err(DataError::Invalid("holdout fraction must be in [0, 0.9)".into()));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lr::tests::params;

    #[test]
    fn sigmoid_parameter_is_checked_and_defaults_to_taylor1() {
        assert_eq!(LrParams::default().sigmoid, "taylor1");
        let bad = LrParams { sigmoid: "exact".into(), ..params() };
        assert!(bad.config().unwrap_err().to_string().contains("unknown sigmoid approximation 'exact'"));
        let p: LrParams = serde_json::from_str(
            r#"{"epochs":1,"batch_size":8,"learning_rate":0.5,"l2":0,"feature_bits":12,"feature_frac_bits":8,
                "tolerance":0,"holdout":0.2,"split_seed":1}"#,
        )
        .unwrap();
        assert_eq!(p.config().unwrap().sigmoid, consort_protocols::mpc::lr::Sigmoid::Taylor1);
    }
}
