//! Sweep outputs survive a shard -> merge round trip.

use std::collections::BTreeMap;

use dera_lab::sweep::{SampleRecord, Shard, merge, read, summarize, write};

fn record(p: usize, l: f64, s: usize) -> SampleRecord {
    SampleRecord {
        prompt_index: p,
        prompt: format!("prompt {p}"),
        lambdas: vec![l],
        sample: s,
        response: format!(" response {p} {l} {s}"),
        tokens: 3 + s,
        words: 2 + p,
        rewards: BTreeMap::from([("question".to_string(), -(s as f64 % 2.0))]),
        kl: l * 0.5 + s as f64,
        logprob: -1.0,
        finish_reason: "eos".into(),
    }
}

#[test]
fn shards_merge_back_into_the_whole_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = 7;
    let lambdas = [0.0, 0.5, 1.0];
    let mut whole = Vec::new();
    for p in 0..prompts {
        for &l in &lambdas {
            for s in 0..2 {
                whole.push(record(p, l, s));
            }
        }
    }
    let mut files = Vec::new();
    for i in 0..3 {
        let own = Shard { index: i, count: 3 }.indices(prompts);
        let part: Vec<SampleRecord> = whole
            .iter()
            .filter(|r| own.contains(&r.prompt_index))
            .cloned()
            .collect();
        let f = dir.path().join(format!("shard{i}.jsonl"));
        write(&f, &part, false).unwrap();
        files.push(f);
    }
    let parts: Vec<Vec<SampleRecord>> = files.iter().rev().map(|f| read(f).unwrap()).collect();
    let merged = merge(&parts).unwrap();
    assert_eq!(merged, whole);
    assert_eq!(summarize(&merged), summarize(&whole));
    let s = summarize(&merged);
    assert_eq!(s.len(), 3);
    assert_eq!(s[1].samples, 14);
    assert!((s[1].mean_kl - 0.75).abs() < 1e-12);
    // Overlapping shards are rejected.
    assert!(merge(&[parts[0].clone(), parts[0].clone()]).is_err());
}
