//! The building blocks shared by the model families.

use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor, TensorData};

use crate::cache::KvCache;

/// A dense layer `y = x W^T + b` with `W` stored `[out, in]` (as `torch.nn.Linear` stores it).
///
/// Applied as `(W x^T)^T`: the big operand is read in its stored row-major layout, which
/// burn-flex's `gemm` runs 1.4 to 1.7x faster than `x W^T` on a few rows with the weights out of
/// cache (`examples/orient_probe.rs`).
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    pub(crate) weight: Tensor<2>,
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
            weight: Tensor::cat(parts.into_iter().map(|p| p.weight).collect(), 0),
            bias,
        }
    }

    pub(crate) fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let xt = x.transpose();
        let y = match flex_row_blocks(&xt, &self.weight) {
            Some(p) => {
                let ([n, k], m) = (self.weight.dims(), xt.dims()[1]);
                // `W` `[n, k]` viewed as `p` row blocks `[p, n/p, k]` (a reshape, no copy); the
                // `p`-batch product runs one block per core.
                let blocks = self.weight.clone().reshape([p, n / p, k]);
                blocks
                    .matmul(xt.unsqueeze::<3>())
                    .reshape([n, m])
                    .transpose()
            }
            None => self.weight.clone().matmul(xt).transpose(),
        };
        match &self.bias {
            Some(b) => y + b.clone().unsqueeze_dim::<2>(0),
            None => y,
        }
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
pub(crate) fn output_logits(embed: &Tensor<2>, h: Tensor<2>) -> Tensor<2> {
    embed.clone().matmul(h.transpose()).transpose()
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
    (0..b)
        .map(|row| {
            (cache.len..cache.len + t)
                .map(|j| j.saturating_sub(cache.pad_of(row)))
                .collect()
        })
        .collect()
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
    let (k, v) = match cache.layers[layer].take() {
        Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
        None => (k, v),
    };
    cache.layers[layer] = Some((k.clone(), v.clone()));
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
            weight: w.clone(),
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
