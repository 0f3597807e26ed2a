//! Merge two local checkpoints in weight space, then decode the merged model — both from disk
//! (streamed, atomic) and in memory (no disk), which give the same model.
//!
//! `cargo run -p dera --example merge_and_decode -- REF ALIGNED LAMBDA OUT_DIR` (defaults: test fixtures, a temp dir).

use std::path::PathBuf;

use dera::DeviceKind;
use dera::dera_models::{CausalLm, ModelConfig, load, load_from_source};
use dera_merge::{MergeInputs, MergeOptions, merge_checkpoints, merge_in_memory};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fixtures =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden/models");
    let mut args = std::env::args().skip(1);
    let reference = args.next().map_or(fixtures.join("llama"), PathBuf::from);
    let aligned = args
        .next()
        .map_or(fixtures.join("llama_aligned_a"), PathBuf::from);
    let lambda: f64 = args.next().map_or(Ok(0.5), |s| s.parse())?;
    let out = args.next().map_or(
        std::env::temp_dir().join("dera-merged-example"),
        PathBuf::from,
    );

    let inputs = MergeInputs {
        reference: reference.clone(),
        aligned: vec![aligned],
        lambdas: vec![lambda],
    };
    let options = MergeOptions {
        force: true,
        ..Default::default()
    };
    println!("{}", merge_checkpoints(&inputs, &out, &options, None)?);

    let device = DeviceKind::Flex.device()?;
    let from_disk = load(&out, &device)?;
    let weights = merge_in_memory(&inputs, &options)?;
    let in_memory = load_from_source(
        &reference,
        &ModelConfig::from_dir(&reference)?,
        &weights,
        &device,
    )?;

    let prompt = from_disk.tokenizer()?.encode("Hello world")?;
    let logits =
        |m: &dera::dera_models::LoadedModel| -> Result<Vec<f32>, Box<dyn std::error::Error>> {
            let mut cache = m.model.new_cache();
            Ok(m.model
                .forward(&prompt, 1, &mut cache, false)?
                .try_into_vec_as::<f32>()
                .map_err(|e| format!("{e:?}"))?)
        };
    let (a, b) = (logits(&from_disk)?, logits(&in_memory)?);
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    println!("disk vs in-memory merge: max |logit diff| = {diff}");
    Ok(())
}
