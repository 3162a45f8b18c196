//! Synthetic vertical data for logistic regression (`consort gen lr`).
//!
//! Entity i has standard-normal latent features u_i ∈ R^{FA+FB}; its label is drawn as
//! y_i ~ Bernoulli(σ(β₀ + β·u_i)) with β_j ~ N(0, 4/(FA+FB)) (so the logit has variance about 4)
//! and β₀ = −1. The files hold the features shifted and scaled, x_ij = μ_j + s_j·u_ij with
//! μ_j ∈ [−5, 5] and s_j ∈ [0.5, 50], so standardization matters. `a.csv` = `id,y,a0..`,
//! `b.csv` = `id,b0..` in a different (shuffled) order, missing `missing_b` of A's ids;
//! `truth.json` holds β₀, β and the feature shifts and scales. Everything is a function of the seed.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use crate::error::DataError;
use crate::lr::write_atomic;

#[derive(Debug, Clone)]
pub struct LrGenSpec {
    pub rows: u64,
    pub features_a: u32,
    pub features_b: u32,
    /// Rows of `a.csv` whose id is absent from `b.csv`.
    pub missing_b: u64,
    pub seed: u64,
    pub out_dir: PathBuf,
}

/// The ground truth written to `truth.json`.
#[derive(Debug, Clone, Serialize)]
pub struct LrTruth {
    pub intercept: f64,
    /// Weights of the latent (standardized) features of A, then B.
    pub weights_a: Vec<f64>,
    pub weights_b: Vec<f64>,
    pub shifts: Vec<f64>,
    pub scales: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LrGenSummary {
    pub a: PathBuf,
    pub b: PathBuf,
    pub truth: PathBuf,
    pub rows_a: u64,
    pub rows_b: u64,
    pub positives: u64,
    pub seconds: f64,
}

fn normal(rng: &mut StdRng) -> f64 {
    // Box–Muller.
    let (u, v): (f64, f64) = (rng.random_range(f64::MIN_POSITIVE..1.0), rng.random());
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

pub fn generate_lr(spec: &LrGenSpec) -> Result<LrGenSummary, DataError> {
    let started = Instant::now();
    if spec.rows == 0 || spec.rows > 100_000_000 {
        return Err(DataError::Invalid("rows must be between 1 and 10^8".into()));
    }
    if spec.missing_b >= spec.rows {
        return Err(DataError::Invalid("missing-b must be smaller than rows".into()));
    }
    if spec.features_a + spec.features_b == 0 || spec.features_a + spec.features_b > 10_000 {
        return Err(DataError::Invalid("between 1 and 10000 features in total".into()));
    }
    let (fa, fb) = (spec.features_a as usize, spec.features_b as usize);
    let d = fa + fb;
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let beta: Vec<f64> = (0..d).map(|_| normal(&mut rng) * (4.0 / d as f64).sqrt()).collect();
    let shifts: Vec<f64> = (0..d).map(|_| rng.random_range(-5.0..5.0)).collect();
    let scales: Vec<f64> = (0..d).map(|_| rng.random_range(0.5..50.0)).collect();
    let truth = LrTruth {
        intercept: -1.0,
        weights_a: beta[..fa].to_vec(),
        weights_b: beta[fa..].to_vec(),
        shifts: shifts.clone(),
        scales: scales.clone(),
    };
    let mut a = String::from("id,y");
    (0..fa).for_each(|j| write!(a, ",a{j}").unwrap());
    a.push('\n');
    let mut b_rows: Vec<String> = Vec::with_capacity(spec.rows as usize);
    let mut missing: Vec<u64> = (0..spec.rows).collect();
    missing.shuffle(&mut rng);
    let mut is_missing = vec![false; spec.rows as usize];
    for &i in &missing[..spec.missing_b as usize] {
        is_missing[i as usize] = true;
    }
    let mut positives = 0;
    for (i, &missing) in is_missing.iter().enumerate() {
        let u: Vec<f64> = (0..d).map(|_| normal(&mut rng)).collect();
        let z = truth.intercept + u.iter().zip(&beta).map(|(x, b)| x * b).sum::<f64>();
        let y = u8::from(rng.random::<f64>() < 1.0 / (1.0 + (-z).exp()));
        positives += y as u64;
        let id = format!("c{:09}", i);
        write!(a, "{id},{y}").unwrap();
        for j in 0..fa {
            write!(a, ",{:.6}", shifts[j] + scales[j] * u[j]).unwrap();
        }
        a.push('\n');
        if !missing {
            let mut row = id;
            for j in fa..d {
                write!(row, ",{:.6}", shifts[j] + scales[j] * u[j]).unwrap();
            }
            row.push('\n');
            b_rows.push(row);
        }
    }
    b_rows.shuffle(&mut rng);
    let mut b = String::from("id");
    (0..fb).for_each(|j| write!(b, ",b{j}").unwrap());
    b.push('\n');
    b_rows.iter().for_each(|r| b.push_str(r));
    let dir: &Path = &spec.out_dir;
    let (pa, pb, pt) = (dir.join("a.csv"), dir.join("b.csv"), dir.join("truth.json"));
    write_atomic(&pa, a.as_bytes())?;
    write_atomic(&pb, b.as_bytes())?;
    let t = serde_json::to_string_pretty(&truth).map_err(|e| DataError::Invalid(e.to_string()))?;
    write_atomic(&pt, t.as_bytes())?;
    Ok(LrGenSummary {
        a: pa,
        b: pb,
        truth: pt,
        rows_a: spec.rows,
        rows_b: spec.rows - spec.missing_b,
        positives,
        seconds: started.elapsed().as_secs_f64(),
    })
}
