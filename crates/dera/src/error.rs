/// Errors of the realignment engine.
#[derive(Debug, thiserror::Error)]
pub enum DeraError {
    /// Loading or running a model failed.
    #[error(transparent)]
    Model(#[from] dera_models::ModelError),
    /// The mixture is invalid or the models disagree on the vocabulary.
    #[error(transparent)]
    Mix(#[from] dera_mix::MixError),
    /// A sampling option is invalid.
    #[error(transparent)]
    Processor(#[from] dera_logits::ProcessorError),
    /// Sampling failed (every token masked).
    #[error(transparent)]
    Sample(#[from] dera_logits::SampleError),
    /// The chat template is missing or does not render.
    #[error("chat template: {0}")]
    Chat(String),
    /// Mixed (or reference) logits came out NaN or infinite: never printed as a result.
    #[error(
        "non-finite logits ({value}) at {at}: the models produce NaN or infinite values there \
         (check the checkpoints with `dera check DIR`)"
    )]
    NonFinite {
        /// Where: the decoding step and request, or the scored position.
        at: String,
        /// The first non-finite value.
        value: f32,
    },
    /// The prompt plus the tokens to generate do not fit the model's context.
    #[error(
        "{at}: {prompt} prompt tokens + {new} new tokens = {total} exceeds the context of {context} positions \
         (max_position_embeddings of {model})"
    )]
    Context {
        /// Which request or input.
        at: String,
        /// Prompt tokens.
        prompt: usize,
        /// Tokens to generate or score.
        new: usize,
        /// Their sum.
        total: usize,
        /// The smallest `max_position_embeddings` among the models.
        context: usize,
        /// The checkpoint that sets it.
        model: String,
    },
    /// A request is invalid.
    #[error("invalid request: {0}")]
    Request(String),
}
