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
    /// An unknown name is refused when the parameters are read (CLI, job request or model file).
    #[serde(default = "default_sigmoid", with = "sigmoid_name")]
    pub sigmoid: Sigmoid,
    /// A scorecard job (`consort train --scorecard`): LR on the binned features of a `bin` job
    /// and points per bin ([`crate::scorecard`]). Absent: a raw-feature LR job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scorecard: Option<crate::scorecard::CardParams>,
}

fn default_sigmoid() -> Sigmoid {
    Sigmoid::Taylor1
}

/// The sigmoid by its one name ([`Sigmoid::name`]) in JSON.
mod sigmoid_name {
    use consort_protocols::mpc::lr::Sigmoid;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: &Sigmoid, out: S) -> Result<S::Ok, S::Error> {
        out.serialize_str(s.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Sigmoid, D::Error> {
        let name = String::deserialize(d)?;
        Sigmoid::parse(&name).ok_or_else(|| {
            let shown: String = name.chars().take(32).collect();
            serde::de::Error::custom(format!("unknown sigmoid approximation '{shown}' (taylor1, poly3)"))
        })
    }
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
            sigmoid: c.sigmoid,
            scorecard: None,
        }
    }
}

impl LrParams {
    pub fn config(&self) -> Result<LrConfig, DataError> {
        let c = LrConfig {
            epochs: self.epochs,
            batch_size: self.batch_size,
            learning_rate: self.learning_rate,
            l2: self.l2,
            feature_bits: self.feature_bits,
            feature_frac_bits: self.feature_frac_bits,
            tolerance: self.tolerance,
            sigmoid: self.sigmoid,
            security: Security::SemiHonest,
            // Only used with one-hot groups (the scorecard's indicators): local memory, as
            // SecureBoost's ([`crate::memory::kept_leaves_budget`]).
            kept_leaves_bytes: crate::memory::kept_leaves_budget(),
            ..LrConfig::default()
        };
        c.validate().map_err(|e| DataError::Invalid(e.to_string()))?;
        if !(0.0..0.9).contains(&self.holdout) {
            return Err(DataError::Invalid("holdout fraction must be in [0, 0.9)".into()));
        }
        if let Some(card) = &self.scorecard {
            card.validate()?;
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
        assert_eq!(LrParams::default().sigmoid, Sigmoid::Taylor1);
        let mut bad = serde_json::to_value(params()).unwrap();
        bad["sigmoid"] = "exact".into();
        let err = serde_json::from_value::<LrParams>(bad).unwrap_err();
        assert!(err.to_string().contains("unknown sigmoid approximation 'exact'"), "{err}");
        let text = serde_json::to_string(&LrParams { sigmoid: Sigmoid::Poly3, ..params() }).unwrap();
        assert!(text.contains(r#""sigmoid":"poly3""#), "{text}");
        let p: LrParams = serde_json::from_str(
            r#"{"epochs":1,"batch_size":8,"learning_rate":0.5,"l2":0,"feature_bits":12,"feature_frac_bits":8,
                "tolerance":0,"holdout":0.2,"split_seed":1}"#,
        )
        .unwrap();
        assert_eq!(p.config().unwrap().sigmoid, consort_protocols::mpc::lr::Sigmoid::Taylor1);
    }
}
