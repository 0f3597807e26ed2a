//! Key/value cache for incremental decoding, owned by the caller.

use burn::tensor::{Int, Tensor, TensorData};

use crate::ModelError;
use crate::host::HostKv;

/// One layer's keys and values: burn tensors (any model, any device), or host buffers with spare
/// capacity (the fused CPU path of dera's own models, which appends in place).
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one per layer; boxing would add an indirection per use
pub(crate) enum LayerKv {
    /// `[B, heads, S, dim]` each.
    Tensors(Tensor<4>, Tensor<4>),
    /// Host memory, flex device.
    Host(HostKv),
}

impl LayerKv {
    /// Number of rows stored.
    pub(crate) fn rows(&self) -> usize {
        match self {
            LayerKv::Tensors(k, _) => k.dims()[0],
            LayerKv::Host(h) => h.rows,
        }
    }

    /// `(heads, dim)` of every position.
    fn head_shape(&self) -> (usize, usize) {
        match self {
            LayerKv::Tensors(k, _) => {
                let [_, h, _, d] = k.dims();
                (h, d)
            }
            LayerKv::Host(h) => (h.heads, h.dim),
        }
    }

    /// As burn tensors (a copy for host storage).
    pub(crate) fn into_tensors(self) -> (Tensor<4>, Tensor<4>) {
        match self {
            LayerKv::Tensors(k, v) => (k, v),
            LayerKv::Host(h) => h.to_tensors(),
        }
    }

    /// As host storage (a copy for tensors).
    pub(crate) fn into_host(self) -> HostKv {
        match self {
            LayerKv::Tensors(k, v) => HostKv::from_tensors(&k, &v),
            LayerKv::Host(h) => h,
        }
    }
}

/// Per-layer keys and values of everything a model has seen, shape `[B, kv_heads, S, head_dim]`.
///
/// Each decoding stream owns one cache per model, so a model stays `&self` and several models
/// can decode in lockstep. Rows may be left-padded ([`KvCache::with_padding`]): padded
/// positions are masked out and positions count from each row's first real token.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub(crate) layers: Vec<Option<LayerKv>>,
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

    /// Left padding of each row (empty: no row is padded).
    pub fn padding(&self) -> &[usize] {
        &self.pad
    }

    /// Number of layer slots.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Keys and values stored for layer `layer`, `[B, heads, S, dim]`, if any (dera's own
    /// models keep them in host buffers on the CPU: this copies those into tensors).
    pub fn layer(&self, layer: usize) -> Option<(Tensor<4>, Tensor<4>)> {
        self.layers.get(layer)?.clone().map(LayerKv::into_tensors)
    }

    /// Appends new keys and values (`[B, heads, T, dim]`) to layer `layer` along the position
    /// axis and returns everything stored for it. Call [`KvCache::advance`] once per forward
    /// pass, after every layer appended.
    pub fn append(
        &mut self,
        layer: usize,
        k: Tensor<4>,
        v: Tensor<4>,
    ) -> Result<(Tensor<4>, Tensor<4>), ModelError> {
        let slots = self.layers.len();
        let slot = self.layers.get_mut(layer).ok_or_else(|| {
            ModelError::Input(format!(
                "layer {layer} is outside a cache of {slots} layers"
            ))
        })?;
        let (k, v) = match slot.take().map(LayerKv::into_tensors) {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            None => (k, v),
        };
        *slot = Some(LayerKv::Tensors(k.clone(), v.clone()));
        Ok((k, v))
    }

    /// Counts `t` more positions as cached (a model that stores nothing still advances).
    pub fn advance(&mut self, t: usize) {
        self.len += t;
    }

    /// Positions of `t` new tokens of every one of `batch` rows, counted from each row's
    /// first real token (what rotary or learned position embeddings need).
    pub fn positions(&self, batch: usize, t: usize) -> Vec<Vec<usize>> {
        (0..batch)
            .map(|row| {
                (self.len..self.len + t)
                    .map(|j| j.saturating_sub(self.pad_of(row)))
                    .collect()
            })
            .collect()
    }

    /// Whether [`KvCache::concat`] of `self` and `other` would succeed (the same layers stored,
    /// rows matching the padding, the same heads), without joining anything.
    pub fn check_join(&self, other: &KvCache) -> Result<(), ModelError> {
        if self.layers.len() != other.layers.len() {
            return Err(ModelError::Input(format!(
                "cannot join caches of {} and {} layers",
                self.layers.len(),
                other.layers.len()
            )));
        }
        let (a_rows, b_rows) = (self.pad.len(), other.pad.len());
        for (i, (a, b)) in self.layers.iter().zip(&other.layers).enumerate() {
            match (a, b) {
                (None, None) => {}
                (Some(a), Some(b)) => {
                    if a.rows() != a_rows || b.rows() != b_rows {
                        return Err(ModelError::Input(format!(
                            "layer {i} holds {} and {} rows but the caches' padding names {a_rows} and {b_rows}",
                            a.rows(),
                            b.rows()
                        )));
                    }
                    let ((ah, ad), (bh, bd)) = (a.head_shape(), b.head_shape());
                    if (ah, ad) != (bh, bd) {
                        return Err(ModelError::Input(format!(
                            "layer {i} holds {ah}x{ad} and {bh}x{bd} heads"
                        )));
                    }
                }
                _ => {
                    return Err(ModelError::Input(format!(
                        "layer {i} is stored in one cache and not the other"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Rows of `self` followed by rows of `other`, as one cache. Rows are `padding().len()`
    /// (so both caches must have explicit padding, zeros allowed); the shorter cache is
    /// left-padded with zeros along the position axis so both reach the longer length, and its
    /// rows' padding grows by as much.
    pub fn concat(self, other: KvCache) -> Result<KvCache, ModelError> {
        self.check_join(&other)?;
        let len = self.len.max(other.len);
        let (a_grow, b_grow) = (len - self.len, len - other.len);
        let grow = |t: Tensor<4>, by: usize| {
            if by == 0 {
                return t;
            }
            let [b, h, _, d] = t.dims();
            let zeros = Tensor::<4>::zeros([b, h, by, d], &t.device());
            Tensor::cat(vec![zeros, t], 2)
        };
        // Validated above: the same layers are stored, rows and heads match.
        let mut layers = Vec::with_capacity(self.layers.len());
        for (a, b) in self.layers.into_iter().zip(other.layers) {
            layers.push(match (a, b) {
                (Some(LayerKv::Tensors(ak, av)), Some(LayerKv::Tensors(bk, bv))) => {
                    Some(LayerKv::Tensors(
                        Tensor::cat(vec![grow(ak, a_grow), grow(bk, b_grow)], 0),
                        Tensor::cat(vec![grow(av, a_grow), grow(bv, b_grow)], 0),
                    ))
                }
                (Some(LayerKv::Host(mut a)), Some(LayerKv::Host(b))) if a.len >= b.len => {
                    a.append_rows(&b);
                    Some(LayerKv::Host(a))
                }
                (Some(a), Some(b)) => Some(LayerKv::Host(HostKv::concat(
                    &a.into_host(),
                    &b.into_host(),
                ))),
                _ => None,
            });
        }
        let pad = self
            .pad
            .iter()
            .map(|&p| p + a_grow)
            .chain(other.pad.iter().map(|&p| p + b_grow))
            .collect();
        Ok(KvCache { layers, len, pad })
    }

    /// Drops the padding every row shares (the first `min(padding)` positions), so a batch
    /// whose longest rows finished stops attending over positions no row uses.
    ///
    /// A cache in host buffers (dera's fused CPU path, whose attention skips padding anyway)
    /// is trimmed only once the shared padding is at least half of it, so a batch whose rows
    /// come and go does not move its whole cache at every departure.
    pub fn trim(self) -> KvCache {
        let cut = self.pad.iter().copied().min().unwrap_or(0);
        if cut == 0 {
            return self;
        }
        let host = self
            .layers
            .iter()
            .flatten()
            .all(|l| matches!(l, LayerKv::Host(_)));
        if host && self.layers.iter().any(Option::is_some) && 2 * cut < self.len {
            return self;
        }
        let keep = self.len - cut;
        let layers = self
            .layers
            .into_iter()
            .map(|l| {
                l.map(|l| match l {
                    LayerKv::Tensors(k, v) => {
                        LayerKv::Tensors(k.narrow(2, cut, keep), v.narrow(2, cut, keep))
                    }
                    LayerKv::Host(mut h) => {
                        h.drop_front(cut);
                        LayerKv::Host(h)
                    }
                })
            })
            .collect();
        KvCache {
            layers,
            len: keep,
            pad: self.pad.iter().map(|&p| p - cut).collect(),
        }
    }

    /// The first `len` positions of every row (at most [`Self::len`]): the cache of the first
    /// `len - padding` tokens of each row's prompt, since a position's keys and values depend
    /// only on the tokens up to it.
    pub fn truncate(mut self, len: usize) -> KvCache {
        let len = len.min(self.len);
        for l in self.layers.iter_mut().flatten() {
            match l {
                LayerKv::Tensors(k, v) => {
                    *k = k.clone().narrow(2, 0, len);
                    *v = v.clone().narrow(2, 0, len);
                }
                LayerKv::Host(h) => h.truncate(len),
            }
        }
        self.len = len;
        self
    }

    /// Bytes the keys and values hold (positions allocated for growth included).
    pub fn byte_len(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|l| match l {
                LayerKv::Tensors(k, v) => {
                    let n = |t: &Tensor<4>| t.dims().iter().product::<usize>();
                    (n(k) + n(v)) * 4
                }
                LayerKv::Host(h) => h.byte_len(),
            })
            .sum()
    }

    /// Keeps rows `rows` (in that order, repeats allowed): for dropping finished sequences or
    /// fanning a prefilled prompt out to many sequences.
    pub fn select_rows(&self, rows: &[usize]) -> Self {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                l.as_ref().map(|l| match l {
                    LayerKv::Tensors(k, v) => select_tensor_rows(k.clone(), v.clone(), rows),
                    LayerKv::Host(h) => LayerKv::Host(h.select_rows(rows)),
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

    /// [`KvCache::select_rows`] for a cache given away: when `rows` are strictly increasing
    /// (dropping finished rows), host buffers move the kept rows down in place.
    pub fn keep_rows(self, rows: &[usize]) -> Self {
        if !rows.windows(2).all(|w| w[0] < w[1]) || rows.iter().any(|&r| r >= self.pad.len().max(1))
        {
            return self.select_rows(rows);
        }
        let pad = rows.iter().map(|&r| self.pad_of(r)).collect();
        let layers = self
            .layers
            .into_iter()
            .map(|l| {
                l.map(|l| match l {
                    LayerKv::Host(mut h) => {
                        h.keep_increasing(rows);
                        LayerKv::Host(h)
                    }
                    LayerKv::Tensors(k, v) => select_tensor_rows(k, v, rows),
                })
            })
            .collect();
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

/// Rows `rows` (axis 0) of both tensors.
fn select_tensor_rows(k: Tensor<4>, v: Tensor<4>, rows: &[usize]) -> LayerKv {
    let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [rows.len()]), &k.device());
    LayerKv::Tensors(k.select(0, idx.clone()), v.select(0, idx))
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Tensor, TensorData};

    use super::KvCache;

    /// A one-layer cache of `rows` rows and `len` positions whose values name row and position.
    fn cache(rows: usize, len: usize, pad: Vec<usize>, base: f32) -> KvCache {
        let mut c = KvCache::with_padding(1, pad);
        let v: Vec<f32> = (0..rows * len)
            .map(|i| base + (i / len) as f32 * 10.0 + (i % len) as f32)
            .collect();
        let t = Tensor::<4>::from_data(TensorData::new(v, [rows, 1, len, 1]), &Device::flex());
        c.append(0, t.clone(), t).unwrap();
        c.advance(len);
        c
    }

    fn values(c: &KvCache) -> Vec<f32> {
        c.layer(0)
            .unwrap()
            .0
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    }

    #[test]
    fn concat_left_pads_the_shorter_side_and_trim_drops_shared_padding() {
        let a = cache(1, 3, vec![0], 100.0);
        let b = cache(2, 1, vec![0, 0], 200.0);
        let joined = a.concat(b).unwrap();
        assert_eq!(joined.len(), 3);
        assert_eq!(joined.padding(), [0, 2, 2]);
        assert_eq!(
            values(&joined),
            [100.0, 101.0, 102.0, 0.0, 0.0, 200.0, 0.0, 0.0, 210.0]
        );
        let rest = joined.select_rows(&[1, 2]).trim();
        assert_eq!((rest.len(), rest.padding()), (1, &[0usize, 0][..]));
        assert_eq!(values(&rest), [200.0, 210.0]);
        assert_eq!(rest.positions(2, 1), [[1], [1]]);
    }

    /// `truncate` keeps the first positions of every row, their padding and byte count, on
    /// tensor and host caches alike.
    #[test]
    fn truncate_keeps_the_first_positions() {
        let c = cache(2, 4, vec![0, 1], 100.0);
        assert_eq!(c.byte_len(), 2 * 4 * 4 * 2);
        let t = c.clone().truncate(2);
        assert_eq!((t.len(), t.padding()), (2, &[0usize, 1][..]));
        assert_eq!(values(&t), [100.0, 101.0, 110.0, 111.0]);
        assert_eq!(t.byte_len(), 2 * 2 * 4 * 2);
        assert_eq!(c.clone().truncate(9).len(), 4);
        // In host buffers (as the fused CPU path keeps them): the same values, then a join.
        let mut h = c;
        for l in h.layers.iter_mut() {
            *l = l.take().map(|l| super::LayerKv::Host(l.into_host()));
        }
        let h = h.truncate(2);
        assert_eq!((h.len(), values(&h)), (2, vec![100.0, 101.0, 110.0, 111.0]));
        let joined = h.concat(cache(1, 3, vec![0], 200.0)).unwrap();
        assert_eq!(joined.padding(), [1, 2, 0]);
        assert_eq!(
            values(&joined),
            [0.0, 100.0, 101.0, 0.0, 110.0, 111.0, 200.0, 201.0, 202.0]
        );
    }

    #[test]
    fn caches_of_different_models_do_not_join() {
        let a = cache(1, 2, vec![0], 0.0);
        let e = a.concat(KvCache::with_padding(2, vec![0])).unwrap_err();
        assert!(e.to_string().contains("1 and 2 layers"), "{e}");
        let a = cache(1, 2, vec![0], 0.0);
        let e = a.concat(KvCache::with_padding(1, vec![0])).unwrap_err();
        assert!(e.to_string().contains("one cache and not the other"), "{e}");
        assert!(KvCache::new(1).append(3, t0(), t0()).is_err());
    }

    fn t0() -> Tensor<4> {
        Tensor::zeros([1, 1, 1, 1], &Device::flex())
    }
}
