//! Decoding-time realignment as a mixture of next-token logits.
//!
//! DeRa (Liu et al., ICML 2024) approximates the model aligned at KL strength `beta / lambda` by
//!
//! ```text
//! p_t = softmax( (1 - sum_i lambda_i) * h_ref + sum_i lambda_i * h_i )
//! ```
//!
//! where `h_ref` are the reference (SFT) model's logits and `h_i` those of the model aligned
//! for reward `i`. A [`Mixture`] holds the `lambda_i` (finite reals within [`MAX_COEFFICIENT`]:
//! `lambda > 1` extrapolates, negatives are allowed) and the derived coefficients; [`Mixture::mix`] applies
//! it to rows of logits on the host, and [`logit_width`] checks that the models agree on the
//! vocabulary (or, by opt-in, truncates to the tokenizer's shared vocabulary).
//!
//! ```
//! let mix = dera_mix::Mixture::new(vec![0.5]).unwrap();
//! let (h_ref, h_al) = ([0.0f32, 2.0], [2.0f32, 0.0]);
//! let mut out = [0.0f32; 2];
//! mix.mix(&[&h_ref, &h_al], &mut out).unwrap();
//! assert_eq!(out, [1.0, 1.0]);
//! ```

#![deny(missing_docs)]

mod error;
mod mixture;
mod vocab;

pub use error::MixError;
pub use mixture::{MAX_COEFFICIENT, Mixture, check_lambdas, effective_beta};
pub use vocab::{VocabPolicy, logit_width};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
