//! `consort completions SHELL` and `consort man --out DIR`: shell completion scripts and man
//! pages, generated from the CLI's own definition (so they are build outputs, never committed).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;
use serde_json::json;

use super::{Cli, print_json};

/// Prints the completion script for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell) {
    clap_complete::generate(shell, &mut Cli::command(), "consort", &mut std::io::stdout());
}

/// Writes one man page (section 1) per command and subcommand into `out` (created if needed):
/// `consort.1`, `consort-psi.1`, `consort-peer-add.1`, ...; returns their paths.
pub fn man_pages(out: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    clap_mangen::generate_to(Cli::command(), out)
        .with_context(|| format!("cannot write man pages to {}", out.display()))?;
    let mut pages = Vec::new();
    collect(&Cli::command(), "consort", out, &mut pages);
    Ok(pages)
}

/// The page of `cmd` (named `name`) and of each of its subcommands, as clap_mangen names them.
fn collect(cmd: &clap::Command, name: &str, out: &Path, pages: &mut Vec<PathBuf>) {
    pages.push(out.join(format!("{name}.1")));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        collect(sub, &format!("{name}-{}", sub.get_name()), out, pages);
    }
}

pub fn man(out: &Path, json: bool) -> Result<()> {
    let pages = man_pages(out)?;
    if let Some(missing) = pages.iter().find(|p| !p.is_file()) {
        anyhow::bail!("the man page {} was not written", missing.display());
    }
    if json {
        return print_json(&json!({ "dir": out, "pages": pages }));
    }
    println!("wrote {} man pages to {} (view one with `man -l {}`)", pages.len(), out.display(), pages[0].display());
    Ok(())
}
