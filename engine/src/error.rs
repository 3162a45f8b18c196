//! Errors that say what went wrong and where (file, line, column).
use std::fmt;
use std::path::PathBuf;

/// A problem with input or output data. Display gives one line: `FILE:LINE: column 'COL': WHAT`
/// (line and column where known).
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A problem at one place in a data file (line 1 is the header).
    #[error("{}:{line}: {}{message}", path.display(), ColumnPrefix(column.as_deref()))]
    Row { path: PathBuf, line: u64, column: Option<String>, message: String },
    /// The same key on more than one row (and `dedup` is off). Names the first repeated row in
    /// file order and the row it repeats.
    #[error(
        "{}: {}duplicate key {key} on lines {first_line} and {line}{}; pass --dedup to keep the first row of each",
        path.display(),
        KeyColumns(columns),
        MoreKeys(*more)
    )]
    DuplicateKey {
        path: PathBuf,
        /// The key column(s).
        columns: Vec<String>,
        /// The normalized key as shown to the user, quoted.
        key: String,
        first_line: u64,
        line: u64,
        /// How many other keys also appear more than once.
        more: u64,
    },
    /// A problem with a file as a whole (empty file, changed since it was loaded, ...).
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    // The io error is shown in the message, not chained as a source, so it is printed once.
    #[error("{}: {cause}", path.display())]
    Io { path: PathBuf, cause: std::io::Error },
    /// Invalid parameters, not about any file.
    #[error("{0}")]
    Invalid(String),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io { path: path.into(), cause: source }
    }

    pub(crate) fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        DataError::File { path: path.into(), message: message.into() }
    }
}

struct ColumnPrefix<'a>(Option<&'a str>);

impl fmt::Display for ColumnPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(c) => write!(f, "column '{c}': "),
            None => Ok(()),
        }
    }
}

struct KeyColumns<'a>(&'a [String]);

impl fmt::Display for KeyColumns<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [] => Ok(()),
            [one] => write!(f, "column '{one}': "),
            many => write!(f, "columns '{}': ", many.join("', '")),
        }
    }
}

struct MoreKeys(u64);

impl fmt::Display for MoreKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => Ok(()),
            1 => write!(f, " (and 1 more duplicate key)"),
            n => write!(f, " (and {n} more duplicate keys)"),
        }
    }
}

/// A failed engine job.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Psi(#[from] consort_protocols::psi::PsiError),
}
