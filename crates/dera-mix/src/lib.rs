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
//! `lambda > 1` extrapolates, negatives are allowed) and the derived [`coefficients`] (shared
//! with `dera-merge`, which interpolates weights with the same numbers); [`mix_logits`] (feature
//! `device`, on by default) applies them to per-model logits on the models' device, each model
//! contributing only the rows it ran; and [`logit_width`] checks that the models agree on the
//! vocabulary (or, by opt-in, truncates to the tokenizer's shared vocabulary).
//!
//! ```
//! # #[cfg(feature = "device")] {
//! use burn::tensor::{Device, Tensor, TensorData};
//! use dera_mix::{Mixture, Term, mix_logits};
//!
//! let device = Device::flex();
//! let row = |v: [f32; 2]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), [1, 2]), &device);
//! let c = Mixture::new(vec![0.5]).unwrap().coefficients_f32();
//! let terms = [
//!     Term { logits: row([0.0, 2.0]), rows: vec![0], coefficients: vec![c[0]] },
//!     Term { logits: row([2.0, 0.0]), rows: vec![0], coefficients: vec![c[1]] },
//! ];
//! let mixed = mix_logits(terms, 1, 2, &device);
//! assert_eq!(mixed.into_data().try_to_vec::<f32>().unwrap(), [1.0, 1.0]);
//! # }
//! ```

#![deny(missing_docs)]

#[cfg(feature = "device")]
mod device;
mod error;
mod mixture;
mod vocab;

#[cfg(feature = "device")]
pub use device::{Term, mix_logits};
pub use error::MixError;
pub use mixture::{MAX_COEFFICIENT, Mixture, check_lambdas, coefficients, effective_beta};
pub use vocab::{VocabPolicy, logit_width};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
