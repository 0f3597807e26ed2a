//! A model written outside dera, mixed with a loaded one: a bigram model counted from a text,
//! realigning the demo reference toward that text's word pairs.
//!
//! `cargo run -p dera --example user_model`
//!
//! Any `CausalLm` joins a mixture through `Realigner::from_parts`. This one keeps no keys or
//! values: it only counts positions with `KvCache::advance`, and its logits depend on the last
//! token alone, so the engine's batching, row selection and joining need nothing more from it.

use std::path::PathBuf;
use std::sync::Arc;

use dera::dera_models::{CausalLm, Device, Int, KvCache, ModelError, Tensor, TensorData};
use dera::{Decoding, GenerateOptions, Mixture, Realigner, Request, SharedModel, VocabPolicy};

/// `log p(next | last)` from smoothed bigram counts, `[V, V]` on the device.
struct Bigram {
    table: Tensor<2>,
    vocab: usize,
    device: Device,
}

impl Bigram {
    fn count(ids: &[u32], vocab: usize, device: &Device) -> Self {
        let mut counts = vec![0.1f32; vocab * vocab];
        for w in ids.windows(2) {
            counts[w[0] as usize * vocab + w[1] as usize] += 1.0;
        }
        for row in counts.chunks_mut(vocab) {
            let total: f32 = row.iter().sum();
            row.iter_mut().for_each(|c| *c = (*c / total).ln());
        }
        let table = Tensor::from_data(TensorData::new(counts, [vocab, vocab]), device);
        Self {
            table,
            vocab,
            device: device.clone(),
        }
    }
}

impl CausalLm for Bigram {
    fn device(&self) -> &Device {
        &self.device
    }

    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn max_positions(&self) -> usize {
        usize::MAX
    }

    fn new_cache(&self) -> KvCache {
        KvCache::new(0)
    }

    fn forward(
        &self,
        tokens: &[u32],
        batch: usize,
        cache: &mut KvCache,
        all_positions: bool,
    ) -> Result<Tensor<3>, ModelError> {
        if batch == 0 || tokens.is_empty() || !tokens.len().is_multiple_of(batch) {
            return Err(ModelError::Input(format!(
                "{} tokens cannot form {batch} rows",
                tokens.len()
            )));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(ModelError::Input(format!(
                "token {bad} is outside the vocabulary"
            )));
        }
        let t = tokens.len() / batch;
        let (rows, picked): (usize, Vec<i64>) = if all_positions {
            (t, tokens.iter().map(|&x| i64::from(x)).collect())
        } else {
            (1, tokens.chunks(t).map(|r| i64::from(r[t - 1])).collect())
        };
        let idx =
            Tensor::<1, Int>::from_data(TensorData::new(picked, [batch * rows]), &self.device);
        cache.advance(t);
        Ok(self
            .table
            .clone()
            .select(0, idx)
            .reshape([batch, rows, self.vocab]))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/models/reference");
    let device = Device::flex();
    let loaded = dera::dera_models::load(&dir, &device)?;
    let tokenizer = loaded.tokenizer()?.clone();
    let text = "if you are happy you are lucky, and if you are lucky you are rich";
    let bigram = Bigram::count(&tokenizer.encode(text)?, loaded.model.vocab_size(), &device);
    let eos = loaded.eos_token_ids.clone();
    let models: Vec<(String, SharedModel)> = vec![
        (dir.display().to_string(), Arc::new(loaded.model)),
        ("bigram".into(), Arc::new(bigram)),
    ];
    let r = Realigner::from_parts(models, Some(tokenizer), eos, VocabPolicy::Strict)?;
    let prompt = r.tokenizer()?.encode("If you are")?;
    let options = GenerateOptions::new(Decoding::greedy(24));
    for lambda in [0.0, 0.3, 0.6] {
        let request = Request {
            prompt_ids: prompt.clone(),
            mixture: Mixture::single(lambda)?,
            seed: None,
        };
        let g = r.generate(&[request], &options, |_| {})?.remove(0);
        println!("lambda {lambda}: {:?}", g.text);
    }
    Ok(())
}
