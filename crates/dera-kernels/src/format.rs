//! The element formats a weight matrix can be kept in.

use std::fmt;
use std::str::FromStr;

use crate::KernelError;
use crate::quant::{
    BLOCK, IQ4_NL_BYTES, IQ4_XS_BYTES, Q2_K_BYTES, Q3_K_BYTES, Q4_0_BYTES, Q4_1_BYTES, Q4_K_BYTES,
    Q5_0_BYTES, Q5_1_BYTES, Q5_K_BYTES, Q6_K_BYTES, Q8_0_BYTES, QK_K,
};

/// How a weight matrix is stored in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    /// IEEE single precision.
    F32,
    /// bfloat16 (the upper half of an f32).
    Bf16,
    /// IEEE half precision.
    F16,
    /// llama.cpp Q8_0: blocks of 32 `i8` with an f16 scale (34 bytes).
    Q8_0,
    /// llama.cpp Q4_0: blocks of 32 4-bit values with an f16 scale (18 bytes).
    Q4_0,
    /// llama.cpp Q4_1: blocks of 32 4-bit values with an f16 scale and an f16 minimum (20
    /// bytes).
    Q4_1,
    /// llama.cpp Q5_0: blocks of 32 5-bit values with an f16 scale (22 bytes).
    Q5_0,
    /// llama.cpp Q5_1: blocks of 32 5-bit values with an f16 scale and an f16 minimum (24
    /// bytes).
    Q5_1,
    /// llama.cpp IQ4_NL: blocks of 32 4-bit indices into a fixed non-linear table, with an f16
    /// scale (18 bytes). Read from GGUF files only.
    Iq4Nl,
    /// llama.cpp IQ4_XS: super-blocks of 256 IQ4_NL indices in 8 sub-blocks with 6-bit scales
    /// under an f16 `d` (136 bytes). Read from GGUF files only.
    Iq4Xs,
    /// llama.cpp Q2_K: super-blocks of 256 2-bit values in 16 sub-blocks with 4-bit scales and
    /// minimums under f16 `d` and `dmin` (84 bytes).
    Q2K,
    /// llama.cpp Q3_K: super-blocks of 256 3-bit values in 16 sub-blocks with 6-bit scales
    /// under an f16 `d` (110 bytes).
    Q3K,
    /// llama.cpp Q4_K: super-blocks of 256 4-bit values in 8 sub-blocks, each with a 6-bit
    /// scale and minimum under f16 `d` and `dmin` (144 bytes).
    Q4K,
    /// llama.cpp Q5_K: Q4_K with a fifth bit per value (176 bytes per 256).
    Q5K,
    /// llama.cpp Q6_K: super-blocks of 256 6-bit values in 16 sub-blocks with 8-bit scales under
    /// an f16 `d` (210 bytes).
    Q6K,
}

impl WeightFormat {
    /// Bytes of one row of `cols` weights, or `None` when `cols` does not fit the format (block
    /// formats need a multiple of [`Self::block_len`]) or overflows.
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        let n = self.block_len();
        cols.is_multiple_of(n)
            .then(|| (cols / n).checked_mul(self.block_bytes()))
            .flatten()
    }

    /// Bytes of one block ([`Self::block_len`] weights): the value size for the float formats.
    pub fn block_bytes(self) -> usize {
        match self {
            WeightFormat::F32 => 4,
            WeightFormat::Bf16 | WeightFormat::F16 => 2,
            WeightFormat::Q8_0 => Q8_0_BYTES,
            WeightFormat::Q4_0 => Q4_0_BYTES,
            WeightFormat::Q4_1 => Q4_1_BYTES,
            WeightFormat::Q5_0 => Q5_0_BYTES,
            WeightFormat::Q5_1 => Q5_1_BYTES,
            WeightFormat::Iq4Nl => IQ4_NL_BYTES,
            WeightFormat::Iq4Xs => IQ4_XS_BYTES,
            WeightFormat::Q2K => Q2_K_BYTES,
            WeightFormat::Q3K => Q3_K_BYTES,
            WeightFormat::Q4K => Q4_K_BYTES,
            WeightFormat::Q5K => Q5_K_BYTES,
            WeightFormat::Q6K => Q6_K_BYTES,
        }
    }

    /// Weights per block: 1 for the float formats, 32 for Q8_0/Q4_0/Q4_1/Q5_0/Q5_1, 256 for
    /// the K-quants.
    pub fn block_len(self) -> usize {
        match self {
            WeightFormat::F32 | WeightFormat::Bf16 | WeightFormat::F16 => 1,
            WeightFormat::Q8_0
            | WeightFormat::Q4_0
            | WeightFormat::Q4_1
            | WeightFormat::Q5_0
            | WeightFormat::Q5_1
            | WeightFormat::Iq4Nl => BLOCK,
            WeightFormat::Iq4Xs
            | WeightFormat::Q2K
            | WeightFormat::Q3K
            | WeightFormat::Q4K
            | WeightFormat::Q5K
            | WeightFormat::Q6K => QK_K,
        }
    }

    /// Whether this is a block-quantized format.
    pub fn is_quantized(self) -> bool {
        self.block_len() > 1
    }

    /// The format's name as the command line spells it.
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::Bf16 => "bf16",
            WeightFormat::F16 => "f16",
            WeightFormat::Q8_0 => "q8_0",
            WeightFormat::Q4_0 => "q4_0",
            WeightFormat::Q4_1 => "q4_1",
            WeightFormat::Q5_0 => "q5_0",
            WeightFormat::Q5_1 => "q5_1",
            WeightFormat::Iq4Nl => "iq4_nl",
            WeightFormat::Iq4Xs => "iq4_xs",
            WeightFormat::Q2K => "q2_k",
            WeightFormat::Q3K => "q3_k",
            WeightFormat::Q4K => "q4_k",
            WeightFormat::Q5K => "q5_k",
            WeightFormat::Q6K => "q6_k",
        }
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for WeightFormat {
    type Err = KernelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "f32" => WeightFormat::F32,
            "bf16" => WeightFormat::Bf16,
            "f16" => WeightFormat::F16,
            "q8_0" => WeightFormat::Q8_0,
            "q4_0" => WeightFormat::Q4_0,
            "q4_1" => WeightFormat::Q4_1,
            "q5_0" => WeightFormat::Q5_0,
            "q5_1" => WeightFormat::Q5_1,
            "iq4_nl" => WeightFormat::Iq4Nl,
            "iq4_xs" => WeightFormat::Iq4Xs,
            "q2_k" => WeightFormat::Q2K,
            "q3_k" => WeightFormat::Q3K,
            "q4_k" => WeightFormat::Q4K,
            "q5_k" => WeightFormat::Q5K,
            "q6_k" => WeightFormat::Q6K,
            _ => return Err(KernelError::UnknownFormat(s.to_string())),
        })
    }
}
