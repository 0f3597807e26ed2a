//! The fortunes corpus (Debian's `fortunes` and `fortunes-min`) and prompts cut from it.
//!
//! Each fortune becomes one line: whitespace collapsed to single spaces. Fortunes with fewer
//! than [`MIN_WORDS`] or more than [`MAX_WORDS`] words, and the ASCII-art files, are dropped.
//! A prompt is the first [`PROMPT_WORDS`] words of a fortune; the response is the rest.

use std::path::Path;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{LabError, Result};

/// Where the `fortunes` package installs its files.
pub const DEFAULT_FORTUNES_DIR: &str = "/usr/share/games/fortunes";
/// Shortest fortune kept, in words.
pub const MIN_WORDS: usize = 5;
/// Longest fortune kept, in words.
pub const MAX_WORDS: usize = 60;
/// Words of a fortune used as the prompt.
pub const PROMPT_WORDS: usize = 3;

/// The corpus, split deterministically into training and held-out fortunes.
#[derive(Debug, Clone)]
pub struct Corpus {
    /// Fortunes used for SFT and DPO prompts.
    pub train: Vec<String>,
    /// Held-out fortunes, for evaluation prompts.
    pub eval: Vec<String>,
}

/// One line of a prompts file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromptRecord {
    /// The prompt text.
    pub prompt: String,
}

/// Normalises one fortune: whitespace collapsed, `None` when outside the word limits.
pub fn normalise(entry: &str) -> Option<String> {
    let words: Vec<&str> = entry.split_whitespace().collect();
    (MIN_WORDS..=MAX_WORDS)
        .contains(&words.len())
        .then(|| words.join(" "))
}

/// Splits a fortune into its prompt (first [`PROMPT_WORDS`] words) and the rest, which keeps
/// its leading space.
pub fn split_prompt(fortune: &str) -> (String, String) {
    let mut end = 0;
    for (i, w) in fortune.split(' ').enumerate() {
        if i == PROMPT_WORDS {
            break;
        }
        end += w.len() + usize::from(i > 0);
    }
    let end = end.min(fortune.len());
    (fortune[..end].to_string(), fortune[end..].to_string())
}

impl Corpus {
    /// Reads every fortune file in `dir` (skipping `*.dat`, `*.u8` and ASCII-art files) and
    /// holds out `eval_size` fortunes chosen with `seed`.
    pub fn load(dir: &Path, eval_size: usize, seed: u64) -> Result<Self> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| LabError::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                p.is_file() && !name.contains('.') && !name.contains("art")
            })
            .collect();
        files.sort();
        let mut all = Vec::new();
        for f in &files {
            let bytes = std::fs::read(f).map_err(|e| LabError::io(f, e))?;
            let text = String::from_utf8_lossy(&bytes);
            for entry in text.split("\n%\n") {
                if let Some(s) = normalise(entry.trim_end_matches('%')) {
                    all.push(s);
                }
            }
        }
        if all.len() <= eval_size {
            return Err(LabError::Other(format!(
                "{}: only {} fortunes found; install the `fortunes` package",
                dir.display(),
                all.len()
            )));
        }
        all.sort();
        all.dedup();
        all.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let eval = all.split_off(all.len() - eval_size);
        Ok(Self { train: all, eval })
    }

    /// Total bytes of training text.
    pub fn train_bytes(&self) -> usize {
        self.train.iter().map(String::len).sum()
    }
}

/// Writes prompts as JSONL (`{"prompt": ...}` per line).
pub fn write_prompts(path: &Path, prompts: &[String]) -> Result<()> {
    let mut out = String::new();
    for p in prompts {
        out.push_str(&serde_json::to_string(&PromptRecord { prompt: p.clone() }).unwrap());
        out.push('\n');
    }
    std::fs::write(path, out).map_err(|e| LabError::io(path, e))
}

/// Reads a JSONL file of objects with a `"prompt"` field.
pub fn read_prompts(path: &Path) -> Result<Vec<String>> {
    read_jsonl::<PromptRecord>(path).map(|v| v.into_iter().map(|r| r.prompt).collect())
}

/// Reads a JSONL file, one `T` per non-empty line, line by line within
/// [`dera_io::LineLimits::DEFAULT`] (1 MiB a line, a million lines, 1 GiB).
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    dera_io::read_lines(path, dera_io::LineLimits::DEFAULT)?
        .into_iter()
        .map(|(n, l)| {
            serde_json::from_str(&l).map_err(|e| LabError::Json {
                path: path.to_path_buf(),
                reason: format!("line {n}: {e}"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_split_keeps_the_space() {
        let (p, r) = split_prompt("A fool and his money are soon parted.");
        assert_eq!(p, "A fool and");
        assert_eq!(r, " his money are soon parted.");
        let (p, r) = split_prompt("One two");
        assert_eq!((p.as_str(), r.as_str()), ("One two", ""));
    }

    #[test]
    fn normalise_collapses_whitespace_and_filters() {
        assert_eq!(normalise("  a\tb\n c d   e ").as_deref(), Some("a b c d e"));
        assert_eq!(normalise("too short"), None);
    }
}
