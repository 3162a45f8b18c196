//! The CPU features the SIMD kernels use, detected once per process.
//!
//! Like curve25519-dalek's `backend::get_selected_backend`, the choice is made in one place: the
//! first call of [`features`] asks the CPU (`is_x86_feature_detected!`) and caches the answer in a
//! [`OnceLock`]; after that a kernel's dispatch is one load and a branch. Every kernel keeps a
//! portable fallback, which is what runs on other architectures (where every feature is `false`)
//! and on x86-64 CPUs without the feature.
//!
//! Kernels that dispatch here: the OKVS band XOR (`okvs::band_xor`: AVX-512F + BMI2, else AVX2),
//! the OT-extension bit transpose (`ot::transpose`: AVX-512F + AVX-512BW, else AVX2, else SSE2)
//! and GF(2^128) multiplication (`ot::gf128`: PCLMULQDQ). Fixed-key AES is the `aes` crate's,
//! which detects AES-NI itself.

use std::sync::OnceLock;

/// The x86-64 features the kernels can use; all `false` elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Features {
    pub avx2: bool,
    pub avx512f: bool,
    pub avx512bw: bool,
    pub bmi2: bool,
    pub pclmulqdq: bool,
}

impl Features {
    /// Asks the CPU (uncached; use [`features`]).
    fn detect() -> Features {
        #[cfg(target_arch = "x86_64")]
        {
            Features {
                avx2: std::arch::is_x86_feature_detected!("avx2"),
                avx512f: std::arch::is_x86_feature_detected!("avx512f"),
                avx512bw: std::arch::is_x86_feature_detected!("avx512bw"),
                bmi2: std::arch::is_x86_feature_detected!("bmi2"),
                pclmulqdq: std::arch::is_x86_feature_detected!("pclmulqdq"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Features::default()
    }
}

/// This CPU's features, detected on the first call and cached for the life of the process.
#[inline]
pub fn features() -> Features {
    static FEATURES: OnceLock<Features> = OnceLock::new();
    *FEATURES.get_or_init(Features::detect)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_features_are_the_cpus() {
        assert_eq!(features(), Features::detect());
        assert_eq!(features(), features());
        #[cfg(target_arch = "x86_64")]
        assert_eq!(features().avx2, std::arch::is_x86_feature_detected!("avx2"));
    }
}
