//! The GGUF container: header, metadata key/values and tensor infos, parsed from a memory map
//! with every count, length, offset and alignment checked against the file before it is used.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::dequant::dequantize;
use crate::{GgmlType, GgufError};

/// `GGUF` as a little-endian `u32`.
const MAGIC: &[u8; 4] = b"GGUF";
/// Alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// Most dimensions a ggml tensor has.
const MAX_DIMS: u32 = 4;
/// Deepest nesting of arrays accepted in metadata.
const MAX_DEPTH: usize = 4;
/// Most array elements in all metadata together (real vocabularies with their merges and
/// scores need well under a million); bounds the memory a hostile header can claim.
pub const MAX_ARRAY_ITEMS: usize = 1 << 22;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Any unsigned integer type (u8, u16, u32, u64).
    U64(u64),
    /// Any signed integer type (i8, i16, i32, i64).
    I64(i64),
    /// f32 or f64.
    F64(f64),
    /// A boolean.
    Bool(bool),
    /// A UTF-8 string.
    String(String),
    /// An array of values.
    Array(Vec<Value>),
}

impl Value {
    /// The value as a non-negative integer, if it is one.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U64(x) => Some(x),
            Value::I64(x) => u64::try_from(x).ok(),
            _ => None,
        }
    }
    /// The value as a number, if it is one.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::U64(x) => Some(x as f64),
            Value::I64(x) => Some(x as f64),
            Value::F64(x) => Some(x),
            _ => None,
        }
    }
    /// The value as a string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    /// The value as a boolean, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    /// The value as an array, if it is one.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor's description and where its bytes lie in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// The GGUF name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Row-major shape (ggml's `ne` reversed: `[rows, cols]` for a matrix).
    pub shape: Vec<usize>,
    /// Element type.
    pub ty: GgmlType,
    /// Byte range in the file.
    pub range: Range<usize>,
}

impl TensorInfo {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A GGUF file (version 2 or 3) mapped into memory with its header parsed and validated.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    mmap: Arc<Mmap>,
    version: u32,
    alignment: usize,
    metadata: BTreeMap<String, Value>,
    tensors: Vec<TensorInfo>,
    index: BTreeMap<String, usize>,
}

impl GgufFile {
    /// Maps `path` and parses it.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; a file modified while mapped is outside our contract
        // (the assumption every memory-mapping model loader makes).
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(path, Arc::new(mmap))
    }

    /// Parses a GGUF image held in `mmap`; `path` names it in errors.
    fn parse(path: &Path, mmap: Arc<Mmap>) -> Result<Self, GgufError> {
        let header = parse_header(&mmap).map_err(|(what, reason)| GgufError::Format {
            path: path.to_path_buf(),
            what,
            reason,
        })?;
        let index = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            version: header.version,
            alignment: header.alignment,
            metadata: header.metadata,
            tensors: header.tensors,
            index,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }
    /// Alignment of the tensor data.
    pub fn alignment(&self) -> usize {
        self.alignment
    }
    /// All metadata, by key.
    pub fn metadata(&self) -> &BTreeMap<String, Value> {
        &self.metadata
    }
    /// Metadata value `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }
    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
    /// Tensor `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }
    /// The shared memory map (tensor ranges index into it).
    pub fn buffer(&self) -> &Arc<Mmap> {
        &self.mmap
    }
    /// The stored bytes of a tensor.
    pub fn bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.mmap[info.range.clone()]
    }

    /// Tensor `name` dequantized to `f32`, with its row-major shape.
    pub fn read_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>), GgufError> {
        let info = self.tensor(name).ok_or_else(|| GgufError::Tensor {
            path: self.path.clone(),
            tensor: name.to_string(),
            reason: "not in the file".into(),
        })?;
        let mut out = vec![0f32; info.len()];
        dequantize(info.ty, self.bytes(info), &mut out).map_err(|e| GgufError::Tensor {
            path: self.path.clone(),
            tensor: name.to_string(),
            reason: e.to_string(),
        })?;
        Ok((out, info.shape.clone()))
    }
}

struct Header {
    version: u32,
    alignment: usize,
    metadata: BTreeMap<String, Value>,
    tensors: Vec<TensorInfo>,
}

/// A parse failure: `(what, reason)`.
type Fail = (String, String);

fn fail(what: impl Into<String>, reason: impl Into<String>) -> Fail {
    (what.into(), reason.into())
}

/// A bounds-checked little-endian reader.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Array elements read so far.
    items: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Fail> {
        if n > self.remaining() {
            return Err(fail(
                what,
                format!(
                    "needs {n} bytes at offset {}, the file has {} left (truncated?)",
                    self.pos,
                    self.remaining()
                ),
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], Fail> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    fn u32(&mut self, what: &str) -> Result<u32, Fail> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, Fail> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    /// A count or length that must fit both `usize` and what is left of the file, given that
    /// each item takes at least `min_item` bytes.
    fn count(&mut self, what: &str, min_item: usize) -> Result<usize, Fail> {
        let n = self.u64(what)?;
        let fits = usize::try_from(n).ok().filter(|&n| {
            n.checked_mul(min_item)
                .is_some_and(|b| b <= self.remaining())
        });
        fits.ok_or_else(|| {
            fail(
                what,
                format!(
                    "{n} items of at least {min_item} bytes cannot fit the {} bytes left",
                    self.remaining()
                ),
            )
        })
    }
    fn string(&mut self, what: &str) -> Result<String, Fail> {
        let n = self.count(what, 1)?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| fail(what, "string is not valid UTF-8"))
    }
}

fn parse_header(buf: &[u8]) -> Result<Header, Fail> {
    let mut c = Cursor {
        buf,
        pos: 0,
        items: 0,
    };
    let magic = c.take(4, "magic")?;
    if magic != MAGIC {
        return Err(fail(
            "magic",
            format!("expected \"GGUF\", found {magic:02x?}"),
        ));
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(fail(
            "version",
            format!("{version} is not supported (versions 2 and 3 are)"),
        ));
    }
    // A tensor info takes at least 8 (name) + 4 (dims) + 4 (type) + 8 (offset) bytes, a
    // metadata pair at least 8 (key) + 4 (type) + 1 (value).
    let n_tensors = c.count("tensor_count", 24)?;
    let n_kv = c.count("metadata_kv_count", 13)?;
    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = c.string(&format!("metadata key #{i}"))?;
        let ty = c.u32(&format!("metadata `{key}` type"))?;
        let value = read_value(&mut c, ty, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(fail(format!("metadata `{key}`"), "key appears twice"));
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => v
            .as_u64()
            .and_then(|a| usize::try_from(a).ok())
            .filter(|a| a.is_power_of_two())
            .ok_or_else(|| {
                fail(
                    "metadata `general.alignment`",
                    format!("{v:?} is not a power of two"),
                )
            })?,
    };
    let mut infos = Vec::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = c.string(&format!("tensor #{i} name"))?;
        let what = format!("tensor `{name}`");
        let n_dims = c.u32(&format!("{what} n_dims"))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(fail(
                what,
                format!("{n_dims} dimensions (1 to {MAX_DIMS} allowed)"),
            ));
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = c.u64(&format!("{what} dimensions"))?;
            ne.push(
                usize::try_from(d)
                    .map_err(|_| fail(what.as_str(), format!("dimension {d} is too large")))?,
            );
        }
        let ty = GgmlType::from_id(c.u32(&format!("{what} type"))?);
        let offset = c.u64(&format!("{what} offset"))?;
        infos.push((name, ne, ty, offset));
    }
    let data_start = c
        .pos
        .checked_next_multiple_of(alignment)
        .filter(|&s| s <= buf.len())
        .ok_or_else(|| fail("data section", "starts past the end of the file"))?;
    let mut tensors = Vec::with_capacity(infos.len());
    let mut names = std::collections::BTreeSet::new();
    for (name, ne, ty, offset) in infos {
        let what = format!("tensor `{name}`");
        if !names.insert(name.clone()) {
            return Err(fail(what, "name appears twice"));
        }
        let n = ne
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| fail(what.as_str(), format!("shape {ne:?} overflows")))?;
        if ty.block().is_none() {
            return Err(fail(
                what,
                format!(
                    "type {ty} is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS are)"
                ),
            ));
        }
        let per = ty.block().map_or(1, |b| b.0);
        if !ne[0].is_multiple_of(per) {
            return Err(fail(
                what,
                format!(
                    "rows of {} weights are not whole {ty} blocks of {per}",
                    ne[0]
                ),
            ));
        }
        let size = ty
            .bytes_for(n)
            .ok_or_else(|| fail(what.as_str(), format!("size of {n} {ty} weights overflows")))?;
        let offset = usize::try_from(offset)
            .ok()
            .filter(|o| o.is_multiple_of(alignment))
            .ok_or_else(|| {
                fail(
                    what.as_str(),
                    format!("offset {offset} is not a multiple of the alignment {alignment}"),
                )
            })?;
        let start = data_start
            .checked_add(offset)
            .ok_or_else(|| fail(what.as_str(), "offset overflows"))?;
        let end = start
            .checked_add(size)
            .filter(|&e| e <= buf.len())
            .ok_or_else(|| {
                fail(
                    what.as_str(),
                    format!(
                        "{size} bytes at offset {offset} run past the end of the file ({} bytes)",
                        buf.len()
                    ),
                )
            })?;
        let shape = ne.iter().rev().copied().collect();
        tensors.push(TensorInfo {
            name,
            shape,
            ty,
            range: start..end,
        });
    }
    Ok(Header {
        version,
        alignment,
        metadata,
        tensors,
    })
}

/// Minimum bytes one element of metadata type `ty` takes (for bounding array counts).
fn min_size(ty: u32) -> usize {
    match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => 1,
    }
}

fn read_value(c: &mut Cursor<'_>, ty: u32, key: &str, depth: usize) -> Result<Value, Fail> {
    let what = format!("metadata `{key}`");
    Ok(match ty {
        0 => Value::U64(u64::from(c.array::<1>(&what)?[0])),
        1 => Value::I64(i64::from(c.array::<1>(&what)?[0] as i8)),
        2 => Value::U64(u64::from(u16::from_le_bytes(c.array(&what)?))),
        3 => Value::I64(i64::from(i16::from_le_bytes(c.array(&what)?))),
        4 => Value::U64(u64::from(c.u32(&what)?)),
        5 => Value::I64(i64::from(i32::from_le_bytes(c.array(&what)?))),
        6 => Value::F64(f64::from(f32::from_le_bytes(c.array(&what)?))),
        7 => match c.array::<1>(&what)?[0] {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            b => return Err(fail(what, format!("boolean byte {b} is neither 0 nor 1"))),
        },
        8 => Value::String(c.string(&what)?),
        9 => {
            if depth >= MAX_DEPTH {
                return Err(fail(what, format!("arrays nested deeper than {MAX_DEPTH}")));
            }
            let elem = c.u32(&what)?;
            if !(0..=12).contains(&elem) {
                return Err(fail(what, format!("unknown array element type {elem}")));
            }
            let n = c.count(&what, min_size(elem))?;
            c.items = c.items.saturating_add(n);
            if c.items > MAX_ARRAY_ITEMS {
                return Err(fail(
                    what,
                    format!("metadata arrays hold more than {MAX_ARRAY_ITEMS} elements"),
                ));
            }
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(read_value(c, elem, key, depth + 1)?);
            }
            Value::Array(items)
        }
        10 => Value::U64(c.u64(&what)?),
        11 => Value::I64(i64::from_le_bytes(c.array(&what)?)),
        12 => Value::F64(f64::from_le_bytes(c.array(&what)?)),
        _ => return Err(fail(what, format!("unknown value type {ty}"))),
    })
}
