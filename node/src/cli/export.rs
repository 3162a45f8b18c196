//! `consort export DIR OUTPUT --out PLAIN.csv`: the plaintext of an output, model file or
//! predictions file this node sealed (`crate::at_rest`), to hand a result to another system.
//!
//! The file is authenticated as it is read; a damaged or changed file fails with a non-zero exit
//! and leaves nothing: the plaintext goes to a temp file renamed only when the whole input
//! authenticated (to stdout, `--out -`, only after a first pass authenticated all of it).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use consort_engine::sealed::{self, StorageKey};
use consort_engine::storage::{self, AtRest, DataWriter};

use super::exit::Exit;
use crate::{at_rest, config};

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The node directory (its storage key opens the file; the node need not run).
    pub dir: PathBuf,
    /// The sealed file: a path, or a name under the node directory (e.g. `outputs/JOB-DATASET.csv`,
    /// as `consort jobs` shows the peer's side) or under `DIR/outputs`.
    pub output: PathBuf,
    /// Where to write the plaintext (`-`: standard output).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace `--out` if it exists.
    #[arg(long)]
    pub force: bool,
}

pub async fn run(args: ExportArgs) -> Result<()> {
    tokio::task::spawn_blocking(move || export(&args)).await.context("the export task failed")?
}

fn export(args: &ExportArgs) -> Result<()> {
    let input = locate(&args.dir, &args.output)?;
    let sealed = sealed::is_sealed(&input).with_context(|| format!("cannot read {}", input.display()))?;
    let key = at_rest::load_key(&args.dir)?;
    if args.out.as_os_str() == "-" {
        // Everything is authenticated before the first byte goes out: a pipe cannot be taken back.
        copy(&input, &key, &mut std::io::sink())?;
        let stdout = std::io::stdout();
        let mut lock = stdout.lock();
        copy(&input, &key, &mut lock)?;
        return lock.flush().context("cannot write to standard output");
    }
    let out = &args.out;
    if !args.force && (out.exists() || out.is_symlink()) {
        bail!("{} exists (pass --force to replace it)", out.display());
    }
    if out.is_dir() {
        bail!("{} is a directory; give the file to write", out.display());
    }
    let mut w = DataWriter::create(out, &AtRest::Plain).with_context(|| format!("cannot write {}", out.display()))?;
    let bytes = copy(&input, &key, &mut w)?;
    w.finish().with_context(|| format!("cannot write {}", out.display()))?;
    let how = if sealed { "decrypted" } else { "was not sealed; copied" };
    println!("{} {how} to {} ({bytes} bytes)", input.display(), out.display());
    Ok(())
}

/// Streams the plaintext of `input` to `to`; errors name the file and what failed.
fn copy(input: &Path, key: &StorageKey, to: &mut impl Write) -> Result<u64> {
    // A sealed file's own errors (`InvalidData`) name it already; others get its path.
    let failed = |e: std::io::Error| match e.kind() {
        // Damaged, changed or sealed under another key: bad input, not an I/O failure.
        std::io::ErrorKind::InvalidData => Exit::BadInput.wrap(anyhow::Error::new(e).context("cannot export")),
        _ => anyhow::Error::new(e).context(format!("cannot export {}", input.display())),
    };
    let mut from = storage::open_data(input, Some(key)).map_err(failed)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buf).map_err(failed)?;
        if n == 0 {
            return Ok(total);
        }
        to.write_all(&buf[..n]).context("cannot write the plaintext")?;
        total += n as u64;
    }
}

/// The file `output` names: as given, else under the node directory, else under `DIR/outputs`.
fn locate(dir: &Path, output: &Path) -> Result<PathBuf> {
    let candidates = [output.to_path_buf(), dir.join(output), dir.join(config::OUTPUTS_DIR).join(output)];
    let tried = if output.is_absolute() { &candidates[..1] } else { &candidates[..] };
    match tried.iter().find(|p| p.is_file()) {
        Some(p) => Ok(p.clone()),
        None => bail!(
            "no file {} (looked at {})",
            output.display(),
            tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
    }
}
