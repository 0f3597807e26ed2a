//! Chunked scans that skip runs of uninteresting entries quickly.
//!
//! After top-k most of a row is `-inf`; testing 16 entries at once with a branchless
//! (vectorisable) predicate and only then looking at single entries makes the sparse case
//! several times faster than a per-entry branch.

/// Entries examined per branchless test.
pub(crate) const CHUNK: usize = 16;

/// True if any entry of `chunk` satisfies `pred`, evaluated without short-circuiting.
#[inline(always)]
pub(crate) fn any(chunk: &[f32], pred: impl Fn(f32) -> bool) -> bool {
    chunk.iter().fold(false, |acc, &x| acc | pred(x))
}

/// Calls `f(index, value)` for every entry satisfying `pred`, in index order.
#[inline(always)]
pub(crate) fn for_each_where(
    row: &[f32],
    pred: impl Fn(f32) -> bool + Copy,
    mut f: impl FnMut(usize, f32),
) {
    for (c, chunk) in row.chunks(CHUNK).enumerate() {
        if any(chunk, pred) {
            for (j, &x) in chunk.iter().enumerate() {
                if pred(x) {
                    f(c * CHUNK + j, x);
                }
            }
        }
    }
}
