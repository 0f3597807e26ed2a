//! Line-by-line reading with limits, for prompt and preference files.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use crate::FileError;

/// Bounds on a text input. A prompts file is small; these limits are far above any real one
/// and far below what would exhaust memory, so `/dev/zero` or `yes` fail fast with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineLimits {
    /// Longest line in bytes (without its newline).
    pub max_line_bytes: usize,
    /// Most lines, blank ones included.
    pub max_lines: usize,
    /// Most bytes in all.
    pub max_total_bytes: u64,
}

impl LineLimits {
    /// 1 MiB per line, one million lines, 1 GiB in all.
    pub const DEFAULT: Self = Self {
        max_line_bytes: 1 << 20,
        max_lines: 1_000_000,
        max_total_bytes: 1 << 30,
    };
}

impl Default for LineLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The non-blank lines of `path` with their 1-based numbers (`\n` or `\r\n` endings removed).
pub fn read_lines(path: &Path, limits: LineLimits) -> Result<Vec<(usize, String)>, FileError> {
    let file = File::open(path).map_err(|e| FileError::io(path, e))?;
    read_lines_from(BufReader::new(file), path, limits)
}

/// [`read_lines`] over any reader; `path` only names the source in errors.
pub fn read_lines_from(
    mut reader: impl BufRead,
    path: &Path,
    limits: LineLimits,
) -> Result<Vec<(usize, String)>, FileError> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let mut total: u64 = 0;
    let mut number = 0usize;
    loop {
        buf.clear();
        // One byte past the limit (plus "\r\n") tells an over-long line from a full one.
        let cap = limits.max_line_bytes as u64 + 2;
        let n = (&mut reader)
            .take(cap)
            .read_until(b'\n', &mut buf)
            .map_err(|e| FileError::io(path, e))?;
        if n == 0 {
            break;
        }
        number += 1;
        if number > limits.max_lines {
            return Err(FileError::TooManyLines {
                path: path.into(),
                limit: limits.max_lines,
            });
        }
        total += n as u64;
        if total > limits.max_total_bytes {
            return Err(FileError::TooLarge {
                path: path.into(),
                limit: limits.max_total_bytes,
            });
        }
        let ended = buf.last() == Some(&b'\n');
        if ended {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        }
        if buf.len() > limits.max_line_bytes || (!ended && n as u64 == cap) {
            return Err(FileError::LineTooLong {
                path: path.into(),
                line: number,
                limit: limits.max_line_bytes,
            });
        }
        let line = std::str::from_utf8(&buf).map_err(|_| FileError::NotUtf8 {
            path: path.into(),
            line: number,
        })?;
        if !line.trim().is_empty() {
            out.push((number, line.to_string()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &[u8], limits: LineLimits) -> Result<Vec<(usize, String)>, FileError> {
        read_lines_from(text, Path::new("p.jsonl"), limits)
    }

    const SMALL: LineLimits = LineLimits {
        max_line_bytes: 8,
        max_lines: 4,
        max_total_bytes: 40,
    };

    #[test]
    fn numbers_skip_blank_lines_and_strip_endings() {
        let got = lines(b"a\r\n\n  \nb", SMALL).unwrap();
        assert_eq!(got, vec![(1, "a".to_string()), (4, "b".to_string())]);
    }

    #[test]
    fn limits_are_errors_naming_the_line() {
        let e = lines(b"ok\n123456789\n", SMALL).unwrap_err();
        assert_eq!(e.to_string(), "p.jsonl:2: line longer than 8 bytes");
        // Exactly at the limit is fine, with or without a newline.
        assert_eq!(lines(b"12345678", SMALL).unwrap().len(), 1);
        assert_eq!(lines(b"12345678\r\n", SMALL).unwrap().len(), 1);
        let e = lines(b"\n\n\n\n\n", SMALL).unwrap_err();
        assert_eq!(e.to_string(), "p.jsonl: more than 4 lines");
        let e = lines(&[0xff, b'\n'], SMALL).unwrap_err();
        assert_eq!(e.to_string(), "p.jsonl:1: not valid UTF-8");
    }

    #[test]
    fn an_endless_line_stops_at_the_limit() {
        let zeros = std::io::repeat(0).take(1 << 30);
        let e = read_lines_from(BufReader::new(zeros), Path::new("/dev/zero"), SMALL).unwrap_err();
        assert!(matches!(e, FileError::LineTooLong { line: 1, .. }), "{e}");
    }

    #[test]
    fn total_size_is_bounded() {
        let limits = LineLimits {
            max_total_bytes: 10,
            ..SMALL
        };
        let e = lines(b"1234\n1234\n1234\n", limits).unwrap_err();
        assert_eq!(e.to_string(), "p.jsonl: larger than 10 bytes");
    }
}
