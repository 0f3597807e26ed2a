//! Property tests for the invariants every processor and the sampler must keep.

use std::collections::HashMap;

use dera_logits::{
    BadWords, Context, FrequencyPenalty, LogitBias, LogitsProcessor, MinP, NoRepeatNGram,
    PresencePenalty, ProcessorChain, RepetitionPenalty, Sampler, Temperature, TopK, TopP, argmax,
    log_softmax, logsumexp, softmax,
};
use proptest::prelude::*;

const NEG: f32 = f32::NEG_INFINITY;

/// A logits row: finite values in [-30, 30], optionally with some `-inf` entries (never all).
fn row(max_len: usize) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(prop_oneof![8 => -30.0f32..30.0, 1 => Just(NEG)], 1..max_len).prop_map(
        |mut v| {
            if v.iter().all(|x| *x == NEG) {
                v[0] = 0.0;
            }
            v
        },
    )
}

/// Token history over a vocabulary of `vocab` ids.
fn history(vocab: u32) -> impl Strategy<Value = (Vec<u32>, Vec<u32>)> {
    (
        prop::collection::vec(0..vocab, 0..12),
        prop::collection::vec(0..vocab, 0..12),
    )
}

fn apply(p: &dyn LogitsProcessor, row: &[f32], ctx: &Context<'_>) -> Vec<f32> {
    let mut v = row.to_vec();
    p.process(&mut v, ctx);
    v
}

fn kept(row: &[f32]) -> Vec<usize> {
    (0..row.len()).filter(|&i| row[i] != NEG).collect()
}

/// Probabilities in f64 (reference, independent of the crate's softmax).
fn probs_f64(row: &[f32]) -> Vec<f64> {
    let m = row
        .iter()
        .fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
    let w: Vec<f64> = row.iter().map(|&x| (f64::from(x) - m).exp()).collect();
    let z: f64 = w.iter().sum();
    w.iter().map(|x| x / z).collect()
}

/// Indices in rank order: larger logit first, lower index first on ties.
fn ranked(row: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn logit_bias_scales_odds_by_exp_bias_and_leaves_the_rest(
        row in row(200),
        picks in prop::collection::btree_map(0u32..250, -20.0f32..20.0, 0..8),
    ) {
        let out = apply(&LogitBias::new(&picks).unwrap(), &row, &Context::default());
        for (i, (&a, &b)) in row.iter().zip(&out).enumerate() {
            match picks.get(&(i as u32)) {
                // Exactly one f32 addition: the same bits as adding by hand.
                Some(&bias) => prop_assert_eq!(b.to_bits(), (a + bias).to_bits()),
                None => prop_assert_eq!(b.to_bits(), a.to_bits()),
            }
        }
        // Odds against an unbiased finite token move by exp(bias) (in f64, from the f32 rows).
        let free = (0..row.len()).find(|&j| !picks.contains_key(&(j as u32)) && row[j] != NEG);
        if let Some(j) = free {
            let (p, q) = (probs_f64(&row), probs_f64(&out));
            for (&t, &bias) in picks.range(..row.len() as u32) {
                let t = t as usize;
                if row[t] == NEG || p[t] < 1e-30 || q[t] < 1e-30 {
                    continue;
                }
                let moved = (q[t] / q[j]) / (p[t] / p[j]);
                let want = (f64::from(out[t]) - f64::from(row[t])).exp();
                prop_assert!((moved / want - 1.0).abs() < 1e-9, "odds moved {moved}, want {want} (bias {bias})");
            }
        }
    }

    #[test]
    fn top_p_keeps_smallest_prefix_reaching_p(row in row(300), p in 0.01f32..0.99) {
        let out = apply(&TopP::new(p).unwrap(), &row, &Context::default());
        let k = kept(&out);
        prop_assert!(!k.is_empty(), "row emptied");
        for &i in &k {
            prop_assert_eq!(out[i].to_bits(), row[i].to_bits(), "kept logit changed");
        }
        // The kept set is exactly a prefix of the rank order.
        let order = ranked(&row);
        let prefix: Vec<usize> = {
            let mut v = order[..k.len()].to_vec();
            v.sort_unstable();
            v
        };
        prop_assert_eq!(&prefix, &k);
        let probs = probs_f64(&row);
        let mass: f64 = k.iter().map(|&i| probs[i]).sum();
        let last = probs[order[k.len() - 1]];
        let p = f64::from(p);
        prop_assert!(mass >= p - 1e-9, "mass {mass} < p {p}");
        prop_assert!(mass - last < p + 1e-9, "not minimal: {mass} - {last} >= {p}");
    }

    #[test]
    fn top_p_flat_rows_match_reference(
        row in prop::collection::vec(-2.0f32..2.0, 65..3000),
        p in 0.05f32..0.95,
    ) {
        // Flat rows give thousands of candidates (the weighted-quickselect path). Compare with
        // a sequential scan over the fully sorted row.
        let out = apply(&TopP::new(p).unwrap(), &row, &Context::default());
        let probs = probs_f64(&row);
        let order = ranked(&row);
        let mut cum = 0.0;
        let mut n = 0;
        for &i in &order {
            if cum >= f64::from(p) {
                break;
            }
            cum += probs[i];
            n += 1;
        }
        let k = kept(&out);
        // Summation order differs, so allow the boundary to move by one token.
        prop_assert!(k.len().abs_diff(n) <= 1, "kept {} vs reference {}", k.len(), n);
        let mut prefix = order[..k.len()].to_vec();
        prefix.sort_unstable();
        prop_assert_eq!(prefix, k);
    }

    #[test]
    fn top_p_respects_min_tokens_to_keep(row in row(100), p in 0.01f32..0.99, min_keep in 1usize..20) {
        let w = TopP::new(p).unwrap().with_min_tokens_to_keep(min_keep).unwrap();
        let out = apply(&w, &row, &Context::default());
        let finite = row.iter().filter(|x| **x != NEG).count();
        prop_assert!(kept(&out).len() >= min_keep.min(finite));
    }

    #[test]
    fn top_k_keeps_exactly_k_distinct(
        values in prop::collection::hash_set(-100_000i32..100_000, 1..400),
        k in 1usize..64,
    ) {
        let row: Vec<f32> = values.iter().map(|&v| v as f32 / 16.0).collect();
        let out = apply(&TopK::new(k).unwrap(), &row, &Context::default());
        let k_eff = k.min(row.len());
        let kept = kept(&out);
        prop_assert_eq!(kept.len(), k_eff);
        let mut sorted = row.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        for &i in &kept {
            prop_assert!(row[i] >= sorted[k_eff - 1]);
            prop_assert_eq!(out[i], row[i]);
        }
    }

    #[test]
    fn top_k_keeps_all_ties(row in prop::collection::vec(-3i32..3, 1..200), k in 1usize..50) {
        // Heavily tied rows: kept = every entry >= the k-th largest value.
        let row: Vec<f32> = row.iter().map(|&v| v as f32).collect();
        let out = apply(&TopK::new(k).unwrap(), &row, &Context::default());
        let mut sorted = row.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let kth = sorted[k.min(row.len()) - 1];
        let expected: Vec<usize> = (0..row.len()).filter(|&i| row[i] >= kth).collect();
        prop_assert_eq!(kept(&out), expected);
    }

    #[test]
    fn temperature_preserves_order_and_argmax(
        ints in prop::collection::hash_set(-400i32..400, 1..200),
        t in 0.1f32..10.0,
    ) {
        let row: Vec<f32> = ints.iter().map(|&v| v as f32 / 8.0).collect();
        let out = apply(&Temperature::new(t).unwrap(), &row, &Context::default());
        prop_assert_eq!(argmax(&out), argmax(&row));
        for i in 0..row.len() {
            for j in 0..row.len() {
                if row[i] < row[j] {
                    prop_assert!(out[i] < out[j]);
                }
            }
        }
    }

    #[test]
    fn repetition_penalty_only_changes_seen_tokens(
        row in row(64), (prompt, generated) in history(80), r in 0.5f32..3.0,
    ) {
        let ctx = Context::new(&prompt, &generated);
        let out = apply(&RepetitionPenalty::new(r).unwrap(), &row, &ctx);
        for (i, (&x, &y)) in row.iter().zip(&out).enumerate() {
            let seen = ctx.all_tokens().any(|t| t as usize == i);
            let expected = if !seen { x } else if x < 0.0 { x * r } else { x / r };
            prop_assert_eq!(y.to_bits(), expected.to_bits(), "token {}", i);
        }
    }

    #[test]
    fn frequency_presence_only_change_generated_tokens(
        row in row(64), (prompt, generated) in history(80), f in -2.0f32..2.0, p in -2.0f32..2.0,
    ) {
        let ctx = Context::new(&prompt, &generated);
        let chain = ProcessorChain::new()
            .push(FrequencyPenalty::new(f).unwrap())
            .push(PresencePenalty::new(p).unwrap());
        let out = apply(&chain, &row, &ctx);
        for (i, (&x, &y)) in row.iter().zip(&out).enumerate() {
            let count = generated.iter().filter(|&&t| t as usize == i).count();
            if count == 0 {
                prop_assert_eq!(y.to_bits(), x.to_bits());
            } else {
                let expected = x - f * count as f32 - p;
                prop_assert_eq!(y.to_bits(), expected.to_bits(), "token {}", i);
            }
        }
    }

    #[test]
    fn min_p_keeps_argmax_and_removes_only_low_prob(row in row(200), p in 0.0f32..=1.0) {
        let out = apply(&MinP::new(p).unwrap(), &row, &Context::default());
        let am = argmax(&row).unwrap();
        prop_assert_eq!(out[am], row[am]);
        let probs = probs_f64(&row);
        let max_p = probs[am];
        for i in 0..row.len() {
            let ratio = probs[i] / max_p;
            if out[i] == NEG && row[i] != NEG {
                prop_assert!(ratio <= f64::from(p) * (1.0 + 1e-9), "removed {ratio} >= {p}");
            }
            if out[i] != NEG {
                prop_assert!(ratio >= f64::from(p) * (1.0 - 1e-9), "kept {ratio} < {p}");
            }
        }
    }

    #[test]
    fn log_softmax_normalises_and_is_shift_invariant(row in row(500), c in -50.0f32..50.0) {
        let lp = log_softmax(&row);
        let total: f64 = lp.iter().map(|&x| f64::from(x).exp()).sum();
        prop_assert!((total - 1.0).abs() < 1e-5, "sum {total}");
        let sm: f64 = softmax(&row).iter().map(|&x| f64::from(x)).sum();
        prop_assert!((sm - 1.0).abs() < 1e-5, "softmax sum {sm}");
        let shifted: Vec<f32> = row.iter().map(|&x| x + c).collect();
        let lp2 = log_softmax(&shifted);
        for (a, b) in lp.iter().zip(&lp2) {
            if *a == NEG {
                prop_assert_eq!(*b, NEG);
            } else {
                prop_assert!((a - b).abs() < 1e-4, "{a} vs {b}");
            }
        }
        prop_assert!((logsumexp(&shifted) - logsumexp(&row) - c).abs() < 1e-4);
    }

    #[test]
    fn seeded_sampler_is_deterministic(row in row(300), seed in any::<u64>()) {
        let mut a = Sampler::seeded(seed);
        let mut b = Sampler::seeded(seed);
        for _ in 0..8 {
            prop_assert_eq!(a.sample(&row).unwrap(), b.sample(&row).unwrap());
        }
    }

    #[test]
    fn greedy_picks_argmax(row in row(300)) {
        let t = Sampler::greedy().sample(&row).unwrap() as usize;
        prop_assert!(row.iter().all(|&x| x <= row[t]));
        prop_assert!(row[..t].iter().all(|&x| x < row[t]), "not the lowest tied index");
    }

    #[test]
    fn sampling_never_picks_neg_inf(row in row(50), seed in any::<u64>()) {
        let mut s = Sampler::seeded(seed);
        for _ in 0..32 {
            let t = s.sample(&row).unwrap() as usize;
            prop_assert!(row[t] != NEG);
        }
    }

    #[test]
    fn chain_applies_in_order(
        row in row(64),
        (prompt, generated) in history(64),
        picks in prop::collection::vec(0usize..5, 0..6),
    ) {
        let make = |i: usize| -> Box<dyn LogitsProcessor + Send + Sync> {
            match i {
                0 => Box::new(Temperature::new(0.7).unwrap()),
                1 => Box::new(RepetitionPenalty::new(1.3).unwrap()),
                2 => Box::new(TopK::new(5).unwrap()),
                3 => Box::new(PresencePenalty::new(0.4).unwrap()),
                _ => Box::new(TopP::new(0.8).unwrap()),
            }
        };
        let ctx = Context::new(&prompt, &generated);
        let chain = picks.iter().fold(ProcessorChain::new(), |c, &i| c.push_boxed(make(i)));
        let via_chain = apply(&chain, &row, &ctx);
        let mut manual = row.clone();
        for &i in &picks {
            make(i).process(&mut manual, &ctx);
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        prop_assert_eq!(bits(&via_chain), bits(&manual));
    }

    #[test]
    fn no_repeat_ngram_matches_reference(
        (prompt, generated) in (prop::collection::vec(0u32..4, 0..10), prop::collection::vec(0u32..4, 0..20)),
        n in 1usize..5,
    ) {
        // Transformers' algorithm with a hash map of (n-1)-gram -> continuations.
        let tokens: Vec<u32> = prompt.iter().chain(&generated).copied().collect();
        let mut expected = vec![false; 4];
        if tokens.len() + 1 >= n {
            let mut map: HashMap<Vec<u32>, Vec<u32>> = HashMap::new();
            if tokens.len() >= n {
                for w in tokens.windows(n) {
                    map.entry(w[..n - 1].to_vec()).or_default().push(w[n - 1]);
                }
            }
            let key = tokens[tokens.len() + 1 - n..].to_vec();
            for &t in map.get(&key).into_iter().flatten() {
                expected[t as usize] = true;
            }
        }
        let out = apply(&NoRepeatNGram::new(n).unwrap(), &[0.0; 4], &Context::new(&prompt, &generated));
        let banned: Vec<bool> = out.iter().map(|x| *x == NEG).collect();
        prop_assert_eq!(banned, expected);
    }

    #[test]
    fn bad_words_ban_exactly_completions(
        (prompt, generated) in (prop::collection::vec(0u32..3, 0..6), prop::collection::vec(0u32..3, 0..6)),
        seqs in prop::collection::vec(prop::collection::vec(0u32..3, 1..4), 1..4),
    ) {
        let tokens: Vec<u32> = prompt.iter().chain(&generated).copied().collect();
        let mut expected = vec![false; 3];
        for s in &seqs {
            let (last, prefix) = s.split_last().unwrap();
            if tokens.ends_with(prefix) {
                expected[*last as usize] = true;
            }
        }
        let out = apply(&BadWords::new(seqs.clone()).unwrap(), &[0.0; 3], &Context::new(&prompt, &generated));
        let banned: Vec<bool> = out.iter().map(|x| *x == NEG).collect();
        prop_assert_eq!(banned, expected);
    }
}
