//! The fused CPU path: a Llama-family pass over plain `f32` buffers, for models whose weights
//! are all [`dera_kernels::HostMatrix`] on the flex device.
//!
//! At decode shapes a step is ~120 products of 50-500 µs and, around them, norms, RoPE,
//! attention and residual adds on a few thousand values each. As burn operations those cost an
//! allocation, a tensor and a dispatch each, and the KV cache grew by `Tensor::cat` (a copy of
//! the whole cache per layer per step). Here they are loops over the activations, and the cache
//! is a [`HostKv`] with spare capacity that a step writes into in place.
//!
//! Every value is computed by a fixed sequence of operations whatever the thread count or the
//! other rows in the batch (work is split by whole rows and heads only), so the guarantees of
//! the kernels hold for the whole pass: bit-identical at 1, 2 or N threads, and a row gives the
//! same bits alone or in a (left-padded) batch.

use burn::tensor::{Device, Tensor, TensorData};
use dera_kernels::math::exp;

/// Keys and values of one layer in host memory, `[rows, heads, cap, dim]`, filled up to `len`
/// positions: appending writes into the spare capacity (which at least doubles when it runs
/// out), so a decode step copies none of the past.
#[derive(Debug, Clone)]
pub(crate) struct HostKv {
    pub(crate) rows: usize,
    pub(crate) heads: usize,
    pub(crate) dim: usize,
    pub(crate) cap: usize,
    pub(crate) len: usize,
    pub(crate) k: Vec<f32>,
    pub(crate) v: Vec<f32>,
}

/// Smallest capacity a growing cache takes, in positions.
const MIN_CAP: usize = 16;

impl HostKv {
    /// An empty layer of `rows` rows.
    pub(crate) fn new(rows: usize, heads: usize, dim: usize) -> Self {
        Self {
            rows,
            heads,
            dim,
            cap: 0,
            len: 0,
            k: Vec::new(),
            v: Vec::new(),
        }
    }

    /// Start of position `pos` of `head` in `row`.
    #[inline]
    fn at(&self, row: usize, head: usize, pos: usize) -> usize {
        ((row * self.heads + head) * self.cap + pos) * self.dim
    }

    /// The first `len` keys and values of `head` in `row`, `[len, dim]` each.
    #[inline]
    pub(crate) fn head(&self, row: usize, head: usize) -> (&[f32], &[f32]) {
        let a = self.at(row, head, 0);
        let n = self.len * self.dim;
        (&self.k[a..a + n], &self.v[a..a + n])
    }

    /// Makes room for `extra` more positions: the capacity at least doubles (from
    /// [`MIN_CAP`]) but does not pass `limit` (the model's context) unless it must.
    pub(crate) fn reserve(&mut self, extra: usize, limit: usize) {
        let need = self.len + extra;
        if need <= self.cap {
            return;
        }
        let cap = (self.cap * 2).max(MIN_CAP).min(limit).max(need);
        *self = self.regrown(cap, 0);
    }

    /// A copy with capacity `cap` whose rows are shifted right by `shift` zero positions (left
    /// padding); `len` grows by `shift`.
    fn regrown(&self, cap: usize, shift: usize) -> Self {
        let len = self.len + shift;
        debug_assert!(len <= cap);
        let size = self.rows * self.heads * cap * self.dim;
        let (mut k, mut v) = (vec![0f32; size], vec![0f32; size]);
        let (n, d) = (self.len * self.dim, self.dim);
        for rh in 0..self.rows * self.heads {
            let src = rh * self.cap * d;
            let dst = (rh * cap + shift) * d;
            k[dst..dst + n].copy_from_slice(&self.k[src..src + n]);
            v[dst..dst + n].copy_from_slice(&self.v[src..src + n]);
        }
        Self {
            cap,
            len,
            k,
            v,
            ..*self
        }
    }

    /// Writes the keys and values of `t` new positions of every row, taken from a fused q/k/v
    /// activation buffer (`[rows * t, width]`, keys at column `k_at`, values at `v_at`). Room
    /// must have been reserved.
    pub(crate) fn write(&mut self, qkv: &[f32], width: usize, k_at: usize, v_at: usize, t: usize) {
        let d = self.dim;
        for r in 0..self.rows {
            for j in 0..t {
                let src = (r * t + j) * width;
                for g in 0..self.heads {
                    let dst = self.at(r, g, self.len + j);
                    let (ks, vs) = (src + k_at + g * d, src + v_at + g * d);
                    self.k[dst..dst + d].copy_from_slice(&qkv[ks..ks + d]);
                    self.v[dst..dst + d].copy_from_slice(&qkv[vs..vs + d]);
                }
            }
        }
        self.len += t;
    }

    /// Bytes of the keys and values (spare capacity included).
    pub(crate) fn byte_len(&self) -> usize {
        (self.k.len() + self.v.len()) * 4
    }

    /// Rows `rows` (in that order, repeats allowed), same capacity.
    pub(crate) fn select_rows(&self, rows: &[usize]) -> Self {
        let block = self.heads * self.cap * self.dim;
        let mut k = Vec::with_capacity(rows.len() * block);
        let mut v = Vec::with_capacity(rows.len() * block);
        for &r in rows {
            k.extend_from_slice(&self.k[r * block..(r + 1) * block]);
            v.extend_from_slice(&self.v[r * block..(r + 1) * block]);
        }
        Self {
            rows: rows.len(),
            k,
            v,
            ..*self
        }
    }

    /// Rows of `a` then rows of `b`, each side left-padded by zeros to the longer length.
    pub(crate) fn concat(a: &HostKv, b: &HostKv) -> Self {
        let len = a.len.max(b.len);
        let cap = len.max(a.cap).max(b.cap);
        let (a, b) = (a.regrown(cap, len - a.len), b.regrown(cap, len - b.len));
        let (mut k, mut v) = (a.k, a.v);
        k.extend_from_slice(&b.k);
        v.extend_from_slice(&b.v);
        Self {
            rows: a.rows + b.rows,
            heads: a.heads,
            dim: a.dim,
            cap,
            len,
            k,
            v,
        }
    }

    /// Appends the rows of `b` (no longer than `self`), left-padded by zeros to `self.len`:
    /// copies only `b`'s rows (the running rows stay where they are).
    pub(crate) fn append_rows(&mut self, b: &HostKv) {
        debug_assert!(b.len <= self.len && (b.heads, b.dim) == (self.heads, self.dim));
        let shift = self.len - b.len;
        let (d, n) = (self.dim, b.len * self.dim);
        let extra = b.rows * self.heads * self.cap * d;
        self.k.reserve(extra);
        self.v.reserve(extra);
        for rh in 0..b.rows * b.heads {
            let src = rh * b.cap * d;
            for (dst, from) in [(&mut self.k, &b.k), (&mut self.v, &b.v)] {
                dst.resize(dst.len() + shift * d, 0.0);
                dst.extend_from_slice(&from[src..src + n]);
                dst.resize(dst.len() + (self.cap - self.len) * d, 0.0);
            }
        }
        self.rows += b.rows;
    }

    /// Keeps rows `rows` (strictly increasing): later rows move down in place.
    pub(crate) fn keep_increasing(&mut self, rows: &[usize]) {
        let block = self.heads * self.cap * self.dim;
        for (to, &from) in rows.iter().enumerate() {
            if to != from {
                self.k
                    .copy_within(from * block..(from + 1) * block, to * block);
                self.v
                    .copy_within(from * block..(from + 1) * block, to * block);
            }
        }
        self.k.truncate(rows.len() * block);
        self.v.truncate(rows.len() * block);
        self.rows = rows.len();
    }

    /// Drops the first `cut` positions of every row (moved in place).
    /// Keeps the first `len` positions (later ones are overwritten by the next writes).
    pub(crate) fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub(crate) fn drop_front(&mut self, cut: usize) {
        let cut = cut.min(self.len);
        let (d, keep) = (self.dim, self.len - cut);
        for rh in 0..self.rows * self.heads {
            let base = rh * self.cap * d;
            self.k
                .copy_within(base + cut * d..base + self.len * d, base);
            self.v
                .copy_within(base + cut * d..base + self.len * d, base);
        }
        self.len = keep;
    }

    /// The filled part as burn tensors `[rows, heads, len, dim]` on the flex device.
    pub(crate) fn to_tensors(&self) -> (Tensor<4>, Tensor<4>) {
        let compact = self.regrown(self.len, 0);
        let shape = [self.rows, self.heads, self.len, self.dim];
        let device = Device::flex();
        (
            Tensor::from_data(TensorData::new(compact.k, shape), &device),
            Tensor::from_data(TensorData::new(compact.v, shape), &device),
        )
    }

    /// Host storage of burn tensors `[rows, heads, len, dim]` (f32).
    pub(crate) fn from_tensors(k: &Tensor<4>, v: &Tensor<4>) -> Self {
        let [rows, heads, len, dim] = k.dims();
        let values = |t: &Tensor<4>| -> Vec<f32> {
            t.to_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap_or_default()
        };
        Self {
            rows,
            heads,
            dim,
            cap: len,
            len,
            k: values(k),
            v: values(v),
        }
    }
}

/// `sum_i a_i b_i` in eight lanes (a fixed order the compiler vectorizes).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ar.iter().zip(br) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// RMSNorm of each `d`-wide row of `x` as transformers computes it in f32:
/// `w * (x / sqrt(mean(x^2) + eps))`.
pub(crate) fn rms_norm(x: &[f32], d: usize, w: &[f32], eps: f32) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for (o, row) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        let inv = 1.0 / (dot(row, row) / d as f32 + eps).sqrt();
        for ((o, &v), &w) in o.iter_mut().zip(row).zip(w) {
            *o = (v * inv) * w;
        }
    }
    out
}

/// `x += y`.
pub(crate) fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `x[r] += bias` for every `bias.len()`-wide row.
pub(crate) fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        add_in_place(row, bias);
    }
}

/// `silu(gate) * up` for rows `[gate | up]` (`2 * ff` wide), `[m, ff]` out; big batches split
/// by rows over the pool.
pub(crate) fn silu_mul(gu: &[f32], m: usize, ff: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * ff];
    let row = |(o, g): (&mut [f32], &[f32])| {
        let (gate, up) = g.split_at(ff);
        dera_kernels::math::silu_mul_into(gate, up, o);
    };
    if m * ff >= 1 << 14 && m > 1 {
        // One thread per 16K values (exponentials), at most the pool's.
        let threads = (m * ff) >> 14;
        dera_kernels::for_each_within(
            out.chunks_mut(ff).zip(gu.chunks(2 * ff)).collect(),
            threads,
            row,
        );
    } else {
        out.chunks_mut(ff).zip(gu.chunks(2 * ff)).for_each(row);
    }
    out
}

/// Rotary tables of every new position: `[rows * t, half]` cosines and sines, each row's
/// positions counted from its first real token (`pads`), angles in f32 as transformers.
pub(crate) fn rope_tables(
    inv_freq: &[f32],
    half: usize,
    past: usize,
    t: usize,
    pads: &[usize],
) -> (Vec<f32>, Vec<f32>) {
    let n = pads.len() * t * half;
    let (mut cos, mut sin) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for &pad in pads {
        for j in 0..t {
            let p = (past + j).saturating_sub(pad) as f32;
            for &f in &inv_freq[..half] {
                let a = p * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
    }
    (cos, sin)
}

/// Applies `x * cos + rotate_half(x) * sin` to `heads` heads of width `2 * half` starting at
/// column `at` of every row of `buf` (`width` wide).
pub(crate) fn rope_in_place(
    buf: &mut [f32],
    width: usize,
    at: usize,
    heads: usize,
    (cos, sin): (&[f32], &[f32]),
    half: usize,
) {
    for (r, row) in buf.chunks_exact_mut(width).enumerate() {
        let (c, s) = (
            &cos[r * half..(r + 1) * half],
            &sin[r * half..(r + 1) * half],
        );
        for h in 0..heads {
            let x = &mut row[at + h * 2 * half..at + (h + 1) * 2 * half];
            let (x1, x2) = x.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (x1[i], x2[i]);
                x1[i] = a * c[i] + (-b) * s[i];
                x2[i] = b * c[i] + a * s[i];
            }
        }
    }
}

/// One (row, query head) of [`attention`]: its queries (row `j` at `q[j * width..]`), the
/// head's keys and values `[len, dim]`, the first visible position and the scale.
struct Head<'a> {
    q: &'a [f32],
    width: usize,
    dim: usize,
    keys: &'a [f32],
    values: &'a [f32],
    from: usize,
    past: usize,
    scale: f32,
}

/// Whether this CPU runs [`attend_avx2`] (detected once; the result is cached by std).
fn wide_simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// [`attend`] compiled for AVX2: the same operations in the same order (Rust never contracts
/// a multiply and an add into an FMA), in wider registers, so the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2(h: &Head<'_>, out: &mut [f32]) {
    attend::<true>(h, out)
}

/// `out[s] = dot(q, keys[s]) * scale` for every `d`-wide key (`out` cleared first). `WIDE`
/// (compiled for AVX2, which the caller checked): eight keys at a time with their eight sums
/// reduced together by shuffles, each with exactly the additions of [`dot`] (the same bits).
#[inline(always)]
fn scores<const WIDE: bool>(q: &[f32], keys: &[f32], d: usize, scale: f32, out: &mut Vec<f32>) {
    out.clear();
    let n = keys.len() / d.max(1);
    out.resize(n, 0.0);
    let mut s = 0;
    #[cfg(target_arch = "x86_64")]
    if WIDE && d > 0 && d.is_multiple_of(8) {
        while s + 8 <= n {
            // SAFETY: `WIDE` instances run only where AVX2 was detected (`attend_avx2`);
            // `q` has `d` values, `keys` the 8 rows from `s`, `out` 8
            // places from `s`.
            unsafe { scores8(q, &keys[s * d..(s + 8) * d], d, scale, &mut out[s..s + 8]) };
            s += 8;
        }
    }
    for (o, key) in out[s..].iter_mut().zip(keys[s * d..].chunks_exact(d)) {
        *o = dot(q, key) * scale;
    }
}

/// [`dot`]`(q, key) * scale` of 8 keys `[8, d]` (`d` a multiple of 8): each key's eight lane
/// sums as in [`dot`], then for all eight keys at once `(a_l + a_{l+4})` (halves added),
/// `(x_0 + x_1)`, `(x_2 + x_3)` and their sum (horizontal adds): the additions of [`dot`] with
/// the same operands, then `+ 0` (its empty tail) and `* scale`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn scores8(q: &[f32], keys: &[f32], d: usize, scale: f32, out: &mut [f32]) {
    use std::arch::x86_64::*;
    debug_assert!(q.len() >= d && keys.len() >= 8 * d && out.len() >= 8);
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 8];
        let (qp, kp) = (q.as_ptr(), keys.as_ptr());
        for c in (0..d).step_by(8) {
            let qc = _mm256_loadu_ps(qp.add(c));
            for (k, a) in acc.iter_mut().enumerate() {
                let kc = _mm256_loadu_ps(kp.add(k * d + c));
                *a = _mm256_add_ps(*a, _mm256_mul_ps(qc, kc));
            }
        }
        // [a0+a4 .. a3+a7 of key k | of key k + 4]
        let half = |k: usize| {
            _mm256_add_ps(
                _mm256_permute2f128_ps::<0x20>(acc[k], acc[k + 4]),
                _mm256_permute2f128_ps::<0x31>(acc[k], acc[k + 4]),
            )
        };
        let (s0, s1, s2, s3) = (half(0), half(1), half(2), half(3));
        // keys 0..3 in the low half, 4..7 in the high half
        let r = _mm256_hadd_ps(_mm256_hadd_ps(s0, s1), _mm256_hadd_ps(s2, s3));
        let r = _mm256_mul_ps(_mm256_add_ps(r, _mm256_setzero_ps()), _mm256_set1_ps(scale));
        _mm256_storeu_ps(out.as_mut_ptr(), r);
    }
}

/// `out[i] = sum_s w[s] * values[s][i]` (`values` `[w.len(), d]`), each sum taken in order of
/// `s` from zero, as a plain loop would (the same bits), but 32 (then 8) dimensions at a time in
/// registers across all positions: one store per output instead of one per position.
#[inline(always)]
fn weigh_values(w: &[f32], values: &[f32], d: usize, out: &mut [f32]) {
    let mut base = 0;
    while base + 32 <= d {
        weigh_block::<32>(w, values, d, base, out);
        base += 32;
    }
    while base + 8 <= d {
        weigh_block::<8>(w, values, d, base, out);
        base += 8;
    }
    for (i, o) in out.iter_mut().enumerate().take(d).skip(base) {
        *o = w
            .iter()
            .zip(values.chunks_exact(d))
            .fold(0.0, |acc, (&w, row)| acc + w * row[i]);
    }
}

/// Dimensions `base .. base + B` of [`weigh_values`], summed in `B` registers.
#[inline(always)]
fn weigh_block<const B: usize>(w: &[f32], values: &[f32], d: usize, base: usize, out: &mut [f32]) {
    let mut acc = [0f32; B];
    for (&w, row) in w.iter().zip(values.chunks_exact(d)) {
        let row = &row[base..base + B];
        for i in 0..B {
            acc[i] += w * row[i];
        }
    }
    out[base..base + B].copy_from_slice(&acc);
}

/// Softmax-weighted values of every query of one head: `out` `[t, dim]`.
#[inline(always)]
fn attend<const WIDE: bool>(h: &Head<'_>, out: &mut [f32]) {
    let d = h.dim;
    let mut p = Vec::with_capacity(h.past + out.len() / d.max(1));
    for (j, o) in out.chunks_exact_mut(d).enumerate() {
        let qv = &h.q[j * h.width..j * h.width + d];
        let (from, to) = (h.from, h.past + j + 1);
        if from >= to {
            continue; // a padding query sees nothing: zeros, never NaN
        }
        scores::<WIDE>(qv, &h.keys[from * d..to * d], d, h.scale, &mut p);
        let max = p.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        for x in p.iter_mut() {
            *x = exp(*x - max);
        }
        let sum: f32 = p.iter().fold(0.0, |s, x| s + x);
        for x in p.iter_mut() {
            *x /= sum;
        }
        weigh_values(&p, &h.values[from * d..to * d], d, o);
    }
}

/// Causal attention of `t` new queries of every row over a layer's cache (which already holds
/// them). Queries: heads `0..q_heads` of width `dim` at the start of each `width`-wide row of
/// `q` (`[rows * t, width]`, rotated); key/value head `h / (q_heads / kv.heads)` serves query
/// head `h`. Row `r` sees positions `pads[r] ..= past + j` for its `j`-th query. Returns
/// `[rows * t, q_heads * dim]`.
pub(crate) fn attention(
    q: &[f32],
    width: usize,
    t: usize,
    q_heads: usize,
    kv: &HostKv,
    pads: &[usize],
    scale: f32,
) -> Vec<f32> {
    let (rows, d) = (kv.rows, kv.dim);
    let past = kv.len - t;
    let groups = q_heads / kv.heads.max(1);
    // Units of work: one (row, key/value head) and its `groups` query heads, `[groups, t, d]`
    // of output each (its key/value rows stay in L1 across the query heads).
    let mut units = vec![0f32; rows * q_heads * t * d];
    let wide = wide_simd();
    let kv_heads = q_heads / groups.max(1);
    let unit = |(u, out): (usize, &mut [f32])| {
        let (r, g) = (u / kv_heads, u % kv_heads);
        let (keys, values) = kv.head(r, g);
        let head = |h: usize| Head {
            q: &q[r * t * width + h * d..],
            width,
            dim: d,
            keys,
            values,
            from: pads[r],
            past,
            scale,
        };
        for (i, o) in out.chunks_mut(t * d).enumerate() {
            let a = head(g * groups + i);
            if wide {
                // SAFETY: `wide_simd` checked that this CPU has AVX2 and FMA.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    attend_avx2(&a, o)
                }
            } else {
                attend::<false>(&a, o);
            }
        }
    };
    let work = rows * q_heads * t * kv.len * d;
    let unit_len = groups * t * d;
    if work >= 1 << 15 && rows * kv_heads > 1 {
        // One thread per 32K multiply-adds, at most the pool's.
        dera_kernels::for_each_within(
            units.chunks_mut(unit_len).enumerate().collect(),
            work >> 15,
            unit,
        );
    } else {
        units.chunks_mut(unit_len).enumerate().for_each(unit);
    }
    if t == 1 {
        return units; // [rows, heads, 1, d] is already [rows, heads * d]
    }
    let mut out = vec![0f32; units.len()];
    for (u, part) in units.chunks_exact(t * d).enumerate() {
        let (r, h) = (u / q_heads, u % q_heads);
        for j in 0..t {
            let dst = (r * t + j) * q_heads * d + h * d;
            out[dst..dst + d].copy_from_slice(&part[j * d..(j + 1) * d]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(rows: usize, len: usize, base: f32) -> HostKv {
        let mut c = HostKv::new(rows, 2, 3);
        c.reserve(len, 1000);
        let w = 2 * 2 * 3;
        let qkv: Vec<f32> = (0..rows * len * w).map(|i| base + i as f32).collect();
        c.write(&qkv, w, 0, 6, len);
        c
    }

    /// Eight keys' scores at once (AVX2) give the bits of eight single dot products.
    #[test]
    fn scores_of_eight_keys_at_once_have_the_bits_of_single_dots() {
        if !wide_simd() {
            return;
        }
        for d in [8, 16, 32, 64, 12] {
            for n in [1, 7, 8, 9, 16, 23, 40] {
                let q: Vec<f32> = (0..d)
                    .map(|i| ((i * 29 % 17) as f32 - 8.0) * 0.37)
                    .collect();
                // Keys over many binades, so that the order of additions shows in the bits.
                let keys: Vec<f32> = (0..n * d)
                    .map(|i| ((i * 53 % 31) as f32 - 15.0) * 10f32.powi((i % 9) as i32 - 4))
                    .collect();
                let (mut wide, mut plain) = (Vec::new(), Vec::new());
                scores::<false>(&q, &keys, d, 0.17, &mut plain);
                // SAFETY: AVX2 was checked above (`scores::<true>` runs AVX2 code).
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    scores_wide(&q, &keys, d, 0.17, &mut wide)
                };
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&wide), bits(&plain), "d {d}, {n} keys");
                let by_dot: Vec<f32> = keys.chunks_exact(d).map(|k| dot(&q, k) * 0.17).collect();
                assert_eq!(bits(&plain), bits(&by_dot));
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn scores_wide(q: &[f32], keys: &[f32], d: usize, scale: f32, out: &mut Vec<f32>) {
        scores::<true>(q, keys, d, scale, out)
    }

    /// Grouped-query heads attended within their key/value unit (AVX2 where the CPU has it)
    /// give the bits of each head attended alone by the plain loop.
    #[test]
    fn grouped_heads_equal_heads_alone() {
        for (q_heads, t) in [(4, 1), (6, 1), (6, 3), (2, 2)] {
            let (rows, len) = (2, 5);
            let kv = kv(rows, len, 0.0);
            let width = q_heads * 3 + 7;
            let q: Vec<f32> = (0..rows * t * width)
                .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.013)
                .collect();
            let pads = [0, 2];
            let got = attention(&q, width, t, q_heads, &kv, &pads, 0.7);
            let groups = q_heads / 2;
            for r in 0..rows {
                for h in 0..q_heads {
                    let (keys, values) = kv.head(r, h / groups);
                    let head = Head {
                        q: &q[r * t * width + h * 3..],
                        width,
                        dim: 3,
                        keys,
                        values,
                        from: pads[r],
                        past: len - t,
                        scale: 0.7,
                    };
                    let mut alone = vec![0f32; t * 3];
                    attend::<false>(&head, &mut alone);
                    for j in 0..t {
                        let at = (r * t + j) * q_heads * 3 + h * 3;
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(
                            bits(&got[at..at + 3]),
                            bits(&alone[j * 3..(j + 1) * 3]),
                            "{q_heads} heads, t {t}, row {r}, head {h}, query {j}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn growing_select_concat_and_drop_keep_every_value() {
        let mut a = kv(2, 3, 0.0);
        let (k0, _) = a.to_tensors();
        a.reserve(40, 1000);
        assert!(a.cap >= 43);
        let (k1, _) = a.to_tensors();
        assert_eq!(k0.to_data(), k1.to_data());
        let back = HostKv::from_tensors(&k1, &k1);
        assert_eq!(back.to_tensors().0.to_data(), k1.to_data());

        let b = kv(1, 1, 100.0);
        let j = HostKv::concat(&a.select_rows(&[1]), &b);
        assert_eq!((j.rows, j.len), (2, 3));
        let (k, _) = j.head(1, 1);
        // Two zero positions, then b's one key of head 1.
        assert_eq!(&k[..6], &[0.0; 6]);
        assert_eq!(&k[6..9], &[103.0, 104.0, 105.0]);
        let mut t = j.clone();
        t.drop_front(2);
        assert_eq!(t.len, 1);
        assert_eq!(t.head(1, 1).0, &[103.0, 104.0, 105.0]);
        assert_eq!(t.head(0, 0).0, j.head(0, 0).0[6..9].to_vec().as_slice());
    }

    /// The in-place joins and drops equal the copying ones.
    #[test]
    fn in_place_rows_equal_the_copies() {
        let mut a = kv(3, 4, 0.0);
        a.reserve(10, 1000);
        let b = kv(2, 2, 500.0);
        let copied = HostKv::concat(&a, &b);
        let mut moved = a.clone();
        moved.append_rows(&b);
        assert_eq!(
            moved.to_tensors().0.to_data(),
            copied.to_tensors().0.to_data()
        );
        assert_eq!(
            moved.to_tensors().1.to_data(),
            copied.to_tensors().1.to_data()
        );
        let picked = moved.select_rows(&[0, 2, 4]);
        moved.keep_increasing(&[0, 2, 4]);
        assert_eq!(
            moved.to_tensors().0.to_data(),
            picked.to_tensors().0.to_data()
        );
        assert_eq!(
            moved.to_tensors().1.to_data(),
            picked.to_tensors().1.to_data()
        );
        // Still appendable in place.
        moved.reserve(1, 1000);
        assert_eq!(moved.k.len(), 3 * 2 * moved.cap * 3);
    }

    #[test]
    fn rope_matches_the_formula() {
        let (cos, sin) = rope_tables(&[1.0, 0.5], 2, 3, 1, &[1]);
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        rope_in_place(&mut x, 4, 0, 1, (&cos, &sin), 2);
        let (a0, a1) = (2.0f32, 1.0f32);
        let want = [
            1.0 * a0.cos() - 3.0 * a0.sin(),
            2.0 * a1.cos() - 4.0 * a1.sin(),
            3.0 * a0.cos() + 1.0 * a0.sin(),
            4.0 * a1.cos() + 2.0 * a1.sin(),
        ];
        for (g, w) in x.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{x:?} vs {want:?}");
        }
    }
}
