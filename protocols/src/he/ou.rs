//! Okamoto–Uchiyama with the Coron–Naccache–Paillier acceleration (see the module docs of
//! [`crate::he`] for the scheme, sizes and the choice).

use std::sync::Arc;

use num_bigint::BigUint;
use num_traits::{One, Zero};
use rand::Rng;
use rayon::prelude::*;

use super::HeError;
use super::prime::{random_below_bits, random_bits, random_prime, random_range};

/// Bits of n = p²q.
pub const KEY_BITS: u64 = 3072;
/// Bits of p and q.
pub const PRIME_BITS: u64 = KEY_BITS / 3;
/// Bits of t, the prime factor of p − 1 that decryption exponentiates by, and of the encryption
/// randomness r (NIST SP 800-57: a 256-bit subgroup for 128-bit security with a 3072-bit modulus).
pub const SUBGROUP_BITS: u64 = 256;
/// Smallest modulus a peer's public key may have (a 3072-bit n = p²q may come out at 3070 bits).
pub const MIN_KEY_BITS: u64 = KEY_BITS - 2;
/// Plaintexts are signed integers below 2^PLAINTEXT_BITS in magnitude (far below p/2 ≈ 2^1022).
pub const PLAINTEXT_BITS: u32 = 126;

/// The public key (n, G, H). Ciphertexts are integers in [1, n), written as [`Self::ciphertext_bytes`]
/// little-endian bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    n: BigUint,
    g: BigUint,
    h: BigUint,
}

/// One ciphertext, an element of [1, n).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ciphertext(BigUint);

impl PublicKey {
    /// Bytes of one ciphertext (and of each of n, G, H on the wire).
    pub fn ciphertext_bytes(&self) -> usize {
        KEY_BITS.div_ceil(8) as usize
    }

    pub fn modulus_bits(&self) -> u64 {
        self.n.bits()
    }

    /// n | G | H, each [`Self::ciphertext_bytes`] little-endian bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let w = self.ciphertext_bytes();
        let mut out = Vec::with_capacity(3 * w);
        for x in [&self.n, &self.g, &self.h] {
            out.extend_from_slice(&fixed_le(x, w));
        }
        out
    }

    /// Parses and checks a peer's key: n of [`MIN_KEY_BITS`]..=[`KEY_BITS`] bits and odd, G and H
    /// in [2, n). (That n really is p²q, and G of the right order, cannot be checked without the
    /// factors; a wrong key only hurts the party that made it, whose own gradients it encrypts.)
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, HeError> {
        let w = KEY_BITS.div_ceil(8) as usize;
        if bytes.len() != 3 * w {
            return Err(HeError::Malformed(format!("public key of {} bytes, expected {}", bytes.len(), 3 * w)));
        }
        let n = BigUint::from_bytes_le(&bytes[..w]);
        if n.bits() < MIN_KEY_BITS || n.bits() > KEY_BITS || !n.bit(0) {
            return Err(HeError::Malformed(format!("public key modulus of {} bits", n.bits())));
        }
        let g = BigUint::from_bytes_le(&bytes[w..2 * w]);
        let h = BigUint::from_bytes_le(&bytes[2 * w..]);
        let two = BigUint::from(2u8);
        if g < two || g >= n || h < two || h >= n {
            return Err(HeError::Malformed("public key generator out of range".into()));
        }
        Ok(Self { n, g, h })
    }

    /// Parses one ciphertext and checks it is in [1, n).
    pub fn ciphertext(&self, bytes: &[u8]) -> Result<Ciphertext, HeError> {
        if bytes.len() != self.ciphertext_bytes() {
            return Err(HeError::Malformed(format!("ciphertext of {} bytes", bytes.len())));
        }
        let c = BigUint::from_bytes_le(bytes);
        if c.is_zero() || c >= self.n {
            return Err(HeError::Malformed("ciphertext out of range".into()));
        }
        Ok(Ciphertext(c))
    }

    /// The ciphertext's fixed-width encoding.
    pub fn ciphertext_to_bytes(&self, c: &Ciphertext, out: &mut Vec<u8>) {
        out.extend_from_slice(&fixed_le(&c.0, self.ciphertext_bytes()));
    }

    /// 1 = G^0·H^0, an encryption of 0 with no randomness (the empty sum). Not hiding: use it
    /// only for sums the key holder may learn are empty anyway.
    pub fn zero(&self) -> Ciphertext {
        Ciphertext(BigUint::one())
    }

    /// Enc(a + b) from Enc(a), Enc(b): one multiplication mod n.
    pub fn add(&self, a: &Ciphertext, b: &Ciphertext) -> Ciphertext {
        Ciphertext((&a.0 * &b.0) % &self.n)
    }

    /// a ← a + b.
    pub fn add_assign(&self, a: &mut Ciphertext, b: &Ciphertext) {
        a.0 = (&a.0 * &b.0) % &self.n;
    }
}

fn fixed_le(x: &BigUint, w: usize) -> Vec<u8> {
    let mut b = x.to_bytes_le();
    b.resize(w, 0);
    b
}

/// The secret key: p, p², q, t and L(G^t mod p²)⁻¹ mod p. num-bigint's `BigUint` has no zeroize
/// support and its buffers may be reallocated during arithmetic, so the secret values are **not
/// zeroized** on drop (the one place in the crate where secrets are not; see the module docs).
pub struct SecretKey {
    p: BigUint,
    p2: BigUint,
    q: BigUint,
    t: BigUint,
    inv: BigUint,
    half_p: BigUint,
}

/// A key pair (the active party's).
pub struct KeyPair {
    pub public: PublicKey,
    pub secret: SecretKey,
}

impl KeyPair {
    /// A fresh key (CNP key generation: p = t·u + 1 with t a [`SUBGROUP_BITS`]-bit prime). Takes a
    /// second or two.
    pub fn generate(rng: &mut impl Rng) -> KeyPair {
        let t = random_prime(rng, SUBGROUP_BITS);
        let (p, u) = loop {
            let mut u = random_bits(rng, PRIME_BITS - SUBGROUP_BITS);
            u.set_bit(0, false);
            let p = &t * &u + 1u8;
            if p.bits() == PRIME_BITS && super::prime::is_probable_prime(rng, &p) {
                break (p, u);
            }
        };
        let q = loop {
            let q = random_prime(rng, PRIME_BITS);
            if q != p {
                break q;
            }
        };
        let p2 = &p * &p;
        let n = &p2 * &q;
        let two = BigUint::from(2u8);
        let (g, inv) = loop {
            let g = random_range(rng, &two, &n).modpow(&u, &n);
            let l = l_function(&g.modpow(&t, &p2), &p) % &p;
            if let Some(inv) = l.modinv(&p) {
                break (g, inv);
            }
        };
        let h = random_range(rng, &two, &n).modpow(&(&n * &u), &n);
        let half_p = &p >> 1u32;
        KeyPair { public: PublicKey { n, g, h }, secret: SecretKey { p, p2, q, t, inv, half_p } }
    }
}

/// L(x) = (x − 1) / p.
fn l_function(x: &BigUint, p: &BigUint) -> BigUint {
    (x - 1u8) / p
}

impl SecretKey {
    /// The signed plaintext of `c`: m mod p read as a signed number (|m| < p/2), checked to be below
    /// 2^[`PLAINTEXT_BITS`] in magnitude. The exponentiation is num-bigint's `modpow`, which is not
    /// constant time in the exponent t (see the module docs).
    pub fn decrypt(&self, c: &Ciphertext) -> Result<i128, HeError> {
        // The empty sum (sent for empty bins): its plaintext is 0 and it is public that it is.
        if c.0.is_one() {
            return Ok(0);
        }
        let x = (&c.0 % &self.p2).modpow(&self.t, &self.p2);
        let m = (l_function(&x, &self.p) * &self.inv) % &self.p;
        let (neg, mag) = if m > self.half_p { (true, &self.p - &m) } else { (false, m) };
        if mag.bits() > u64::from(PLAINTEXT_BITS) {
            return Err(HeError::Overflow);
        }
        let digits = mag.to_u64_digits();
        let v = digits.first().copied().unwrap_or(0) as i128 | (digits.get(1).copied().unwrap_or(0) as i128) << 64;
        Ok(if neg { -v } else { v })
    }
}

/// Window of the fixed-base tables.
const WINDOW: u32 = 8;

/// base^(j · 2^(8i)) mod n for every byte position i and byte value j: an exponentiation by an
/// e of `8·chunks` bits is then at most `chunks` multiplications (Brickell–Gordon–McCurley–Wilson
/// style fixed-base windows, without the squarings).
struct FixedBase {
    table: Vec<Vec<BigUint>>,
}

impl FixedBase {
    fn new(base: &BigUint, n: &BigUint, exponent_bits: u32) -> Self {
        let chunks = exponent_bits.div_ceil(WINDOW) as usize;
        let mut firsts = Vec::with_capacity(chunks);
        let mut b = base % n;
        for _ in 0..chunks {
            firsts.push(b.clone());
            for _ in 0..WINDOW {
                b = (&b * &b) % n;
            }
        }
        let table = firsts
            .par_iter()
            .map(|b1| {
                let mut row = Vec::with_capacity(1 << WINDOW);
                row.push(BigUint::one());
                for j in 1..(1usize << WINDOW) {
                    let next = (&row[j - 1] * b1) % n;
                    row.push(next);
                }
                row
            })
            .collect();
        Self { table }
    }

    /// base^e · acc mod n for e given as little-endian bytes (at most `chunks` of them).
    fn pow_into(&self, e: &[u8], acc: &mut BigUint, n: &BigUint) {
        debug_assert!(e.len() <= self.table.len());
        for (i, &byte) in e.iter().enumerate() {
            if byte != 0 {
                *acc = (&*acc * &self.table[i][byte as usize]) % n;
            }
        }
    }
}

/// Fixed-base tables for G, G⁻¹ and H modulo one modulus.
struct Residues {
    modulus: BigUint,
    g: FixedBase,
    g_inv: FixedBase,
    h: FixedBase,
}

impl Residues {
    fn new(key: &PublicKey, modulus: &BigUint) -> Result<Self, HeError> {
        let g = &key.g % modulus;
        let g_inv = g.modinv(modulus).ok_or_else(|| HeError::Malformed("G is not invertible".into()))?;
        let (tg, (tgi, th)) = rayon::join(
            || FixedBase::new(&g, modulus, PLAINTEXT_BITS + 2),
            || {
                rayon::join(
                    || FixedBase::new(&g_inv, modulus, PLAINTEXT_BITS + 2),
                    || FixedBase::new(&key.h, modulus, SUBGROUP_BITS as u32),
                )
            },
        );
        Ok(Self { modulus: modulus.clone(), g: tg, g_inv: tgi, h: th })
    }

    /// G^m·H^r modulo this modulus (r as little-endian bytes).
    fn encrypt(&self, m: i128, r: &[u8]) -> BigUint {
        let mut acc = BigUint::one();
        self.h.pow_into(r, &mut acc, &self.modulus);
        let table = if m < 0 { &self.g_inv } else { &self.g };
        table.pow_into(&m.unsigned_abs().to_le_bytes(), &mut acc, &self.modulus);
        acc
    }
}

/// How an [`Encryptor`] reduces: mod n (anyone), or mod p² and mod q and recombined by the CRT
/// (the key holder: multiplications of 2048 and 1024 bits instead of 3072).
enum Tables {
    Public(Residues),
    Crt { p2: Residues, q: Residues, q_inv: BigUint },
}

/// Encryption with fixed-base tables for G, G⁻¹ and H (≈ 5 MB per key, built once in
/// parallel): Enc(m) = G^m·H^r mod n with r < 2^[`SUBGROUP_BITS`], at most 16 + 32
/// multiplications per ciphertext. The key holder's encryptor ([`Self::for_key_holder`]) works
/// mod p² and mod q (Chinese remainder theorem), the same ciphertexts at lower cost.
#[derive(Clone)]
pub struct Encryptor {
    key: PublicKey,
    tables: Arc<Tables>,
}

impl Encryptor {
    /// An encryptor for anyone holding the public key.
    pub fn new(key: &PublicKey) -> Result<Self, HeError> {
        Ok(Self { key: key.clone(), tables: Arc::new(Tables::Public(Residues::new(key, &key.n)?)) })
    }

    /// The key holder's encryptor (CRT).
    pub fn for_key_holder(key: &KeyPair) -> Result<Self, HeError> {
        let s = &key.secret;
        let q_inv = s.q.modinv(&s.p2).ok_or_else(|| HeError::Malformed("q is not invertible mod p²".into()))?;
        let (p2, q) = rayon::join(|| Residues::new(&key.public, &s.p2), || Residues::new(&key.public, &s.q));
        Ok(Self { key: key.public.clone(), tables: Arc::new(Tables::Crt { p2: p2?, q: q?, q_inv }) })
    }

    pub fn public(&self) -> &PublicKey {
        &self.key
    }

    /// Enc(m) for |m| < 2^[`PLAINTEXT_BITS`], with fresh randomness from `rng`.
    pub fn encrypt(&self, m: i128, rng: &mut impl Rng) -> Result<Ciphertext, HeError> {
        if m.unsigned_abs() >> PLAINTEXT_BITS != 0 {
            return Err(HeError::Overflow);
        }
        let r = random_below_bits(rng, SUBGROUP_BITS).to_bytes_le();
        Ok(Ciphertext(match &*self.tables {
            Tables::Public(t) => t.encrypt(m, &r),
            Tables::Crt { p2, q, q_inv } => {
                // c ≡ c₁ (mod p²), c ≡ c₂ (mod q): c = c₂ + q·((c₁ − c₂)·q⁻¹ mod p²) < p²q.
                let (c1, c2) = (p2.encrypt(m, &r), q.encrypt(m, &r));
                let diff = (&c1 + &p2.modulus - (&c2 % &p2.modulus)) % &p2.modulus;
                c2 + &q.modulus * ((diff * q_inv) % &p2.modulus)
            }
        }))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::OnceLock;

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    /// One 3072-bit key per test process (generation takes a second or two).
    pub(crate) fn test_key() -> Arc<KeyPair> {
        static KEY: OnceLock<Arc<KeyPair>> = OnceLock::new();
        KEY.get_or_init(|| Arc::new(KeyPair::generate(&mut StdRng::seed_from_u64(7)))).clone()
    }

    #[test]
    fn encrypt_add_decrypt_round_trips_signed_values() {
        let key = test_key();
        assert!((MIN_KEY_BITS..=KEY_BITS).contains(&key.public.modulus_bits()));
        let enc = Encryptor::new(&key.public).unwrap();
        let crt = Encryptor::for_key_holder(&key).unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        let values: [i128; 7] = [0, 1, -1, 12345, -(1 << 100), (1 << 125) - 1, -((1 << 125) - 1)];
        for &m in &values {
            let c = enc.encrypt(m, &mut rng).unwrap();
            assert_eq!(key.secret.decrypt(&c).unwrap(), m);
            // The CRT path gives the very ciphertext the public path gives for the same r.
            let (mut r1, mut r2) = (StdRng::seed_from_u64(m as u64), StdRng::seed_from_u64(m as u64));
            let (a, b) = (enc.encrypt(m, &mut r1).unwrap(), crt.encrypt(m, &mut r2).unwrap());
            assert_eq!(a, b);
            assert!(a.0 < key.public.n);
            assert_eq!(key.secret.decrypt(&b).unwrap(), m);
        }
        // Homomorphic sums, including across zero.
        let (a, b) = (enc.encrypt(1 << 90, &mut rng).unwrap(), enc.encrypt(-(1 << 91) + 5, &mut rng).unwrap());
        let s = key.public.add(&a, &b);
        assert_eq!(key.secret.decrypt(&s).unwrap(), (1 << 90) - (1 << 91) + 5);
        assert_eq!(key.secret.decrypt(&key.public.zero()).unwrap(), 0);
        // Probabilistic: two encryptions of the same value differ.
        assert_ne!(enc.encrypt(3, &mut rng).unwrap(), enc.encrypt(3, &mut rng).unwrap());
        assert!(enc.encrypt(1 << 126, &mut rng).is_err());
    }

    #[test]
    fn keys_and_ciphertexts_from_the_wire_are_checked() {
        let key = test_key();
        let bytes = key.public.to_bytes();
        assert_eq!(PublicKey::from_bytes(&bytes).unwrap(), key.public);
        assert!(PublicKey::from_bytes(&bytes[1..]).is_err());
        let mut small = bytes.clone();
        small[..384].fill(0);
        small[0] = 0xff;
        assert!(PublicKey::from_bytes(&small).is_err(), "tiny modulus");
        let mut bad_g = bytes.clone();
        bad_g[384..768].copy_from_slice(&bytes[..384]);
        assert!(PublicKey::from_bytes(&bad_g).is_err(), "G = n");
        let w = key.public.ciphertext_bytes();
        assert!(key.public.ciphertext(&vec![0; w]).is_err(), "zero");
        assert!(key.public.ciphertext(&bytes[..w]).is_err(), "c = n");
        assert!(key.public.ciphertext(&[1]).is_err(), "short");
        let mut one = vec![0; w];
        one[0] = 1;
        assert!(key.public.ciphertext(&one).is_ok());
        // A ciphertext that does not decrypt to a small value is an overflow, not a wrong number.
        let c = Ciphertext(&key.public.n - 2u8);
        assert_eq!(key.secret.decrypt(&c), Err(HeError::Overflow));
    }
}
