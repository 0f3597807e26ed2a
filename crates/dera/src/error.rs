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
    /// A request is invalid.
    #[error("invalid request: {0}")]
    Request(String),
}
