//! Additively homomorphic encryption: Okamoto–Uchiyama (OU), for SecureBoost's encrypted
//! gradient sums ([`crate::mpc::secureboost`]).
//!
//! # The scheme (ours, from the papers)
//!
//! Okamoto–Uchiyama, "A New Public-Key Cryptosystem as Secure as Factoring" (Eurocrypt 1998),
//! with the acceleration of Coron, Naccache and Paillier, "Accelerating Okamoto–Uchiyama's
//! Public-Key Cryptosystem" (Electronics Letters 35(4), 1999):
//!
//! - Key: primes p, q with p = t·u + 1, t a 256-bit prime, n = p²q of 3072 bits (p, q of 1024
//!   bits; the default) or 2048 bits (p of 683, q of 682 bits), [`KeySize`].
//!   G = g^u mod n for a random g with L(G^t mod p²) ≢ 0 (mod p), where L(x) = (x − 1)/p;
//!   H = g'^(n·u) mod n for a random g'. Public (n, G, H); secret (p, t, L(G^t mod p²)⁻¹ mod p).
//! - Enc(m) = G^m · H^r mod n with r uniform below 2^256; m ∈ Z_p, we use signed |m| < 2^126.
//! - Dec(c) = L(c^t mod p²) · L(G^t mod p²)⁻¹ mod p (H^t ≡ 1 mod p², so r drops out). One
//!   exponentiation by a 256-bit exponent mod p², instead of by p − 1.
//! - Add: Enc(a)·Enc(b) mod n = Enc(a + b mod p).
//!
//! # Key sizes and security
//!
//! IND-CPA under the p-subgroup assumption (OU98), which needs n = p²q hard to factor. NIST SP
//! 800-57 Part 1, Table 2, rates factoring moduli of 3072 bits at 128-bit security and of 2048
//! bits at 112-bit security (the floor), with subgroups of 256 and 224 bits. We use a
//! 256-bit t and r for both sizes. The p²q form is not known to be easier to factor than an
//! RSA modulus of the same size at these sizes (the lattice methods for p^r·q need r ≈ log p).
//! Short randomness r < 2^256 is CNP's (and SecretFlow HEU's) choice: H^r ranges over the
//! order-t subgroup mod p² and a short-exponent subset mod q, whose discrete logarithms take
//! ≈ 2^128 work (Pollard's lambda).
//!
//! - [`KeySize::Bits3072`] (≈ 128-bit) is the default ([`KeyPair::generate`]).
//! - [`KeySize::Bits2048`] (≈ 112-bit) is an explicit choice of the key holder
//!   ([`KeyPair::generate_sized`]): measured 1.5–2× faster end to end (below). The key protects
//!   only its holder's data (in SecureBoost, A's gradients), so the holder chooses; the peer
//!   checks the size against its own minimum (`SbConfig::min_key_bits`, default 2048).
//!
//! # Why OU, and why crypto-bigint (measured)
//!
//! First measurement (a scratch program outside the workspace; 2 shared vCPUs, release, other
//! builds running; µs per operation at ≈ 112–128-bit security — Paillier n = 2048 bits works
//! mod n² = 4096 bits, OU n = 3072 bits mod n, its decryption mod p² = 2048 bits):
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
//! GMP (rug) is about 2× faster than the pure-Rust crates, but it is a C library under the LGPL,
//! the current rug needs GMP 6.3 (this box has 6.2.1), and CI would have to install it: not taken.
//!
//! The first version used num-bigint (`a·b mod n` with a division per addition). It now uses
//! crypto-bigint 0.7's Montgomery arithmetic (`BoxedMontyForm`, sized at run time for both key
//! sizes, and one reusable `BoxedMontyMultiplier` per hot loop: no allocation per addition).
//! Ciphertexts are kept in Montgomery form mod n, so a histogram's sums convert back once, when
//! written out. Second measurement (scratch program, 2 shared vCPUs, load average ≈ 2.5; µs per
//! operation, one thread):
//!
//! | operation                                   | num-bigint 0.4 | crypto-bigint 0.7 Montgomery |
//! |---------------------------------------------|---------------:|-----------------------------:|
//! | mul mod a 3072-bit n (add, 3072-bit key)    |           6.08 |                    3.4–3.75 |
//! | mul mod a 2048-bit n (add, 2048-bit key)    |           3.60 |                    2.06–2.34 |
//! | mul mod a 1366-bit p² (2048-bit key's CRT)  |           1.34 |                         0.65 |
//! | pow mod 2048-bit p², 256-bit exp (decrypt, 3072-bit key) | 729 |     463–551 (constant time) |
//! | pow mod 1366-bit p², 256-bit exp (decrypt, 2048-bit key) | 284 |     216–232 (constant time) |
//!
//! `benches/secureboost.rs` measures this module's own operations, next to num-bigint's
//! `a·b mod n` (figures in docs/architecture.md; the machine's load moves them by 2–3×).
//!
//! # Speed
//!
//! - Fixed-base windows ([`Encryptor`]): tables G^(j·2^(11i)), G^(−j·2^(11i)), H^(j·2^(11i)) for
//!   11-bit windows j, in Montgomery form (≈ 45 MB per key for the key holder's CRT tables,
//!   built in parallel once): an encryption is at most 12 + 24 multiplications, no squarings
//!   (with 8-bit windows, 5 MB, it was 16 + 32).
//! - The key holder ([`Encryptor::for_key_holder`]) keeps those tables mod p² and mod q and
//!   recombines by the CRT: the same ciphertexts (tested), multiplications of 2/3 and 1/3 of n's
//!   width. [`Encryptor::encrypt_to_bytes`] writes the wire form without a round trip through
//!   Montgomery form mod n.
//! - Decrypting 1 (the empty sum) costs nothing.
//! - Packing: SecureBoost puts a row's gradient and hessian in one plaintext
//!   ([`crate::mpc::secureboost`] documents the slots and their headroom).
//!
//! # What is constant time, what is zeroized
//!
//! - Decryption is constant time in the secret key: the exponentiation by t mod p²
//!   (crypto-bigint's constant-time `pow_bounded_exp`), the reduction of the ciphertext mod p²
//!   (`BoxedUint::rem`), the exact division by p (a multiplication by p⁻¹ mod 2^k), the
//!   multiplication mod p and the sign's selection. Only the final range check and conversion
//!   to `i128` branch, on the plaintext, which the caller gets anyway; and a ciphertext equal to 1
//!   (the public empty sum) returns early.
//! - Encryption skips windows of the exponent that are zero, so its time depends on how many
//!   11-bit windows of the plaintext and of r are zero (mostly: on the plaintext's magnitude).
//!   The CRT recombination is crypto-bigint arithmetic (constant time).
//! - Key generation is num-bigint (variable time, on candidates that are discarded or kept);
//!   its temporaries are not zeroized.
//! - The secret key's integers (p, p/2, p⁻¹ mod 2^k, t, q, the inverses) are crypto-bigint
//!   values, zeroized on drop. Not zeroized: the Montgomery parameters mod p² , p and q
//!   (crypto-bigint keeps them behind an `Arc` that cannot be reached for zeroizing) and the
//!   key holder's encryption tables mod p² and q (from which p² and q follow).
//! - Additions and the public-key side are variable time only in public data.

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
