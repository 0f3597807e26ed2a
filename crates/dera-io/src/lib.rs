//! Safe file handling for dera: nothing a user owns is deleted or overwritten by accident.
//!
//! - [`check_output`] is **the rule for outputs**: an output never is, contains or lies inside
//!   an input; an existing output is replaced only with `force`, and a directory only when it
//!   is empty or a previous dera run wrote it (its [`MARKER_FILE`] lists every file in it).
//! - [`Temp`] is a temporary file or directory beside its destination, renamed into place on
//!   success ([`write_file`] for whole files). Live temporaries are registered, so
//!   [`install_signal_cleanup`] removes them on SIGINT/SIGTERM, and the next write to the same
//!   destination removes those of killed runs ([`clean_stale`]).
//! - [`read_lines`] reads text line by line within [`LineLimits`], so `/dev/zero` or a
//!   runaway file is an error instead of unbounded memory.

#![deny(missing_docs)]

mod error;
mod lines;
mod output;
mod temp;

pub use error::FileError;
pub use lines::{LineLimits, read_lines, read_lines_from};
pub use output::{MARKER_FILE, OutputKind, check_output, resolve, write_marker};
pub use temp::{Temp, clean_stale, install_signal_cleanup, remove_registered, write_file};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
