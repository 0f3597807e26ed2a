//! A byte-level BPE tokenizer trained on the corpus with the `tokenizers` crate.
//!
//! GPT-2 style: byte-level pre-tokenizer without a prefix space, one special token
//! [`EOT`] (id 0) that is both BOS and EOS. The post-processor puts it in front of every
//! encoded text, so `tokenizer(text)` starts with it, and the models end every fortune with it.

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, TokenizerBuilder};

use crate::error::{LabError, Result};

/// The end-of-text token, id 0: BOS and EOS.
pub const EOT: &str = "<|endoftext|>";
/// Its id.
pub const EOT_ID: u32 = 0;

fn err(e: impl std::fmt::Display) -> LabError {
    LabError::Tokenizer(e.to_string())
}

/// Trains a tokenizer of `vocab_size` entries on `texts` and writes `tokenizer.json` into `dir`.
pub fn train(texts: &[String], vocab_size: usize, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| LabError::io(dir, e))?;
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(vocab_size)
        .min_frequency(2)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(vec![AddedToken::from(EOT.to_string(), true)])
        .build();
    let post = TemplateProcessing::builder()
        .try_single(format!("{EOT} $A"))
        .map_err(err)?
        .try_pair(format!("{EOT} $A {EOT} $B"))
        .map_err(err)?
        .special_tokens(vec![(EOT.to_string(), EOT_ID)])
        .build()
        .map_err(err)?;
    let mut tok = TokenizerBuilder::<
        BPE,
        tokenizers::NormalizerWrapper,
        tokenizers::PreTokenizerWrapper,
        tokenizers::PostProcessorWrapper,
        tokenizers::DecoderWrapper,
    >::new()
    .with_model(BPE::default())
    .with_normalizer(None)
    .with_pre_tokenizer(Some(ByteLevel::new(false, true, true).into()))
    .with_post_processor(Some(post.into()))
    .with_decoder(Some(ByteLevelDecoder::default().into()))
    .build()
    .map_err(err)?;
    tok.train(&mut trainer, texts.iter()).map_err(err)?;
    let id = tok.token_to_id(EOT);
    if id != Some(EOT_ID) {
        return Err(LabError::Tokenizer(format!(
            "{EOT} got id {id:?}, expected 0"
        )));
    }
    let path = dir.join("tokenizer.json");
    tok.save(&path, false).map_err(err)?;
    Ok(())
}

/// Writes `tokenizer_config.json` (bos/eos, a plain chat template) into `dir`.
pub fn write_tokenizer_config(dir: &Path) -> Result<()> {
    let cfg = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOT,
        "eos_token": EOT,
        "unk_token": EOT,
        "pad_token": EOT,
        "add_bos_token": true,
        "model_max_length": 256,
        "clean_up_tokenization_spaces": false,
        "chat_template": "{% for message in messages %}{{ message['content'] }}{% endfor %}",
    });
    let path = dir.join("tokenizer_config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&cfg).unwrap())
        .map_err(|e| LabError::io(&path, e))
}
