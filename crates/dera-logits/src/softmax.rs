//! Numerically stable softmax, log-softmax and log-sum-exp over one row of logits.
//!
//! All functions subtract the row maximum before exponentiating and accumulate the
//! normaliser in `f64`, so rows with huge magnitudes or many `-inf` entries stay exact to
//! `f32` precision. Edge cases follow PyTorch: a row whose entries are all `-inf` has
//! `logsumexp == -inf` and a NaN softmax; any NaN entry makes the whole result NaN.

/// Largest entry, ignoring NaN (`-inf` for an empty or all-NaN row).
///
/// Eight independent lanes so the loop vectorises (`x > m` is false for NaN).
pub(crate) fn max_ignoring_nan(row: &[f32]) -> f32 {
    const LANES: usize = 8;
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a = if x > *a { x } else { *a };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &x in acc.iter().chain(rest) {
        if x > m {
            m = x;
        }
    }
    m
}

/// Row maximum `m` and `sum(exp(x - m))` accumulated in `f64`.
///
/// The sum is NaN if the row holds a NaN or `+inf`, and 0 if every entry is `-inf`.
pub(crate) fn max_and_sum(row: &[f32]) -> (f32, f64) {
    let m = max_ignoring_nan(row);
    let mf = f64::from(m);
    let mut sum = 0.0f64;
    for &x in row {
        if x != f32::NEG_INFINITY {
            sum += (f64::from(x) - mf).exp();
        }
    }
    (m, sum)
}

/// `ln(sum(exp(row)))`, computed stably.
///
/// Returns `-inf` for an empty or all `-inf` row, `+inf` if any entry is `+inf` (and none
/// is NaN), and NaN if any entry is NaN.
pub fn logsumexp(row: &[f32]) -> f32 {
    logsumexp_f64(row) as f32
}

fn logsumexp_f64(row: &[f32]) -> f64 {
    if row.iter().any(|x| x.is_nan()) {
        return f64::NAN;
    }
    let (m, sum) = max_and_sum(row);
    if m.is_infinite() {
        return f64::from(m);
    }
    f64::from(m) + sum.ln()
}

/// Log-probabilities `x - logsumexp(row)` as a new vector.
pub fn log_softmax(row: &[f32]) -> Vec<f32> {
    let mut out = row.to_vec();
    log_softmax_in_place(&mut out);
    out
}

/// In-place [`log_softmax`]. `-inf` entries stay `-inf`; a row with no finite
/// maximum (all `-inf`, or containing `+inf` or NaN) yields NaN where undefined.
pub fn log_softmax_in_place(row: &mut [f32]) {
    let lse = logsumexp_f64(row);
    for x in row.iter_mut() {
        *x = (f64::from(*x) - lse) as f32;
    }
}

/// Probabilities `exp(x) / sum(exp(row))` as a new vector.
pub fn softmax(row: &[f32]) -> Vec<f32> {
    let mut out = row.to_vec();
    softmax_in_place(&mut out);
    out
}

/// In-place [`softmax`]. `-inf` entries become exactly 0; an all `-inf` row or one
/// containing NaN or `+inf` becomes NaN (as in PyTorch).
pub fn softmax_in_place(row: &mut [f32]) {
    let (m, sum) = max_and_sum(row);
    if m.is_infinite() || !sum.is_finite() || sum <= 0.0 {
        row.iter_mut().for_each(|x| *x = f32::NAN);
        return;
    }
    let mf = f64::from(m);
    let inv = 1.0 / sum;
    for x in row.iter_mut() {
        *x = if *x == f32::NEG_INFINITY {
            0.0
        } else {
            ((f64::from(*x) - mf).exp() * inv) as f32
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEG: f32 = f32::NEG_INFINITY;

    fn close(a: f32, b: f32, tol: f32) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn known_values() {
        // softmax([0, ln 2, ln 5]) = [1/8, 2/8, 5/8]
        let row = [0.0, 2f32.ln(), 5f32.ln()];
        let p = softmax(&row);
        assert!(close(p[0], 0.125, 1e-7));
        assert!(close(p[1], 0.25, 1e-7));
        assert!(close(p[2], 0.625, 1e-7));
        assert!(close(logsumexp(&row), 8f32.ln(), 1e-6));
        let lp = log_softmax(&row);
        assert!(close(lp[0], -(8f32.ln()), 1e-6));
        assert!(close(lp[2], (5.0f32 / 8.0).ln(), 1e-6));
    }

    #[test]
    fn huge_magnitudes_do_not_overflow() {
        let row = [1000.0, 1000.0, -1000.0];
        let p = softmax(&row);
        assert_eq!(p[0], 0.5);
        assert_eq!(p[1], 0.5);
        assert_eq!(p[2], 0.0);
        assert!(close(logsumexp(&row), 1000.0 + 2f32.ln(), 1e-3));
    }

    #[test]
    fn neg_inf_entries() {
        let row = [NEG, 3.0, NEG];
        assert_eq!(softmax(&row), vec![0.0, 1.0, 0.0]);
        assert_eq!(log_softmax(&row), vec![NEG, 0.0, NEG]);
        assert_eq!(logsumexp(&row), 3.0);
        let row = [NEG, 0.0, 0.0, NEG];
        assert_eq!(softmax(&row), vec![0.0, 0.5, 0.5, 0.0]);
    }

    #[test]
    fn degenerate_rows() {
        assert_eq!(logsumexp(&[]), NEG);
        assert!(log_softmax(&[]).is_empty());
        assert_eq!(logsumexp(&[NEG, NEG]), NEG);
        assert!(softmax(&[NEG, NEG]).iter().all(|x| x.is_nan()));
        assert!(log_softmax(&[NEG, NEG]).iter().all(|x| x.is_nan()));
        assert!(logsumexp(&[1.0, f32::NAN]).is_nan());
        assert!(softmax(&[1.0, f32::NAN]).iter().all(|x| x.is_nan()));
        assert_eq!(logsumexp(&[1.0, f32::INFINITY]), f32::INFINITY);
    }

    #[test]
    fn in_place_matches_allocating() {
        let row = [0.3, -1.2, 4.5, NEG, 2.0];
        let mut a = row;
        softmax_in_place(&mut a);
        assert_eq!(a.to_vec(), softmax(&row));
        let mut b = row;
        log_softmax_in_place(&mut b);
        assert_eq!(b.to_vec(), log_softmax(&row));
    }
}
