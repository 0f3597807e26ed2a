//! How weights are kept in memory: the checkpoint's precision, another float width, or
//! llama.cpp's 8-/4-bit blocks and K-quant super-blocks.

use std::fmt;
use std::str::FromStr;

use dera_checkpoint::Dtype;
pub use dera_kernels::WeightFormat;

use crate::ModelError;

/// The float width of the weight matrices (`--dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightDtype {
    /// As stored in the checkpoint (f32, bf16 or f16; f64 becomes f32).
    #[default]
    Auto,
    /// f32.
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE half precision.
    F16,
}

/// A block-quantized format (`--quantize`), applied at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantization {
    /// llama.cpp Q8_0 (8.5 bits per weight).
    Q8_0,
    /// llama.cpp Q4_0 (4.5 bits per weight).
    Q4_0,
    /// llama.cpp Q4_1 (5 bits per weight: a minimum besides the scale; multiplied as its
    /// dequantized f32 values).
    Q4_1,
    /// llama.cpp Q5_0 (5.5 bits per weight; multiplied as its dequantized f32 values).
    Q5_0,
    /// llama.cpp Q5_1 (6 bits per weight: a minimum besides the scale).
    Q5_1,
    /// llama.cpp Q4_K (4.5 bits per weight in 256-weight super-blocks, the format of most
    /// "Q4_K_M" files): the output head in Q6_K as llama.cpp keeps it; rows that are not whole
    /// super-blocks in Q5_0, as llama.cpp falls back.
    Q4K,
    /// llama.cpp Q5_K (5.5 bits per weight): the head in Q6_K; other rows in Q5_1.
    Q5K,
    /// llama.cpp Q6_K (6.56 bits per weight), head included; other rows in Q8_0 (as llama.cpp).
    Q6K,
}

/// How a model's weights are held in memory.
///
/// Weight matrices (projections, embedding, output head) take the format these options choose;
/// norms and biases stay `f32`. On the flex (CPU) device the matrices stay in that format and
/// are multiplied by `dera_kernels` with `f32` accumulation; on other devices they are widened to
/// `f32` tensors after rounding/quantizing, so the numbers are the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadOptions {
    /// Float width of the matrices.
    pub dtype: WeightDtype,
    /// Block quantization of the matrices (rows that fit none of its formats, such as rows
    /// whose length is not a multiple of 32, keep the `dtype` choice).
    pub quantize: Option<Quantization>,
    /// Also hold the f32/bf16/f16 matrices in panels of 16 rows, in their stored format
    /// ([`dera_kernels::HostMatrix::with_panels`]), which the CPU products then use: for
    /// weights that stay in cache, where a batched step is compute-bound (1.25x faster
    /// products at 8 rows, 1.2x at one). Changes the last bits of the logits (another
    /// summation order), not their guarantees. `dera::Realigner::load_with` sets it for
    /// mixtures that fit in cache (`dera::Realigner::load_options`).
    pub panels: bool,
}

impl LoadOptions {
    /// The format for a `[rows, cols]` matrix stored as `stored`.
    pub fn format_for(&self, stored: Dtype, cols: usize) -> WeightFormat {
        self.format_for_tensor(stored, cols, false)
    }

    /// The format for a matrix; `head`: the token embedding or output head, which `q4_0` keeps
    /// in `q8_0` as llama.cpp's Q4_0 files do (4-bit logits cost far more accuracy than 4-bit
    /// projections: next-token KL 0.45 nats with a 4-bit head, 0.33 with an 8-bit one, on
    /// SmolLM2-135M-Instruct).
    pub fn format_for_tensor(&self, stored: Dtype, cols: usize, head: bool) -> WeightFormat {
        self.format_for_stored(stored_format(stored), cols, head)
    }

    /// [`Self::format_for_tensor`] for a matrix stored in kernel format `stored` (`None`: a
    /// format the kernels do not hold, read as `f32`). With `--dtype auto` and no
    /// `--quantize`, a matrix stays in its stored format (a GGUF file's Q8_0/Q4_0/Q4_1/Q5_0/Q5_1
    /// blocks and Q4_K/Q5_K/Q6_K super-blocks too).
    pub fn format_for_stored(
        &self,
        stored: Option<WeightFormat>,
        cols: usize,
        head: bool,
    ) -> WeightFormat {
        if let Some(q) = self.quantize {
            // The format, then the one for rows that are not whole super-blocks.
            let (f, fallback) = match q {
                Quantization::Q8_0 => (WeightFormat::Q8_0, None),
                Quantization::Q4_0
                | Quantization::Q4_1
                | Quantization::Q5_0
                | Quantization::Q5_1
                    if head =>
                {
                    (WeightFormat::Q8_0, None)
                }
                Quantization::Q4_0 => (WeightFormat::Q4_0, None),
                Quantization::Q4_1 => (WeightFormat::Q4_1, None),
                Quantization::Q5_0 => (WeightFormat::Q5_0, None),
                Quantization::Q5_1 => (WeightFormat::Q5_1, None),
                Quantization::Q4K | Quantization::Q5K | Quantization::Q6K if head => {
                    (WeightFormat::Q6K, Some(WeightFormat::Q8_0))
                }
                Quantization::Q4K => (WeightFormat::Q4K, Some(WeightFormat::Q5_0)),
                Quantization::Q5K => (WeightFormat::Q5K, Some(WeightFormat::Q5_1)),
                Quantization::Q6K => (WeightFormat::Q6K, Some(WeightFormat::Q8_0)),
            };
            if let Some(f) = std::iter::once(f)
                .chain(fallback)
                .find(|f| f.row_bytes(cols).is_some())
            {
                return f;
            }
        }
        match self.dtype {
            WeightDtype::F32 => WeightFormat::F32,
            WeightDtype::Bf16 => WeightFormat::Bf16,
            WeightDtype::F16 => WeightFormat::F16,
            WeightDtype::Auto => stored.unwrap_or(WeightFormat::F32),
        }
    }
}

/// The kernel format that holds a stored dtype without conversion, if any.
pub(crate) fn stored_format(dtype: Dtype) -> Option<WeightFormat> {
    match dtype {
        Dtype::F32 => Some(WeightFormat::F32),
        Dtype::BF16 => Some(WeightFormat::Bf16),
        Dtype::F16 => Some(WeightFormat::F16),
        _ => None,
    }
}

impl FromStr for WeightDtype {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(WeightDtype::Auto),
            "f32" | "float32" => Ok(WeightDtype::F32),
            "bf16" | "bfloat16" => Ok(WeightDtype::Bf16),
            "f16" | "float16" => Ok(WeightDtype::F16),
            _ => Err(ModelError::Input(format!(
                "unknown dtype `{s}` (expected auto, f32, bf16 or f16)"
            ))),
        }
    }
}

impl fmt::Display for WeightDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WeightDtype::Auto => "auto",
            WeightDtype::F32 => "f32",
            WeightDtype::Bf16 => "bf16",
            WeightDtype::F16 => "f16",
        })
    }
}

impl FromStr for Quantization {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "q8_0" => Ok(Quantization::Q8_0),
            "q4_0" => Ok(Quantization::Q4_0),
            "q4_1" => Ok(Quantization::Q4_1),
            "q5_0" => Ok(Quantization::Q5_0),
            "q5_1" => Ok(Quantization::Q5_1),
            "q4_k" => Ok(Quantization::Q4K),
            "q5_k" => Ok(Quantization::Q5K),
            "q6_k" => Ok(Quantization::Q6K),
            _ => Err(ModelError::Input(format!(
                "unknown quantization `{s}` (expected q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k or q6_k)"
            ))),
        }
    }
}

impl fmt::Display for Quantization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Quantization::Q8_0 => "q8_0",
            Quantization::Q4_0 => "q4_0",
            Quantization::Q4_1 => "q4_1",
            Quantization::Q5_0 => "q5_0",
            Quantization::Q5_1 => "q5_1",
            Quantization::Q4K => "q4_k",
            Quantization::Q5K => "q5_k",
            Quantization::Q6K => "q6_k",
        })
    }
}
