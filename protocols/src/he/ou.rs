//! Okamoto–Uchiyama with the Coron–Naccache–Paillier acceleration (see the module docs of
//! [`crate::he`] for the scheme, sizes and the choice). Key generation uses num-bigint (public
//! candidates, [`super::prime`]); every operation on keys and ciphertexts is crypto-bigint's
//! Montgomery arithmetic.

use std::sync::Arc;

use crypto_bigint::modular::{BoxedMontyForm, BoxedMontyParams};
use crypto_bigint::{BoxedUint, ConcatenatingMul, CtGt, CtSelect, MontyForm, MontyMultiplier, NonZero, Odd};
use num_bigint::BigUint;
use num_traits::One;
use rand::Rng;
use rayon::prelude::*;
use zeroize::Zeroize;

use super::HeError;
use super::prime::{random_bits, random_prime, random_range};

/// Bits of n = p²q of the default key size ([`KeySize::Bits3072`]).
pub const KEY_BITS: u64 = 3072;
/// Bits of p and q of the default key size.
pub const PRIME_BITS: u64 = KEY_BITS / 3;
/// Bits of t, the prime factor of p − 1 that decryption exponentiates by, and of the encryption
/// randomness r (NIST SP 800-57: a 256-bit subgroup for 128-bit security; more than the 224 bits
/// 112-bit security needs, so the same for both key sizes).
pub const SUBGROUP_BITS: u64 = 256;
/// Smallest modulus a peer's public key may have at all: a 2048-bit n = p²q may come out at 2046
/// bits. (What a party accepts is its own policy, at least this: `SbConfig::min_key_bits`.)
pub const MIN_KEY_BITS: u64 = 2048 - 2;
/// Plaintexts are signed integers below 2^PLAINTEXT_BITS in magnitude (far below p/2 ≥ 2^681).
pub const PLAINTEXT_BITS: u32 = 126;

/// The key sizes offered: n = p²q of 2048 bits (≈ 112-bit security) or 3072 bits (≈ 128-bit,
/// the default). See the module docs of [`crate::he`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KeySize {
    /// n of 2048 bits, p of 683 and q of 682 bits: ≈ 112-bit security (NIST SP 800-57).
    Bits2048,
    /// n of 3072 bits, p and q of 1024 bits: ≈ 128-bit security.
    #[default]
    Bits3072,
}

impl KeySize {
    /// Bits of n.
    pub const fn bits(self) -> u64 {
        match self {
            KeySize::Bits2048 => 2048,
            KeySize::Bits3072 => 3072,
        }
    }

    /// Security level in bits (NIST SP 800-57 Part 1, Table 2, for factoring moduli).
    pub const fn security_bits(self) -> u32 {
        match self {
            KeySize::Bits2048 => 112,
            KeySize::Bits3072 => 128,
        }
    }

    /// The size whose ciphertexts are `bytes` long.
    pub fn from_ciphertext_bytes(bytes: usize) -> Option<Self> {
        [KeySize::Bits2048, KeySize::Bits3072].into_iter().find(|s| s.bytes() == bytes)
    }

    /// Bytes of one ciphertext (and of each of n, G, H on the wire).
    pub const fn bytes(self) -> usize {
        (self.bits() / 8) as usize
    }

    /// Bits of p and of q (p²q of [`Self::bits`] bits).
    const fn prime_bits(self) -> (u64, u64) {
        match self {
            KeySize::Bits2048 => (683, 682),
            KeySize::Bits3072 => (1024, 1024),
        }
    }
}

/// crypto-bigint precision (a multiple of 64 bits) for numbers of `bits` bits.
fn precision(bits: u64) -> u32 {
    (bits.div_ceil(64) * 64) as u32
}

fn to_boxed(x: &BigUint, prec: u32) -> BoxedUint {
    let mut b = x.to_bytes_le();
    b.resize(prec as usize / 8, 0);
    let v = BoxedUint::from_le_slice(&b, prec).expect("the value fits the precision");
    b.zeroize();
    v
}

fn odd_params(x: &BigUint, prec: u32) -> BoxedMontyParams {
    BoxedMontyParams::new_vartime(Odd::new(to_boxed(x, prec)).expect("an odd modulus"))
}

/// The public key (n, G, H). Ciphertexts are integers in [1, n), written as [`Self::ciphertext_bytes`]
/// little-endian bytes.
#[derive(Clone, Debug)]
pub struct PublicKey {
    size: KeySize,
    n: BigUint,
    g: BigUint,
    h: BigUint,
    /// Montgomery parameters mod n.
    params: BoxedMontyParams,
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        (self.size, &self.n, &self.g, &self.h) == (other.size, &other.n, &other.g, &other.h)
    }
}
impl Eq for PublicKey {}

/// One ciphertext, an element of [1, n), kept in Montgomery form mod n (so sums cost one
/// Montgomery multiplication each and convert back only when written out).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ciphertext(BoxedMontyForm);

/// Sums ciphertexts with one reusable Montgomery multiplier (no allocation per addition): what a
/// hot loop should use instead of [`PublicKey::add_assign`].
pub struct Adder<'a>(<BoxedMontyForm as MontyForm>::Multiplier<'a>);

impl Adder<'_> {
    /// a ← a + b.
    pub fn add_assign(&mut self, a: &mut Ciphertext, b: &Ciphertext) {
        self.0.mul_assign(&mut a.0, &b.0);
    }
}

impl PublicKey {
    pub fn size(&self) -> KeySize {
        self.size
    }

    /// Bytes of one ciphertext (and of each of n, G, H on the wire): 256 or 384.
    pub fn ciphertext_bytes(&self) -> usize {
        self.size.bytes()
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

    /// Parses and checks a peer's key of either size (told apart by the length: 3·256 or 3·384
    /// bytes): n of [`KeySize::bits`] − 2 ..= [`KeySize::bits`] bits and odd, G and H in [2, n).
    /// (That n really is p²q, and G of the right order, cannot be checked without the factors; a
    /// wrong key only hurts the party that made it, whose own gradients it encrypts.) Whether the
    /// size is enough is the caller's policy ([`Self::modulus_bits`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, HeError> {
        let size = KeySize::from_ciphertext_bytes(bytes.len() / 3)
            .filter(|s| bytes.len() == 3 * s.bytes())
            .ok_or_else(|| HeError::Malformed(format!("public key of {} bytes", bytes.len())))?;
        let w = size.bytes();
        let n = BigUint::from_bytes_le(&bytes[..w]);
        if n.bits() < size.bits() - 2 || n.bits() > size.bits() || !n.bit(0) {
            return Err(HeError::Malformed(format!("public key modulus of {} bits", n.bits())));
        }
        let g = BigUint::from_bytes_le(&bytes[w..2 * w]);
        let h = BigUint::from_bytes_le(&bytes[2 * w..]);
        let two = BigUint::from(2u8);
        if g < two || g >= n || h < two || h >= n {
            return Err(HeError::Malformed("public key generator out of range".into()));
        }
        Ok(Self::assemble(size, n, g, h))
    }

    fn assemble(size: KeySize, n: BigUint, g: BigUint, h: BigUint) -> Self {
        let params = odd_params(&n, precision(size.bits()));
        Self { size, n, g, h, params }
    }

    /// Parses one ciphertext and checks it is in [1, n).
    pub fn ciphertext(&self, bytes: &[u8]) -> Result<Ciphertext, HeError> {
        if bytes.len() != self.ciphertext_bytes() {
            return Err(HeError::Malformed(format!("ciphertext of {} bytes", bytes.len())));
        }
        let c = BoxedUint::from_le_slice(bytes, precision(self.size.bits()))
            .map_err(|_| HeError::Malformed("ciphertext encoding".into()))?;
        let modulus: &BoxedUint = self.params.modulus().as_ref();
        if bool::from(c.is_zero()) || c >= *modulus {
            return Err(HeError::Malformed("ciphertext out of range".into()));
        }
        Ok(Ciphertext(BoxedMontyForm::new(c, &self.params)))
    }

    /// The ciphertext's fixed-width encoding.
    pub fn ciphertext_to_bytes(&self, c: &Ciphertext, out: &mut Vec<u8>) {
        out.extend_from_slice(&c.0.retrieve().to_le_bytes()[..self.ciphertext_bytes()]);
    }

    /// 1 = G^0·H^0, an encryption of 0 with no randomness (the empty sum). Not hiding: use it
    /// only for sums the key holder may learn are empty anyway.
    pub fn zero(&self) -> Ciphertext {
        Ciphertext(BoxedMontyForm::one(&self.params))
    }

    /// A reusable adder for this key's ciphertexts.
    pub fn adder(&self) -> Adder<'_> {
        Adder(<BoxedMontyForm as MontyForm>::Multiplier::from(&self.params))
    }

    /// Enc(a + b) from Enc(a), Enc(b): one Montgomery multiplication mod n.
    pub fn add(&self, a: &Ciphertext, b: &Ciphertext) -> Ciphertext {
        let mut s = a.clone();
        self.add_assign(&mut s, b);
        s
    }

    /// a ← a + b.
    pub fn add_assign(&self, a: &mut Ciphertext, b: &Ciphertext) {
        self.adder().add_assign(a, b);
    }
}

fn fixed_le(x: &BigUint, w: usize) -> Vec<u8> {
    let mut b = x.to_bytes_le();
    b.resize(w, 0);
    b
}

/// The secret key, as crypto-bigint values: decryption is constant time in them (see the module
/// docs), and the integers are zeroized on drop. The Montgomery parameters mod p² and mod p (an
/// `Arc` inside crypto-bigint, not reachable for zeroizing) and the key holder's encryption
/// tables are not.
pub struct SecretKey {
    size: KeySize,
    /// Montgomery parameters mod p² and mod p; q's, for the key holder's encryptor.
    p2: BoxedMontyParams,
    p: BoxedMontyParams,
    q: BoxedMontyParams,
    /// p² (precision of p²) for reducing ciphertexts.
    p2_int: NonZero<BoxedUint>,
    /// p and p/2 (precision of p), p⁻¹ mod 2^(precision of p²) for the exact division of L.
    p_int: BoxedUint,
    half_p: BoxedUint,
    p_inv_pow2: BoxedUint,
    t: BoxedUint,
    /// L(G^t mod p²)⁻¹ mod p in Montgomery form mod p.
    inv: BoxedMontyForm,
    /// q (precision of q) and q⁻¹ mod p² (Montgomery form mod p²), for the CRT.
    q_int: BoxedUint,
    q_inv: BoxedMontyForm,
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.p_int.zeroize();
        self.half_p.zeroize();
        self.p_inv_pow2.zeroize();
        self.t.zeroize();
        self.inv.zeroize();
        self.q_int.zeroize();
        self.q_inv.zeroize();
    }
}

/// A key pair (the active party's).
pub struct KeyPair {
    pub public: PublicKey,
    pub secret: SecretKey,
}

impl KeyPair {
    /// A fresh key of the default size ([`KeySize::Bits3072`]); takes a second or two.
    pub fn generate(rng: &mut impl Rng) -> KeyPair {
        Self::generate_sized(rng, KeySize::default())
    }

    /// A fresh key of `size` (CNP key generation: p = t·u + 1 with t a [`SUBGROUP_BITS`]-bit
    /// prime).
    pub fn generate_sized(rng: &mut impl Rng, size: KeySize) -> KeyPair {
        let (p_bits, q_bits) = size.prime_bits();
        let t = random_prime(rng, SUBGROUP_BITS);
        let (p, u) = loop {
            let mut u = random_bits(rng, p_bits - SUBGROUP_BITS);
            u.set_bit(0, false);
            let p = &t * &u + 1u8;
            if p.bits() == p_bits && super::prime::is_probable_prime(rng, &p) {
                break (p, u);
            }
        };
        let (q, n) = loop {
            let q = random_prime(rng, q_bits);
            let n = &p * &p * &q;
            if q != p && n.bits() >= size.bits() - 2 && n.bits() <= size.bits() {
                break (q, n);
            }
        };
        let p2 = &p * &p;
        let two = BigUint::from(2u8);
        let (g, inv) = loop {
            let g = random_range(rng, &two, &n).modpow(&u, &n);
            let l = l_function(&g.modpow(&t, &p2), &p) % &p;
            if let Some(inv) = l.modinv(&p) {
                break (g, inv);
            }
        };
        let h = random_range(rng, &two, &n).modpow(&(&n * &u), &n);
        let q_inv = q.modinv(&p2).expect("q is prime and differs from p");
        let (pp, pp2, pq) = (precision(p_bits), precision(2 * p_bits), precision(q_bits));
        // p⁻¹ mod 2^pp2 (p is odd), for the exact division by p in decryption.
        let p_inv_pow2 = p.modinv(&(BigUint::one() << pp2)).expect("p is odd");
        let p_params = odd_params(&p, pp);
        let p2_params = odd_params(&p2, pp2);
        let secret = SecretKey {
            size,
            inv: BoxedMontyForm::new(to_boxed(&inv, pp), &p_params),
            q_inv: BoxedMontyForm::new(to_boxed(&q_inv, pp2), &p2_params),
            p2_int: NonZero::new(to_boxed(&p2, pp2)).expect("p² > 0"),
            p_int: to_boxed(&p, pp),
            half_p: to_boxed(&(&p >> 1u32), pp),
            p_inv_pow2: to_boxed(&p_inv_pow2, pp2),
            t: to_boxed(&t, precision(SUBGROUP_BITS)),
            q_int: to_boxed(&q, pq),
            q: odd_params(&q, pq),
            p: p_params,
            p2: p2_params,
        };
        KeyPair { public: PublicKey::assemble(size, n, g, h), secret }
    }
}

/// L(x) = (x − 1) / p.
fn l_function(x: &BigUint, p: &BigUint) -> BigUint {
    (x - 1u8) / p
}

impl SecretKey {
    pub fn size(&self) -> KeySize {
        self.size
    }

    /// The signed plaintext of `c`: m mod p read as a signed number (|m| < p/2), checked to be below
    /// 2^[`PLAINTEXT_BITS`] in magnitude. Constant time in the secret key (crypto-bigint's
    /// Montgomery exponentiation by t, exact division by p, multiplication mod p); the final range
    /// check and conversion branch on the plaintext, which the caller gets anyway.
    pub fn decrypt(&self, c: &Ciphertext) -> Result<i128, HeError> {
        let c = c.0.retrieve();
        // The empty sum (sent for empty bins): its plaintext is 0 and it is public that it is.
        if bool::from(c.is_one()) {
            return Ok(0);
        }
        let reduced = c.rem(&self.p2_int);
        let x = BoxedMontyForm::new(reduced, &self.p2).pow_bounded_exp(&self.t, SUBGROUP_BITS as u32).retrieve();
        // x ≡ 1 (mod p): L = (x − 1)/p exactly, computed as (x − 1)·p⁻¹ mod 2^k (L < p < 2^k).
        let l = x.wrapping_sub(BoxedUint::one_with_precision(x.bits_precision())).wrapping_mul(&self.p_inv_pow2);
        let l = resize(&l, self.p_int.bits_precision());
        let m = (BoxedMontyForm::new(l, &self.p) * &self.inv).retrieve();
        let neg = m.ct_gt(&self.half_p);
        let mag = BoxedUint::ct_select(&m, &self.p_int.wrapping_sub(&m), neg);
        if mag.bit_width() > PLAINTEXT_BITS {
            return Err(HeError::Overflow);
        }
        let bytes = mag.to_le_bytes();
        let v = i128::from_le_bytes(bytes[..16].try_into().expect("16 bytes"));
        Ok(if bool::from(neg) { -v } else { v })
    }
}

/// Window bits of the fixed-base tables: 2^11 entries per window, ≈ 45 MB of tables per key
/// (measured against 8 bits, 5 MB: a quarter fewer multiplications per encryption).
const WINDOW: u32 = 11;

/// base^(j · 2^(WINDOW·i)) for every window position i and window value j, in Montgomery form:
/// an exponentiation by an e of `WINDOW·windows` bits is then at most `windows` multiplications
/// (Brickell–Gordon–McCurley–Wilson style fixed-base windows, without the squarings).
struct FixedBase {
    table: Vec<Vec<BoxedMontyForm>>,
}

impl FixedBase {
    fn new(base: &BoxedMontyForm, exponent_bits: u32) -> Self {
        let windows = exponent_bits.div_ceil(WINDOW) as usize;
        let mut firsts = Vec::with_capacity(windows);
        let mut b = base.clone();
        for _ in 0..windows {
            firsts.push(b.clone());
            for _ in 0..WINDOW {
                b = b.square();
            }
        }
        let table = firsts
            .par_iter()
            .map(|b1| {
                let mut row = Vec::with_capacity(1 << WINDOW);
                row.push(BoxedMontyForm::one(b1.params()));
                for j in 1..(1usize << WINDOW) {
                    let next = &row[j - 1] * b1;
                    row.push(next);
                }
                row
            })
            .collect();
        Self { table }
    }

    /// acc ← acc · base^e for e given as little-endian bytes (at most the table's windows).
    /// Zero windows are skipped (the time depends on e's zero windows; see the module docs).
    fn pow_into<'a>(
        &self,
        e: &[u8],
        acc: &mut BoxedMontyForm,
        mul: &mut <BoxedMontyForm as MontyForm>::Multiplier<'a>,
    ) {
        for (i, row) in self.table.iter().enumerate() {
            let j = window(e, i * WINDOW as usize);
            if j != 0 {
                mul.mul_assign(acc, &row[j]);
            }
        }
    }
}

/// The WINDOW bits of `e` (little-endian bytes) from bit `at`.
fn window(e: &[u8], at: usize) -> usize {
    let mut v = 0usize;
    for k in 0..3 {
        if let Some(&b) = e.get(at / 8 + k) {
            v |= (b as usize) << (8 * k);
        }
    }
    (v >> (at % 8)) & ((1 << WINDOW) - 1)
}

/// Fixed-base tables for G, G⁻¹ and H modulo one modulus.
struct Residues {
    params: BoxedMontyParams,
    g: FixedBase,
    g_inv: FixedBase,
    h: FixedBase,
}

impl Residues {
    fn new(key: &PublicKey, params: &BoxedMontyParams) -> Result<Self, HeError> {
        let prec = params.bits_precision();
        let modulus = BigUint::from_bytes_le(&params.modulus().as_ref().to_le_bytes());
        let g = &key.g % &modulus;
        let g_inv = g.modinv(&modulus).ok_or_else(|| HeError::Malformed("G is not invertible".into()))?;
        let h = &key.h % &modulus;
        let mont = |x: &BigUint| BoxedMontyForm::new(to_boxed(x, prec), params);
        let (g, g_inv, h) = (mont(&g), mont(&g_inv), mont(&h));
        let (tg, (tgi, th)) = rayon::join(
            || FixedBase::new(&g, PLAINTEXT_BITS + 2),
            || rayon::join(|| FixedBase::new(&g_inv, PLAINTEXT_BITS + 2), || FixedBase::new(&h, SUBGROUP_BITS as u32)),
        );
        Ok(Self { params: params.clone(), g: tg, g_inv: tgi, h: th })
    }

    /// G^m·H^r modulo this modulus (r as little-endian bytes), in Montgomery form.
    fn encrypt(&self, m: i128, r: &[u8]) -> BoxedMontyForm {
        let mut mul = <BoxedMontyForm as MontyForm>::Multiplier::from(&self.params);
        let mut acc = BoxedMontyForm::one(&self.params);
        self.h.pow_into(r, &mut acc, &mut mul);
        let table = if m < 0 { &self.g_inv } else { &self.g };
        table.pow_into(&m.unsigned_abs().to_le_bytes(), &mut acc, &mut mul);
        acc
    }
}

/// How an [`Encryptor`] reduces: mod n (anyone), or mod p² and mod q and recombined by the CRT
/// (the key holder: multiplications of 2/3 and 1/3 the width of n instead of n's).
enum Tables {
    Public(Residues),
    Crt { p2: Residues, q: Residues, p2_int: NonZero<BoxedUint>, q_int: BoxedUint, q_inv: BoxedMontyForm },
}

/// Encryption with fixed-base tables for G, G⁻¹ and H in Montgomery form (≈ 45 MB per key,
/// built once in parallel): Enc(m) = G^m·H^r mod n with r < 2^[`SUBGROUP_BITS`], at most 12 + 24
/// multiplications per ciphertext. The key holder's encryptor ([`Self::for_key_holder`]) works
/// mod p² and mod q (Chinese remainder theorem): the same ciphertexts at lower cost.
#[derive(Clone)]
pub struct Encryptor {
    key: PublicKey,
    tables: Arc<Tables>,
}

impl Encryptor {
    /// An encryptor for anyone holding the public key.
    pub fn new(key: &PublicKey) -> Result<Self, HeError> {
        Ok(Self { key: key.clone(), tables: Arc::new(Tables::Public(Residues::new(key, &key.params)?)) })
    }

    /// The key holder's encryptor (CRT).
    pub fn for_key_holder(key: &KeyPair) -> Result<Self, HeError> {
        let s = &key.secret;
        let (p2, q) = rayon::join(|| Residues::new(&key.public, &s.p2), || Residues::new(&key.public, &s.q));
        let tables =
            Tables::Crt { p2: p2?, q: q?, p2_int: s.p2_int.clone(), q_int: s.q_int.clone(), q_inv: s.q_inv.clone() };
        Ok(Self { key: key.public.clone(), tables: Arc::new(tables) })
    }

    pub fn public(&self) -> &PublicKey {
        &self.key
    }

    /// Enc(m) for |m| < 2^[`PLAINTEXT_BITS`], with fresh randomness from `rng`.
    pub fn encrypt(&self, m: i128, rng: &mut impl Rng) -> Result<Ciphertext, HeError> {
        Ok(Ciphertext(match &*self.tables {
            Tables::Public(t) => t.encrypt(Self::check(m)?, &Self::randomness(rng)),
            Tables::Crt { .. } => BoxedMontyForm::new(self.encrypt_integer(m, rng)?, &self.key.params),
        }))
    }

    /// Enc(m) appended to `out` in its wire encoding ([`PublicKey::ciphertext_to_bytes`]),
    /// without the round trip through Montgomery form mod n that [`Self::encrypt`] makes.
    pub fn encrypt_to_bytes(&self, m: i128, rng: &mut impl Rng, out: &mut Vec<u8>) -> Result<(), HeError> {
        let c = match &*self.tables {
            Tables::Public(t) => t.encrypt(Self::check(m)?, &Self::randomness(rng)).retrieve(),
            Tables::Crt { .. } => self.encrypt_integer(m, rng)?,
        };
        out.extend_from_slice(&c.to_le_bytes()[..self.key.ciphertext_bytes()]);
        Ok(())
    }

    fn check(m: i128) -> Result<i128, HeError> {
        if m.unsigned_abs() >> PLAINTEXT_BITS != 0 {
            return Err(HeError::Overflow);
        }
        Ok(m)
    }

    fn randomness(rng: &mut impl Rng) -> [u8; (SUBGROUP_BITS / 8) as usize] {
        let mut r = [0u8; (SUBGROUP_BITS / 8) as usize];
        rng.fill_bytes(&mut r);
        r
    }

    /// The ciphertext as an integer in [0, n) (precision of n).
    fn encrypt_integer(&self, m: i128, rng: &mut impl Rng) -> Result<BoxedUint, HeError> {
        let m = Self::check(m)?;
        let r = Self::randomness(rng);
        let prec_n = precision(self.key.size.bits());
        match &*self.tables {
            Tables::Public(t) => Ok(t.encrypt(m, &r).retrieve()),
            Tables::Crt { p2, q, p2_int, q_int, q_inv } => {
                // c ≡ c₁ (mod p²), c ≡ c₂ (mod q): c = c₂ + q·((c₁ − c₂)·q⁻¹ mod p²) < p²q.
                let c1 = p2.encrypt(m, &r).retrieve();
                let c2 = q.encrypt(m, &r).retrieve();
                let c2_wide = resize(&c2, c1.bits_precision());
                let diff = c1.sub_mod(&c2_wide, p2_int);
                let k = (BoxedMontyForm::new(diff, &p2.params) * q_inv).retrieve();
                let qk = resize(&q_int.concatenating_mul(&k), prec_n);
                Ok(qk.wrapping_add(resize(&c2, prec_n)))
            }
        }
    }
}

/// `x` at precision `prec` (bits): widened, or truncated when `x` is known to fit.
fn resize(x: &BoxedUint, prec: u32) -> BoxedUint {
    let mut b = x.to_le_bytes().into_vec();
    b.resize(prec as usize / 8, 0);
    BoxedUint::from_le_slice(&b, prec).expect("the value fits")
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

    /// One 2048-bit key per test process.
    pub(crate) fn test_key_2048() -> Arc<KeyPair> {
        static KEY: OnceLock<Arc<KeyPair>> = OnceLock::new();
        KEY.get_or_init(|| Arc::new(KeyPair::generate_sized(&mut StdRng::seed_from_u64(8), KeySize::Bits2048))).clone()
    }

    fn round_trips(key: &KeyPair) {
        let size = key.public.size();
        assert!((size.bits() - 2..=size.bits()).contains(&key.public.modulus_bits()));
        let enc = Encryptor::new(&key.public).unwrap();
        let crt = Encryptor::for_key_holder(key).unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        let values: [i128; 9] = [0, 1, -1, 12345, -(1 << 100), (1 << 125) - 1, -((1 << 125) - 1), 1 << 60, -(1 << 87)];
        for &m in &values {
            let c = enc.encrypt(m, &mut rng).unwrap();
            assert_eq!(key.secret.decrypt(&c).unwrap(), m);
            // The CRT path gives the very ciphertext the public path gives for the same r.
            let (mut r1, mut r2) = (StdRng::seed_from_u64(m as u64), StdRng::seed_from_u64(m as u64));
            let (a, b) = (enc.encrypt(m, &mut r1).unwrap(), crt.encrypt(m, &mut r2).unwrap());
            assert_eq!(a, b);
            assert_eq!(key.secret.decrypt(&b).unwrap(), m);
            // The wire encoding: both paths, parsed back.
            let (mut r3, mut r4) = (StdRng::seed_from_u64(m as u64), StdRng::seed_from_u64(m as u64));
            let (mut wa, mut wb) = (Vec::new(), Vec::new());
            enc.encrypt_to_bytes(m, &mut r3, &mut wa).unwrap();
            crt.encrypt_to_bytes(m, &mut r4, &mut wb).unwrap();
            assert_eq!(wa, wb);
            assert_eq!(wa.len(), size.bytes());
            let mut wc = Vec::new();
            key.public.ciphertext_to_bytes(&a, &mut wc);
            assert_eq!(wa, wc);
            assert_eq!(key.public.ciphertext(&wa).unwrap(), a);
            assert!(BigUint::from_bytes_le(&wa) < key.public.n);
        }
        // Homomorphic sums, including across zero, and through the adder.
        let (a, b) = (enc.encrypt(1 << 90, &mut rng).unwrap(), crt.encrypt(-(1 << 91) + 5, &mut rng).unwrap());
        let s = key.public.add(&a, &b);
        assert_eq!(key.secret.decrypt(&s).unwrap(), (1 << 90) - (1 << 91) + 5);
        let mut acc = key.public.zero();
        let mut adder = key.public.adder();
        let mut expect = 0i128;
        for i in 0..50i128 {
            let v = (i - 25) * (1 << 70) + i;
            adder.add_assign(&mut acc, &crt.encrypt(v, &mut rng).unwrap());
            expect += v;
        }
        assert_eq!(key.secret.decrypt(&acc).unwrap(), expect);
        assert_eq!(key.secret.decrypt(&key.public.zero()).unwrap(), 0);
        // Probabilistic: two encryptions of the same value differ.
        assert_ne!(enc.encrypt(3, &mut rng).unwrap(), enc.encrypt(3, &mut rng).unwrap());
        assert!(enc.encrypt(1 << 126, &mut rng).is_err());
        assert!(crt.encrypt(-(1 << 126), &mut rng).is_err());
    }

    #[test]
    fn encrypt_add_decrypt_round_trips_signed_values() {
        round_trips(&test_key());
    }

    #[test]
    fn the_2048_bit_key_round_trips_too() {
        let key = test_key_2048();
        assert_eq!(key.public.size(), KeySize::Bits2048);
        assert_eq!(key.public.ciphertext_bytes(), 256);
        round_trips(&key);
        // A 2048-bit key on the wire is told from a 3072-bit one by its length.
        let back = PublicKey::from_bytes(&key.public.to_bytes()).unwrap();
        assert_eq!(back, key.public);
        assert_eq!(back.size(), KeySize::Bits2048);
    }

    #[test]
    fn window_extraction_reads_every_bit() {
        let e: [u8; 4] = [0b1010_1010, 0xff, 0x01, 0x80];
        let v = u32::from_le_bytes(e);
        for at in 0..32 {
            assert_eq!(window(&e, at), ((v >> at) as usize) & ((1 << WINDOW) - 1), "at {at}");
        }
    }

    #[test]
    fn keys_and_ciphertexts_from_the_wire_are_checked() {
        let key = test_key();
        let bytes = key.public.to_bytes();
        assert_eq!(PublicKey::from_bytes(&bytes).unwrap(), key.public);
        assert!(PublicKey::from_bytes(&bytes[1..]).is_err());
        assert!(PublicKey::from_bytes(&bytes[..3 * 256 + 1]).is_err(), "neither size");
        let mut small = bytes.clone();
        small[..384].fill(0);
        small[0] = 0xff;
        assert!(PublicKey::from_bytes(&small).is_err(), "tiny modulus");
        let mut even = bytes.clone();
        even[0] &= 0xfe;
        assert!(PublicKey::from_bytes(&even).is_err(), "even modulus");
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
        let c = key.public.ciphertext(&fixed_le(&(&key.public.n - 2u8), w)).unwrap();
        assert_eq!(key.secret.decrypt(&c), Err(HeError::Overflow));
    }
}
