//! The building blocks shared by the model families.

use std::sync::Arc;

use burn::tensor::activation::softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use dera_kernels::HostMatrix;

use crate::cache::{KvCache, LayerKv};

/// The weight of a dense layer, `[out, in]` as `torch.nn.Linear` stores it.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // a handful per layer; boxing would add an indirection per use
pub(crate) enum Dense {
    /// A burn tensor on the model's device (any backend; also the trainer's tensors).
    Device(Tensor<2>),
    /// Matrices in host memory, stacked by rows (a fused layer keeps its parts: no copy), in
    /// their stored or quantized format, multiplied by `dera_kernels` on the CPU.
    Host(Vec<Arc<HostMatrix>>),
}

impl Dense {
    /// The host matrices, `None` for a burn tensor.
    pub(crate) fn host_parts(&self) -> Option<&[Arc<HostMatrix>]> {
        match self {
            Dense::Host(parts) => Some(parts),
            Dense::Device(_) => None,
        }
    }

    /// Addresses of the host matrices (empty for a device tensor): equal addresses mean the
    /// very same weights.
    pub(crate) fn host_addresses(&self) -> Vec<usize> {
        match self {
            Dense::Host(parts) => parts.iter().map(|p| Arc::as_ptr(p) as usize).collect(),
            Dense::Device(_) => Vec::new(),
        }
    }

    /// `x W^T` for `x` `[m, in]`.
    pub(crate) fn apply(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Dense::Device(w) => device_product(w, x),
            Dense::Host(parts) => {
                let device = x.device();
                let m = x.dims()[0];
                let xs = host_values(x);
                let y = host_product(parts, &xs, m);
                let n = y.len() / m.max(1);
                Tensor::from_data(TensorData::new(y, [m, n]), &device)
            }
        }
    }

    /// Rows `ids` (an embedding lookup) as `[ids.len(), in]`.
    pub(crate) fn rows(&self, ids: Tensor<1, Int>, device: &Device) -> Tensor<2> {
        match self {
            Dense::Device(w) => w.clone().select(0, ids),
            Dense::Host(parts) => {
                let n = ids.dims()[0];
                let ids: Vec<usize> = ids.into_data().iter::<i64>().map(|i| i as usize).collect();
                let m = &parts[0];
                let values = m.gather_f32(&ids).expect("token ids checked by the model");
                Tensor::from_data(TensorData::new(values, [n, m.cols()]), device)
            }
        }
    }

    /// Stacks layers by rows.
    fn stack(parts: Vec<Dense>) -> Dense {
        if parts.iter().all(|p| matches!(p, Dense::Host(_))) {
            Dense::Host(
                parts
                    .into_iter()
                    .flat_map(|p| match p {
                        Dense::Host(v) => v,
                        Dense::Device(_) => Vec::new(),
                    })
                    .collect(),
            )
        } else {
            Dense::Device(Tensor::cat(
                parts.into_iter().map(|p| p.into_device_tensor()).collect(),
                0,
            ))
        }
    }

    /// The weight as one burn tensor (host matrices are widened to f32 on the flex device).
    fn into_device_tensor(self) -> Tensor<2> {
        match self {
            Dense::Device(w) => w,
            Dense::Host(parts) => {
                let cols = parts.first().map_or(0, |p| p.cols());
                let rows: usize = parts.iter().map(|p| p.rows()).sum();
                let values: Vec<f32> = parts.iter().flat_map(|p| p.to_f32()).collect();
                Tensor::from_data(TensorData::new(values, [rows, cols]), &Device::flex())
            }
        }
    }
}

/// Activations (f32 tensors made by this crate) as a host vector.
fn host_values(x: Tensor<2>) -> Vec<f32> {
    x.into_data()
        .try_into_vec::<f32>()
        .expect("activations are f32")
}

/// `x W^T` on the host for `xs` `[m, in]` (shapes were checked at load, so this cannot fail on
/// user input).
pub(crate) fn host_product(parts: &[Arc<HostMatrix>], xs: &[f32], m: usize) -> Vec<f32> {
    let refs: Vec<&HostMatrix> = parts.iter().map(|p| p.as_ref()).collect();
    dera_kernels::matmul_t(xs, m, &refs).expect("shapes checked at load")
}

/// One low-rank term of a (possibly fused) layer: adds `scale * (x A^T) B^T` to outputs
/// `offset..offset + out`.
#[derive(Debug, Clone)]
pub(crate) struct LowRankPart {
    pub(crate) offset: usize,
    pub(crate) out: usize,
    pub(crate) rank: usize,
    pub(crate) scale: f32,
    /// `A`, `[rank, in]`, f32 for the CPU kernels.
    pub(crate) a: Arc<HostMatrix>,
    /// `B`, `[out, rank]`, f32 for the CPU kernels.
    pub(crate) b: Arc<HostMatrix>,
    /// `A^T` `[in, rank]` and `B^T` `[rank, out]` as burn tensors, for layers whose weight is
    /// a burn tensor (devices other than flex).
    pub(crate) dev: Option<(Tensor<2>, Tensor<2>)>,
}

/// The low-rank update of one layer under one adapter (no parts: the layer is not adapted).
#[derive(Debug, Clone, Default)]
pub(crate) struct LowRank {
    pub(crate) parts: Vec<LowRankPart>,
}

impl LowRank {
    /// Adds the update to rows `rows` of `y` `[m, n]`, for activations `xs` `[m, inp]`: the
    /// selected rows times every part's `A` in one product, then each part's `B` (the CPU
    /// kernels, f32 accumulation, on every core).
    pub(crate) fn add_rows_host(
        &self,
        xs: &[f32],
        inp: usize,
        rows: &[usize],
        y: &mut [f32],
        n: usize,
    ) {
        let k = rows.len();
        let sel: Vec<f32> = rows
            .iter()
            .flat_map(|&r| xs[r * inp..(r + 1) * inp].iter().copied())
            .collect();
        let a: Vec<&HostMatrix> = self.parts.iter().map(|p| p.a.as_ref()).collect();
        let u = dera_kernels::matmul_t(&sel, k, &a).expect("adapter shapes checked at load");
        let total: usize = self.parts.iter().map(|p| p.rank).sum();
        let mut col = 0;
        for p in &self.parts {
            if k * p.out * p.rank >= LOW_RANK_PARALLEL_FROM {
                // A big product: the kernels, split over the cores.
                let up: Vec<f32> = (0..k)
                    .flat_map(|j| u[j * total + col..j * total + col + p.rank].iter().copied())
                    .collect();
                let d = dera_kernels::matmul_t(&up, k, &[p.b.as_ref()])
                    .expect("adapter shapes checked at load");
                for (j, &r) in rows.iter().enumerate() {
                    let out = &mut y[r * n + p.offset..r * n + p.offset + p.out];
                    for (o, &v) in out.iter_mut().zip(&d[j * p.out..(j + 1) * p.out]) {
                        *o += p.scale * v;
                    }
                }
            } else {
                // A small one (a low rank, a decode step): short dot products on this thread,
                // cheaper than a kernel call.
                let b = p.b.bytes().as_slice();
                for (j, &r) in rows.iter().enumerate() {
                    let u = &u[j * total + col..j * total + col + p.rank];
                    let out = &mut y[r * n + p.offset..r * n + p.offset + p.out];
                    for (o, brow) in out.iter_mut().zip(b.chunks_exact(4 * p.rank)) {
                        *o += p.scale * dot_le_f32(brow, u);
                    }
                }
            }
            col += p.rank;
        }
    }

    /// The update of rows `rows` of `x` `[m, in]` as burn operations, placed in an `[m, n]`
    /// tensor (zero elsewhere).
    fn device_delta(&self, x: &Tensor<2>, rows: &[usize], n: usize) -> Tensor<2> {
        let (device, m, k) = (x.device(), x.dims()[0], rows.len());
        let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let xs = x.clone().select(
            0,
            Tensor::<1, Int>::from_data(TensorData::new(idx, [k]), &device),
        );
        let mut cols: Vec<Tensor<2>> = Vec::new();
        let mut at = 0;
        for p in &self.parts {
            let (a_t, b_t) = p
                .dev
                .clone()
                .expect("device tensors built for device layers");
            if p.offset > at {
                cols.push(Tensor::zeros([k, p.offset - at], &device));
            }
            cols.push(xs.clone().matmul(a_t).matmul(b_t).mul_scalar(p.scale));
            at = p.offset + p.out;
        }
        if n > at {
            cols.push(Tensor::zeros([k, n - at], &device));
        }
        let d = Tensor::cat(cols, 1);
        let mut onehot = vec![0f32; m * k];
        for (j, &r) in rows.iter().enumerate() {
            onehot[r * k + j] = 1.0;
        }
        Tensor::<2>::from_data(TensorData::new(onehot, [m, k]), &device).matmul(d)
    }
}

/// Multiply-adds of a low-rank `B` product from which it is split over the cores.
const LOW_RANK_PARALLEL_FROM: usize = 1 << 15;

/// `sum_i w_i u_i` for little-endian f32 bytes `w`, in eight lanes (vectorizable).
fn dot_le_f32(w: &[u8], u: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (wc, uc) = (w.chunks_exact(32), u.chunks_exact(8));
    let (wr, ur) = (wc.remainder(), uc.remainder());
    for (w8, u8) in wc.zip(uc) {
        for ((a, w), &x) in acc.iter_mut().zip(w8.chunks_exact(4)).zip(u8) {
            *a += f32::from_le_bytes([w[0], w[1], w[2], w[3]]) * x;
        }
    }
    let mut tail = 0f32;
    for (w, &x) in wr.chunks_exact(4).zip(ur) {
        tail += f32::from_le_bytes([w[0], w[1], w[2], w[3]]) * x;
    }
    acc.iter().sum::<f32>() + tail
}

/// A dense layer `y = x W^T + b` with `W` stored `[out, in]` (as `torch.nn.Linear` stores it).
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    pub(crate) weight: Dense,
    pub(crate) bias: Option<Tensor<1>>,
}

impl Linear {
    /// One layer computing the given layers side by side (outputs concatenated): fewer, larger
    /// matrix products per token.
    pub(crate) fn fuse(parts: Vec<Linear>) -> Linear {
        let bias = if parts.iter().all(|p| p.bias.is_some()) {
            Some(Tensor::cat(
                parts.iter().filter_map(|p| p.bias.clone()).collect(),
                0,
            ))
        } else {
            None
        };
        Linear {
            weight: Dense::stack(parts.into_iter().map(|p| p.weight).collect()),
            bias,
        }
    }

    pub(crate) fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let y = self.weight.apply(x);
        self.add_bias(y)
    }

    fn add_bias(&self, y: Tensor<2>) -> Tensor<2> {
        match &self.bias {
            Some(b) => y + b.clone().unsqueeze_dim::<2>(0),
            None => y,
        }
    }

    /// [`Self::forward`] plus low-rank updates: each `(update, rows)` adds its update to those
    /// rows of the output only (rows of different updates must not overlap). The base product
    /// runs once for all rows.
    pub(crate) fn forward_lora(&self, x: Tensor<2>, updates: &[(&LowRank, &[usize])]) -> Tensor<2> {
        if updates.is_empty() {
            return self.forward(x);
        }
        let y = match &self.weight {
            Dense::Host(parts) => {
                let device = x.device();
                let m = x.dims()[0];
                let xs = host_values(x);
                let mut y = host_product(parts, &xs, m);
                let (n, k) = (y.len() / m.max(1), xs.len() / m.max(1));
                for (u, rows) in updates {
                    u.add_rows_host(&xs, k, rows, &mut y, n);
                }
                Tensor::from_data(TensorData::new(y, [m, n]), &device)
            }
            Dense::Device(_) => {
                let mut y = self.weight.apply(x.clone());
                let n = y.dims()[1];
                for (u, rows) in updates {
                    y = y + u.device_delta(&x, rows, n);
                }
                y
            }
        };
        self.add_bias(y)
    }
}

/// `x W^T` with burn, applied as `(W x^T)^T`: the big operand is read in its stored row-major
/// layout, which burn-flex's `gemm` runs 1.4 to 1.7x faster than `x W^T` on a few rows with the
/// weights out of cache (`examples/orient_probe.rs`).
fn device_product(w: &Tensor<2>, x: Tensor<2>) -> Tensor<2> {
    let xt = x.transpose();
    match flex_row_blocks(&xt, w) {
        Some(p) => {
            let ([n, k], m) = (w.dims(), xt.dims()[1]);
            // `W` `[n, k]` viewed as `p` row blocks `[p, n/p, k]` (a reshape, no copy); the
            // `p`-batch product runs one block per core.
            let blocks = w.clone().reshape([p, n / p, k]);
            blocks
                .matmul(xt.unsqueeze::<3>())
                .reshape([n, m])
                .transpose()
        }
        None => w.clone().matmul(xt).transpose(),
    }
}

/// burn-flex 0.22.1 (`ops/matmul.rs`) runs a product of fewer than 192^3 multiply-adds on one
/// core, but spreads a batched product over the cores from 128^3 multiply-adds in all.
const FLEX_SERIAL_BELOW: usize = 192 * 192 * 192;
const FLEX_BATCH_PARALLEL_FROM: usize = 128 * 128 * 128;

/// How many row blocks to split `W x^T` into on flex, when the product falls between those two
/// thresholds: a decode step of a few rows (a sweep batch) through a small projection, which
/// would otherwise leave all cores but one idle. `None`: multiply as one matrix.
fn flex_row_blocks(xt: &Tensor<2>, w: &Tensor<2>) -> Option<usize> {
    let ([n, k], m) = (w.dims(), xt.dims()[1]);
    let work = m.saturating_mul(k).saturating_mul(n);
    if !(FLEX_BATCH_PARALLEL_FROM..FLEX_SERIAL_BELOW).contains(&work) {
        return None;
    }
    let cores = rayon::current_num_threads();
    let p = (2..=cores.min(16)).rev().find(|p| n % p == 0)?;
    (xt.device() == Device::flex()).then_some(p)
}

/// Logits `[n, vocab]` of an output head stored `[vocab, hidden]` (the tied embedding or an
/// `lm_head`).
///
/// Computed as `(E h^T)^T` so every backend multiplies the matrix in its stored row-major
/// layout (ndarray would otherwise copy the transposed 100 MB matrix on every step).
pub(crate) fn output_logits(embed: &Dense, h: Tensor<2>) -> Tensor<2> {
    match embed {
        Dense::Device(e) => e.clone().matmul(h.transpose()).transpose(),
        host => host.apply(h),
    }
}

/// RMSNorm as in transformers: `w * x / sqrt(mean(x^2) + eps)`.
pub(crate) fn rms_norm(x: Tensor<2>, weight: &Tensor<1>, eps: f64) -> Tensor<2> {
    let inv = x
        .clone()
        .square()
        .mean_dim(1)
        .add_scalar(eps)
        .sqrt()
        .recip();
    x * inv * weight.clone().unsqueeze_dim::<2>(0)
}

/// LayerNorm with biased variance.
pub(crate) fn layer_norm(
    x: Tensor<2>,
    weight: &Tensor<1>,
    bias: &Tensor<1>,
    eps: f64,
) -> Tensor<2> {
    let (var, mean) = x.clone().var_mean_bias(1);
    let normed = (x - mean) * var.add_scalar(eps).sqrt().recip();
    normed * weight.clone().unsqueeze_dim::<2>(0) + bias.clone().unsqueeze_dim::<2>(0)
}

/// GPT-2's tanh approximation of GELU (`gelu_new`).
pub(crate) fn gelu_new(x: Tensor<2>) -> Tensor<2> {
    let c = (2.0f64 / std::f64::consts::PI).sqrt();
    let inner = (x.clone() + x.clone().powi_scalar(3).mul_scalar(0.044715)).mul_scalar(c);
    x.clone().mul_scalar(0.5) * inner.tanh().add_scalar(1.0)
}

/// GELU with the exact error function.
pub(crate) fn gelu_erf(x: Tensor<2>) -> Tensor<2> {
    let inner = x
        .clone()
        .mul_scalar(std::f64::consts::FRAC_1_SQRT_2)
        .erf()
        .add_scalar(1.0);
    x.mul_scalar(0.5) * inner
}

/// Splits `[B*T, heads*d]` into `[B, heads, T, d]`.
pub(crate) fn split_heads(x: Tensor<2>, b: usize, t: usize, heads: usize, d: usize) -> Tensor<4> {
    x.reshape([b, t, heads, d]).swap_dims(1, 2)
}

/// Merges `[B, heads, T, d]` back into `[B*T, heads*d]`.
pub(crate) fn merge_heads(x: Tensor<4>) -> Tensor<2> {
    let [b, h, t, d] = x.dims();
    x.swap_dims(1, 2).reshape([b * t, h * d])
}

/// Positions of the `t` new tokens of every row, counted from the row's first real token.
pub(crate) fn positions(cache: &KvCache, b: usize, t: usize) -> Vec<Vec<usize>> {
    cache.positions(b, t)
}

/// Additive attention bias `[B, 1, T, S]` hiding future and padded keys, or `None` when every
/// key is visible (one new token and no padding).
pub(crate) fn attention_bias(
    cache: &KvCache,
    b: usize,
    t: usize,
    device: &Device,
) -> Option<Tensor<4>> {
    if t == 1 && !cache.has_padding() {
        return None;
    }
    let past = cache.len;
    let s = past + t;
    // A large finite value: a query that sees only padding gets a uniform (finite) row instead of NaN.
    const HIDDEN: f32 = -1e30;
    let mut bias = vec![0f32; b * t * s];
    for row in 0..b {
        let pad = cache.pad_of(row);
        for q in 0..t {
            for k in 0..s {
                if k > past + q || k < pad {
                    bias[(row * t + q) * s + k] = HIDDEN;
                }
            }
        }
    }
    Some(Tensor::from_data(
        TensorData::new(bias, [b, 1, t, s]),
        device,
    ))
}

/// Appends new keys/values to layer `layer` of the cache and returns everything cached.
pub(crate) fn extend_cache(
    cache: &mut KvCache,
    layer: usize,
    k: Tensor<4>,
    v: Tensor<4>,
) -> (Tensor<4>, Tensor<4>) {
    let (k, v) = match cache.layers[layer].take().map(LayerKv::into_tensors) {
        Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
        None => (k, v),
    };
    cache.layers[layer] = Some(LayerKv::Tensors(k.clone(), v.clone()));
    (k, v)
}

/// Scaled dot-product attention with grouped-query heads, without copying keys/values per group.
///
/// `q`: `[B, H, T, D]`; `k`, `v`: `[B, KVH, S, D]`; `bias`: `[B, 1, T, S]`. Returns `[B, H, T, D]`.
pub(crate) fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    bias: Option<&Tensor<4>>,
    scale: f64,
) -> Tensor<4> {
    let [b, h, t, d] = q.dims();
    let kvh = k.dims()[1];
    let groups = h / kvh;
    let q = q.reshape([b, kvh, groups * t, d]);
    let mut scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale);
    if let Some(bias) = bias {
        scores = scores + bias.clone().repeat_dim(2, groups);
    }
    let probs = softmax(scores, 3);
    probs.matmul(v).reshape([b, h, t, d])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::XorShift as Rng;

    fn tensor(rng: &mut Rng, shape: [usize; 2]) -> Tensor<2> {
        let data = rng.fill(shape[0] * shape[1], 1.0);
        Tensor::from_data(TensorData::new(data, shape), &Device::flex())
    }

    /// A sweep-sized product (10 rows through a 576 -> 960 projection) takes the row-block
    /// path on a multi-core flex device, and gives the same bits as one plain product.
    #[test]
    fn row_blocks_give_the_plain_product_bit_for_bit() {
        let mut rng = Rng::new(3);
        let (x, w) = (tensor(&mut rng, [10, 576]), tensor(&mut rng, [960, 576]));
        let blocks = flex_row_blocks(&x.clone().transpose(), &w);
        if rayon::current_num_threads() > 1 {
            assert!(blocks.is_some(), "this shape should be split");
        }
        let lin = Linear {
            weight: Dense::Device(w.clone()),
            bias: None,
        };
        let got = lin.forward(x.clone()).into_data();
        let want = w.clone().matmul(x.transpose()).transpose().into_data();
        assert_eq!(got.shape(), want.shape());
        let bits = |d: &TensorData| -> Vec<u32> {
            d.as_slice::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        assert_eq!(bits(&got), bits(&want));
        // One row, or a product big enough for flex's own threading, stays one product.
        assert_eq!(flex_row_blocks(&tensor(&mut rng, [576, 1]), &w), None);
        assert_eq!(flex_row_blocks(&tensor(&mut rng, [576, 64]), &w), None);
    }
}
