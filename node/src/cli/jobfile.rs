//! Job files: `consort run DIR JOB.toml` and `consort psi|train|score ... --save-job JOB.toml`.
//!
//! A job file is TOML: `kind = "psi" | "train" | "score"` and, for every other key, one flag of
//! that command with its leading `--` dropped, spelled as on the command line (kebab-case:
//! `peer-dataset`, `batch-size`). The node directory, `--json` and `--save-job` are not part of
//! a job: they come from the command line of `consort run`.
//!
//! Why not a separate serde schema: a file is read by turning its keys back into the command's
//! flags and parsing them with the CLI's own parser, so defaults, value parsers, validation and
//! any flag a kind adds apply to files without a second definition that could drift. Writing
//! goes the other way: the typed, resolved arguments (paths made absolute, a train job's split
//! seed drawn) are serialized with `serde` under the same kebab-case names; a test checks the
//! round trip for every kind.
//!
//! A new job command becomes a job file kind by its `JobKind` in [`JOB_KINDS`], a `save_if_asked`
//! call after it resolved its arguments, and its arm in [`run`] (the round-trip test then needs
//! its case).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::error::{ContextKind, ContextValue};
use clap::{ArgAction, CommandFactory, Parser};
use consort_api::JobKind;
use consort_api::vocab::Vocabulary;
use serde::Serialize;
use toml::Spanned;

use super::exit::Exit;
use super::{Cli, Command};
use crate::config;

/// The commands a job file can describe, by `kind`.
const JOB_KINDS: [JobKind; 4] = [JobKind::Psi, JobKind::Train, JobKind::Score, JobKind::Bin];

/// Flags of a job command that are not part of the job (they come from `consort run`'s own
/// command line) and so are no keys of a file.
const NOT_KEYS: [&str; 3] = ["json", "save-job", "help"];

/// Serializes a vocabulary value (protocol, reveal, sigmoid) by its CLI name.
pub fn vocab_name<T: Vocabulary, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.name())
}

/// Serializes an optional `u64` (a seed) as a TOML integer, or as a string above TOML's
/// largest integer (2^63 - 1); either reads back as the same flag value.
pub fn toml_u64<S: serde::Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match v.map(|v| i64::try_from(v).map_err(|_| v)) {
        Some(Ok(small)) => s.serialize_i64(small),
        Some(Err(big)) => s.serialize_str(&big.to_string()),
        None => s.serialize_none(),
    }
}

/// Writes the job file of a command's resolved arguments atomically: `kind` first, then one key
/// per flag.
pub fn save(path: &Path, kind: JobKind, args: &impl Serialize) -> Result<()> {
    #[derive(Serialize)]
    struct File<'a, T: Serialize> {
        kind: JobKind,
        #[serde(flatten)]
        args: &'a T,
    }
    let body = toml::to_string(&File { kind, args }).context("cannot encode the job file")?;
    let text = format!(
        "# consort job file (saved by `consort {kind} --save-job`); run it with `consort run DIR {}`\n{body}",
        path.file_name().map(|f| f.to_string_lossy()).unwrap_or_default()
    );
    config::write_atomic(&config::absolute(path)?, text.as_bytes(), false)
}

/// Saves the job file if `--save-job` asked for one, telling the operator on stderr.
pub fn save_if_asked(path: Option<&Path>, kind: JobKind, args: &impl Serialize) -> Result<()> {
    if let Some(path) = path {
        save(path, kind, args)?;
        eprintln!("saved the job to {} (run it again with `consort run DIR {}`)", path.display(), path.display());
    }
    Ok(())
}

/// Reads a job file into the command it describes, parsed by the CLI's own parser, with `dir`
/// (and `--json` if asked) from `consort run`'s command line.
pub(super) fn load(dir: &Path, file: &Path, json: bool) -> Result<Command> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read job file {}", file.display()))?;
    let at = Locator { file, text: &text };
    let table: BTreeMap<Spanned<String>, Spanned<toml::Value>> =
        toml::from_str(&text).map_err(|e| anyhow!("{}: {}", at.pos(e.span().map_or(0, |s| s.start)), e.message()))?;
    let (kind, command) = kind_of(&table, &at)?;
    let mut argv = vec!["consort".into(), kind.name().to_string(), dir.display().to_string()];
    for (key, value) in &table {
        if key.get_ref() != "kind" {
            push_flag(&mut argv, &command, kind, key, value, &at)?;
        }
    }
    if json {
        argv.push("--json".into());
    }
    let cli = Cli::try_parse_from(&argv).map_err(|e| at.clap_error(&e, &table))?;
    Ok(cli.command)
}

/// The file's `kind` and the clap command of that kind.
fn kind_of(table: &BTreeMap<Spanned<String>, Spanned<toml::Value>>, at: &Locator) -> Result<(JobKind, clap::Command)> {
    let kinds = JOB_KINDS.map(|k| k.name()).join(", ");
    let Some((_, value)) = table.iter().find(|(k, _)| k.get_ref() == "kind") else {
        bail!("{}: no `kind` (one of {kinds})", at.file.display());
    };
    let kind = value
        .get_ref()
        .as_str()
        .and_then(|s| JobKind::parse_name(s).ok())
        .filter(|k| JOB_KINDS.contains(k))
        .ok_or_else(|| anyhow!("{}: key 'kind' must be one of {kinds}", at.pos(value.span().start)))?;
    let command = Cli::command().find_subcommand(kind.name()).cloned().expect("every job kind is a command");
    Ok((kind, command))
}

/// Appends the flag for one key, checking the key is a flag of the job's command and the value's
/// TOML type fits it (a switch takes a boolean, a repeatable flag also an array).
fn push_flag(
    argv: &mut Vec<String>,
    command: &clap::Command,
    kind: JobKind,
    key: &Spanned<String>,
    value: &Spanned<toml::Value>,
    at: &Locator,
) -> Result<()> {
    let name = key.get_ref().as_str();
    let arg = command.get_arguments().find(|a| a.get_long() == Some(name) && !NOT_KEYS.contains(&name));
    let Some(arg) = arg else {
        bail!(
            "{}: unknown key '{name}' in a {kind} job (keys: {})",
            at.pos(key.span().start),
            keys(command).join(", ")
        );
    };
    let wrong = |expected: &str| {
        anyhow!("{}: key '{name}' must be {expected}, not {}", at.pos(value.span().start), value.get_ref().type_str())
    };
    let scalar = |v: &toml::Value| match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        _ => None,
    };
    match (arg.get_action(), value.get_ref()) {
        (ArgAction::SetTrue, toml::Value::Boolean(b)) => {
            if *b {
                argv.push(format!("--{name}"));
            }
        }
        (ArgAction::SetTrue, _) => return Err(wrong("true or false")),
        (ArgAction::Append, toml::Value::Array(items)) => {
            for item in items {
                let item = scalar(item).ok_or_else(|| wrong("an array of strings or numbers"))?;
                argv.push(format!("--{name}={item}"));
            }
        }
        (_, v) => {
            let v = scalar(v).ok_or_else(|| wrong("a string or a number"))?;
            argv.push(format!("--{name}={v}"));
        }
    }
    Ok(())
}

/// The keys a file of this command may have.
fn keys(command: &clap::Command) -> Vec<&str> {
    command.get_arguments().filter_map(|a| a.get_long()).filter(|l| !NOT_KEYS.contains(l)).collect()
}

/// Names positions in the job file as `FILE:LINE:COLUMN`.
struct Locator<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Locator<'_> {
    fn pos(&self, offset: usize) -> String {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        format!("{}:{line}:{column}", self.file.display())
    }

    /// A CLI parse error of the file's flags, told in the file's terms: the key (and its
    /// position) instead of the flag.
    fn clap_error(&self, e: &clap::Error, table: &BTreeMap<Spanned<String>, Spanned<toml::Value>>) -> anyhow::Error {
        let rendered = e.render().to_string();
        let mut line: String = rendered
            .lines()
            .map(str::trim)
            .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        line = line
            .trim_start_matches("error: ")
            .replace("the following required arguments were not provided:", "missing keys:");
        let flags = match e.get(ContextKind::InvalidArg) {
            Some(ContextValue::String(s)) => vec![s.clone()],
            Some(ContextValue::Strings(v)) => v.clone(),
            _ => Vec::new(),
        };
        let mut position = self.file.display().to_string();
        for flag in &flags {
            let key = flag.trim_start_matches("--").split([' ', '=']).next().unwrap_or_default();
            line = line.replace(&format!("'{flag}'"), &format!("key '{key}'")).replace(flag.as_str(), key);
            if let Some((k, _)) = table.iter().find(|(k, _)| k.get_ref() == key) {
                position = self.pos(k.span().start);
            }
        }
        anyhow!("{position}: {line}")
    }
}

/// Where `consort run` takes the job's command from.
pub(super) async fn run(dir: PathBuf, file: PathBuf, json: bool) -> Result<()> {
    // A file that cannot be read as a job (naming the key, line and column) is bad input.
    let command = load(&dir, &file, json).map_err(|e| Exit::BadInput.wrap(e))?;
    match command {
        Command::Psi(args) => super::psi::psi(args).await,
        Command::Train(args) => super::lr::train(args).await,
        Command::Score(args) => super::lr::score(args).await,
        Command::Bin(args) => super::bin::bin(args).await,
        _ => unreachable!("load parses only job kinds"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses a CLI command line, saves its job file, loads it back: the same arguments.
    fn round_trip(argv: &[&str], kind: JobKind) -> (String, String) {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("job.toml");
        let Cli { command } = Cli::try_parse_from(argv).unwrap();
        match &command {
            Command::Psi(a) => save(&file, kind, a).unwrap(),
            Command::Train(a) => save(&file, kind, a).unwrap(),
            Command::Score(a) => save(&file, kind, a).unwrap(),
            Command::Bin(a) => save(&file, kind, a).unwrap(),
            _ => unreachable!(),
        }
        (debug(&command), debug(&load(Path::new("/n"), &file, false).unwrap()))
    }

    fn debug(command: &Command) -> String {
        match command {
            Command::Psi(a) => format!("{a:?}"),
            Command::Train(a) => format!("{a:?}"),
            Command::Score(a) => format!("{a:?}"),
            Command::Bin(a) => format!("{a:?}"),
            _ => unreachable!(),
        }
    }

    #[test]
    fn every_kind_round_trips_through_its_job_file() {
        let job = ["/n", "--peer", "p", "--dataset", "d", "--peer-dataset", "e"];
        let cases: [(JobKind, &[&str]); 4] = [
            (JobKind::Psi, &["--protocol", "rr22", "--reveal", "requester-only", "--out", "/o.csv", "--join", "left"]),
            (
                JobKind::Train,
                &[
                    "--label",
                    "y",
                    "--features",
                    "a,b",
                    "--epochs",
                    "7",
                    "--learning-rate",
                    "0.05",
                    "--seed",
                    "18446744073709551615",
                    "--sigmoid",
                    "poly3",
                    "--dealer",
                    "x",
                    "--out",
                    "/m.json",
                ],
            ),
            (JobKind::Score, &["--model", "/m.json", "--out", "/p.csv", "--protocol", "rr22"]),
            (
                JobKind::Bin,
                &[
                    "--label",
                    "y",
                    "--bins",
                    "6",
                    "--method",
                    "tree",
                    "--fine-bins",
                    "40",
                    "--min-iv",
                    "0.02",
                    "--max-corr",
                    "0.8",
                    "--key-bits",
                    "2048",
                    "--out",
                    "/bins.json",
                ],
            ),
        ];
        assert_eq!(cases.map(|c| c.0), JOB_KINDS, "a case per job file kind");
        for (kind, extra) in cases {
            let mut argv = vec!["consort", kind.name()];
            argv.extend(job);
            argv.extend(extra);
            let (before, after) = round_trip(&argv, kind);
            assert_eq!(before, after, "{kind}");
        }
    }

    #[test]
    fn secureboost_train_round_trips_and_lr_files_keep_their_keys() {
        let argv = [
            "consort",
            "train",
            "/n",
            "--peer",
            "p",
            "--dataset",
            "d",
            "--peer-dataset",
            "e",
            "--label",
            "y",
            "--model",
            "secureboost",
            "--trees",
            "7",
            "--max-depth",
            "3",
            "--max-bins",
            "17",
            "--learning-rate",
            "0.2",
            "--lambda",
            "2",
            "--gamma",
            "0.5",
            "--min-child-weight",
            "3",
            "--subsample",
            "0.8",
            "--colsample",
            "0.9",
            "--histograms",
            "he",
            "--seed",
            "5",
            "--out",
            "/m.json",
        ];
        let (before, after) = round_trip(&argv, JobKind::Train);
        assert_eq!(before, after);
        assert!(after.contains("Secureboost") && after.contains("trees: Some(7)"), "{after}");
        assert!(after.contains(r#"histograms: Some("he")"#), "{after}");
        // An LR job file names none of the SecureBoost keys (files saved before stay the same).
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("j.toml");
        let lr = [
            "consort",
            "train",
            "/n",
            "--peer",
            "p",
            "--dataset",
            "d",
            "--peer-dataset",
            "e",
            "--label",
            "y",
            "--out",
            "/m.json",
        ];
        let Cli { command: Command::Train(a) } = Cli::try_parse_from(lr).unwrap() else { unreachable!() };
        save(&file, JobKind::Train, &a).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        for key in ["model", "trees", "max-depth", "learning-rate", "lambda"] {
            assert!(!text.lines().any(|l| l.starts_with(&format!("{key} "))), "{key} in {text}");
        }
        std::fs::write(&file, format!("{text}trees = \"many\"\n")).unwrap();
        let Err(e) = load(Path::new("/n"), &file, false) else { panic!("a bad trees value loaded") };
        let e = format!("{e:#}");
        assert!(e.contains("key 'trees'"), "{e}");
    }

    #[test]
    fn scorecard_train_round_trips_and_plain_lr_files_name_no_card_keys() {
        let job = ["consort", "train", "/n", "--peer", "p", "--dataset", "d", "--peer-dataset", "e", "--label", "y"];
        let card = [
            "--scorecard",
            "--bins",
            "/b/bins.json",
            "--base-score",
            "650",
            "--base-odds",
            "20",
            "--pdo",
            "40",
            "--epochs",
            "3",
            "--out",
            "/card.json",
        ];
        let argv: Vec<&str> = job.iter().chain(&card).copied().collect();
        let (before, after) = round_trip(&argv, JobKind::Train);
        assert_eq!(before, after);
        for part in ["scorecard: true", "\"/b/bins.json\"", "base_score: Some(650.0)", "base_odds: Some(20.0)"] {
            assert!(after.contains(part), "{part} missing in {after}");
        }
        assert!(after.contains("pdo: Some(40.0)"), "{after}");
        // Defaults stay unset (the plan applies 600/50/20), so they round-trip as absent.
        let argv: Vec<&str> =
            job.iter().copied().chain(["--scorecard", "--bins", "/b/bins.json", "--out", "/card.json"]).collect();
        let (before, after) = round_trip(&argv, JobKind::Train);
        assert_eq!(before, after);
        assert!(after.contains("base_score: None") && after.contains("pdo: None"), "{after}");
        // A plain LR job file names none of the scorecard keys; a card key without `scorecard`
        // is refused with its line.
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("j.toml");
        let argv: Vec<&str> = job.iter().copied().chain(["--out", "/m.json"]).collect();
        let Cli { command: Command::Train(a) } = Cli::try_parse_from(argv).unwrap() else { unreachable!() };
        save(&file, JobKind::Train, &a).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        for key in ["scorecard", "bins", "base-score", "base-odds", "pdo"] {
            assert!(!text.lines().any(|l| l.starts_with(&format!("{key} "))), "{key} in {text}");
        }
        std::fs::write(&file, format!("{text}pdo = 30\n")).unwrap();
        let Err(e) = load(Path::new("/n"), &file, false) else { panic!("pdo without scorecard loaded") };
        let e = format!("{e:#}");
        assert!(e.contains("j.toml:") && e.contains("scorecard"), "{e}");
    }

    #[test]
    fn keys_are_named_in_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("j.toml");
        let try_load = |text: &str| {
            std::fs::write(&file, text).unwrap();
            match load(Path::new("/n"), &file, false) {
                Ok(_) => panic!("{text} loaded"),
                Err(e) => format!("{e:#}"),
            }
        };
        let base = "kind = \"psi\"\npeer = \"p\"\ndataset = \"d\"\npeer-dataset = \"e\"\nout = \"/o\"\n";
        let e = try_load(&format!("{base}colour = 1\n"));
        assert!(e.contains("j.toml:6:1: unknown key 'colour' in a psi job"), "{e}");
        let e = try_load(&format!("{base}protocol = true\n"));
        assert!(e.contains("j.toml:6:12: key 'protocol' must be a string or a number, not boolean"), "{e}");
        let e = try_load(&format!("{base}protocol = \"x\"\n"));
        assert!(e.contains("j.toml:6:1:") && e.contains("'x' for key 'protocol'"), "{e}");
        let e = try_load("kind = \"psi\"\npeer = \"p\"\n");
        assert!(e.contains("j.toml: missing keys: dataset peer-dataset out"), "{e}");
        let e = try_load("kind = \"deal\"\n");
        assert!(e.contains("j.toml:1:8: key 'kind' must be one of psi, train, score, bin"), "{e}");
        let e = try_load("kind = \"psi\"\npeer = \n");
        assert!(e.contains("j.toml:2:"), "{e}");
    }

    #[test]
    fn the_examples_are_valid_job_files() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/jobs");
        for (name, kind) in [("psi", JobKind::Psi), ("train", JobKind::Train), ("score", JobKind::Score)] {
            let command = load(Path::new("/n"), &examples.join(format!("{name}.toml")), false).unwrap();
            let loaded = match command {
                Command::Psi(_) => JobKind::Psi,
                Command::Train(_) => JobKind::Train,
                Command::Score(_) => JobKind::Score,
                _ => unreachable!(),
            };
            assert_eq!(loaded, kind);
        }
    }
}
