//! `dera check DIR`: is this checkpoint (or GGUF file) usable? Config, weights, shapes,
//! finiteness, tokenizer.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Result, bail};
use dera::ChatTemplate;
use dera::dera_models::{self, Device, ModelConfig, Tokenizer};
use dera_checkpoint::{Checkpoint, TOKENIZER_FILE, count_non_finite};

use crate::args::Format;

/// Scan a checkpoint directory and report every problem found (exit 1 when there is one).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Checkpoint directory in Hugging Face layout, or a GGUF file.
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

/// One line of the report.
struct Item {
    what: &'static str,
    ok: bool,
    detail: String,
}

#[derive(Default)]
struct Report(Vec<Item>);

impl Report {
    fn ok(&mut self, what: &'static str, detail: impl Into<String>) {
        self.0.push(Item {
            what,
            ok: true,
            detail: detail.into(),
        });
    }
    fn fail(&mut self, what: &'static str, detail: impl std::fmt::Display) {
        self.0.push(Item {
            what,
            ok: false,
            detail: detail.to_string(),
        });
    }
    fn problems(&self) -> usize {
        self.0.iter().filter(|i| !i.ok).count()
    }
}

/// Weights, finiteness, shapes and tokenizer of a GGUF file.
fn check_gguf(path: &std::path::Path, cfg: Option<&ModelConfig>, r: &mut Report) {
    let g = match dera_models::GgufModel::open(path) {
        Ok(g) => g,
        Err(e) => return r.fail("weights", e),
    };
    let file = g.file();
    let mut types = std::collections::BTreeMap::<String, usize>::new();
    for t in file.tensors() {
        *types.entry(t.ty.name()).or_default() += 1;
    }
    let bytes: usize = file.tensors().iter().map(|t| t.range.len()).sum();
    r.ok(
        "weights",
        format!(
            "GGUF v{}: {} tensors ({types:?}), {bytes} bytes",
            file.version(),
            file.tensors().len()
        ),
    );
    let (mut values, mut bad) = (0usize, 0usize);
    for t in file.tensors() {
        match file.read_f32(&t.name) {
            Ok((v, _)) => {
                values += v.len();
                let n = v.iter().filter(|x| !x.is_finite()).count();
                if n > 0 {
                    bad += 1;
                    r.fail(
                        "finite",
                        format!(
                            "tensor `{}`: {n} of {} values are NaN or infinite",
                            t.name,
                            v.len()
                        ),
                    );
                }
            }
            Err(e) => r.fail("finite", e),
        }
    }
    if bad == 0 {
        r.ok("finite", format!("all {values} dequantized values"));
    }
    if let Some(cfg) = cfg {
        let weights = dera_models::HostWeights::new(&g, Device::flex());
        match dera_models::Model::new(cfg, &weights) {
            Ok(_) => r.ok(
                "shapes",
                "every tensor the model needs has the config's shape",
            ),
            Err(e) => r.fail("shapes", e),
        }
    }
    match g
        .tokenizer_json()
        .map_err(anyhow::Error::from)
        .and_then(|j| Ok(Tokenizer::from_json(&j.to_string(), path)?))
    {
        Ok(t) => r.ok(
            "tokenizer",
            format!("{} entries (from the metadata)", t.vocab_size()),
        ),
        Err(e) => r.fail("tokenizer", e),
    }
}

/// Runs the command.
pub fn run(a: &Args) -> Result<()> {
    let mut r = Report::default();
    let dir = &a.dir;
    let cfg = match ModelConfig::from_dir(dir) {
        Ok(c) => {
            r.ok(
                "config",
                format!(
                    "{:?}: {} layers, hidden {}, {} heads ({} kv), vocab {}, context {}",
                    c.architecture,
                    c.num_layers,
                    c.hidden_size,
                    c.num_heads,
                    c.num_kv_heads,
                    c.vocab_size,
                    c.max_position_embeddings
                ),
            );
            Some(c)
        }
        Err(e) => {
            r.fail("config", e);
            None
        }
    };
    let gguf = dera_models::is_gguf_path(dir);
    if gguf {
        check_gguf(dir, cfg.as_ref(), &mut r);
    }
    let ckpt = match Checkpoint::open(dir) {
        _ if gguf => None,
        Ok(c) => {
            let bytes: usize = c.files().iter().map(|f| f.bytes().len()).sum();
            r.ok(
                "weights",
                format!(
                    "{} tensors in {} file(s), {bytes} bytes",
                    c.len(),
                    c.files().len()
                ),
            );
            Some(c)
        }
        Err(e) => {
            r.fail("weights", e);
            None
        }
    };
    if let Some(c) = &ckpt {
        let (mut values, mut bad_tensors) = (0usize, 0usize);
        for name in c.names() {
            let raw = c.raw(name)?;
            let Some(scan) = count_non_finite(raw.dtype, raw.bytes) else {
                continue;
            };
            values += raw.shape.iter().product::<usize>();
            if scan.count > 0 {
                bad_tensors += 1;
                r.fail(
                    "finite",
                    format!(
                        "tensor `{name}`: {} of {} values are NaN or infinite (first at flat index {})",
                        scan.count,
                        raw.shape.iter().product::<usize>(),
                        scan.first.unwrap_or_default()
                    ),
                );
            }
        }
        if bad_tensors == 0 {
            r.ok("finite", format!("all {values} floating-point values"));
        }
    }
    if let (Some(cfg), Some(c)) = (&cfg, &ckpt) {
        // Building the model checks every tensor it needs against the config's shapes.
        let weights = dera_models::HostWeights::new(c, Device::flex());
        match dera_models::Model::new(cfg, &weights) {
            Ok(_) => r.ok(
                "shapes",
                "every tensor the model needs has the config's shape",
            ),
            Err(e) => r.fail("shapes", e),
        }
    }
    let tok_path = dir.join(TOKENIZER_FILE);
    if gguf {
        // Checked with the weights.
    } else if tok_path.is_file() {
        match Tokenizer::from_file(&tok_path) {
            Ok(t) => match &cfg {
                Some(c) if t.vocab_size() > c.vocab_size => r.fail(
                    "tokenizer",
                    format!(
                        "{}: {} entries but the model has only {} logits (vocab_size)",
                        tok_path.display(),
                        t.vocab_size(),
                        c.vocab_size
                    ),
                ),
                _ => r.ok("tokenizer", format!("{} entries", t.vocab_size())),
            },
            Err(e) => r.fail("tokenizer", e),
        }
    } else {
        r.fail(
            "tokenizer",
            format!("{} is missing: text prompts need it", tok_path.display()),
        );
    }
    match ChatTemplate::from_dir(dir) {
        Ok(t) => match t.render_user("Hello") {
            Ok(_) => r.ok("chat", "the chat template renders"),
            Err(e) => r.fail("chat", e),
        },
        Err(e) if e.to_string().contains("has no chat_template") => {
            r.ok("chat", "no chat template (--chat is unavailable)")
        }
        Err(e) => r.fail("chat", e),
    }
    let mut out = std::io::stdout().lock();
    match a.format {
        Format::Json => {
            let items: Vec<_> =
                r.0.iter()
                    .map(|i| serde_json::json!({ "check": i.what, "ok": i.ok, "detail": i.detail }))
                    .collect();
            writeln!(
                out,
                "{}",
                serde_json::json!({ "dir": dir, "problems": r.problems(), "checks": items })
            )?;
        }
        Format::Text => {
            for i in &r.0 {
                let mark = if i.ok { "ok  " } else { "FAIL" };
                writeln!(out, "{mark} {:<10} {}", i.what, i.detail)?;
            }
        }
    }
    out.flush()?;
    match r.problems() {
        0 => Ok(()),
        n => bail!("{}: {n} problem(s) found", dir.display()),
    }
}
