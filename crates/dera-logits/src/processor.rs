//! The [`LogitsProcessor`] trait, the per-step [`Context`], and [`ProcessorChain`].

use std::fmt;

/// What a processor may look at besides the logits: the token history of one sequence.
///
/// Hugging Face transformers hands its processors `input_ids`, which is the prompt followed
/// by the tokens generated so far; [`Context::all_tokens`] is that sequence. Processors with
/// OpenAI semantics (frequency and presence penalties) and length constraints only look at
/// [`Context::generated`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Context<'a> {
    /// Prompt token ids.
    pub prompt: &'a [u32],
    /// Tokens generated so far for this sequence, excluding the prompt.
    pub generated: &'a [u32],
}

impl<'a> Context<'a> {
    /// A context from the prompt ids and the ids generated so far.
    pub fn new(prompt: &'a [u32], generated: &'a [u32]) -> Self {
        Self { prompt, generated }
    }

    /// Prompt followed by generated tokens (transformers' `input_ids`).
    pub fn all_tokens(&self) -> impl DoubleEndedIterator<Item = u32> + 'a {
        self.prompt.iter().chain(self.generated).copied()
    }

    /// Number of tokens in prompt + generated.
    pub fn len(&self) -> usize {
        self.prompt.len() + self.generated.len()
    }

    /// True when both prompt and generated are empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Token at position `i` of prompt + generated.
    pub fn token(&self, i: usize) -> Option<u32> {
        match i.checked_sub(self.prompt.len()) {
            None => self.prompt.get(i).copied(),
            Some(j) => self.generated.get(j).copied(),
        }
    }

    /// True when prompt + generated ends with `suffix` (always true for an empty suffix).
    pub fn ends_with(&self, suffix: &[u32]) -> bool {
        let Some(start) = self.len().checked_sub(suffix.len()) else {
            return false;
        };
        suffix
            .iter()
            .enumerate()
            .all(|(j, &t)| self.token(start + j) == Some(t))
    }
}

/// Rewrites one row of next-token logits in place.
///
/// A processor sees the raw scores of every vocabulary entry for the next position and may
/// shift them (penalties), mask them to `f32::NEG_INFINITY` (constraints, truncation) or
/// rescale them (temperature). Out-of-range token ids in the context or in a processor's
/// configuration are ignored rather than panicking. Rows may hold up to `u32::MAX` entries.
pub trait LogitsProcessor {
    /// Applies the processor to `logits` (one row, length = vocabulary size).
    fn process(&self, logits: &mut [f32], ctx: &Context<'_>);

    /// Short human-readable name for debugging and logs.
    fn name(&self) -> &'static str;
}

/// A boxed processor as stored in a [`ProcessorChain`].
pub type BoxedProcessor = Box<dyn LogitsProcessor + Send + Sync>;

/// Processors applied one after another, in insertion order.
#[derive(Default)]
pub struct ProcessorChain {
    processors: Vec<BoxedProcessor>,
}

impl ProcessorChain {
    /// An empty chain (leaves logits unchanged).
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a processor; builder style.
    #[must_use]
    pub fn push<P: LogitsProcessor + Send + Sync + 'static>(mut self, processor: P) -> Self {
        self.processors.push(Box::new(processor));
        self
    }

    /// Appends an already boxed processor; builder style.
    #[must_use]
    pub fn push_boxed(mut self, processor: BoxedProcessor) -> Self {
        self.processors.push(processor);
        self
    }

    /// Appends every processor of `other`, after this chain's own.
    pub fn extend(&mut self, other: ProcessorChain) {
        self.processors.extend(other.processors);
    }

    /// Appends a processor in place.
    pub fn add<P: LogitsProcessor + Send + Sync + 'static>(&mut self, processor: P) {
        self.processors.push(Box::new(processor));
    }

    /// Number of processors in the chain.
    pub fn len(&self) -> usize {
        self.processors.len()
    }

    /// True when the chain holds no processor.
    pub fn is_empty(&self) -> bool {
        self.processors.is_empty()
    }

    /// Names of the processors, in application order.
    pub fn names(&self) -> Vec<&'static str> {
        self.processors.iter().map(|p| p.name()).collect()
    }

    /// The processors, in application order.
    pub fn processors(&self) -> &[BoxedProcessor] {
        &self.processors
    }
}

impl LogitsProcessor for ProcessorChain {
    fn process(&self, logits: &mut [f32], ctx: &Context<'_>) {
        for p in &self.processors {
            p.process(logits, ctx);
        }
    }

    fn name(&self) -> &'static str {
        "ProcessorChain"
    }
}

impl fmt::Debug for ProcessorChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ProcessorChain")
            .field(&self.names())
            .finish()
    }
}

impl<P: LogitsProcessor + ?Sized> LogitsProcessor for std::sync::Arc<P> {
    fn process(&self, logits: &mut [f32], ctx: &Context<'_>) {
        (**self).process(logits, ctx);
    }

    fn name(&self) -> &'static str {
        (**self).name()
    }
}

impl<P: LogitsProcessor + ?Sized> LogitsProcessor for Box<P> {
    fn process(&self, logits: &mut [f32], ctx: &Context<'_>) {
        (**self).process(logits, ctx);
    }

    fn name(&self) -> &'static str {
        (**self).name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Add(f32, &'static str);
    impl LogitsProcessor for Add {
        fn process(&self, logits: &mut [f32], _ctx: &Context<'_>) {
            logits.iter_mut().for_each(|x| *x += self.0);
        }
        fn name(&self) -> &'static str {
            self.1
        }
    }

    struct Double;
    impl LogitsProcessor for Double {
        fn process(&self, logits: &mut [f32], _ctx: &Context<'_>) {
            logits.iter_mut().for_each(|x| *x *= 2.0);
        }
        fn name(&self) -> &'static str {
            "Double"
        }
    }

    #[test]
    fn context_concatenates_prompt_and_generated() {
        let ctx = Context::new(&[1, 2], &[3]);
        assert_eq!(ctx.all_tokens().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(ctx.all_tokens().rev().collect::<Vec<_>>(), vec![3, 2, 1]);
        assert_eq!(ctx.len(), 3);
        assert_eq!(ctx.token(0), Some(1));
        assert_eq!(ctx.token(2), Some(3));
        assert_eq!(ctx.token(3), None);
        assert!(ctx.ends_with(&[2, 3]));
        assert!(ctx.ends_with(&[]));
        assert!(!ctx.ends_with(&[1, 3]));
        assert!(!ctx.ends_with(&[0, 1, 2, 3]));
        assert!(Context::default().is_empty());
    }

    #[test]
    fn chain_applies_in_insertion_order() {
        let ctx = Context::default();
        let a = ProcessorChain::new().push(Add(1.0, "Add")).push(Double);
        let b = ProcessorChain::new().push(Double).push(Add(1.0, "Add"));
        let mut x = vec![1.0f32];
        a.process(&mut x, &ctx);
        assert_eq!(x, vec![4.0]);
        let mut y = vec![1.0f32];
        b.process(&mut y, &ctx);
        assert_eq!(y, vec![3.0]);
        assert_eq!(a.names(), vec!["Add", "Double"]);
        assert_eq!(format!("{a:?}"), "ProcessorChain([\"Add\", \"Double\"])");
    }

    #[test]
    fn chains_nest() {
        let inner = ProcessorChain::new().push(Double);
        let mut outer = ProcessorChain::new().push(inner);
        outer.add(Add(0.5, "Half"));
        let mut x = vec![1.0f32, -1.0];
        outer.process(&mut x, &Context::default());
        assert_eq!(x, vec![2.5, -1.5]);
        assert_eq!(outer.len(), 2);
        assert!(!outer.is_empty());
    }
}
