//! The streamed merge: safetensors written one chunk at a time, sharding, input hashing and
//! the atomic output directory.
//!
//! Each shard's header is computed from the plan before its data, with all-zero placeholders
//! for the input SHA-256 digests; a background thread hashes the inputs while the tensors are
//! merged, and the placeholders are overwritten in place (same length) at the end. Inputs are
//! read with positioned reads into reused chunk buffers rather than through the memory map, so
//! the resident set stays at a few chunk buffers whatever the model size.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dera_checkpoint::{
    CONFIG_FILE, Checkpoint, GENERATION_CONFIG_FILE, INDEX_FILE, TOKENIZER_FILE, dtype_name,
};
use dera_io::Temp;
use dera_lora::Adapter;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::compute::{combine, non_finite_output_at};
use crate::error::{MergeError, Result};
use crate::lowrank::Addends;
use crate::plan::{MergePlan, ShardPlan, human_bytes, prepare};
use crate::spec::{Accumulate, MergeInputs, MergeOptions, Progress};
use crate::validate::Validated;

/// Elements merged per chunk (per input: 4 MiB of bf16).
pub(crate) const CHUNK_ELEMS: usize = 1 << 21;
/// Output buffer.
pub(crate) const WRITE_BUF: usize = 1 << 20;
/// Read buffer of the hashing thread.
pub(crate) const HASH_BUF: usize = 1 << 22;

/// Files copied from the reference when present.
pub const COPIED_FILES: &[&str] = &[
    CONFIG_FILE,
    GENERATION_CONFIG_FILE,
    TOKENIZER_FILE,
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
];

/// What a finished merge did.
#[derive(Debug, Clone)]
pub struct MergeReport {
    /// The plan that was carried out.
    pub plan: MergePlan,
    /// Per input (reference first): `(file name, SHA-256 hex)` of each safetensors file
    /// (empty when [`MergeOptions::hash_inputs`] is off).
    pub input_sha256: Vec<Vec<(String, String)>>,
    /// Wall time.
    pub elapsed: Duration,
}

impl std::fmt::Display for MergeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.elapsed.as_secs_f64();
        let moved = self.plan.bytes_read + self.plan.bytes_written;
        writeln!(f, "{}", self.plan)?;
        write!(
            f,
            "  done in {s:.2} s ({}/s read+written)",
            human_bytes((moved as f64 / s.max(1e-9)) as u64)
        )
    }
}

/// Merges `inputs` into the checkpoint directory `out`, one tensor (and chunk) at a time.
///
/// Everything is validated before anything is written; the result appears at `out` only when
/// complete (an existing `out` is replaced only with `options.force`, after success), and a
/// failure leaves nothing behind. `progress` is called after each tensor.
pub fn merge_checkpoints(
    inputs: &MergeInputs,
    out: &Path,
    options: &MergeOptions,
    progress: Option<&dyn Fn(&Progress)>,
) -> Result<MergeReport> {
    merge_checkpoints_with(inputs, &[], out, options, progress)
}

/// [`merge_checkpoints`] plus LoRA adapters over the reference: each `(adapter, lambda)` adds
/// `lambda * scale * B A` to the weights it adapts (an adapter's model is the reference plus
/// its update, so it takes nothing from the reference's coefficient). The update is summed in
/// `f32` and added before the single rounding; `inputs` may hold no aligned checkpoint at all.
pub fn merge_checkpoints_with(
    inputs: &MergeInputs,
    adapters: &[(&Adapter, f64)],
    out: &Path,
    options: &MergeOptions,
    progress: Option<&dyn Fn(&Progress)>,
) -> Result<MergeReport> {
    let start = Instant::now();
    let (v, plan) = prepare(inputs, adapters, out, options)?;
    let addends = Addends::new(adapters, &v)?;
    let tmp = Temp::dir_beside(out)?;
    let cancel = AtomicBool::new(false);
    let (written, hashes) = std::thread::scope(|s| {
        let hasher = s.spawn(|| {
            if options.hash_inputs {
                hash_inputs(&v.checkpoints, &cancel).map(Some)
            } else {
                Ok(None)
            }
        });
        let written = write_shards(&v, &plan, &addends, tmp.path(), options, progress);
        if written.is_err() {
            cancel.store(true, Ordering::Relaxed);
        }
        let hashes = hasher
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        (written, hashes)
    });
    written?;
    let hashes = hashes?;
    if let Some(h) = hashes.as_deref() {
        for shard in &plan.shards {
            let path = tmp.path().join(&shard.file);
            let header = header_bytes(&v, &plan, shard, Some(Digests::Known(h)));
            let placeholder = header_bytes(&v, &plan, shard, Some(Digests::Placeholder));
            if header.len() != placeholder.len() {
                let e = std::io::Error::other("header length changed while patching digests");
                return Err(MergeError::io(&path, e));
            }
            let mut f = File::options()
                .write(true)
                .open(&path)
                .map_err(|e| MergeError::io(&path, e))?;
            f.seek(SeekFrom::Start(8))
                .and_then(|_| f.write_all(&header))
                .and_then(|_| if options.sync { f.sync_all() } else { Ok(()) })
                .map_err(|e| MergeError::io(&path, e))?;
        }
    }
    if plan.is_sharded() {
        write_index(&plan, tmp.path())?;
    }
    copy_files(&v, options, tmp.path())?;
    // Marks the directory as dera's own, so that a later `force` may replace it.
    dera_io::write_marker(tmp.path(), "dera merge")?;
    if options.sync {
        File::open(tmp.path())
            .and_then(|d| d.sync_all())
            .map_err(|e| MergeError::io(tmp.path(), e))?;
    }
    tmp.commit(out, options.force)?;
    Ok(MergeReport {
        plan,
        input_sha256: hashes.unwrap_or_default(),
        elapsed: start.elapsed(),
    })
}

fn write_shards(
    v: &Validated,
    plan: &MergePlan,
    addends: &Addends<'_>,
    dir: &Path,
    options: &MergeOptions,
    progress: Option<&dyn Fn(&Progress)>,
) -> Result<()> {
    let read = plan.read_inputs();
    let readers = read
        .iter()
        .map(|&i| Reader::new(&v.checkpoints[i]))
        .collect::<Result<Vec<_>>>()?;
    let coeffs: Vec<f64> = read.iter().map(|&i| plan.coefficients[i]).collect();
    let reference = Reader::new(&v.checkpoints[0])?;
    let mut bufs: Vec<Vec<u8>> = vec![Vec::new(); readers.len()];
    let mut out_buf = Vec::new();
    let mut bytes_done = 0;
    let mut done = 0;
    for shard in &plan.shards {
        let path = dir.join(&shard.file);
        let io = |e| MergeError::io(&path, e);
        let file = File::create(&path).map_err(io)?;
        let mut w = BufWriter::with_capacity(WRITE_BUF, file);
        let placeholder = options.hash_inputs.then_some(Digests::Placeholder);
        let header = header_bytes(v, plan, shard, placeholder);
        w.write_all(&(header.len() as u64).to_le_bytes())
            .and_then(|_| w.write_all(&header))
            .map_err(io)?;
        for t in &plan.tensors[shard.tensors.clone()] {
            if !t.merged {
                let len = t.in_bytes() as usize;
                let chunk = CHUNK_ELEMS * 4;
                for start in (0..len).step_by(chunk) {
                    out_buf.resize(chunk.min(len - start), 0);
                    reference.read(&t.name, start, &mut out_buf)?;
                    w.write_all(&out_buf).map_err(io)?;
                }
            } else {
                let (isz, osz) = (t.dtype.bitsize() / 8, t.out_dtype.bitsize() / 8);
                let n = t.elements();
                for start in (0..n).step_by(CHUNK_ELEMS) {
                    let m = CHUNK_ELEMS.min(n - start);
                    for (r, b) in readers.iter().zip(bufs.iter_mut()) {
                        b.resize(m * isz, 0);
                        r.read(&t.name, start * isz, b)?;
                    }
                    let views: Vec<&[u8]> = bufs.iter().map(Vec::as_slice).collect();
                    out_buf.resize(m * osz, 0);
                    let acc = plan.accumulate;
                    let add = addends.chunk(&t.name, start, m);
                    let add = add.as_deref();
                    combine(
                        &views,
                        &coeffs,
                        t.dtype,
                        t.out_dtype,
                        acc,
                        add,
                        &mut out_buf,
                    )
                    .map_err(|i| {
                        non_finite_output_at(
                            &t.name,
                            i,
                            start,
                            t.out_dtype,
                            &out_buf,
                            &plan.coefficients,
                        )
                    })?;
                    w.write_all(&out_buf).map_err(io)?;
                }
            }
            done += 1;
            bytes_done += t.out_bytes();
            if let Some(report) = progress {
                report(&Progress {
                    done,
                    total: plan.tensors.len(),
                    name: t.name.clone(),
                    bytes_done,
                    bytes_total: plan.bytes_written,
                });
            }
        }
        let file = w.into_inner().map_err(|e| io(e.into_error()))?;
        if options.sync {
            file.sync_all().map_err(io)?;
        }
    }
    Ok(())
}

/// Positioned reads of one checkpoint's tensors, bypassing the memory map.
struct Reader<'a> {
    ckpt: &'a Checkpoint,
    files: Vec<File>,
}

impl<'a> Reader<'a> {
    fn new(ckpt: &'a Checkpoint) -> Result<Self> {
        let files = ckpt
            .files()
            .iter()
            .map(|f| File::open(f.path()).map_err(|e| MergeError::io(f.path(), e)))
            .collect::<Result<_>>()?;
        Ok(Self { ckpt, files })
    }

    /// Fills `buf` with tensor `name`'s bytes starting at byte `from`.
    fn read(&self, name: &str, from: usize, buf: &mut [u8]) -> Result<()> {
        let raw = self.ckpt.raw(name)?;
        let file = self
            .ckpt
            .file_of(name)
            .ok_or_else(|| MergeError::MissingTensor {
                name: name.into(),
                present: self.ckpt.dir().into(),
                missing: self.ckpt.dir().into(),
            })?;
        let i = self
            .ckpt
            .files()
            .iter()
            .position(|f| std::ptr::eq(f, file))
            .unwrap_or_default();
        // Byte offset of the tensor in its file: pointer arithmetic only, the map is not read.
        let offset = raw.bytes.as_ptr() as usize - file.bytes().as_ptr() as usize + from;
        read_at(
            &self.files[i],
            offset as u64,
            buf,
            &raw.bytes[from..from + buf.len()],
        )
        .map_err(|e| MergeError::io(file.path(), e))
    }
}

#[cfg(unix)]
fn read_at(file: &File, offset: u64, buf: &mut [u8], _mapped: &[u8]) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(not(unix))]
fn read_at(_file: &File, _offset: u64, buf: &mut [u8], mapped: &[u8]) -> std::io::Result<()> {
    buf.copy_from_slice(mapped);
    Ok(())
}

/// SHA-256 of every input file, reading each once more on up to one thread per core
/// (stops early when `cancel` is set).
fn hash_inputs(ckpts: &[Checkpoint], cancel: &AtomicBool) -> Result<Vec<Vec<(String, String)>>> {
    let files: Vec<(usize, &Path)> = ckpts
        .iter()
        .enumerate()
        .flat_map(|(i, c)| c.files().iter().map(move |f| (i, f.path())))
        .collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(files.len());
    let next = AtomicUsize::new(0);
    let digests: Vec<Mutex<Option<Result<String>>>> =
        files.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut buf = vec![0u8; HASH_BUF];
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(_, path)) = files.get(k) else {
                        break;
                    };
                    let digest = hash_file(path, &mut buf, cancel);
                    if let Ok(mut slot) = digests[k].lock() {
                        *slot = Some(digest);
                    }
                }
            });
        }
    });
    let mut out: Vec<Vec<(String, String)>> = vec![Vec::new(); ckpts.len()];
    for ((i, path), slot) in files.iter().zip(digests) {
        let digest =
            slot.into_inner().ok().flatten().unwrap_or_else(|| {
                Err(MergeError::io(*path, std::io::Error::other("not hashed")))
            })?;
        out[*i].push((file_name(path), digest));
    }
    Ok(out)
}

fn hash_file(path: &Path, buf: &mut [u8], cancel: &AtomicBool) -> Result<String> {
    let mut file = File::open(path).map_err(|e| MergeError::io(path, e))?;
    let mut h = Sha256::new();
    while !cancel.load(Ordering::Relaxed) {
        let n = file.read(buf).map_err(|e| MergeError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Input digests for the header.
#[derive(Clone, Copy)]
enum Digests<'a> {
    /// All-zero digests of the final length, overwritten once hashing is done.
    Placeholder,
    /// Per input: `(file name, hex)`.
    Known(&'a [Vec<(String, String)>]),
}

/// The `__metadata__` map: format, coefficients and the inputs with their digests (left out
/// when `hashes` is `None`).
fn metadata(
    v: &Validated,
    plan: &MergePlan,
    hashes: Option<Digests<'_>>,
) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("format".into(), "pt".into());
    m.insert(
        "dera.coefficients".into(),
        json!(plan.coefficients).to_string(),
    );
    m.insert(
        "dera.lambdas".into(),
        json!(plan.coefficients[1..]).to_string(),
    );
    let acc = match plan.accumulate {
        Accumulate::F32 => "f32",
        Accumulate::F64 => "f64",
    };
    m.insert("dera.accumulate".into(), acc.into());
    for (i, (dir, lambda)) in plan.adapters.iter().enumerate() {
        m.insert(format!("dera.adapter.{i}.path"), dir.display().to_string());
        m.insert(
            format!("dera.adapter.{i}.lambda"),
            json!(lambda).to_string(),
        );
    }
    for (i, c) in v.checkpoints.iter().enumerate() {
        let files: Vec<String> = c.files().iter().map(|f| file_name(f.path())).collect();
        let digests: Option<Vec<String>> = match hashes {
            Some(Digests::Known(h)) => Some(h[i].iter().map(|(_, d)| d.clone()).collect()),
            Some(Digests::Placeholder) => Some(vec!["0".repeat(64); files.len()]),
            None => None,
        };
        let dir = c.dir().display().to_string();
        m.insert(format!("dera.input.{i}.path"), dir);
        m.insert(format!("dera.input.{i}.files"), json!(files).to_string());
        if let Some(d) = digests {
            m.insert(format!("dera.input.{i}.sha256"), d.join(","));
        }
    }
    m
}

/// A shard's JSON header, padded with spaces to a multiple of 8 bytes.
fn header_bytes(
    v: &Validated,
    plan: &MergePlan,
    shard: &ShardPlan,
    hashes: Option<Digests<'_>>,
) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    map.insert("__metadata__".into(), json!(metadata(v, plan, hashes)));
    let mut offset = 0u64;
    for t in &plan.tensors[shard.tensors.clone()] {
        let end = offset + t.out_bytes();
        map.insert(
            t.name.clone(),
            json!({ "dtype": dtype_name(t.out_dtype), "shape": t.shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut bytes = Value::Object(map).to_string().into_bytes();
    bytes.resize(bytes.len().next_multiple_of(8), b' ');
    bytes
}

fn write_index(plan: &MergePlan, dir: &Path) -> Result<()> {
    let mut weight_map = serde_json::Map::new();
    for shard in &plan.shards {
        for t in &plan.tensors[shard.tensors.clone()] {
            weight_map.insert(t.name.clone(), json!(shard.file));
        }
    }
    let index = json!({
        "metadata": { "total_size": plan.bytes_written },
        "weight_map": weight_map,
    });
    write_json(&dir.join(INDEX_FILE), &index)
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| MergeError::io(path, std::io::Error::other(e)))?;
    text.push('\n');
    std::fs::write(path, text).map_err(|e| MergeError::io(path, e))
}

/// Copies [`COPIED_FILES`] from the reference; `config.json` gets the new dtype / vocab size.
fn copy_files(v: &Validated, options: &MergeOptions, dir: &Path) -> Result<()> {
    let reference = &v.checkpoints[0];
    for name in COPIED_FILES {
        let src = reference.dir().join(name);
        if !src.is_file() {
            continue;
        }
        let dst = dir.join(name);
        if *name == CONFIG_FILE {
            let mut config = reference.config()?;
            if update_config(&mut config, options, v.vocab_size) {
                write_json(&dst, &config)?;
                continue;
            }
        }
        std::fs::copy(&src, &dst).map_err(|e| MergeError::io(&src, e))?;
    }
    Ok(())
}

/// Sets `torch_dtype` / `dtype` and `vocab_size`; returns whether anything changed.
fn update_config(config: &mut Value, options: &MergeOptions, vocab: Option<usize>) -> bool {
    let Some(obj) = config.as_object_mut() else {
        return false;
    };
    let mut changed = false;
    if let Some(d) = options.dtype {
        let name = json!(d.torch_name());
        let keys: Vec<&str> = ["torch_dtype", "dtype"]
            .into_iter()
            .filter(|k| obj.contains_key(*k))
            .collect();
        let keys = if keys.is_empty() {
            vec!["torch_dtype"]
        } else {
            keys
        };
        for k in keys {
            if obj.get(k) != Some(&name) {
                obj.insert(k.into(), name.clone());
                changed = true;
            }
        }
    }
    if let Some(n) = vocab {
        obj.insert("vocab_size".into(), json!(n));
        changed = true;
    }
    changed
}
