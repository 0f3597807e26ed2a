//! The mathematics of DeRa mixtures, checked on random logits.

use burn::tensor::{Device, Tensor, TensorData};
use dera_mix::{MixError, Mixture, Term, mix_logits};
use proptest::prelude::*;

fn softmax(x: &[f32]) -> Vec<f64> {
    let m = x.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
    let e: Vec<f64> = x.iter().map(|&v| (v as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

fn tensor(rows: &[Vec<f32>]) -> Tensor<2> {
    let flat: Vec<f32> = rows.concat();
    Tensor::from_data(
        TensorData::new(flat, [rows.len(), rows[0].len()]),
        &Device::flex(),
    )
}

fn to_vec(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// One row mixed by the device mixer, every model running it.
fn mixed(mix: &Mixture, rows: &[Vec<f32>]) -> Vec<f32> {
    assert_eq!(rows.len(), mix.num_aligned() + 1);
    let c = mix.coefficients_f32();
    let terms = rows.iter().zip(c).map(|(r, c)| Term {
        logits: tensor(std::slice::from_ref(r)),
        rows: vec![0],
        coefficients: vec![c],
    });
    to_vec(mix_logits(terms, 1, rows[0].len(), &Device::flex()))
}

fn logits(n: usize) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(-8.0f32..8.0, n)
}

fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
    a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
}

proptest! {
    /// Proposition 1: softmax of the mixture is the normalised geometric mixture
    /// p_ref^(1-lambda) * p_al^lambda.
    #[test]
    fn mixture_is_normalised_geometric_mean(h_ref in logits(16), h_al in logits(16), lambda in -2.0f64..5.0) {
        let p = softmax(&mixed(&Mixture::single(lambda).unwrap(), &[h_ref.clone(), h_al.clone()]));
        let (pr, pa) = (softmax(&h_ref), softmax(&h_al));
        let g: Vec<f64> = pr.iter().zip(&pa).map(|(r, a)| r.powf(1.0 - lambda) * a.powf(lambda)).collect();
        let z: f64 = g.iter().sum();
        let g: Vec<f64> = g.into_iter().map(|v| v / z).collect();
        prop_assert!(close(&p, &g, 1e-5), "{p:?} vs {g:?}");
    }

    /// lambda = 0 gives the reference logits and lambda = 1 the aligned logits, exactly.
    #[test]
    fn endpoints_are_exact(h_ref in logits(32), h_al in logits(32)) {
        prop_assert_eq!(mixed(&Mixture::single(0.0).unwrap(), &[h_ref.clone(), h_al.clone()]), h_ref.clone());
        prop_assert_eq!(mixed(&Mixture::single(1.0).unwrap(), &[h_ref, h_al.clone()]), h_al);
    }

    /// Adding a constant to one model's logits does not change the mixed distribution.
    #[test]
    fn shift_invariance(h_ref in logits(16), h_al in logits(16), lambda in -1.0f64..4.0, c in -5.0f32..5.0, which in 0usize..2) {
        let mix = Mixture::single(lambda).unwrap();
        let mut rows = vec![h_ref, h_al];
        let before = softmax(&mixed(&mix, &rows));
        rows[which].iter_mut().for_each(|v| *v += c);
        let after = softmax(&mixed(&mix, &rows));
        prop_assert!(close(&before, &after, 1e-4));
    }

    /// K = 1 in the multi-reward form equals the single-model formula lambda*h_al + (1-lambda)*h_ref.
    #[test]
    fn single_reward_formula(h_ref in logits(16), h_al in logits(16), lambda in -3.0f64..10.0) {
        let out = mixed(&Mixture::new(vec![lambda]).unwrap(), &[h_ref.clone(), h_al.clone()]);
        let l = lambda as f32;
        for ((o, r), a) in out.iter().zip(&h_ref).zip(&h_al) {
            let expect = (1.0 - l) * r + l * a;
            prop_assert!((o - expect).abs() <= 1e-4 * (1.0 + expect.abs()));
        }
    }

    /// The order of the aligned models (with their weights) does not matter.
    #[test]
    fn component_order_is_irrelevant(h in prop::collection::vec(logits(12), 4), l in prop::collection::vec(-1.0f64..2.0, 3)) {
        let a = softmax(&mixed(&Mixture::new(l.clone()).unwrap(), &h));
        let perm_l = vec![l[2], l[0], l[1]];
        let perm_h = vec![h[0].clone(), h[3].clone(), h[1].clone(), h[2].clone()];
        let b = softmax(&mixed(&Mixture::new(perm_l).unwrap(), &perm_h));
        prop_assert!(close(&a, &b, 1e-5));
    }

    /// One lambda for k models: each model at that lambda, the reference at 1 - k lambda.
    #[test]
    fn uniform_is_one_lambda_for_every_model(lambda in -10.0f64..10.0, k in 1usize..6) {
        let m = Mixture::uniform(lambda, k).unwrap();
        let want = vec![lambda; k];
        prop_assert_eq!(m.lambdas(), want.as_slice());
        prop_assert!((m.coefficients()[0] - (1.0 - k as f64 * lambda)).abs() <= 1e-12);
    }

    /// Coefficients always sum to one.
    #[test]
    fn coefficients_sum_to_one(l in prop::collection::vec(-10.0f64..10.0, 1..5)) {
        let c = Mixture::new(l).unwrap().coefficients();
        prop_assert!((c.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    }
}

#[test]
fn non_finite_lambda_is_named() {
    let err = Mixture::new(vec![0.5, f64::NAN]).unwrap_err();
    assert!(matches!(err, MixError::NonFiniteLambda { index: 1, .. }));
    assert!(err.to_string().contains("lambda[1] = NaN"), "{err}");
    assert!(
        Mixture::new(vec![f64::INFINITY])
            .unwrap_err()
            .to_string()
            .contains("inf")
    );
    assert_eq!(Mixture::new(vec![]).unwrap().coefficients(), [1.0]);
}

/// A batch where each model ran only the rows with a non-zero coefficient mixes every row
/// exactly as that row mixed alone, and wider logits are cut to the width.
#[test]
fn rows_a_model_skipped_get_nothing_from_it() {
    let mixtures = [
        Mixture::single(0.0).unwrap(),
        Mixture::single(1.0).unwrap(),
        Mixture::single(0.5).unwrap(),
    ];
    let h_ref = vec![vec![1.0f32, -2.0, 3.0], vec![0.5, 0.25, -1.0]];
    let h_al = [vec![4.0f32, 1.0, -3.0], vec![2.0, -0.5, 1.5]];
    // The reference ran rows 0 and 2, the aligned model rows 1 and 2 (with a wider vocabulary).
    let wide: Vec<Vec<f32>> = h_al
        .iter()
        .map(|r| [r.clone(), vec![9.0]].concat())
        .collect();
    let coef = |j: usize, rows: &[usize]| -> Vec<f32> {
        rows.iter()
            .map(|&r| mixtures[r].coefficients_f32()[j])
            .collect()
    };
    let terms = [
        Term {
            logits: tensor(&h_ref),
            rows: vec![0, 2],
            coefficients: coef(0, &[0, 2]),
        },
        Term {
            logits: tensor(&wide),
            rows: vec![1, 2],
            coefficients: coef(1, &[1, 2]),
        },
    ];
    let got = to_vec(mix_logits(terms, 3, 3, &Device::flex()));
    let alone = [
        mixed(&mixtures[0], &[h_ref[0].clone(), vec![0.0; 3]]),
        mixed(&mixtures[1], &[vec![0.0; 3], h_al[0].clone()]),
        mixed(&mixtures[2], &[h_ref[1].clone(), h_al[1].clone()]),
    ]
    .concat();
    assert_eq!(got, alone);
    assert_eq!(&got[..3], &h_ref[0][..]);
    assert_eq!(&got[3..6], &h_al[0][..]);
}

/// The shared coefficient function is what a mixture uses, and refuses what it refuses.
#[test]
fn shared_coefficients_match_the_mixture() {
    let l = vec![0.25, 1.5];
    assert_eq!(
        dera_mix::coefficients(&l).unwrap(),
        Mixture::new(l).unwrap().coefficients()
    );
    assert!(matches!(
        dera_mix::coefficients(&[f64::NAN]),
        Err(MixError::NonFiniteLambda { index: 0, .. })
    ));
}

#[test]
fn effective_beta_divides() {
    assert_eq!(dera_mix::effective_beta(0.1, 2.0), 0.05);
    assert!(dera_mix::effective_beta(0.1, 0.0).is_infinite());
}

/// The models a mixture uses are those with a non-zero coefficient, reference first.
#[test]
fn used_models_leave_out_exact_zero_coefficients() {
    let used = |l: Vec<f64>| Mixture::new(l).unwrap().used_models();
    assert_eq!(used(vec![0.0]), vec![0]);
    assert_eq!(used(vec![1.0]), vec![1]);
    assert_eq!(used(vec![0.5]), vec![0, 1]);
    assert_eq!(used(vec![0.5, 0.5]), vec![1, 2]);
    assert_eq!(used(vec![0.0, 2.0]), vec![0, 2]);
}

/// Weights that would overflow the f32 mix are refused up front, with the limit stated.
#[test]
fn huge_lambdas_are_refused_with_the_limit() {
    let limit = dera_mix::MAX_COEFFICIENT;
    for l in [1e39, -1e39, 1e308, limit * 1.5] {
        let err = Mixture::new(vec![0.0, l]).unwrap_err();
        assert!(
            matches!(err, MixError::LambdaTooLarge { index: 1, .. }),
            "{l}: {err}"
        );
        assert!(err.to_string().contains("1000000"), "{err}");
        // The value stays short: `1e308`, not its 309 digits.
        assert!(err.to_string().len() < 160, "{err}");
    }
    let err = Mixture::new(vec![1e308]).unwrap_err();
    assert!(
        err.to_string().starts_with("lambda[0] = 1e308 is outside"),
        "{err}"
    );
    // Each lambda within the limit, but 1 - sum beyond it.
    let err = Mixture::new(vec![limit, limit]).unwrap_err();
    assert!(matches!(err, MixError::CoefficientTooLarge { .. }), "{err}");
    // At the limit the mix of ordinary logits stays finite.
    let mix = Mixture::new(vec![limit]).unwrap();
    let out = mixed(&mix, &[vec![30.0, -30.0], vec![-30.0, 30.0]]);
    assert!(out.iter().all(|v| v.is_finite()), "{out:?}");
}
