//! Continuous batching in the engine alone, without HTTP: `Session`s driven in a loop as
//! `dera serve` drives them, to separate the engine's batching gain from the server's.
//!
//! ```text
//! cargo run --release -p dera --example bench_continuous -- [CONCURRENCY] [SHARDS] [REQUESTS]
//! ```
//!
//! `REQUESTS` (default 64) greedy requests of at most 64 tokens on the embedded models
//! (`assets/models`: reference, aligned-length, aligned-question), with the prompts
//! (`bench/serve/prompts.txt`) and the lambda grid of `bench/serve/bench.py`, are kept `CONCURRENCY` (default 8) live at a time: a
//! finished one is replaced at the next step. With `SHARDS` > 1 (default 1) the live sequences
//! are spread over that many sessions (the least loaded takes each new one) and a step runs the
//! busy sessions side by side, each on its own thread, as `dera serve --shards` does. Prints,
//! per round (3), tokens/s, the mean batch, ms per step and the time spent admitting.

use std::path::PathBuf;
use std::time::Instant;

use dera::{Decoding, DeviceKind, Mixture, Realigner, SequenceRequest, Session, VocabPolicy};
use rayon::prelude::*;

const GRID: [f64; 5] = [0.0, 0.5, 1.0, 1.5, 2.0];

fn arg(i: usize, default: usize) -> Result<usize, Error> {
    match std::env::args().nth(i) {
        Some(s) => s
            .parse()
            .map_err(|_| format!("argument {i} is {s:?}: give a whole number").into()),
        None => Ok(default),
    }
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let concurrency = arg(1, 8)?.max(1);
    let shards = arg(2, 1)?.clamp(1, 64);
    let requests = arg(3, 64)?.min(100_000);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let m = root.join("assets/models");
    let device = DeviceKind::Flex.device()?;
    let r = Realigner::load(
        &m.join("reference"),
        &[m.join("aligned-length"), m.join("aligned-question")],
        &device,
        VocabPolicy::Strict,
    )?;
    let tok = r.tokenizer()?;
    let path = root.join("bench/serve/prompts.txt");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("reading the prompts {}: {e}", path.display()))?;
    let mut prompts = Vec::new();
    for p in text.lines().filter(|l| !l.trim().is_empty()) {
        prompts.push(tok.encode(p)?);
    }
    if prompts.is_empty() {
        return Err(format!("no prompts in {}", path.display()).into());
    }
    let request = |i: usize| -> Result<SequenceRequest, Error> {
        let mixture = Mixture::new(vec![GRID[i % 5], GRID[(i + 1) % 5]])?;
        let prompt = prompts[i % prompts.len()].clone();
        Ok(SequenceRequest::with(prompt, mixture, Decoding::greedy(64)))
    };
    // As in `dera serve`: the loop runs on a worker of the rayon pool.
    rayon::scope(|_| -> Result<(), Error> {
        for round in 0..3 {
            let mut sessions: Vec<Session> = (0..shards).map(|_| Session::new(&r)).collect();
            let (mut next, mut steps, mut tokens, mut batch) = (0, 0usize, 0usize, 0usize);
            let (mut step_s, mut admit_s) = (0f64, 0f64);
            let start = Instant::now();
            loop {
                let t = Instant::now();
                while sessions.iter().map(Session::live).sum::<usize>() < concurrency
                    && next < requests
                {
                    if let Some(s) = sessions.iter_mut().min_by_key(|s| s.live()) {
                        s.add(request(next)?)?;
                    }
                    next += 1;
                }
                admit_s += t.elapsed().as_secs_f64();
                let live: usize = sessions.iter().map(Session::live).sum();
                if live == 0 {
                    break;
                }
                batch += live;
                let t = Instant::now();
                let busy: Vec<&mut Session> =
                    sessions.iter_mut().filter(|s| s.live() > 0).collect();
                let emitted: Result<Vec<usize>, dera::DeraError> = if busy.len() > 1 {
                    busy.into_par_iter()
                        .map(|s| dera::dera_models::serial_kernels(|| Ok(s.step()?.len())))
                        .collect()
                } else {
                    busy.into_iter().map(|s| Ok(s.step()?.len())).collect()
                };
                step_s += t.elapsed().as_secs_f64();
                steps += 1;
                tokens += emitted?.iter().sum::<usize>();
                for s in &mut sessions {
                    s.take_finished();
                }
            }
            let wall = start.elapsed().as_secs_f64();
            println!(
                "round {round}: {concurrency} live, {shards} shard(s): {tokens} tokens in {wall:.3} s = \
                 {:.0} tokens/s; {steps} steps, mean batch {:.2}, {:.3} ms per step; admitting {:.3} s",
                tokens as f64 / wall,
                batch as f64 / steps.max(1) as f64,
                1e3 * step_s / steps.max(1) as f64,
                admit_s
            );
        }
        Ok(())
    })
}
