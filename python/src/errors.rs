//! Failures of the native calls, raised as the package's typed exceptions (`consort.errors`,
//! defined in Python so they carry docstrings and attributes).

use consort_api::ClientError;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyType;

/// What went wrong, by the exception class it becomes.
#[derive(Debug)]
pub enum Failure {
    /// `consort.NodeUnavailable`: no node runs in the directory, or it does not answer.
    Unavailable(String),
    /// `consort.JobRefused`: this node's own policy refused the job before sending it.
    Refused(String),
    /// `consort.InvalidArgument`: bad parameters (unknown protocol, peer, dataset, ...).
    Invalid(String),
    /// `consort.DatasetError`: a dataset file that does not load (file, line, column; no value).
    Dataset(String),
    /// `consort.Error`: anything else.
    Other(String),
}

impl Failure {
    fn class(&self) -> (&'static str, &str) {
        match self {
            Failure::Unavailable(m) => ("NodeUnavailable", m),
            Failure::Refused(m) => ("JobRefused", m),
            Failure::Invalid(m) => ("InvalidArgument", m),
            Failure::Dataset(m) => ("DatasetError", m),
            Failure::Other(m) => ("Error", m),
        }
    }

    pub fn into_py_err(self, py: Python<'_>) -> PyErr {
        let (name, message) = self.class();
        let class = py
            .import("consort.errors")
            .and_then(|m| m.getattr(name))
            .and_then(|c| c.downcast_into::<PyType>().map_err(PyErr::from));
        match class {
            Ok(class) => PyErr::from_type(class, message.to_string()),
            // Only if the package is broken: still say what failed.
            Err(e) => PyRuntimeError::new_err(format!("{message} (and consort.errors.{name} is missing: {e})")),
        }
    }

    /// An `anyhow` chain as one line (`{:#}`), as the CLI prints it.
    pub fn other(e: anyhow::Error) -> Failure {
        Failure::Other(one_line(&e))
    }
}

pub fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::NotRunning { .. } | ClientError::Connect { .. } => Failure::Unavailable(e.to_string()),
            ClientError::Node { code, message } => match code {
                tonic::Code::Unavailable => Failure::Unavailable(message),
                tonic::Code::PermissionDenied => Failure::Refused(message),
                tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition | tonic::Code::NotFound => {
                    Failure::Invalid(message)
                }
                _ => Failure::Other(message),
            },
            ClientError::NoStatus(_) => Failure::Other(e.to_string()),
        }
    }
}
