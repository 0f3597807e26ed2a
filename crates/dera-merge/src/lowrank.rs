//! LoRA adapters in a merge: `theta += sum_j lambda_j * scale_j * B_j A_j` on the weights
//! they adapt, added to the weighted sum before its single rounding.

use std::collections::HashMap;

use dera_lora::{Adapter, LoraPair};

use crate::error::{MergeError, Result};
use crate::validate::Validated;

/// The low-rank terms of each adapted tensor.
pub(crate) struct Addends<'a> {
    by_tensor: HashMap<String, Vec<(&'a LoraPair, f32, bool)>>,
}

impl<'a> Addends<'a> {
    /// Terms of `adapters` (already checked by [`crate::validate::validate`]).
    pub(crate) fn new(adapters: &[(&'a Adapter, f64)], v: &Validated) -> Result<Self> {
        let mut by_tensor: HashMap<String, Vec<(&'a LoraPair, f32, bool)>> = HashMap::new();
        for &(adapter, lambda) in adapters {
            let factor = (lambda * adapter.config.scale()) as f32;
            for (module, pair) in &adapter.modules {
                let name = format!("{module}.weight");
                if !v.tensors.iter().any(|t| t.name == name && t.merged) {
                    return Err(MergeError::Adapter(dera_lora::LoraError::Module {
                        adapter: adapter.dir.clone(),
                        module: module.clone(),
                        reason: format!("{name} is not a floating-point tensor of the merge"),
                    }));
                }
                by_tensor.entry(name).or_default().push((
                    pair,
                    factor,
                    adapter.config.fan_in_fan_out,
                ));
            }
        }
        Ok(Self { by_tensor })
    }

    /// Elements `start..start + len` of the summed updates of tensor `name` (stored layout),
    /// or `None` when no adapter touches it.
    pub(crate) fn chunk(&self, name: &str, start: usize, len: usize) -> Option<Vec<f32>> {
        let terms = self.by_tensor.get(name)?;
        let mut acc = vec![0f32; len];
        for &(pair, factor, transposed) in terms {
            pair.add_delta(factor, transposed, start, &mut acc);
        }
        Some(acc)
    }
}
