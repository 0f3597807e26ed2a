//! Picking the next token from a processed logits row: greedy or seeded categorical.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::error::SampleError;
use crate::scan;
use crate::softmax::max_ignoring_nan;

/// Index of the largest entry, ignoring NaN; the lowest index wins ties.
///
/// Returns `None` for an empty row or one that is all NaN. A row of `-inf` returns `Some`.
pub fn argmax(logits: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &x) in logits.iter().enumerate() {
        if x.is_nan() {
            continue;
        }
        match best {
            Some((_, b)) if x <= b => {}
            _ => best = Some((i, x)),
        }
    }
    best.map(|(i, _)| i)
}

#[derive(Debug, Clone)]
enum Mode {
    Greedy,
    Seeded(Box<ChaCha20Rng>),
}

/// Chooses a token id from a logits row.
///
/// [`Sampler::greedy`] takes the argmax. [`Sampler::seeded`] draws from the softmax of the
/// row by inverse CDF over `f64` probabilities, using one `ChaCha20Rng` draw per call: the
/// same seed and the same sequence of rows give the same tokens on every platform and
/// thread count. Tokens whose logit is `-inf` or NaN are never chosen; if a row holds
/// `+inf` entries, one of them is chosen uniformly.
#[derive(Debug, Clone)]
pub struct Sampler {
    mode: Mode,
    /// Reused buffer of (index, unnormalised weight) for the finite entries.
    weights: Vec<(u32, f64)>,
}

impl Sampler {
    /// Deterministic argmax decoding.
    pub fn greedy() -> Self {
        Self {
            mode: Mode::Greedy,
            weights: Vec::new(),
        }
    }

    /// Categorical sampling driven by `ChaCha20Rng::seed_from_u64(seed)`.
    pub fn seeded(seed: u64) -> Self {
        Self::from_rng(ChaCha20Rng::seed_from_u64(seed))
    }

    /// Categorical sampling driven by the given generator.
    pub fn from_rng(rng: ChaCha20Rng) -> Self {
        Self {
            mode: Mode::Seeded(Box::new(rng)),
            weights: Vec::new(),
        }
    }

    /// Greedy for `None`, seeded categorical sampling for `Some(seed)`.
    pub fn new(seed: Option<u64>) -> Self {
        seed.map_or_else(Self::greedy, Self::seeded)
    }

    /// True for a greedy sampler.
    pub fn is_greedy(&self) -> bool {
        matches!(self.mode, Mode::Greedy)
    }

    /// Picks a token id from `logits` (one row over the vocabulary).
    ///
    /// Fails if the row is empty or every entry is `-inf` or NaN.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32, SampleError> {
        if logits.is_empty() {
            return Err(SampleError::Empty);
        }
        let m = max_ignoring_nan(logits);
        if m == f32::NEG_INFINITY {
            return Err(SampleError::NoCandidates { len: logits.len() });
        }
        let rng = match &mut self.mode {
            Mode::Greedy => {
                return argmax(logits)
                    .map(|i| i as u32)
                    .ok_or(SampleError::NoCandidates { len: logits.len() });
            }
            Mode::Seeded(rng) => rng,
        };
        let weights = &mut self.weights;
        weights.clear();
        let mut total = 0.0f64;
        if m == f32::INFINITY {
            for (i, &x) in logits.iter().enumerate() {
                if x == f32::INFINITY {
                    weights.push((i as u32, 1.0));
                    total += 1.0;
                }
            }
        } else {
            // One pass over the row; exponentials only for the (often few) finite entries.
            let mf = f64::from(m);
            // `x > -inf` is false for -inf and NaN.
            scan::for_each_where(
                logits,
                |x| x > f32::NEG_INFINITY,
                |i, x| {
                    let w = (f64::from(x) - mf).exp();
                    weights.push((i as u32, w));
                    total += w;
                },
            );
        }
        let u = rng.random::<f64>() * total;
        let mut cum = 0.0f64;
        for &(i, w) in weights.iter() {
            cum += w;
            // Zero-weight entries (underflow) can never be chosen: `cum` does not move.
            if cum > u {
                return Ok(i);
            }
        }
        // Rounding can leave `u` at `total`; fall back to the last positive-weight entry.
        weights
            .last()
            .map(|&(i, _)| i)
            .ok_or(SampleError::NoCandidates { len: logits.len() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEG: f32 = f32::NEG_INFINITY;

    #[test]
    fn argmax_ties_and_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), Some(1));
        assert_eq!(argmax(&[f32::NAN, 0.5, f32::NAN]), Some(1));
        assert_eq!(argmax(&[f32::NAN]), None);
        assert_eq!(argmax(&[]), None);
        assert_eq!(argmax(&[NEG, NEG]), Some(0));
    }

    #[test]
    fn greedy_picks_argmax() {
        let mut s = Sampler::greedy();
        assert!(s.is_greedy());
        assert_eq!(s.sample(&[0.1, 2.0, f32::NAN, 2.0]), Ok(1));
        assert_eq!(s.sample(&[NEG, NEG, -5.0]), Ok(2));
    }

    #[test]
    fn errors_on_degenerate_rows() {
        for mut s in [Sampler::greedy(), Sampler::seeded(1)] {
            assert_eq!(s.sample(&[]), Err(SampleError::Empty));
            assert_eq!(
                s.sample(&[NEG, f32::NAN, NEG]),
                Err(SampleError::NoCandidates { len: 3 })
            );
        }
    }

    #[test]
    fn seeded_only_picks_finite_tokens() {
        let mut s = Sampler::seeded(7);
        assert!(!s.is_greedy());
        let row = [NEG, 0.0, f32::NAN, 0.0, NEG];
        for _ in 0..200 {
            let t = s.sample(&row).unwrap();
            assert!(t == 1 || t == 3, "{t}");
        }
        // a single finite entry is always chosen
        assert_eq!(s.sample(&[NEG, NEG, -1e30]), Ok(2));
        // +inf entries win uniformly
        for _ in 0..50 {
            let t = s.sample(&[f32::INFINITY, 5.0, f32::INFINITY]).unwrap();
            assert!(t == 0 || t == 2);
        }
    }

    #[test]
    fn seeded_is_deterministic_and_seed_dependent() {
        let row: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let draw = |seed| {
            let mut s = Sampler::seeded(seed);
            (0..64).map(|_| s.sample(&row).unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
        assert_eq!(
            Sampler::new(Some(3)).sample(&row),
            Sampler::seeded(3).sample(&row)
        );
        assert!(Sampler::new(None).is_greedy());
    }

    #[test]
    fn seeded_frequencies_match_probabilities() {
        // p = [0.1, 0.2, 0.7]
        let row = [0.1f32.ln(), 0.2f32.ln(), 0.7f32.ln()];
        let mut s = Sampler::seeded(12345);
        let n = 20_000;
        let mut counts = [0usize; 3];
        for _ in 0..n {
            counts[s.sample(&row).unwrap() as usize] += 1;
        }
        for (c, p) in counts.iter().zip([0.1, 0.2, 0.7]) {
            let freq = *c as f64 / n as f64;
            // 5 standard deviations of a binomial proportion at n = 20000 is < 0.017
            assert!((freq - p).abs() < 0.017, "{counts:?}");
        }
    }
}
