//! The embedded models differ in the direction of their rewards.

use dera::{Realigner, VocabPolicy};
use dera_lab::Reward;
use dera_lab::sweep::{Shard, SweepConfig, run, summarize};
use dera_models::Device;

#[test]
fn length_aligned_model_beats_the_reference_on_its_reward() {
    let unpacked = dera_assets::unpack().unwrap();
    let assets = unpacked.models();
    let engine = Realigner::load(
        &assets.join("reference"),
        &[assets.join("aligned-length")],
        &Device::flex(),
        VocabPolicy::Strict,
    )
    .unwrap();
    // 24 held-out prompts x 5 samples = 120 responses per lambda.
    let prompts: Vec<String> = dera_lab::corpus::read_prompts(&unpacked.prompts())
        .unwrap()
        .into_iter()
        .take(24)
        .collect();
    let sc = SweepConfig {
        grid: vec![vec![0.0], vec![1.0], vec![2.0]],
        samples: 5,
        rewards: vec![Reward::default_length()],
        max_new_tokens: 96,
        temperature: 1.0,
        seed: 7,
        shard: Shard::WHOLE,
        kl: false,
    };
    let s = summarize(&run(&engine, &prompts, &sc, || {}).unwrap());
    let r = |i: usize| s[i].mean_reward[dera_lab::reward::DEFAULT_LENGTH_SPEC];
    // The aligned model (lambda 1) beats the reference, and DeRa's extrapolation (lambda 2)
    // beats the aligned model: the committed model is aligned at beta 0.1, and lambda 2 stands
    // for beta 0.05.
    assert!(
        r(1) > r(0) + 0.05 && r(2) > r(1) + 0.05,
        "length reward at lambda 0, 1, 2: {} {} {}",
        r(0),
        r(1),
        r(2)
    );
    assert!(s[1].mean_words > s[0].mean_words + 2.0, "{s:?}");
}
