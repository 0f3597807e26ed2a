//! Key/value cache for incremental decoding, owned by the caller.

use burn::tensor::{Int, Tensor, TensorData};

/// Per-layer keys and values of everything a model has seen, shape `[B, kv_heads, S, head_dim]`.
///
/// Each decoding stream owns one cache per model, so a model stays `&self` and several models
/// can decode in lockstep. Rows may be left-padded ([`KvCache::with_padding`]): padded
/// positions are masked out and positions count from each row's first real token.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub(crate) layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    pub(crate) len: usize,
    pub(crate) pad: Vec<usize>,
}

impl KvCache {
    /// An empty cache for a model with `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            len: 0,
            pad: Vec::new(),
        }
    }

    /// An empty cache whose rows start with `pad[b]` padding tokens (left padding).
    pub fn with_padding(num_layers: usize, pad: Vec<usize>) -> Self {
        Self {
            layers: vec![None; num_layers],
            len: 0,
            pad,
        }
    }

    /// Number of positions cached (including padding).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Left padding of each row.
    pub fn padding(&self) -> &[usize] {
        &self.pad
    }

    /// Repeats every row `times` times (row `b` becomes rows `b*times .. (b+1)*times`), so a
    /// prompt prefilled once can be decoded by many sequences.
    pub fn repeat_rows(&self, times: usize) -> Self {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                l.as_ref().map(|(k, v)| {
                    let rep = |t: &Tensor<4>| {
                        let [b, h, s, d] = t.dims();
                        t.clone()
                            .unsqueeze_dim::<5>(1)
                            .repeat_dim(1, times)
                            .reshape([b * times, h, s, d])
                    };
                    (rep(k), rep(v))
                })
            })
            .collect();
        let pad = self
            .pad
            .iter()
            .flat_map(|&p| std::iter::repeat_n(p, times))
            .collect();
        Self {
            layers,
            len: self.len,
            pad,
        }
    }

    /// Keeps rows `rows` (in that order, repeats allowed): for dropping finished sequences or
    /// fanning a prefilled prompt out to many sequences.
    pub fn select_rows(&self, rows: &[usize]) -> Self {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                l.as_ref().map(|(k, v)| {
                    let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
                    let idx = Tensor::<1, Int>::from_data(
                        TensorData::new(idx, [rows.len()]),
                        &k.device(),
                    );
                    (k.clone().select(0, idx.clone()), v.clone().select(0, idx))
                })
            })
            .collect();
        let pad = rows.iter().map(|&r| self.pad_of(r)).collect();
        Self {
            layers,
            len: self.len,
            pad,
        }
    }

    pub(crate) fn pad_of(&self, row: usize) -> usize {
        self.pad.get(row).copied().unwrap_or(0)
    }

    pub(crate) fn has_padding(&self) -> bool {
        self.pad.iter().any(|&p| p > 0)
    }
}
