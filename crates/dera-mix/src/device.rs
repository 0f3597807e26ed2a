//! The mixer: per-model logits on the device, combined row by row with each row's coefficients.

use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};

/// One model's contribution to a batch: its logits for the rows it ran, and each of those
/// rows' coefficient for it.
#[derive(Debug, Clone)]
pub struct Term {
    /// Logits `[rows.len(), V]` with `V >= width` (extra columns are cut).
    pub logits: Tensor<2>,
    /// Which rows of the batch the logits belong to, in order, strictly increasing.
    pub rows: Vec<usize>,
    /// The coefficient of every one of those rows (`Mixture::coefficients_f32()[model]`).
    pub coefficients: Vec<f32>,
}

/// Mixes `terms` into `[batch, width]` on `device`: row `b` is `sum_j c_jb * h_jb` over the
/// models that ran row `b`, accumulated in term order (reference first) in `f32`.
///
/// A model contributes only the rows it ran: rows it skipped (coefficient zero) get nothing
/// from it, which is what a zero coefficient would add. A row no term covers is zero.
pub fn mix_logits(
    terms: impl IntoIterator<Item = Term>,
    batch: usize,
    width: usize,
    device: &Device,
) -> Tensor<2> {
    let mut mixed: Option<Tensor<2>> = None;
    for term in terms {
        let n = term.rows.len();
        if n == 0 {
            continue;
        }
        let h = if term.logits.dims()[1] == width {
            term.logits
        } else {
            term.logits.narrow(1, 0, width)
        };
        let c = Tensor::<2>::from_data(TensorData::new(term.coefficients, [n, 1]), device);
        let scaled = h * c;
        let whole = n == batch && term.rows.iter().enumerate().all(|(i, &r)| i == r);
        mixed = Some(match (mixed, whole) {
            (None, true) => scaled,
            (Some(acc), true) => acc + scaled,
            (acc, false) => {
                let acc = acc.unwrap_or_else(|| Tensor::zeros([batch, width], device));
                let idx: Vec<i64> = term.rows.iter().map(|&r| r as i64).collect();
                let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [n]), device);
                acc.select_assign(0, idx, scaled, IndexingUpdateOp::Add)
            }
        });
    }
    mixed.unwrap_or_else(|| Tensor::zeros([batch, width], device))
}
