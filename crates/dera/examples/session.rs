//! The step-level API: requests with different lambdas join a running batch, tokens are read
//! as they come, and one request is cancelled mid-way.
//!
//! `cargo run -p dera --example session`

use std::collections::HashMap;
use std::path::PathBuf;

use dera::{Decoding, DeviceKind, Mixture, Realigner, SequenceRequest, Session, VocabPolicy};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let models = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/models");
    let r = Realigner::load(
        &models.join("reference"),
        &[
            models.join("aligned-length"),
            models.join("aligned-question"),
        ],
        &DeviceKind::Flex.device()?,
        VocabPolicy::Strict,
    )?;
    let tok = r.tokenizer()?;

    // (step at which it arrives, prompt, lambdas for the two aligned models)
    let arrivals = [
        (0, "I never did", vec![0.0, 0.0]),
        (0, "I never did", vec![1.0, 0.0]),
        (3, "If you are", vec![0.0, 1.0]),
        (6, "manual, n.: A", vec![0.5, 0.5]),
    ];
    let mut session = Session::new(&r);
    let mut text: HashMap<_, String> = HashMap::new();
    let mut names = HashMap::new();
    let mut cancelled = None;
    for step in 0.. {
        for (at, prompt, lambdas) in &arrivals {
            if *at == step {
                let request = SequenceRequest {
                    decoding: Decoding {
                        max_new_tokens: 20,
                        seed: step as u64,
                        stop_strings: vec!["\n\n".into()],
                        ..Default::default()
                    },
                    ..SequenceRequest::new(tok.encode(prompt)?, Mixture::new(lambdas.clone())?)
                };
                let id = session.add(request)?;
                names.insert(id, format!("{prompt:?} lambda {lambdas:?}"));
                println!("step {step}: {} joins as {id:?}", names[&id]);
            }
        }
        if step == 8 && cancelled.is_none() {
            // The first sequence has seen enough.
            let first = *names.keys().min().ok_or("no sequence")?;
            session.cancel(first);
            cancelled = Some(first);
        }
        if session.is_empty() && step > 6 {
            break;
        }
        for event in session.step()? {
            text.entry(event.id).or_default().push_str(&event.text);
        }
        for done in session.take_finished() {
            println!(
                "step {step}: {:?} {} finished ({:?}): {:?}",
                done.id, names[&done.id], done.finish_reason, done.text
            );
        }
    }
    Ok(())
}
