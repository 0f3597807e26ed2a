//! The committed models differ in the direction of their rewards.

use dera::{Realigner, VocabPolicy};
use dera_lab::Reward;
use dera_lab::sweep::{Shard, SweepConfig, run, summarize};
use dera_models::Device;

#[test]
fn length_aligned_model_beats_the_reference_on_its_reward() {
    let assets = dera_lab::default_assets_dir();
    let engine = Realigner::load(
        &assets.join("reference"),
        &[assets.join("aligned-length")],
        &Device::flex(),
        VocabPolicy::Strict,
    )
    .unwrap();
    let prompts: Vec<String> = dera_lab::cli::DEMO_PROMPTS
        .iter()
        .map(|s| s.to_string())
        .collect();
    let sc = SweepConfig {
        grid: vec![vec![0.0], vec![1.0]],
        samples: 12,
        rewards: vec![Reward::default_length()],
        max_new_tokens: 96,
        temperature: 1.0,
        seed: 7,
        shard: Shard::WHOLE,
        kl: false,
    };
    let s = summarize(&run(&engine, &prompts, &sc, || {}).unwrap());
    let r = |i: usize| s[i].mean_reward["length:20-40"];
    assert!(
        r(1) > r(0) + 0.15,
        "lambda=1 reward {} vs lambda=0 {}",
        r(1),
        r(0)
    );
    assert!(s[1].mean_words > s[0].mean_words + 5.0, "{s:?}");
}
