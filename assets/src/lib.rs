//! The data dera embeds in its binaries, so that `dera demo` runs from an installed binary in
//! any folder (nothing is read from the source tree, nothing is downloaded).
//!
//! The files are committed in this crate's directory, `assets/` at the workspace root: the
//! lab's tiny Llama models under `models/` (`reference`, the SFT model, and `aligned-length`,
//! `aligned-question`, DPO-aligned at beta 0.1 by `dera-lab-train`), the held-out prompts
//! `prompts.jsonl`, and the font of the PNG figures. [`FILES`] holds the models and prompts
//! as bytes; model loaders read directories, so [`unpack`] writes them to a fresh temporary
//! directory made with `dera-io` that is removed when the [`Unpacked`] guard drops, or on
//! Ctrl-C, and whose leftovers after a killed run are removed by the next one.

#![deny(missing_docs)]

use std::path::{Path, PathBuf};

use dera_io::{FileError, Temp};

/// One embedded file: its path relative to `assets/` (and to [`Unpacked::path`]) and its bytes.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// Relative path with `/` separators, e.g. `models/reference/config.json`.
    pub path: &'static str,
    /// The file's contents.
    pub bytes: &'static [u8],
}

/// The embedded models, in the order of [`FILES`]: the reference first.
pub const MODEL_NAMES: [&str; 3] = ["reference", "aligned-length", "aligned-question"];

macro_rules! model_files {
    ($($model:literal),*) => {
        [$(
            model_files!(@file $model, "config.json"),
            model_files!(@file $model, "generation_config.json"),
            model_files!(@file $model, "model.safetensors"),
            model_files!(@file $model, "tokenizer.json"),
            model_files!(@file $model, "tokenizer_config.json"),
        )*
        Asset {
            path: "prompts.jsonl",
            bytes: include_bytes!("../prompts.jsonl"),
        }]
    };
    (@file $model:literal, $file:literal) => {
        Asset {
            path: concat!("models/", $model, "/", $file),
            bytes: include_bytes!(concat!("../models/", $model, "/", $file)),
        }
    };
}

/// Every embedded model file (five per model in [`MODEL_NAMES`]) and `prompts.jsonl`.
pub static FILES: [Asset; 16] = model_files!("reference", "aligned-length", "aligned-question");

/// DejaVu Sans, the font of the PNG figures (Bitstream Vera license, `fonts/DejaVuSans.LICENSE`).
pub const FONT: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");

/// The embedded files written out to a temporary directory, removed when this guard drops.
#[derive(Debug)]
pub struct Unpacked {
    dir: Temp,
}

impl Unpacked {
    /// The directory holding [`FILES`] at their relative paths.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The directory holding one directory per model of [`MODEL_NAMES`] (what
    /// `dera demo --assets` takes).
    pub fn models(&self) -> PathBuf {
        self.path().join("models")
    }

    /// The held-out prompts, JSONL objects with a `"prompt"` field.
    pub fn prompts(&self) -> PathBuf {
        self.path().join("prompts.jsonl")
    }
}

/// Writes [`FILES`] to a new temporary directory in the system's temporary directory
/// (`$TMPDIR` or `/tmp`), named `.dera-assets.dera-tmp-PID-N`.
pub fn unpack() -> Result<Unpacked, FileError> {
    unpack_beside(&std::env::temp_dir().join("dera-assets"))
}

/// Writes [`FILES`] to a new temporary directory beside `dest` (`dest` itself is never
/// touched); leftovers of killed runs beside `dest` are removed first.
pub fn unpack_beside(dest: &Path) -> Result<Unpacked, FileError> {
    let dir = Temp::dir_beside(dest)?;
    for asset in &FILES {
        let path = dir.path().join(asset.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| io(parent, source))?;
        }
        std::fs::write(&path, asset.bytes).map_err(|source| io(&path, source))?;
    }
    Ok(Unpacked { dir })
}

fn io(path: &Path, source: std::io::Error) -> FileError {
    FileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
