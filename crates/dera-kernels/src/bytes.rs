//! Weight bytes: owned, or borrowed from a longer-lived buffer such as a memory map.

use std::ops::Range;
use std::sync::Arc;

/// An immutable byte buffer that a [`crate::HostMatrix`] reads its values from (little-endian).
///
/// `Shared` keeps a memory-mapped checkpoint alive and reads one tensor out of it in place, so
/// weights used in their stored precision take no memory beyond the file's pages.
#[derive(Clone)]
pub enum Bytes {
    /// Bytes owned by the matrix.
    Owned(Vec<u8>),
    /// A range of a shared buffer (e.g. `Arc<memmap2::Mmap>`).
    Shared(Arc<dyn AsRef<[u8]> + Send + Sync>, Range<usize>),
}

impl Bytes {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Shared(buf, range) => &(**buf).as_ref()[range.clone()],
        }
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        match self {
            Bytes::Owned(v) => v.len(),
            Bytes::Shared(_, range) => range.len(),
        }
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the bytes are borrowed from a shared buffer.
    pub fn is_shared(&self) -> bool {
        matches!(self, Bytes::Shared(..))
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bytes::Owned(v) => write!(f, "Owned({} bytes)", v.len()),
            Bytes::Shared(_, r) => write!(f, "Shared({r:?})"),
        }
    }
}
