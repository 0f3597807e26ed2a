//! One module per subcommand.

pub mod check;
pub mod compare;
pub mod generate;
pub mod logprobs;
pub mod merge;
pub mod score;
pub mod serve;
