//! Errors that say what went wrong and where (file, line, column).
//!
//! Their text reaches the audit log and may reach the peer, so it names the place and the kind
//! of problem but never a value from the file (a key, a feature, a label) and shows only the
//! file's name: the full path, for the local operator, is [`DataError::path`]. Column names come
//! from the header and are shown, shortened to [`MAX_NAME_CHARS`].
use std::fmt;
use std::path::{Path, PathBuf};

/// Longest column name shown in a message, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Most column names listed in one message.
const MAX_LISTED: usize = 20;

/// A problem with input or output data. Display gives one line: `FILE:LINE: column 'COL': WHAT`
/// (line and column where known), where FILE is the file's name without its directory.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A problem at one place in a data file (line 1 is the header).
    #[error("{}:{line}: {}{message}", FileName(path), ColumnPrefix(column.as_ref()))]
    Row { path: PathBuf, line: u64, column: Option<Column>, message: String },
    /// The same key on more than one row (and `dedup` is off). Names the first repeated row in
    /// file order and the row it repeats, not the key.
    #[error(
        "{}:{line}: {}duplicate key, first seen on line {first_line}{}; pass --dedup to keep the first row of each",
        FileName(path),
        KeyColumns(columns),
        MoreKeys(*more)
    )]
    DuplicateKey {
        path: PathBuf,
        /// The key column(s).
        columns: Vec<String>,
        first_line: u64,
        line: u64,
        /// How many other keys also appear more than once.
        more: u64,
    },
    /// A problem with a file as a whole (empty file, changed since it was loaded, ...).
    #[error("{}: {message}", FileName(path))]
    File { path: PathBuf, message: String },
    // The io error is shown in the message, not chained as a source, so it is printed once.
    #[error("{}: {cause}", FileName(path))]
    Io { path: PathBuf, cause: std::io::Error },
    /// Invalid parameters, not about any file.
    #[error("{0}")]
    Invalid(String),
}

/// The column a problem is in: by its header name, or by position (from 1) where no name
/// applies (the header itself, or rows read before the header is known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Column {
    Name(String),
    Number(usize),
}

impl Column {
    pub(crate) fn name(name: &str) -> Option<Column> {
        Some(Column::Name(name.to_string()))
    }

    /// The column at 0-based position `index`.
    pub(crate) fn at(index: usize) -> Option<Column> {
        Some(Column::Number(index + 1))
    }
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        // Sealed-file errors already name the file (`FILE: what`): show it once.
        let name = path.file_name().map(|n| format!("{}: ", n.to_string_lossy()));
        let cause = match (source.get_ref(), name) {
            (Some(inner), Some(name)) if inner.to_string().starts_with(&name) => {
                let message = inner.to_string()[name.len()..].to_string();
                std::io::Error::new(source.kind(), message)
            }
            _ => source,
        };
        DataError::Io { path, cause }
    }

    pub(crate) fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        DataError::File { path: path.into(), message: message.into() }
    }

    /// The full path of the file the error is about (messages show only its name).
    pub fn path(&self) -> Option<&Path> {
        match self {
            DataError::Row { path, .. }
            | DataError::DuplicateKey { path, .. }
            | DataError::File { path, .. }
            | DataError::Io { path, .. } => Some(path),
            DataError::Invalid(_) => None,
        }
    }
}

/// A path shown by its last component only.
struct FileName<'a>(&'a Path);

impl fmt::Display for FileName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.0.file_name().map_or(self.0.as_os_str(), |n| n);
        f.write_str(&printable(&name.to_string_lossy(), usize::MAX))
    }
}

/// `text` on one line: control characters escaped, at most `max` characters (then `…`).
fn printable(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A column name as shown in messages: quoted, shortened, on one line.
pub(crate) fn quoted_name(name: &str) -> String {
    format!("'{}'", printable(name, MAX_NAME_CHARS))
}

/// Column names as shown in messages: `'a', 'b'`, at most [`MAX_LISTED`] of them.
pub(crate) fn name_list(names: &[String]) -> String {
    let mut list: Vec<String> = names.iter().take(MAX_LISTED).map(|n| quoted_name(n)).collect();
    if names.len() > MAX_LISTED {
        list.push(format!("and {} more", names.len() - MAX_LISTED));
    }
    list.join(", ")
}

struct ColumnPrefix<'a>(Option<&'a Column>);

impl fmt::Display for ColumnPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(Column::Name(c)) => write!(f, "column {}: ", quoted_name(c)),
            Some(Column::Number(n)) => write!(f, "column {n}: "),
            None => Ok(()),
        }
    }
}

struct KeyColumns<'a>(&'a [String]);

impl fmt::Display for KeyColumns<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [] => Ok(()),
            [one] => write!(f, "column {}: ", quoted_name(one)),
            many => write!(f, "columns {}: ", name_list(many)),
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
    /// The peer sent something after the PSI that the job does not accept (a join's row count).
    #[error("protocol violation by the peer: {0}")]
    Peer(String),
}
