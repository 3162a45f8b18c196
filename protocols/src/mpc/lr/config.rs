//! The hyper-parameters both parties must share ([`LrConfig`], digested in the handshake) and the
//! sigmoid approximations ([`Sigmoid`]) with their fixed-point constants.
use sha2::{Digest, Sha256};

use crate::mpc::MpcError;
use crate::ot::Security;

/// Fraction bits of the learning-rate and L2 constants.
pub(super) const CONST_FRAC_BITS: u32 = 20;

/// The sigmoid approximation used on shares.
///
/// max \|σ̂ − σ\| over \|z\| ≤ t:
///
/// | name      | σ̂(z)                          | t = 1  | t = 2 | t = 4 | t = 8 | outside [−8, 8]                        |
/// |-----------|--------------------------------|--------|-------|-------|-------|----------------------------------------|
/// | `taylor1` | 1/2 + z/4                      | 0.019  | 0.119 | 0.52  | 1.50  | linear: error ≈ \|z\|/4 − 1/2            |
/// | `poly3`   | 1/2 + 0.15012·z − 0.0015930·z³ | 0.083  | 0.098 | 0.098 | 0.114 | cubic: 0.50 off at \|z\| = 9.7, diverges |
///
/// `poly3` is the least-squares odd cubic on [−8, 8] (uniform weight; the coefficients of Kim et
/// al., "Secure logistic regression based on homomorphic encryption", 2018), as evaluated on shares
/// with its coefficients rounded to 4·c₁·2¹² and 4·c₃·2¹⁸ ([`Sigmoid::eval`] is the exact function
/// the protocol computes, up to fixed-point rounding). Its error is spread evenly over the interval
/// (≤ 0.114), where `taylor1` is close near 0 and useless beyond |z| ≈ 2 (σ̂ leaves [0, 1]).
///
/// Which is better: `taylor1` when the scores stay small (|z| ≲ 2 for most rows: weak signal, as
/// typical credit data), since it is more accurate there and costs no secure multiplication;
/// `poly3` when the signal is strong (many rows with |z| of 3–8), where `taylor1`'s residuals are
/// far too large and its weights come out shrunk. Outside [−8, 8] `poly3` is worse than useless
/// (its σ̂ leaves [0, 1] and eventually crosses 1/2), so it needs standardized features and
/// scores that stay in the interval; `taylor1` is then the safer default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sigmoid {
    /// σ̂(z) = 1/2 + z/4 (see the module docs for its error).
    Taylor1,
    /// σ̂(z) = 1/2 + c₁·z − c₃·z³ on [−8, 8] (table above). Per row: three secure products of
    /// shares (z² and z³ with truncation after each): 192 random OTs, or two dealer triples in
    /// dealer mode.
    Poly3,
}

/// `poly3`: c₁ and c₃ as the protocol uses them: 4·c₁ with [`POLY_CONST_BITS`] fraction bits and
/// 4·c₃ with [`POLY_CONST_BITS`] + 6.
const POLY3_C1: f64 = 0.150_119_877;
const POLY3_C3: f64 = 0.001_592_998;
/// Fraction bits of z inside the polynomial (z is truncated from 16 to this before the products).
pub(super) const POLY_FRAC_BITS: u32 = 10;
/// Fraction bits of 4·c₁ (4·c₃ has this + 6, so both products land on 16 + 12 bits).
pub(super) const POLY_CONST_BITS: u32 = 12;

impl Sigmoid {
    pub fn name(self) -> &'static str {
        match self {
            Sigmoid::Taylor1 => "taylor1",
            Sigmoid::Poly3 => "poly3",
        }
    }

    pub fn parse(name: &str) -> Option<Sigmoid> {
        match name {
            "taylor1" => Some(Sigmoid::Taylor1),
            "poly3" => Some(Sigmoid::Poly3),
            _ => None,
        }
    }

    /// The fixed-point coefficients (4·c₁·2^12, 4·c₃·2^18) of `poly3`.
    pub(super) fn poly3_q() -> (u64, u64) {
        (
            (4.0 * POLY3_C1 * (POLY_CONST_BITS as f64).exp2()).round() as u64,
            (4.0 * POLY3_C3 * ((POLY_CONST_BITS + 16 - POLY_FRAC_BITS) as f64).exp2()).round() as u64,
        )
    }

    /// (c₁, c₃) of σ̂ = 1/2 + c₁·z − c₃·z³ as the protocol rounds them (`taylor1`: (1/4, 0)).
    fn coefficients(self) -> (f64, f64) {
        match self {
            Sigmoid::Taylor1 => (0.25, 0.0),
            Sigmoid::Poly3 => {
                let (q1, q3) = Self::poly3_q();
                (
                    q1 as f64 / (POLY_CONST_BITS as f64).exp2() / 4.0,
                    q3 as f64 / ((POLY_CONST_BITS + 16 - POLY_FRAC_BITS) as f64).exp2() / 4.0,
                )
            }
        }
    }

    /// σ̂(z) in plaintext, with the rounded coefficients the protocol uses.
    pub fn eval(self, z: f64) -> f64 {
        let (c1, c3) = self.coefficients();
        0.5 + c1 * z - c3 * z * z * z
    }

    /// The surrogate loss whose gradient descent this σ̂ performs, L̂(z) = ln 2 + ∫₀^z (σ̂ − y) =
    /// ln 2 + z/2 + c₁·z²/2 − c₃·z⁴/4 − y·z (`taylor1`: the second-order Taylor log-loss), summed
    /// over rows (without the ln 2) from S₁ = Σz, S₂ = Σz², S₃ = Σyz and S₄ = Σz⁴.
    pub(super) fn loss_sum(self, s1: f64, s2: f64, s3: f64, s4: f64) -> f64 {
        let (c1, c3) = self.coefficients();
        s1 / 2.0 + c1 * s2 / 2.0 - c3 * s4 / 4.0 - s3
    }

    /// L̂(z) for one row with label `y` (plaintext).
    pub fn loss(self, z: f64, y: f64) -> f64 {
        std::f64::consts::LN_2 + self.loss_sum(z, z * z, y * z, z * z * z * z)
    }
}

/// Hyper-parameters; both parties must use the same (they are checked).
#[derive(Debug, Clone, PartialEq)]
pub struct LrConfig {
    pub epochs: u32,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// L2 penalty λ (loss + λ/2·‖w‖², intercept excluded).
    pub l2: f64,
    /// ℓ: bits per encoded feature (two's complement).
    pub feature_bits: u32,
    /// f_x: fraction bits of encoded features.
    pub feature_frac_bits: u32,
    /// Early stopping: stop when the holdout loss improved by less than this (0 disables).
    pub tolerance: f64,
    pub sigmoid: Sigmoid,
    pub security: Security,
    /// Keep the random OTs of all rows across epochs (re-keyed per epoch, see
    /// [`ChooserCache`](crate::mpc::ot_mul::ChooserCache)) when they fit in this many bytes per
    /// party; otherwise extend fresh OTs for every batch.
    pub ot_cache_bytes: u64,
    /// Multiply by this party's columns bit by bit only over the bits they use (the narrowest
    /// [`ColBits`](crate::mpc::ot_mul::ColBits) per column: a 0/1 indicator needs 1 OT per entry
    /// instead of ℓ, an all-zero column none), and announce those widths to the peer; `false`: all
    /// ℓ bits of every column, which reveals nothing about the values' range. Each party's own
    /// choice for its own columns (not part of the handshake digest).
    pub narrow_bits: bool,
    /// With kept one-hot correlations ([`crate::mpc::ot_mul::onehot`]), keep the leaves of this
    /// party's trees as the setup expands them (16 bytes per leaf, per (row, group)) for as many
    /// groups as fit in this many bytes, so that no epoch expands them again
    /// ([`OneHotSender::keep_during_setup`](crate::mpc::ot_mul::onehot::OneHotSender::keep_during_setup)).
    /// Local (not part of the handshake digest): the messages are the same either way. 0: keep
    /// none.
    pub kept_leaves_bytes: u64,
}

impl Default for LrConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 1024,
            learning_rate: 0.5,
            l2: 0.0,
            feature_bits: 12,
            feature_frac_bits: 8,
            tolerance: 0.0,
            sigmoid: Sigmoid::Taylor1,
            security: Security::SemiHonest,
            ot_cache_bytes: 1536 << 20,
            narrow_bits: true,
            kept_leaves_bytes: 0,
        }
    }
}

/// Most epochs a train job may run.
pub const MAX_EPOCHS: u32 = 1000;

impl LrConfig {
    /// Refuses parameters outside the protocol's ranges (a peer's as much as the operator's: a
    /// train job of 4·10^9 epochs would hold both nodes for ever).
    pub fn validate(&self) -> Result<(), MpcError> {
        let bad = |m: &str| Err(MpcError::Invalid(m.to_string()));
        if !(1..=MAX_EPOCHS).contains(&self.epochs) {
            return bad("epochs must be between 1 and 1000");
        }
        if !(1..=1 << 16).contains(&self.batch_size) {
            return bad("batch size must be between 1 and 65536");
        }
        if !(self.learning_rate > 0.0 && self.learning_rate <= 16.0) {
            return bad("learning rate must be in (0, 16]");
        }
        if !(0.0..=1.0).contains(&self.l2) || self.l2 * self.learning_rate >= 1.0 {
            return bad("L2 penalty must be in [0, 1] with learning rate × L2 < 1");
        }
        if !(2..=24).contains(&self.feature_bits) || self.feature_frac_bits + 2 > self.feature_bits {
            return bad("feature bits must be 2..=24 with at least 2 integer bits beyond the fraction bits");
        }
        if !(self.tolerance >= 0.0 && self.tolerance.is_finite()) {
            return bad("tolerance must be a non-negative number");
        }
        Ok(())
    }

    /// Encodes a standardized feature value: round(v·2^f_x), clipped to the ℓ-bit range.
    pub fn encode_feature(&self, v: f64) -> u64 {
        let half = 1i64 << (self.feature_bits - 1);
        let q = (v * (self.feature_frac_bits as f64).exp2()).round();
        let q = if q.is_nan() { 0 } else { (q as i64).clamp(-half, half - 1) };
        q as u64
    }

    /// The real value of an encoded feature.
    pub fn decode_feature(&self, q: u64) -> f64 {
        q as i64 as f64 / (self.feature_frac_bits as f64).exp2()
    }

    /// Feeds the parameters both parties must agree on into the handshake's digest (public so that
    /// a test peer can speak the handshake by hand).
    pub fn digest(&self, h: &mut Sha256) {
        h.update(self.epochs.to_le_bytes());
        h.update((self.batch_size as u64).to_le_bytes());
        h.update(self.learning_rate.to_le_bytes());
        h.update(self.l2.to_le_bytes());
        h.update(self.feature_bits.to_le_bytes());
        h.update(self.feature_frac_bits.to_le_bytes());
        h.update(self.tolerance.to_le_bytes());
        h.update([self.sigmoid as u8, matches!(self.security, Security::Malicious) as u8]);
        h.update(self.ot_cache_bytes.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_encoding_clips_and_rounds() {
        let c = LrConfig::default();
        assert_eq!(c.encode_feature(1.0), 256);
        assert_eq!(c.encode_feature(-100.0) as i64, -2048);
        assert_eq!(c.encode_feature(100.0) as i64, 2047);
        assert_eq!(c.encode_feature(f64::NAN), 0);
        assert!((c.decode_feature(c.encode_feature(0.3)) - 0.3).abs() <= 1.0 / 512.0);
    }

    #[test]
    fn sigmoid_errors_are_as_documented() {
        let sigma = |z: f64| 1.0 / (1.0 + (-z).exp());
        let max_err = |s: Sigmoid, t: f64| {
            (0..=8000).map(|i| i as f64 * t / 8000.0).map(|z| (s.eval(z) - sigma(z)).abs()).fold(0.0, f64::max)
        };
        // The table in the `Sigmoid` docs (odd functions around 1/2, so z ≥ 0 suffices).
        for (t, taylor, poly) in [(1.0, 0.019, 0.083), (2.0, 0.119, 0.098), (4.0, 0.518, 0.098), (8.0, 1.500, 0.114)] {
            assert!(
                (max_err(Sigmoid::Taylor1, t) - taylor).abs() < 1e-3,
                "taylor1 t={t}: {}",
                max_err(Sigmoid::Taylor1, t)
            );
            assert!((max_err(Sigmoid::Poly3, t) - poly).abs() < 1e-3, "poly3 t={t}: {}", max_err(Sigmoid::Poly3, t));
        }
        // Outside the interval poly3 turns back: half a unit off at |z| ≈ 9.7.
        assert!((Sigmoid::Poly3.eval(9.7) - sigma(9.7)).abs() > 0.45);
        assert_eq!(Sigmoid::parse("poly3"), Some(Sigmoid::Poly3));
        assert_eq!(Sigmoid::parse(Sigmoid::Taylor1.name()), Some(Sigmoid::Taylor1));
        assert_eq!(Sigmoid::parse("exact"), None);
    }
}
