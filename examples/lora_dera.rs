//! DeRa with a LoRA DPO adapter: the aligned model is the reference plus a PEFT adapter
//! (`adapter_config.json` + `adapter_model.safetensors`, as TRL + PEFT save it), loaded over the
//! reference's weights without a second copy. Prints the greedy continuation at several lambdas.
//!
//! `cargo run -p dera --example lora_dera -- REF_DIR ADAPTER_DIR "prompt"`
//! (defaults: the tiny test fixtures).

use std::path::PathBuf;

use dera::{Decoding, DeviceKind, GenerateOptions, Mixture, Realigner, Request, VocabPolicy};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let mut args = std::env::args().skip(1);
    let reference = args
        .next()
        .map_or(fixtures.join("golden/models/llama"), PathBuf::from);
    let adapter = args.next().map_or(
        fixtures.join("lora/adapters/llama_all_r8_rslora"),
        PathBuf::from,
    );
    let prompt = args.next().unwrap_or_else(|| "The quick brown fox".into());

    let device = DeviceKind::Flex.device()?;
    // An adapter folder is accepted wherever an aligned checkpoint is: the Realigner loads it
    // as "reference + adapter" (dera_models::load_aligned), sharing the reference's weights.
    let realigner = Realigner::load(&reference, &[adapter], &device, VocabPolicy::Strict)?;
    let tokenizer = realigner.tokenizer()?;
    let prompt_ids = tokenizer.encode(&prompt)?;
    let requests: Vec<Request> = [0.0, 0.5, 1.0, 2.0]
        .into_iter()
        .map(|lambda| {
            Ok(Request {
                prompt_ids: prompt_ids.clone(),
                mixture: Mixture::single(lambda)?,
                seed: None,
            })
        })
        .collect::<Result<_, Box<dyn std::error::Error>>>()?;
    let options = GenerateOptions::new(Decoding {
        max_new_tokens: 16,
        greedy: true, // The tiny fixture models end early; a real checkpoint would keep the default (true).
        stop_on_eos: false,
        ..Default::default()
    });
    // All lambdas decode as one batch.
    let out = realigner.generate(&requests, &options, |_| {})?;
    for (request, o) in requests.iter().zip(&out) {
        let text = tokenizer.decode(&o.tokens)?;
        let lambda = request.mixture.lambdas()[0];
        println!("lambda {lambda:<4} {prompt}{text:?} {:?}", o.tokens);
    }
    Ok(())
}
