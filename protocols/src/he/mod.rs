//! Additively homomorphic encryption: Okamoto–Uchiyama (OU), for SecureBoost's encrypted
//! gradient sums ([`crate::mpc::secureboost`]).
//!
//! # The scheme (ours, from the papers)
//!
//! Okamoto–Uchiyama, "A New Public-Key Cryptosystem as Secure as Factoring" (Eurocrypt 1998),
//! with the acceleration of Coron, Naccache and Paillier, "Accelerating Okamoto–Uchiyama's
//! Public-Key Cryptosystem" (Electronics Letters 35(4), 1999):
//!
//! - Key: primes p, q of 1024 bits with p = t·u + 1, t a 256-bit prime; n = p²q (3072 bits).
//!   G = g^u mod n for a random g with L(G^t mod p²) ≢ 0 (mod p), where L(x) = (x − 1)/p;
//!   H = g'^(n·u) mod n for a random g'. Public (n, G, H); secret (p, t, L(G^t mod p²)⁻¹ mod p).
//! - Enc(m) = G^m · H^r mod n with r uniform below 2^256; m ∈ Z_p, we use signed |m| < 2^126.
//! - Dec(c) = L(c^t mod p²) · L(G^t mod p²)⁻¹ mod p (H^t ≡ 1 mod p², so r drops out). One
//!   exponentiation by a 256-bit exponent mod the 2048-bit p², instead of p − 1 (1024 bits).
//! - Add: Enc(a)·Enc(b) mod n = Enc(a + b mod p).
//!
//! Security: IND-CPA under the p-subgroup assumption (OU98); factoring n = p²q of 3072 bits and
//! the 256-bit subgroups give ≈ 128-bit security (NIST SP 800-57 Part 1, Table 2: 3072-bit
//! factoring moduli and 256-bit subgroups for 128 bits). Short randomness r < 2^256 is CNP's
//! (and SecretFlow HEU's) choice: H^r ranges over the order-t subgroup mod p² and a short-exponent
//! subset mod q, whose discrete logarithms take ≈ 2^128 work (Pollard's lambda).
//!
//! # Why OU, and why num-bigint (measured)
//!
//! Measured here (2 shared vCPUs, release build, other builds running; µs per operation, the
//! operations each scheme needs at ≈ 112–128-bit security — Paillier n = 2048 bits works mod n² =
//! 4096 bits, OU n = 3072 bits mod n, its decryption mod p² = 2048 bits):
//!
//! | operation                                   | num-bigint 0.4 | crypto-bigint 0.6 | rug/GMP 6.2 |
//! |---------------------------------------------|---------------:|------------------:|------------:|
//! | Paillier add: mul mod n² (4096)             |           31.2 |              19.3 |        14.4 |
//! | OU add: mul mod n (3072)                    |           15.2 |              15.4 |         8.4 |
//! | Paillier CRT decrypt half: pow mod p², 1024-bit exp | 6804   |              6742 |        2709 |
//! | OU decrypt without CNP: pow mod p², 1024-bit exp |      6848 |              6647 |        3056 |
//! | Paillier r^n: pow mod n², 2048-bit exp      |          52470 |             57065 |       26059 |
//!
//! Per operation OU beats Paillier at equal security: additions (B's histogram sums, the bulk of
//! the protocol) are multiplications mod a 3072-bit rather than a 4096-bit number (2× faster here),
//! ciphertexts are 384 bytes instead of 512, and CNP decryption is one exponentiation by a
//! 256-bit t (≈ 4× cheaper than OU's p − 1, ≈ 8× cheaper than Paillier's two CRT halves).
//! Encryption is fixed-base in both (DJN-style h^α for Paillier); with OU the tables are mod n.
//! GMP (rug) is about 2× faster than the pure-Rust crates, but it is a C library under the LGPL,
//! the current rug needs GMP 6.3 (this box has 6.2.1; only a pinned old rug built), and CI would
//! have to install it: not taken for now. crypto-bigint matches num-bigint at 3072 bits and offers
//! constant-time exponentiation and zeroize, but only fixed-width types (U3072/U2048) with a
//! different API; num-bigint (already in Cargo.lock) was taken for this first version. The
//! measurement was a scratch program outside the workspace (rug is not a dependency);
//! `benches/secureboost.rs` measures this module's own operations.
//!
//! # Speed
//!
//! - Fixed-base windows ([`Encryptor`]): tables G^(j·2^(8i)), G^(−j·2^(8i)), H^(j·2^(8i)) for
//!   bytes j (≈ 5 MB per key, built in parallel once): an encryption is at most 16 + 32
//!   multiplications, no squarings.
//! - The key holder ([`Encryptor::for_key_holder`]) keeps those tables mod p² and mod q and
//!   recombines by the CRT: the same ciphertexts, 1.6× faster.
//! - Decrypting 1 (the empty sum) costs nothing.
//!
//! This module's operations as measured by `cargo bench --bench secureboost` (release, 2 vCPUs
//! shared with other builds, load average 5–8; µs per operation, one thread): key generation
//! 0.1–0.3 s, encryption tables 0.1–0.2 s, encryption 248 with the public key and 152 by the key
//! holder (CRT), addition 5.6–13.4, decryption 587–980 (the spread is the machine's load).
//! - Packing: SecureBoost puts a row's gradient and hessian in one plaintext
//!   ([`crate::mpc::secureboost`] documents the slots and their headroom).
//!
//! # What is not constant time, what is not zeroized
//!
//! num-bigint's arithmetic is variable time: decryption's `modpow` by the secret t and its
//! reductions mod the secret p, p² leak timing to an observer on the key holder's machine (the
//! peer sees only the protocol's messages, whose timing it could use only per batch, not per
//! operation). `BigUint` has no zeroize support and reallocates freely, so the secret key is not
//! zeroized. Both would be fixed by moving the secret-key operations to crypto-bigint.

mod ou;
mod prime;

pub use ou::{
    Adder, Ciphertext, Encryptor, KEY_BITS, KeyPair, KeySize, MIN_KEY_BITS, PLAINTEXT_BITS, PRIME_BITS, PublicKey,
    SUBGROUP_BITS, SecretKey,
};

#[cfg(test)]
pub(crate) use ou::tests::{test_key, test_key_2048};

/// A homomorphic-encryption failure.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HeError {
    /// A key or ciphertext from the peer is not well formed.
    #[error("malformed key or ciphertext: {0}")]
    Malformed(String),
    /// A plaintext is outside the signed range of [`PLAINTEXT_BITS`] bits.
    #[error("plaintext out of range")]
    Overflow,
}
