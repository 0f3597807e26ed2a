//! Distribution warpers: [`Temperature`], [`TopK`], [`TopP`] and [`MinP`].
//!
//! These run after the penalties and constraints and reshape the distribution that
//! sampling draws from. Truncating warpers set removed entries to `f32::NEG_INFINITY` and
//! never empty a row that had at least one finite entry.

use std::cmp::Ordering;

use crate::error::ProcessorError;
use crate::processor::{Context, LogitsProcessor};
use crate::scan;
use crate::scratch::{self, Ranked};
use crate::softmax::max_ignoring_nan;

const NEG: f32 = f32::NEG_INFINITY;

/// Divides every logit by a temperature `t` (transformers' `TemperatureLogitsWarper`).
///
/// `t < 1` sharpens the distribution, `t > 1` flattens it; the order of the logits (and so
/// the argmax) is unchanged, up to ties created by `f32` rounding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Temperature {
    t: f32,
}

impl Temperature {
    /// A temperature warper; `t` must be finite and `> 0`.
    pub fn new(t: f32) -> Result<Self, ProcessorError> {
        if t.is_finite() && t > 0.0 {
            Ok(Self { t })
        } else {
            Err(ProcessorError::Temperature(t))
        }
    }

    /// The temperature.
    pub fn value(&self) -> f32 {
        self.t
    }
}

impl LogitsProcessor for Temperature {
    fn process(&self, logits: &mut [f32], _ctx: &Context<'_>) {
        let t = self.t;
        logits.iter_mut().for_each(|x| *x /= t);
    }

    fn name(&self) -> &'static str {
        "Temperature"
    }
}

/// Keeps the `k` largest logits (transformers' `TopKLogitsWarper`).
///
/// Entries strictly below the `k`-th largest value are masked, so ties at the `k`-th value
/// are all kept. The effective `k` is `max(k, min_tokens_to_keep)`; a `k` at least the row
/// length leaves the row unchanged. NaN entries are ignored when finding the `k`-th value
/// and never removed. Runs in `O(V)` with an `O(k)` buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopK {
    k: usize,
    min_tokens_to_keep: usize,
}

impl TopK {
    /// A top-k warper; `k` must be `>= 1`.
    pub fn new(k: usize) -> Result<Self, ProcessorError> {
        if k == 0 {
            return Err(ProcessorError::TopK(k));
        }
        Ok(Self {
            k,
            min_tokens_to_keep: 1,
        })
    }

    /// Sets `min_tokens_to_keep` (must be `>= 1`); the effective `k` is the larger of the two.
    pub fn with_min_tokens_to_keep(self, n: usize) -> Result<Self, ProcessorError> {
        check_min_keep(n)?;
        Ok(Self {
            min_tokens_to_keep: n,
            ..self
        })
    }

    /// The configured `k`.
    pub fn k(&self) -> usize {
        self.k
    }
}

impl LogitsProcessor for TopK {
    fn process(&self, logits: &mut [f32], _ctx: &Context<'_>) {
        let k = self.k.max(self.min_tokens_to_keep);
        if k >= logits.len() {
            return;
        }
        let kth = kth_largest(logits, k);
        // Unconditional store so the loop vectorises.
        for x in logits.iter_mut() {
            *x = if *x < kth { NEG } else { *x };
        }
    }

    fn name(&self) -> &'static str {
        "TopK"
    }
}

/// Nucleus sampling (transformers' `TopPLogitsWarper`).
///
/// Keeps the highest-probability tokens, in descending order, until their cumulative
/// probability reaches `p`: a token is kept iff the mass of the tokens ranked above it is
/// `< p` (equivalently transformers removes tokens whose ascending cumulative probability is
/// `<= 1 - p`). At least `min_tokens_to_keep` tokens are kept. Tokens with equal logits are
/// ranked by lower index first. `p == 1` is a no-op (transformers' `generate` skips the warper
/// then). Rows containing NaN or `+inf`, or with no finite entry, are left unchanged.
/// Probabilities are computed in `f64`; expected `O(V)` time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopP {
    p: f32,
    min_tokens_to_keep: usize,
}

impl TopP {
    /// A top-p warper; `p` must be in `(0, 1]`.
    pub fn new(p: f32) -> Result<Self, ProcessorError> {
        if p > 0.0 && p <= 1.0 {
            Ok(Self {
                p,
                min_tokens_to_keep: 1,
            })
        } else {
            Err(ProcessorError::TopP(p))
        }
    }

    /// Sets `min_tokens_to_keep` (must be `>= 1`).
    pub fn with_min_tokens_to_keep(self, n: usize) -> Result<Self, ProcessorError> {
        check_min_keep(n)?;
        Ok(Self {
            min_tokens_to_keep: n,
            ..self
        })
    }

    /// The configured `p`.
    pub fn p(&self) -> f32 {
        self.p
    }
}

impl LogitsProcessor for TopP {
    fn process(&self, logits: &mut [f32], _ctx: &Context<'_>) {
        if self.p >= 1.0 {
            return;
        }
        let m = max_ignoring_nan(logits);
        if m.is_infinite() {
            return;
        }
        let p = f64::from(self.p);
        let min_keep = self.min_tokens_to_keep;
        let cutoff = scratch::with(&scratch::RANKED, |buf| {
            // Any token with weight exp(x - m) < (1 - p) / V is outside the nucleus: those
            // tokens hold less than (1 - p) <= (1 - p) * Z in total, since Z >= 1.
            let threshold = f64::from(m) + ((1.0 - p) / logits.len() as f64).ln();
            let (mut mass, rest, finite) = collect_ranked(logits, f64::from(m), threshold, buf);
            let z = mass + rest;
            // NaN anywhere makes `rest` NaN.
            if !(z.is_finite() && z > 0.0) {
                return None;
            }
            let need = p * z;
            // Now that Z is known, tighten to weight >= (1 - p) * Z / finite, which holds the
            // nucleus by the same argument, and shrinks the selection below.
            let tight = (1.0 - p) * z / finite as f64;
            if buf.len() > 64 {
                let before = buf.len();
                buf.retain(|r| r.weight >= tight);
                if buf.len() != before {
                    mass = buf.iter().map(|r| r.weight).sum();
                }
            }
            if mass < need || (buf.len() < min_keep && buf.len() < finite) {
                // Rounding at the threshold, or too few candidates: rank every finite entry.
                buf.clear();
                collect_ranked(logits, f64::from(m), f64::NEG_INFINITY, buf);
            }
            let kept = prefix_len_for_mass(buf, need);
            let target = kept.max(min_keep).min(buf.len());
            if target == 0 {
                return None;
            }
            if target != kept {
                buf.select_nth_unstable_by(target - 1, rank_cmp);
            }
            let cut = buf[target - 1];
            // Removed candidates tied with the cutoff value (rank after it by index).
            let tied_after = buf
                .iter()
                .filter(|r| r.value == cut.value && r.index > cut.index)
                .count();
            Some((cut, tied_after))
        });
        let Some((cut, tied_after)) = cutoff else {
            return;
        };
        for x in logits.iter_mut() {
            *x = if *x < cut.value { NEG } else { *x };
        }
        if tied_after > 0 {
            // Exact ties at the cutoff value: only the lower indices are inside the nucleus.
            for x in logits.iter_mut().skip(cut.index as usize + 1) {
                if *x == cut.value {
                    *x = NEG;
                }
            }
        }
    }

    fn name(&self) -> &'static str {
        "TopP"
    }
}

/// Min-p truncation (transformers' `MinPLogitsWarper`).
///
/// Removes tokens whose probability is below `p * max_probability`, i.e. whose logit is
/// below `max_logit + ln(p)` (compared in `f64`). The argmax is always kept, and so are the
/// `min_tokens_to_keep` highest-ranked tokens. Rows containing NaN or `+inf`, or with no
/// finite entry, are left unchanged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MinP {
    p: f32,
    min_tokens_to_keep: usize,
}

impl MinP {
    /// A min-p warper; `p` must be in `[0, 1]`.
    pub fn new(p: f32) -> Result<Self, ProcessorError> {
        if (0.0..=1.0).contains(&p) {
            Ok(Self {
                p,
                min_tokens_to_keep: 1,
            })
        } else {
            Err(ProcessorError::MinP(p))
        }
    }

    /// Sets `min_tokens_to_keep` (must be `>= 1`).
    pub fn with_min_tokens_to_keep(self, n: usize) -> Result<Self, ProcessorError> {
        check_min_keep(n)?;
        Ok(Self {
            min_tokens_to_keep: n,
            ..self
        })
    }

    /// The configured `p`.
    pub fn p(&self) -> f32 {
        self.p
    }
}

impl LogitsProcessor for MinP {
    fn process(&self, logits: &mut [f32], _ctx: &Context<'_>) {
        if self.min_tokens_to_keep >= logits.len() {
            return;
        }
        let m = max_ignoring_nan(logits);
        if m.is_infinite() || logits.iter().any(|x| x.is_nan()) {
            return;
        }
        let mf = f64::from(m);
        let log_p = f64::from(self.p).ln();
        let protected = if self.min_tokens_to_keep > 1 {
            rank_cutoff(logits, self.min_tokens_to_keep - 1)
        } else {
            None
        };
        for (i, x) in logits.iter_mut().enumerate() {
            if f64::from(*x) - mf < log_p {
                let keep = protected.is_some_and(|c| ranks_at_or_above(*x, i, c.value, c.index));
                if !keep {
                    *x = NEG;
                }
            }
        }
    }

    fn name(&self) -> &'static str {
        "MinP"
    }
}

fn check_min_keep(n: usize) -> Result<(), ProcessorError> {
    if n == 0 {
        Err(ProcessorError::MinTokensToKeep(n))
    } else {
        Ok(())
    }
}

/// Rank order: larger value first, then lower index first. Values must not be NaN.
fn rank_cmp(a: &Ranked, b: &Ranked) -> Ordering {
    b.value.total_cmp(&a.value).then(a.index.cmp(&b.index))
}

/// True when entry `(x, i)` ranks at or above the cutoff entry `(v, j)` in rank order.
#[inline]
fn ranks_at_or_above(x: f32, i: usize, v: f32, j: u32) -> bool {
    x > v || (x == v && i <= j as usize)
}

/// Pushes every finite entry with logit `>= threshold` with its weight `exp(x - m)`.
/// Returns (weight of the pushed entries, weight of the other entries, number of finite
/// entries); the second is NaN if the row holds NaN. `-0.0` is normalised to `0.0` so rank order agrees with IEEE
/// equality.
fn collect_ranked(
    logits: &[f32],
    mf: f64,
    threshold: f64,
    buf: &mut Vec<Ranked>,
) -> (f64, f64, usize) {
    let mut mass = 0.0;
    let mut rest = 0.0;
    let mut finite = 0;
    scan::for_each_where(
        logits,
        |x| x != NEG,
        |i, x| {
            finite += 1;
            let xf = f64::from(x);
            let weight = (xf - mf).exp();
            if xf >= threshold {
                mass += weight;
                buf.push(Ranked {
                    value: x + 0.0,
                    index: i as u32,
                    weight,
                });
            } else {
                rest += weight;
            }
        },
    );
    (mass, rest, finite)
}

/// Number of leading entries (in rank order) kept by nucleus truncation: an entry is kept
/// iff the weight ranked above it is `< need`. Reorders `buf` so that on return
/// `buf[..n]` are the top `n` entries and `buf[n - 1]` is the `n`-th ranked one.
/// Weighted quickselect: expected `O(len)`.
fn prefix_len_for_mass(buf: &mut [Ranked], mut need: f64) -> usize {
    const SMALL: usize = 64;
    let (mut lo, mut hi) = (0usize, buf.len());
    loop {
        let len = hi - lo;
        if len <= SMALL {
            let part = &mut buf[lo..hi];
            part.sort_unstable_by(rank_cmp);
            let mut cum = 0.0;
            let mut kept = 0;
            for r in part.iter() {
                if cum >= need {
                    break;
                }
                cum += r.weight;
                kept += 1;
            }
            return lo + kept;
        }
        let mid = len / 2;
        let part = &mut buf[lo..hi];
        part.select_nth_unstable_by(mid, rank_cmp);
        let left: f64 = part[..mid].iter().map(|r| r.weight).sum();
        if left >= need {
            hi = lo + mid;
        } else {
            let with_pivot = left + part[mid].weight;
            if with_pivot >= need {
                return lo + mid + 1;
            }
            need -= with_pivot;
            lo += mid + 1;
        }
    }
}

/// The entry at rank `r` (0-based) among all non-NaN entries, if there are more than `r`.
fn rank_cutoff(logits: &[f32], r: usize) -> Option<Ranked> {
    scratch::with(&scratch::RANKED, |buf| {
        buf.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, x)| !x.is_nan())
                .map(|(i, &x)| Ranked {
                    value: x + 0.0,
                    index: i as u32,
                    weight: 0.0,
                }),
        );
        if r >= buf.len() {
            return None;
        }
        buf.select_nth_unstable_by(r, rank_cmp);
        Some(buf[r])
    })
}

/// The `k`-th largest value (with multiplicity) among non-NaN entries, or `-inf` if fewer
/// than `k` entries exceed `-inf`. `O(len)` time, `O(k)` space.
fn kth_largest(row: &[f32], k: usize) -> f32 {
    debug_assert!(k >= 1);
    scratch::with(&scratch::VALUES, |buf| {
        let cap = 2 * k.max(16);
        let mut threshold = NEG;
        let desc = |a: &f32, b: &f32| b.total_cmp(a);
        for chunk in row.chunks(scan::CHUNK) {
            if !scan::any(chunk, |x| x > threshold) {
                continue;
            }
            for &x in chunk {
                // An entry not above the current k-th value cannot change the k-th value.
                if x > threshold {
                    buf.push(x);
                    if buf.len() == cap {
                        buf.select_nth_unstable_by(k - 1, desc);
                        buf.truncate(k);
                        threshold = buf[k - 1];
                    }
                }
            }
        }
        if buf.len() < k {
            return NEG;
        }
        buf.select_nth_unstable_by(k - 1, desc);
        buf[k - 1]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(p: &impl LogitsProcessor, row: &[f32]) -> Vec<f32> {
        let mut v = row.to_vec();
        p.process(&mut v, &Context::default());
        v
    }

    fn kept(row: &[f32]) -> Vec<usize> {
        row.iter()
            .enumerate()
            .filter(|(_, x)| **x != NEG)
            .map(|(i, _)| i)
            .collect()
    }

    fn ln(x: f32) -> f32 {
        x.ln()
    }

    #[test]
    fn temperature_divides() {
        let t = Temperature::new(0.5).unwrap();
        assert_eq!(run(&t, &[1.0, -2.0, NEG]), vec![2.0, -4.0, NEG]);
        assert_eq!(t.value(), 0.5);
        for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            assert!(Temperature::new(bad).is_err());
        }
        let msg = Temperature::new(-1.5).unwrap_err().to_string();
        assert!(msg.contains("temperature") && msg.contains("-1.5"), "{msg}");
    }

    #[test]
    fn top_k_keeps_k_largest() {
        let row = [0.1, 3.0, -1.0, 2.0, 5.0, 0.0];
        let out = run(&TopK::new(3).unwrap(), &row);
        assert_eq!(out, vec![NEG, 3.0, NEG, 2.0, 5.0, NEG]);
        assert_eq!(
            run(&TopK::new(1).unwrap(), &row),
            vec![NEG, NEG, NEG, NEG, 5.0, NEG]
        );
        // k >= len is a no-op
        assert_eq!(run(&TopK::new(6).unwrap(), &row), row.to_vec());
        assert_eq!(run(&TopK::new(100).unwrap(), &row), row.to_vec());
        assert!(TopK::new(0).is_err());
    }

    #[test]
    fn top_k_keeps_ties_at_kth_value() {
        let row = [1.0, 2.0, 2.0, 2.0, 0.5];
        assert_eq!(kept(&run(&TopK::new(2).unwrap(), &row)), vec![1, 2, 3]);
    }

    #[test]
    fn top_k_min_tokens_to_keep_raises_k() {
        let row = [1.0, 4.0, 3.0, 2.0];
        let w = TopK::new(1).unwrap().with_min_tokens_to_keep(3).unwrap();
        assert_eq!(kept(&run(&w, &row)), vec![1, 2, 3]);
        assert!(TopK::new(1).unwrap().with_min_tokens_to_keep(0).is_err());
    }

    #[test]
    fn top_k_with_neg_inf_entries() {
        // Only two finite entries: the 3rd largest is -inf, so nothing more is removed.
        let row = [NEG, 1.0, NEG, 2.0];
        assert_eq!(run(&TopK::new(3).unwrap(), &row), row.to_vec());
    }

    #[test]
    fn top_k_long_row_matches_sort() {
        // Exercises the buffer compaction path (row much longer than 2k), including an
        // ascending row, the worst case for the streaming threshold.
        let row: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1000) as f32).collect();
        let asc: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        for r in [&row, &asc] {
            let out = run(&TopK::new(10).unwrap(), r);
            let kept: Vec<f32> = out.iter().copied().filter(|x| *x != NEG).collect();
            assert_eq!(kept.len(), 10);
            assert!(kept.iter().all(|&x| x >= 990.0));
        }
    }

    #[test]
    fn top_p_known_distribution() {
        // probs = [0.5, 0.3, 0.15, 0.05] shuffled over indices [2, 0, 3, 1].
        let row = [ln(0.3), ln(0.15), ln(0.5), ln(0.05)];
        // p = 0.45: the top token (0.5) is kept since no mass is ranked above it; the next
        // (0.3) has 0.5 >= 0.45 above it, so it is removed.
        assert_eq!(kept(&run(&TopP::new(0.45).unwrap(), &row)), vec![2]);
        // p = 0.6: {0.5, 0.3}
        assert_eq!(kept(&run(&TopP::new(0.6).unwrap(), &row)), vec![0, 2]);
        // p = 0.9: {0.5, 0.3, 0.15}
        assert_eq!(kept(&run(&TopP::new(0.9).unwrap(), &row)), vec![0, 1, 2]);
        // p = 0.99: everything
        assert_eq!(
            kept(&run(&TopP::new(0.99).unwrap(), &row)),
            vec![0, 1, 2, 3]
        );
        // tiny p keeps exactly the argmax
        assert_eq!(kept(&run(&TopP::new(1e-6).unwrap(), &row)), vec![2]);
        // surviving logits are untouched
        let out = run(&TopP::new(0.6).unwrap(), &row);
        assert_eq!(out[0], row[0]);
        assert_eq!(out[2], row[2]);
    }

    #[test]
    fn top_p_min_tokens_to_keep() {
        let row = [ln(0.3), ln(0.15), ln(0.5), ln(0.05)];
        let w = TopP::new(0.1).unwrap().with_min_tokens_to_keep(3).unwrap();
        assert_eq!(kept(&run(&w, &row)), vec![0, 1, 2]);
        let w = TopP::new(0.1).unwrap().with_min_tokens_to_keep(10).unwrap();
        assert_eq!(kept(&run(&w, &row)), vec![0, 1, 2, 3]);
    }

    #[test]
    fn top_p_ties_rank_lower_index_first() {
        // Four equal tokens, p = 0.5: exactly two are kept, the lowest indices.
        let row = [0.0; 4];
        assert_eq!(kept(&run(&TopP::new(0.5).unwrap(), &row)), vec![0, 1]);
        // p = 0.51 needs a third.
        assert_eq!(kept(&run(&TopP::new(0.51).unwrap(), &row)), vec![0, 1, 2]);
    }

    #[test]
    fn top_p_edge_rows() {
        assert!(TopP::new(0.0).is_err());
        assert!(TopP::new(1.5).is_err());
        assert!(TopP::new(f32::NAN).is_err());
        let one = TopP::new(1.0).unwrap();
        let row = [0.0, -200.0, NEG];
        assert_eq!(run(&one, &row), row.to_vec());
        let w = TopP::new(0.5).unwrap();
        assert_eq!(run(&w, &[NEG, NEG]), vec![NEG, NEG]);
        assert!(run(&w, &[]).is_empty());
        let nan = run(&w, &[1.0, f32::NAN]);
        assert_eq!(nan[0], 1.0);
        assert!(nan[1].is_nan());
        assert_eq!(run(&w, &[NEG, 7.0, NEG]), vec![NEG, 7.0, NEG]);
    }

    #[test]
    fn top_p_large_flat_row_uses_quickselect() {
        // 1000 equal logits: p = 0.25 keeps exactly the first 250 indices.
        let row = vec![1.0f32; 1000];
        let out = run(&TopP::new(0.25).unwrap(), &row);
        assert_eq!(kept(&out), (0..250).collect::<Vec<_>>());
        // Strictly decreasing weights over 500 tokens: w_i = 0.99^i.
        let row: Vec<f32> = (0..500).map(|i| i as f32 * 0.99f32.ln()).collect();
        let out = run(&TopP::new(0.5).unwrap(), &row);
        let ws: Vec<f64> = (0..500).map(|i| 0.99f64.powi(i)).collect();
        let z: f64 = ws.iter().sum();
        let mut cum = 0.0;
        let mut n = 0;
        for w in &ws {
            if cum >= 0.5 * z {
                break;
            }
            cum += w;
            n += 1;
        }
        assert_eq!(kept(&out), (0..n).collect::<Vec<_>>());
        assert_eq!(n, 69);
    }

    #[test]
    fn min_p_known_values() {
        // probs 0.5, 0.3, 0.15, 0.05; min_p = 0.4 -> threshold 0.2: keep 0.5 and 0.3.
        let row = [ln(0.3), ln(0.15), ln(0.5), ln(0.05)];
        assert_eq!(kept(&run(&MinP::new(0.4).unwrap(), &row)), vec![0, 2]);
        // threshold 0.5 * 0.5 = 0.25: keep 0.5, 0.3
        assert_eq!(kept(&run(&MinP::new(0.5).unwrap(), &row)), vec![0, 2]);
        // threshold 0.0999: keeps 0.15
        assert_eq!(kept(&run(&MinP::new(0.2).unwrap(), &row)), vec![0, 1, 2]);
        // min_p = 1 keeps only the max (and ties of the max)
        assert_eq!(kept(&run(&MinP::new(1.0).unwrap(), &row)), vec![2]);
        assert_eq!(
            kept(&run(&MinP::new(1.0).unwrap(), &[1.0, 2.0, 2.0])),
            vec![1, 2]
        );
        // min_p = 0 keeps everything
        assert_eq!(run(&MinP::new(0.0).unwrap(), &row), row.to_vec());
        assert!(MinP::new(-0.1).is_err());
        assert!(MinP::new(1.1).is_err());
    }

    #[test]
    fn min_p_min_tokens_to_keep() {
        let row = [ln(0.3), ln(0.15), ln(0.5), ln(0.05)];
        let w = MinP::new(1.0).unwrap().with_min_tokens_to_keep(3).unwrap();
        assert_eq!(kept(&run(&w, &row)), vec![0, 1, 2]);
        // ties at the cutoff: lower index wins
        let w = MinP::new(1.0).unwrap().with_min_tokens_to_keep(2).unwrap();
        assert_eq!(kept(&run(&w, &[1.0, 0.0, 2.0, 1.0])), vec![0, 2]);
        // min_tokens_to_keep >= row length keeps everything
        let w = MinP::new(1.0).unwrap().with_min_tokens_to_keep(4).unwrap();
        assert_eq!(run(&w, &row), row.to_vec());
    }

    #[test]
    fn min_p_degenerate_rows_unchanged() {
        let w = MinP::new(0.5).unwrap();
        assert_eq!(run(&w, &[NEG, NEG]), vec![NEG, NEG]);
        let out = run(&w, &[1.0, f32::NAN, -30.0]);
        assert_eq!(out[0], 1.0);
        assert_eq!(out[2], -30.0);
    }

    #[test]
    fn kth_largest_matches_sort() {
        let row = [3.0f32, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0];
        let mut sorted = row.to_vec();
        sorted.sort_by(|a, b| b.total_cmp(a));
        for k in 1..=row.len() {
            assert_eq!(kth_largest(&row, k), sorted[k - 1], "k={k}");
        }
    }
}
