//! Evaluation metrics of a model's scores (A only: it holds the labels).

/// Area under the ROC curve (ties count one half). `None` without both classes.
pub fn auc(scores: &[f64], labels: &[u8]) -> Option<f64> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum, mut i) = (0.0, 0);
    while i < idx.len() {
        let mut j = i;
        while j < idx.len() && scores[idx[j]] == scores[idx[i]] {
            j += 1;
        }
        let avg_rank = (i + j + 1) as f64 / 2.0; // ranks are 1-based
        rank_sum += idx[i..j].iter().filter(|&&k| labels[k] == 1).count() as f64 * avg_rank;
        i = j;
    }
    let pos = labels.iter().filter(|&&l| l == 1).count() as f64;
    let neg = labels.len() as f64 - pos;
    (pos > 0.0 && neg > 0.0).then(|| (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg))
}

/// Kolmogorov–Smirnov statistic: max over thresholds of |TPR − FPR|. `None` without both classes.
pub fn ks(scores: &[f64], labels: &[u8]) -> Option<f64> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let pos = labels.iter().filter(|&&l| l == 1).count() as f64;
    let neg = labels.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return None;
    }
    let (mut tp, mut fp, mut best, mut i) = (0.0, 0.0, 0.0f64, 0);
    while i < idx.len() {
        let mut j = i;
        while j < idx.len() && scores[idx[j]] == scores[idx[i]] {
            if labels[idx[j]] == 1 {
                tp += 1.0
            } else {
                fp += 1.0
            }
            j += 1;
        }
        best = best.max((tp / pos - fp / neg).abs());
        i = j;
    }
    Some(best)
}

/// The logistic function σ(z) = 1 / (1 + e^−z).
pub fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_and_ks_match_hand_computed_values() {
        // Perfect ranking, reversed ranking, ties.
        assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &[0, 0, 1, 1]), Some(1.0));
        assert_eq!(auc(&[0.9, 0.8, 0.2, 0.1], &[0, 0, 1, 1]), Some(0.0));
        assert_eq!(auc(&[0.5, 0.5, 0.5, 0.5], &[0, 1, 0, 1]), Some(0.5));
        // 3 positives, 2 negatives; pairs ordered correctly: (0.9>0.3),(0.9>0.6),(0.7>0.3),(0.7>0.6),(0.4>0.3) = 5/6.
        assert!((auc(&[0.9, 0.7, 0.4, 0.3, 0.6], &[1, 1, 1, 0, 0]).unwrap() - 5.0 / 6.0).abs() < 1e-12);
        assert_eq!(auc(&[0.1, 0.2], &[1, 1]), None);
        assert_eq!(ks(&[0.1, 0.2, 0.8, 0.9], &[0, 0, 1, 1]), Some(1.0));
        // Thresholds: after 0.9 → TPR 1/3, FPR 0; after 0.7 → 2/3, 0; after 0.6 → 2/3, 1/2; ... max 2/3.
        assert!((ks(&[0.9, 0.7, 0.4, 0.3, 0.6], &[1, 1, 1, 0, 0]).unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(ks(&[0.5, 0.5], &[0, 1]), Some(0.0));
    }
}
