//! Synthetic data generation (`consort gen`). (Not `gen`: that is a reserved word in Rust 2024.)
//!
//! [`generate_psi`] writes two CSV files whose `id` columns share exactly `overlap` values.
//! Ids are distinct 11-digit phone-number-like strings (`1` then 10 digits). Memory is O(1) in the
//! number of rows: nothing is shuffled in memory; instead keyed bijections do the work.
//!
//! * Entity `j` (0 ≤ j < rows_a + rows_b − overlap) has id `10^10 + P_id(j)`, where `P_id` is a
//!   keyed permutation of [0, 10^10): distinct entities get distinct ids that look random.
//! * Entities `0..overlap` are the shared ones; a.csv also holds `overlap..rows_a`, b.csv holds
//!   `rows_a..rows_a + rows_b − overlap`.
//! * Row `p` of a.csv holds a.csv's entity number `P_a(p)`, a keyed permutation of [0, rows_a)
//!   (likewise for b.csv), so shared ids are scattered through each file in a different order.
//!
//! The permutations are small Feistel networks over the smallest even number of bits that covers
//! the domain, with cycle walking (re-apply until the value falls inside the domain), which keeps
//! them bijections on any range. Everything is a function of `seed`: same seed, same files.
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use tempfile::NamedTempFile;

use crate::error::DataError;
use crate::keys::fmix64;

/// Name of the key column in both generated files.
pub const KEY_COLUMN: &str = "id";
const HEADER_A: &str = "id,name,age,income\n";
const HEADER_B: &str = "id,region,score,balance\n";
const ID_SPACE: u64 = 10_000_000_000;

#[path = "synth_check.rs"]
pub mod check;

/// What to generate.
#[derive(Debug, Clone)]
pub struct PsiGenSpec {
    /// Rows in `a.csv`.
    pub rows_a: u64,
    /// Rows in `b.csv`.
    pub rows_b: u64,
    /// Ids present in both files.
    pub overlap: u64,
    pub seed: u64,
    /// Directory for `a.csv` and `b.csv` (created if missing).
    pub out_dir: PathBuf,
}

/// What was generated.
#[derive(Debug, Clone)]
pub struct GenSummary {
    pub a: PathBuf,
    pub b: PathBuf,
    pub rows_a: u64,
    pub rows_b: u64,
    pub overlap: u64,
    pub bytes_a: u64,
    pub bytes_b: u64,
    pub seconds: f64,
}

/// Writes `a.csv` (`id,name,age,income`) and `b.csv` (`id,region,score,balance`) into
/// `spec.out_dir`, each atomically (temp file, then rename; both renamed only when both are
/// complete).
pub fn generate_psi(spec: &PsiGenSpec) -> Result<GenSummary, DataError> {
    generate(spec, false, false)
}

/// [`generate_psi`] (or with `ids_only` [`generate_psi_ids`]) as Parquet files `a.parquet` and
/// `b.parquet` (Snappy, one row group per 2^20 rows): the same rows in the same order, the id
/// column as `Int64` (`10^10 + n`, whose decimal text is the CSV id, so both formats give the
/// same keys) and the other columns as the CSV's unquoted text (`Utf8`).
pub fn generate_psi_parquet(spec: &PsiGenSpec, ids_only: bool) -> Result<GenSummary, DataError> {
    generate(spec, ids_only, true)
}

/// [`generate_psi`] with the id column only (`id`, 12 bytes a row): the large inputs of PSI
/// benchmarks. Same ids, same overlap, same row order as [`generate_psi`] with the same spec.
/// Streams like it: memory does not grow with the rows.
pub fn generate_psi_ids(spec: &PsiGenSpec) -> Result<GenSummary, DataError> {
    generate(spec, true, false)
}

fn generate(spec: &PsiGenSpec, ids_only: bool, parquet: bool) -> Result<GenSummary, DataError> {
    let started = Instant::now();
    let PsiGenSpec { rows_a, rows_b, overlap, seed, .. } = *spec;
    if overlap > rows_a.min(rows_b) {
        return Err(DataError::Invalid(format!(
            "overlap {overlap} is larger than the smaller file ({} rows)",
            rows_a.min(rows_b)
        )));
    }
    if rows_a.saturating_add(rows_b) - overlap > ID_SPACE {
        return Err(DataError::Invalid(format!("at most {ID_SPACE} distinct ids can be generated")));
    }
    let dir = &spec.out_dir;
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let ids = Permutation::new(ID_SPACE, seed, 1);
    let (gen_a, gen_b) = file_gens(spec, ids_only, &ids);
    let ext = if parquet { "parquet" } else { "csv" };
    let (a, b) = (dir.join(format!("a.{ext}")), dir.join(format!("b.{ext}")));
    let write = |g: &FileGen| if parquet { g.write_parquet(dir) } else { g.write(dir) };
    let (tmp_a, bytes_a) = write(&gen_a)?;
    let (tmp_b, bytes_b) = write(&gen_b)?;
    tmp_a.persist(&a).map_err(|e| DataError::io(&a, e.error))?;
    tmp_b.persist(&b).map_err(|e| DataError::io(&b, e.error))?;
    Ok(GenSummary { a, b, rows_a, rows_b, overlap, bytes_a, bytes_b, seconds: started.elapsed().as_secs_f64() })
}

/// The two files' generators (`ids`: the id permutation, `Permutation::new(ID_SPACE, seed, 1)`).
fn file_gens<'a>(spec: &PsiGenSpec, ids_only: bool, ids: &'a Permutation) -> (FileGen<'a>, FileGen<'a>) {
    let PsiGenSpec { rows_a, rows_b, overlap, seed, .. } = *spec;
    let gen_a = FileGen {
        header: if ids_only { "id\n" } else { HEADER_A },
        rows: rows_a,
        scatter: Permutation::new(rows_a, seed, 2),
        payload_key: fmix64(seed ^ 0xa11ce),
        entity: Box::new(|l| l),
        ids,
        row: if ids_only { None } else { Some(payload_a) },
    };
    let b_only_base = rows_a - overlap;
    let gen_b = FileGen {
        header: if ids_only { "id\n" } else { HEADER_B },
        rows: rows_b,
        scatter: Permutation::new(rows_b, seed, 3),
        payload_key: fmix64(seed ^ 0xb0b),
        entity: Box::new(move |l| if l < overlap { l } else { l + b_only_base }),
        ids,
        row: if ids_only { None } else { Some(payload_b) },
    };
    (gen_a, gen_b)
}

/// A keyed permutation of [0, n): a Feistel network on `2 * half_bits` bits with cycle walking.
struct Permutation {
    n: u64,
    half_bits: u32,
    keys: [u64; 6],
}

impl Permutation {
    fn new(n: u64, seed: u64, label: u64) -> Self {
        let bits = 64 - n.saturating_sub(1).leading_zeros();
        let half_bits = bits.div_ceil(2).max(1);
        let mut state = fmix64(seed.wrapping_add(label.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        let keys = std::array::from_fn(|_| {
            state = fmix64(state.wrapping_add(0x9e37_79b9_7f4a_7c15));
            state
        });
        Self { n, half_bits, keys }
    }

    /// One pass of the network (the reference [`Permutation::apply`] uses; the generator runs
    /// its inlined copy [`Permutation::feistel_inline`]).
    #[cfg(test)]
    fn feistel(&self, x: u64) -> u64 {
        let mask = (1u64 << self.half_bits) - 1;
        let (mut l, mut r) = (x >> self.half_bits, x & mask);
        for k in self.keys {
            (l, r) = (r, l ^ (fmix64(r ^ k) & mask));
        }
        (l << self.half_bits) | r
    }

    /// The image of `x` (< n), one value at a time: the reference for [`Permutation::apply_all`].
    #[cfg(test)]
    fn apply(&self, x: u64) -> u64 {
        debug_assert!(x < self.n);
        let mut y = self.feistel(x);
        while y >= self.n {
            y = self.feistel(y);
        }
        y
    }

    /// [`Permutation::apply`] on every value of `xs` in place (each < n), with the same results:
    /// the Feistel rounds run over the whole slice, lane by lane, so they vectorize (AVX-512 or
    /// AVX2 where the CPU has them, `protocols::simd::features`; portable code elsewhere), and the
    /// values that fall outside the domain are walked again together until none is left.
    fn apply_all(&self, xs: &mut [u64]) {
        #[cfg(target_arch = "x86_64")]
        {
            let cpu = consort_protocols::simd::features();
            if cpu.avx512f {
                // SAFETY: the CPU has AVX-512F (asked once by `simd::features`).
                return unsafe { self.apply_all_avx512(xs) };
            }
            if cpu.avx2 {
                // SAFETY: the CPU has AVX2.
                return unsafe { self.apply_all_avx2(xs) };
            }
        }
        self.apply_all_with(xs)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn apply_all_avx512(&self, xs: &mut [u64]) {
        self.apply_all_with(xs)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn apply_all_avx2(&self, xs: &mut [u64]) {
        self.apply_all_with(xs)
    }

    /// The body of [`Permutation::apply_all`], compiled once per instruction set.
    #[inline(always)]
    fn apply_all_with(&self, xs: &mut [u64]) {
        self.rounds(xs);
        let mut outside: Vec<usize> = (0..xs.len()).filter(|&i| xs[i] >= self.n).collect();
        let mut walk = Vec::with_capacity(outside.len());
        while !outside.is_empty() {
            walk.clear();
            walk.extend(outside.iter().map(|&i| xs[i]));
            self.rounds(&mut walk);
            for (&i, &y) in outside.iter().zip(&walk) {
                xs[i] = y;
            }
            outside.retain(|&i| xs[i] >= self.n);
        }
    }

    /// The inverse of [`Permutation::apply_all`] on every value of `xs` in place (each < n):
    /// the rounds backwards, walking values outside the domain back the same way (the streaming
    /// output check, [`check`]).
    fn invert_all(&self, xs: &mut [u64]) {
        #[cfg(target_arch = "x86_64")]
        {
            let cpu = consort_protocols::simd::features();
            if cpu.avx512f {
                // SAFETY: the CPU has AVX-512F (asked once by `simd::features`).
                return unsafe { self.invert_all_avx512(xs) };
            }
            if cpu.avx2 {
                // SAFETY: the CPU has AVX2.
                return unsafe { self.invert_all_avx2(xs) };
            }
        }
        self.invert_all_with(xs)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn invert_all_avx512(&self, xs: &mut [u64]) {
        self.invert_all_with(xs)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn invert_all_avx2(&self, xs: &mut [u64]) {
        self.invert_all_with(xs)
    }

    #[inline(always)]
    fn invert_all_with(&self, xs: &mut [u64]) {
        for x in xs.iter_mut() {
            *x = self.feistel_inverse(*x);
        }
        let mut outside: Vec<usize> = (0..xs.len()).filter(|&i| xs[i] >= self.n).collect();
        while !outside.is_empty() {
            for &i in &outside {
                xs[i] = self.feistel_inverse(xs[i]);
            }
            outside.retain(|&i| xs[i] >= self.n);
        }
    }

    /// The inverse of one pass of the network: `(l, r) ← (r ⊕ F(l ⊕ k), l)`, keys backwards.
    #[inline(always)]
    fn feistel_inverse(&self, x: u64) -> u64 {
        let mask = (1u64 << self.half_bits) - 1;
        let (mut l, mut r) = (x >> self.half_bits, x & mask);
        for k in self.keys.iter().rev() {
            let mut h = l ^ k;
            h ^= h >> 33;
            h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
            h ^= h >> 33;
            h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
            h ^= h >> 33;
            (l, r) = (r ^ (h & mask), l);
        }
        (l << self.half_bits) | r
    }

    /// The network on every value (a method, not a closure, so that it is inlined into each
    /// `target_feature` copy of [`Permutation::apply_all_with`]).
    #[inline(always)]
    fn rounds(&self, values: &mut [u64]) {
        for x in values.iter_mut() {
            *x = self.feistel_inline(*x);
        }
    }

    /// [`Permutation::feistel`], inlined into the vectorized loop.
    #[inline(always)]
    fn feistel_inline(&self, x: u64) -> u64 {
        let mask = (1u64 << self.half_bits) - 1;
        let (mut l, mut r) = (x >> self.half_bits, x & mask);
        for k in self.keys {
            let mut h = r ^ k;
            h ^= h >> 33;
            h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
            h ^= h >> 33;
            h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
            h ^= h >> 33;
            (l, r) = (r, l ^ (h & mask));
        }
        (l << self.half_bits) | r
    }
}

type PayloadFn = fn(&mut Vec<u8>, u64);

/// One generated file: row `p` is entity `entity(scatter(p))`, then the payload columns.
struct FileGen<'a> {
    header: &'static str,
    rows: u64,
    scatter: Permutation,
    payload_key: u64,
    entity: Box<dyn Fn(u64) -> u64 + Sync + 'a>,
    ids: &'a Permutation,
    /// The payload columns (none: ids only).
    row: Option<PayloadFn>,
}

/// Rows formatted per rayon task.
const GEN_BLOCK: u64 = 1 << 15;

impl FileGen<'_> {
    /// Writes the file to a temp file in `dir`; returns it (not yet renamed) and its size.
    fn write(&self, dir: &Path) -> Result<(NamedTempFile, u64), DataError> {
        let mut tmp = tempfile::Builder::new()
            .prefix(".consort-gen-")
            .suffix(".partial")
            .tempfile_in(dir)
            .map_err(|e| DataError::io(dir, e))?;
        let path = tmp.path().to_path_buf();
        let io_err = |e| DataError::io(&path, e);
        let file: &mut File = tmp.as_file_mut();
        file.write_all(self.header.as_bytes()).map_err(io_err)?;
        let mut bytes = self.header.len() as u64;
        let blocks = self.rows.div_ceil(GEN_BLOCK);
        let per_batch = 4 * rayon::current_num_threads() as u64;
        let mut pending: Vec<Vec<u8>> = Vec::new();
        let mut next = 0;
        while next < blocks {
            let batch = next..(next + per_batch).min(blocks);
            next = batch.end;
            let (formatted, written) = rayon::join(
                || batch.into_par_iter().map(|b| self.block(b)).collect::<Vec<_>>(),
                || pending.iter().try_for_each(|buf| file.write_all(buf)),
            );
            written.map_err(io_err)?;
            bytes += formatted.iter().map(|b| b.len() as u64).sum::<u64>();
            pending = formatted;
        }
        pending.iter().try_for_each(|buf| file.write_all(buf)).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        Ok((tmp, bytes))
    }

    /// [`FileGen::write`] as Parquet: the id column `Int64`, the others their CSV text.
    fn write_parquet(&self, dir: &Path) -> Result<(NamedTempFile, u64), DataError> {
        use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
        use arrow_schema::{DataType, Field, Schema};
        let mut tmp = tempfile::Builder::new()
            .prefix(".consort-gen-")
            .suffix(".partial")
            .tempfile_in(dir)
            .map_err(|e| DataError::io(dir, e))?;
        let path = tmp.path().to_path_buf();
        let names: Vec<&str> = self.header.trim_end().split(',').collect();
        let fields: Vec<Field> = names
            .iter()
            .enumerate()
            .map(|(i, n)| Field::new(*n, if i == 0 { DataType::Int64 } else { DataType::Utf8 }, false))
            .collect();
        let schema = std::sync::Arc::new(Schema::new(fields));
        let pq_err = |e: parquet::errors::ParquetError| DataError::file(&path, format!("cannot write Parquet: {e}"));
        let props = parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .set_max_row_group_row_count(Some(1 << 20))
            .build();
        let file: &mut File = tmp.as_file_mut();
        let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(pq_err)?;
        let blocks = self.rows.div_ceil(GEN_BLOCK);
        let per_batch = 4 * rayon::current_num_threads() as u64;
        let mut next = 0;
        while next < blocks {
            let batch = next..(next + per_batch).min(blocks);
            next = batch.end;
            let built: Vec<RecordBatch> = batch
                .into_par_iter()
                .map(|b| {
                    let rows = b * GEN_BLOCK..((b + 1) * GEN_BLOCK).min(self.rows);
                    let mut ids = Vec::with_capacity((rows.end - rows.start) as usize);
                    let mut columns: Vec<Vec<String>> = vec![Vec::new(); names.len() - 1];
                    let mut text = Vec::new();
                    for (p, id) in rows.clone().zip(self.block_ids(rows)) {
                        ids.push((ID_SPACE + id) as i64);
                        if let Some(row) = self.row {
                            text.clear();
                            row(&mut text, fmix64(self.payload_key ^ p.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
                            for (c, f) in crate::csv_rows::fields_of(&text).into_iter().enumerate() {
                                columns[c].push(String::from_utf8_lossy(&f).into_owned());
                            }
                        }
                    }
                    let mut arrays: Vec<ArrayRef> = vec![std::sync::Arc::new(Int64Array::from(ids))];
                    arrays.extend(columns.into_iter().map(|c| std::sync::Arc::new(StringArray::from(c)) as ArrayRef));
                    RecordBatch::try_new(schema.clone(), arrays).expect("columns match the schema")
                })
                .collect();
            for b in &built {
                writer.write(b).map_err(pq_err)?;
            }
        }
        writer.close().map_err(pq_err)?;
        let file = tmp.as_file_mut();
        file.sync_all().map_err(|e| DataError::io(&path, e))?;
        let bytes = file.metadata().map_err(|e| DataError::io(&path, e))?.len();
        Ok((tmp, bytes))
    }

    /// The ids of rows `rows` (each `ids(entity(scatter(p)))`), computed a block at a time.
    fn block_ids(&self, rows: std::ops::Range<u64>) -> Vec<u64> {
        let mut values: Vec<u64> = rows.collect();
        self.scatter.apply_all(&mut values);
        for v in values.iter_mut() {
            *v = (self.entity)(*v);
        }
        self.ids.apply_all(&mut values);
        values
    }

    fn block(&self, block: u64) -> Vec<u8> {
        let rows = block * GEN_BLOCK..((block + 1) * GEN_BLOCK).min(self.rows);
        let mut buf = Vec::with_capacity((rows.end - rows.start) as usize * 48);
        let ids = self.block_ids(rows.clone());
        for (p, id) in rows.zip(ids) {
            buf.push(b'1');
            push_digits(&mut buf, id, 10);
            if let Some(row) = self.row {
                buf.push(b',');
                row(&mut buf, fmix64(self.payload_key ^ p.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
            }
            buf.push(b'\n');
        }
        buf
    }
}

const FIRST: [&str; 32] = [
    "James",
    "Mary",
    "Robert",
    "Patricia",
    "John",
    "Jennifer",
    "Michael",
    "Linda",
    "David",
    "Elizabeth",
    "William",
    "Barbara",
    "Richard",
    "Susan",
    "Joseph",
    "Jessica",
    "Thomas",
    "Sarah",
    "Carlos",
    "Karen",
    "Wei",
    "Nancy",
    "Ahmed",
    "Lisa",
    "Daniel",
    "Priya",
    "Matthew",
    "Sofia",
    "Anthony",
    "Yuki",
    "Mark",
    "Olga",
];
const LAST: [&str; 32] = [
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Nguyen",
    "Chen",
    "O'Brien",
    "Patel",
    "Kim",
];
/// Regions contain a comma, so they are quoted: the pipeline must carry quoted fields through.
const REGIONS: [&str; 16] = [
    "\"Austin, TX\"",
    "\"Boston, MA\"",
    "\"Chicago, IL\"",
    "\"Denver, CO\"",
    "\"Miami, FL\"",
    "\"Seattle, WA\"",
    "\"Phoenix, AZ\"",
    "\"Atlanta, GA\"",
    "\"Portland, OR\"",
    "\"Detroit, MI\"",
    "\"Nashville, TN\"",
    "\"San Diego, CA\"",
    "\"New York, NY\"",
    "\"Columbus, OH\"",
    "\"Raleigh, NC\"",
    "\"Salt Lake City, UT\"",
];

/// `name,age,income` of a.csv from 64 random bits.
fn payload_a(buf: &mut Vec<u8>, h: u64) {
    buf.extend_from_slice(FIRST[(h & 31) as usize].as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(LAST[((h >> 5) & 31) as usize].as_bytes());
    buf.push(b',');
    push_u64(buf, 18 + (h >> 10) % 72);
    buf.push(b',');
    push_u64(buf, 100 * (150 + (h >> 20) % 2350));
}

/// `region,score,balance` of b.csv from 64 random bits (balance in dollars and cents).
fn payload_b(buf: &mut Vec<u8>, h: u64) {
    buf.extend_from_slice(REGIONS[(h & 15) as usize].as_bytes());
    buf.push(b',');
    push_u64(buf, 300 + (h >> 4) % 551);
    buf.push(b',');
    let cents = (h >> 16) % 5_000_000;
    if (h >> 60) == 0 {
        buf.push(b'-');
    }
    push_u64(buf, cents / 100);
    buf.push(b'.');
    push_digits(buf, cents % 100, 2);
}

fn push_u64(buf: &mut Vec<u8>, v: u64) {
    let digits = if v == 0 { 1 } else { v.ilog10() + 1 };
    push_digits(buf, v, digits as usize);
}

/// `v` as exactly `width` decimal digits (zero-padded; `v < 10^width`).
fn push_digits(buf: &mut Vec<u8>, mut v: u64, width: usize) {
    let at = buf.len();
    buf.resize(at + width, b'0');
    for slot in buf[at..].iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::dataset::{Dataset, DatasetSpec};

    fn gen_spec(dir: &Path, rows_a: u64, rows_b: u64, overlap: u64, seed: u64) -> PsiGenSpec {
        PsiGenSpec { rows_a, rows_b, overlap, seed, out_dir: dir.to_path_buf() }
    }

    fn ids(path: &Path) -> Vec<String> {
        let spec = DatasetSpec::new("g", path, &[KEY_COLUMN]);
        let ds = Dataset::load(&spec).expect("generated files load without duplicates");
        (0..ds.len()).map(|i| ds.key_of(i)).collect()
    }

    #[test]
    fn batched_permutations_equal_the_reference_on_every_instruction_set() {
        for (n, seed) in [(1u64, 3u64), (2, 1), (1000, 9), (1 << 20, 4), ((1 << 20) + 1, 5), (ID_SPACE, 42)] {
            let p = Permutation::new(n, seed, 1);
            let xs: Vec<u64> = (0..n.min(70_000)).chain((n.saturating_sub(5_000)..n).rev()).collect();
            let want: Vec<u64> = xs.iter().map(|&x| p.apply(x)).collect();
            let mut got = xs.clone();
            p.apply_all(&mut got);
            assert_eq!(got, want, "n {n}");
            let mut portable = xs.clone();
            p.apply_all_with(&mut portable);
            assert_eq!(portable, want, "n {n}");
            #[cfg(target_arch = "x86_64")]
            {
                let cpu = consort_protocols::simd::features();
                if cpu.avx2 {
                    let mut v = xs.clone();
                    unsafe { p.apply_all_avx2(&mut v) };
                    assert_eq!(v, want, "n {n}");
                }
                if cpu.avx512f {
                    let mut v = xs.clone();
                    unsafe { p.apply_all_avx512(&mut v) };
                    assert_eq!(v, want, "n {n}");
                }
            }
        }
    }

    #[test]
    fn files_are_those_of_the_row_by_row_generator() {
        // sha256 of the files the row-by-row generator (before the batched permutations) wrote
        // for these parameters (`consort gen psi --rows 100000 --rows-b 70000 --overlap 30000
        // --seed 7 [--ids-only]`): a seed keeps giving the same files.
        use sha2::{Digest, Sha256};
        let sha = |p: &Path| format!("{:x}", bytes::Bytes::copy_from_slice(&Sha256::digest(std::fs::read(p).unwrap())));
        let dir = tempfile::tempdir().unwrap();
        let spec = gen_spec(dir.path(), 100_000, 70_000, 30_000, 7);
        let s = generate_psi(&spec).unwrap();
        assert_eq!(sha(&s.a), "fced56a5cc9dd57d444621ac0c081c915c3f461d37603697391ee1c2daa1e059");
        assert_eq!(sha(&s.b), "d52e11dfa07ac4350375a1063b14b1ac5fe205a3dcef69601d2b0fd125406e76");
        let s = generate_psi_ids(&spec).unwrap();
        assert_eq!(sha(&s.a), "ddde571987a0b3ab8144570fe1bac61e2a250d3c7414f7c02c4e648ccee74be9");
        assert_eq!(sha(&s.b), "d5b872f3e8cffc7bf1965dc3b039c38ba59509539fa5d1280c9ba493ceacf9a9");
    }

    #[test]
    fn permutations_are_bijections() {
        for n in [1u64, 2, 3, 5, 16, 17, 1000, 4097] {
            let p = Permutation::new(n, 9, 1);
            let image: HashSet<u64> = (0..n).map(|x| p.apply(x)).collect();
            assert_eq!(image.len() as u64, n);
            assert!(image.iter().all(|&y| y < n));
        }
        let ids = Permutation::new(ID_SPACE, 9, 1);
        let image: HashSet<u64> = (0..100_000).map(|x| ids.apply(x)).collect();
        assert_eq!(image.len(), 100_000);
        assert!(image.iter().all(|&y| y < ID_SPACE));
        assert!(image.iter().any(|&y| y > ID_SPACE / 2), "ids spread over the space");
    }

    #[test]
    fn generates_exact_overlap_with_distinct_realistic_ids() {
        let dir = tempfile::tempdir().unwrap();
        let summary = generate_psi(&gen_spec(dir.path(), 100_000, 70_000, 12_345, 5)).unwrap();
        let (a, b) = (ids(&summary.a), ids(&summary.b));
        assert_eq!((a.len(), b.len()), (100_000, 70_000));
        assert_eq!(summary.bytes_a, std::fs::metadata(&summary.a).unwrap().len());
        assert!(
            a.iter()
                .chain(&b)
                .all(|id| id.len() == 11 && id.starts_with('1') && id.bytes().all(|c| c.is_ascii_digit()))
        );
        let set_a: HashSet<&String> = a.iter().collect();
        let set_b: HashSet<&String> = b.iter().collect();
        assert_eq!(set_a.intersection(&set_b).count(), 12_345);
        // Shared ids are scattered, not the first rows.
        let shared_in_first_tenth = a[..10_000].iter().filter(|id| set_b.contains(id)).count();
        assert!((800..1700).contains(&shared_in_first_tenth), "{shared_in_first_tenth}");
        let text = std::fs::read_to_string(&summary.b).unwrap();
        assert!(text.starts_with("id,region,score,balance\n1"));
        assert!(text.lines().nth(1).unwrap().contains(", "), "quoted regions");
    }

    #[test]
    fn same_seed_same_files_other_seed_other_ids() {
        let (d1, d2, d3) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        generate_psi(&gen_spec(d1.path(), 5000, 4000, 1000, 7)).unwrap();
        generate_psi(&gen_spec(d2.path(), 5000, 4000, 1000, 7)).unwrap();
        generate_psi(&gen_spec(d3.path(), 5000, 4000, 1000, 8)).unwrap();
        for f in ["a.csv", "b.csv"] {
            let read = |d: &tempfile::TempDir| std::fs::read(d.path().join(f)).unwrap();
            assert_eq!(read(&d1), read(&d2));
            assert_ne!(read(&d1), read(&d3));
        }
    }

    #[test]
    fn edge_sizes_and_bad_parameters() {
        let dir = tempfile::tempdir().unwrap();
        let s = generate_psi(&gen_spec(&dir.path().join("new"), 0, 1, 0, 1)).unwrap();
        assert_eq!(std::fs::read_to_string(&s.a).unwrap(), HEADER_A);
        assert_eq!(ids(&s.b).len(), 1);
        let s = generate_psi(&gen_spec(dir.path(), 3, 3, 3, 1)).unwrap();
        let (mut a, mut b) = (ids(&s.a), ids(&s.b));
        a.sort();
        b.sort();
        assert_eq!(a, b);
        let err = generate_psi(&gen_spec(dir.path(), 10, 5, 6, 1)).unwrap_err();
        assert_eq!(err.to_string(), "overlap 6 is larger than the smaller file (5 rows)");
        let err = generate_psi(&gen_spec(dir.path(), ID_SPACE, 1, 0, 1)).unwrap_err();
        assert!(err.to_string().contains("distinct ids"));
    }

    #[test]
    fn digits() {
        let mut b = Vec::new();
        push_u64(&mut b, 0);
        b.push(b' ');
        push_u64(&mut b, 1234567);
        b.push(b' ');
        push_digits(&mut b, 42, 10);
        assert_eq!(b, b"0 1234567 0000000042");
    }
}
