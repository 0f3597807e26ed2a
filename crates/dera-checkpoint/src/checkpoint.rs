//! A checkpoint directory: config files plus one or several safetensors files.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::CheckpointError;
use crate::file::{RawTensor, SafetensorsFile};

/// `config.json`.
pub const CONFIG_FILE: &str = "config.json";
/// `generation_config.json`.
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";
/// `tokenizer.json`.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The weights of an unsharded checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// A Hugging Face checkpoint directory with its weights memory-mapped.
#[derive(Debug)]
pub struct Checkpoint {
    dir: PathBuf,
    files: Vec<SafetensorsFile>,
    location: BTreeMap<String, usize>,
    sharded: bool,
}

impl Checkpoint {
    /// Opens `dir`: `model.safetensors.index.json` when present (exactly the shards its
    /// `weight_map` names, each of which must exist and hold its tensors), else
    /// `model.safetensors`.
    pub fn open(dir: &Path) -> Result<Self, CheckpointError> {
        if !dir.is_dir() {
            return Err(CheckpointError::MissingFile {
                path: dir.to_path_buf(),
                what: "checkpoint directory does not exist".into(),
            });
        }
        let index_path = dir.join(INDEX_FILE);
        if index_path.is_file() {
            return Self::open_sharded(dir, &index_path);
        }
        let single = dir.join(SINGLE_FILE);
        if !single.is_file() {
            return Err(CheckpointError::MissingFile {
                path: single,
                what: format!("no {SINGLE_FILE} or {INDEX_FILE} in {}", dir.display()),
            });
        }
        let file = SafetensorsFile::open(&single)?;
        let location = file.names().into_iter().map(|n| (n, 0)).collect();
        Ok(Self {
            dir: dir.to_path_buf(),
            files: vec![file],
            location,
            sharded: false,
        })
    }

    fn open_sharded(dir: &Path, index_path: &Path) -> Result<Self, CheckpointError> {
        let index = read_json(index_path)?;
        let map = index
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| CheckpointError::Json {
                path: index_path.to_path_buf(),
                reason: "no `weight_map` object".into(),
            })?;
        let mut shard_ids: HashMap<String, usize> = HashMap::new();
        let mut files = Vec::new();
        let mut location = BTreeMap::new();
        for (name, shard) in map {
            let shard = shard.as_str().ok_or_else(|| CheckpointError::Json {
                path: index_path.to_path_buf(),
                reason: format!("weight_map entry for `{name}` is not a file name"),
            })?;
            let id = match shard_ids.get(shard) {
                Some(&id) => id,
                None => {
                    check_shard_name(index_path, name, shard)?;
                    let path = dir.join(shard);
                    if !path.is_file() {
                        return Err(CheckpointError::MissingFile {
                            path,
                            what: format!(
                                "shard named by {} for tensor `{name}`",
                                index_path.display()
                            ),
                        });
                    }
                    files.push(SafetensorsFile::open(&path)?);
                    shard_ids.insert(shard.to_string(), files.len() - 1);
                    files.len() - 1
                }
            };
            if files[id].get(name).is_none() {
                return Err(CheckpointError::Safetensors {
                    path: files[id].path().to_path_buf(),
                    reason: format!("tensor `{name}` is listed in the index but not in this shard"),
                });
            }
            location.insert(name.clone(), id);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            files,
            location,
            sharded: true,
        })
    }

    /// The checkpoint directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the weights come from a sharded index.
    pub fn is_sharded(&self) -> bool {
        self.sharded
    }

    /// The mapped safetensors files, in the order they were opened.
    pub fn files(&self) -> &[SafetensorsFile] {
        &self.files
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.location.keys().map(String::as_str)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.location.len()
    }

    /// Whether the checkpoint holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.location.is_empty()
    }

    /// Whether tensor `name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.location.contains_key(name)
    }

    /// The file holding tensor `name`.
    pub fn file_of(&self, name: &str) -> Option<&SafetensorsFile> {
        self.location.get(name).map(|&i| &self.files[i])
    }

    /// A borrowed view of tensor `name`.
    pub fn raw(&self, name: &str) -> Result<RawTensor<'_>, CheckpointError> {
        self.file_of(name)
            .and_then(|f| f.get(name))
            .ok_or_else(|| self.missing(name))
    }

    /// Tensor `name` left in its file's memory map, if present.
    pub fn stored(&self, name: &str) -> Option<crate::StoredTensor> {
        self.file_of(name).and_then(|f| f.stored(name))
    }

    /// Tensor `name` converted to `f32`, with its shape.
    pub fn read_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>), CheckpointError> {
        self.file_of(name)
            .ok_or_else(|| self.missing(name))?
            .read_f32(name)
    }

    /// Tensor `name` as `f32`, checked against the shape the caller expects.
    pub fn read_f32_shaped(
        &self,
        name: &str,
        expected: &[usize],
    ) -> Result<Vec<f32>, CheckpointError> {
        let (values, shape) = self.read_f32(name)?;
        if shape != expected {
            return Err(CheckpointError::Shape {
                name: name.to_string(),
                path: self
                    .file_of(name)
                    .map(|f| f.path().to_path_buf())
                    .unwrap_or_default(),
                expected: expected.to_vec(),
                found: shape,
            });
        }
        Ok(values)
    }

    /// The parsed `config.json`.
    pub fn config(&self) -> Result<serde_json::Value, CheckpointError> {
        read_json(&self.dir.join(CONFIG_FILE))
    }

    fn missing(&self, name: &str) -> CheckpointError {
        CheckpointError::MissingTensor {
            name: name.to_string(),
            dir: self.dir.clone(),
        }
    }
}

/// A shard name must stay inside the checkpoint directory: relative, without `..`, `.` or a
/// root. (A symbolic link inside the directory is followed: that is the directory owner's
/// choice, as in the Hugging Face cache, not the index file's.)
fn check_shard_name(index: &Path, tensor: &str, shard: &str) -> Result<(), CheckpointError> {
    let bad = |reason: &str| CheckpointError::ShardPath {
        index: index.to_path_buf(),
        tensor: tensor.to_string(),
        name: shard.to_string(),
        reason: reason.into(),
    };
    let p = Path::new(shard);
    if shard.is_empty() {
        return Err(bad("is empty"));
    }
    if p.is_absolute() || p.has_root() {
        return Err(bad("is an absolute path"));
    }
    if shard.contains('\\') {
        return Err(bad("contains a backslash"));
    }
    if p.components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(bad("has a `..` or `.` component"));
    }
    Ok(())
}

/// Reads and parses a JSON file; a missing file is [`CheckpointError::MissingFile`].
pub fn read_json(path: &Path) -> Result<serde_json::Value, CheckpointError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            CheckpointError::MissingFile {
                path: path.to_path_buf(),
                what: "required JSON file".into(),
            }
        } else {
            CheckpointError::io(path, e)
        }
    })?;
    serde_json::from_str(&text).map_err(|e| CheckpointError::Json {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}
