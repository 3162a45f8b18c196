//! `consort`'s exit codes, defined once: [`Exit`] names them, [`AFTER_HELP`] lists them in
//! `consort --help` (and so in the man page), and [`classify`] maps an error to its code.
//!
//! Errors are classified by type, never by their text: the control client's errors (no node
//! running, the node's answer), the engine's data errors, and [`Coded`] where the CLI knows the
//! class at the place it fails (a job that ended refused or failed, a file that is not what it
//! should be). Anything else is a plain failure (1).

use std::fmt;
use std::process::ExitCode;

use consort_api::ClientError;
use consort_engine::{DataError, EngineError};

/// What `consort` exits with. The numbers are a public interface: scripts test them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    /// Any failure not classified below.
    Failure = 1,
    /// The command line was wrong (clap's usage errors: unknown command or flag, bad value).
    Usage = 2,
    /// The job was refused: by the peer (its grant or policy, or its operator's `deny`) or by
    /// this node's own grant for the peer.
    Refused = 3,
    /// The job was accepted and ran, but failed or was interrupted.
    JobFailed = 4,
    /// No node runs in the directory, its control socket does not answer, or it takes no jobs
    /// (its audit log cannot be written).
    NodeUnavailable = 5,
    /// An input file is not what it must be: a dataset (missing column, empty or duplicate key,
    /// malformed row), a job file, an evidence bundle, a sealed file that fails authentication.
    BadInput = 6,
}

/// The exit codes as `consort --help` shows them (keep in step with [`Exit`]; a test checks).
pub const AFTER_HELP: &str = "\
Exit status:
  0  success
  1  failure not listed below (e.g. evidence that does not verify, a node directory that cannot be written)
  2  usage error: unknown command or flag, missing or bad value
  3  refused: the peer refused the job (grant, policy, or its operator denied it), or this node's own grant does not allow it
  4  job failed: the job ran and failed or was interrupted (`consort job DIR JOB` says why)
  5  node unavailable: no node runs in DIR, its control socket does not answer, or it takes no jobs
  6  bad input data: a dataset, job file, evidence bundle or sealed file is malformed (file, line and column named)
With --json, a command prints one JSON value on stdout (`jobs --json`: one object per line);
messages and progress go to stderr.";

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }

    /// `error`, carrying this exit code ([`Coded`]).
    pub fn wrap(self, error: impl Into<anyhow::Error>) -> anyhow::Error {
        anyhow::Error::new(Coded { exit: self, error: error.into() })
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
    }
}

/// An error whose exit code is known where it happens. It displays as the error it wraps.
#[derive(Debug)]
pub struct Coded {
    pub exit: Exit,
    pub error: anyhow::Error,
}

impl fmt::Display for Coded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The whole chain of the wrapped error: `Coded` has no source of its own.
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for Coded {}

/// The exit code for an error: the first cause in its chain whose class is known.
pub fn classify(e: &anyhow::Error) -> Exit {
    e.chain().find_map(class_of).unwrap_or(Exit::Failure)
}

fn class_of(cause: &(dyn std::error::Error + 'static)) -> Option<Exit> {
    if let Some(c) = cause.downcast_ref::<Coded>() {
        return Some(c.exit);
    }
    if let Some(c) = cause.downcast_ref::<ClientError>() {
        return Some(match c {
            ClientError::NotRunning { .. } | ClientError::Connect { .. } => Exit::NodeUnavailable,
            ClientError::Node { code: tonic::Code::PermissionDenied, .. } => Exit::Refused,
            ClientError::Node { code: tonic::Code::Unavailable, .. } => Exit::NodeUnavailable,
            ClientError::Node { .. } | ClientError::NoStatus(_) => Exit::Failure,
        });
    }
    let data = cause.downcast_ref::<DataError>().or(match cause.downcast_ref::<EngineError>() {
        Some(EngineError::Data(d)) => Some(d),
        _ => None,
    });
    match data {
        // An I/O error (a missing file, a full disk) is no fault of the data.
        Some(DataError::Io { .. }) => Some(Exit::Failure),
        Some(_) => Some(Exit::BadInput),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn errors_map_to_their_class_through_context() {
        let data = DataError::Invalid("no key column".into());
        assert_eq!(classify(&anyhow::Error::new(data).context("dataset 'x'")), Exit::BadInput);
        let engine = EngineError::Data(DataError::Invalid("bad row".into()));
        assert_eq!(classify(&anyhow::Error::new(engine)), Exit::BadInput);
        let io = DataError::Io { path: "a.csv".into(), cause: std::io::ErrorKind::NotFound.into() };
        assert_eq!(classify(&anyhow::Error::new(io)), Exit::Failure);
        let down = ClientError::NotRunning { dir: "d".into(), socket: "s".into() };
        assert_eq!(classify(&anyhow::Error::new(down)), Exit::NodeUnavailable);
        let denied = ClientError::Node { code: tonic::Code::PermissionDenied, message: "no grant".into() };
        assert_eq!(classify(&anyhow::Error::new(denied)), Exit::Refused);
        let other = ClientError::Node { code: tonic::Code::FailedPrecondition, message: "unknown peer".into() };
        assert_eq!(classify(&anyhow::Error::new(other)), Exit::Failure);
        let coded = Exit::JobFailed.wrap(anyhow::anyhow!("job j failed"));
        assert_eq!(classify(&Err::<(), _>(coded).context("running j").unwrap_err()), Exit::JobFailed);
        assert_eq!(classify(&anyhow::anyhow!("anything else")), Exit::Failure);
    }

    #[test]
    fn coded_errors_print_the_wrapped_chain_once() {
        let inner = anyhow::anyhow!("line 3: bad").context("job.toml");
        let e = Exit::BadInput.wrap(inner).context("cannot run");
        assert_eq!(format!("{e:#}"), "cannot run: job.toml: line 3: bad");
    }

    /// The numbers are a public interface (scripts, docs/deploy.md, README): changing one is a
    /// breaking change, not a refactoring.
    #[test]
    fn codes_are_the_documented_numbers() {
        let codes = [
            Exit::Ok,
            Exit::Failure,
            Exit::Usage,
            Exit::Refused,
            Exit::JobFailed,
            Exit::NodeUnavailable,
            Exit::BadInput,
        ]
        .map(Exit::code);
        assert_eq!(codes, [0, 1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn help_lists_every_code() {
        for exit in [
            Exit::Ok,
            Exit::Failure,
            Exit::Usage,
            Exit::Refused,
            Exit::JobFailed,
            Exit::NodeUnavailable,
            Exit::BadInput,
        ] {
            let line = format!("\n  {}  ", exit.code());
            assert!(AFTER_HELP.contains(&line), "{exit:?} is not listed in --help");
        }
    }
}
