//! The crate's error type.

use std::path::PathBuf;

/// A refused output, a failed write or an over-long input. Messages name the path.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The output exists and replacing it was not asked for.
    #[error("output {path} already exists (pass --force to replace it)")]
    Exists {
        /// The output.
        path: PathBuf,
    },
    /// The output is one of the inputs.
    #[error("output {path} is the input {input}: dera never overwrites its inputs")]
    IsInput {
        /// The output.
        path: PathBuf,
        /// The input it names.
        input: PathBuf,
    },
    /// The output is a directory that holds an input.
    #[error(
        "output {path} contains the input {input}: dera never replaces a folder that holds its inputs"
    )]
    ContainsInput {
        /// The output.
        path: PathBuf,
        /// The input inside it.
        input: PathBuf,
    },
    /// The output lies inside an input directory.
    #[error("output {path} is inside the input directory {input}: write it somewhere else")]
    InsideInput {
        /// The output.
        path: PathBuf,
        /// The input directory.
        input: PathBuf,
    },
    /// `force` was given but the existing directory is not one dera may replace.
    #[error(
        "output {path} {reason}; --force replaces only an empty directory or one a previous dera run wrote (remove it yourself if it can go)"
    )]
    NotDeraOutput {
        /// The existing directory.
        path: PathBuf,
        /// Why it is not replaceable.
        reason: String,
    },
    /// The output exists as the other kind (a file where a directory goes, or the reverse).
    #[error("output {path} exists and is not a {expected}")]
    WrongKind {
        /// The output.
        path: PathBuf,
        /// `"regular file"` or `"directory"`.
        expected: &'static str,
    },
    /// The output path is empty.
    #[error("the output path is empty")]
    EmptyPath,
    /// A line of an input file is longer than the limit.
    #[error("{path}:{line}: line longer than {limit} bytes")]
    LineTooLong {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// An input file has more lines than the limit.
    #[error("{path}: more than {limit} lines")]
    TooManyLines {
        /// The file.
        path: PathBuf,
        /// The limit.
        limit: usize,
    },
    /// An input file is larger than the limit.
    #[error("{path}: larger than {limit} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
    /// A line of an input file is not UTF-8.
    #[error("{path}:{line}: not valid UTF-8")]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
}

impl FileError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
