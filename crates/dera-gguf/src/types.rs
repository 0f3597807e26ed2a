//! ggml tensor types: ids, block sizes and bytes per block.

use std::fmt;

use dera_checkpoint::BlockFormat;

/// A ggml tensor type as a GGUF file names it (`ggml_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
    /// 32 weights: f16 scale, 32 signed bytes.
    Q8_0,
    /// 32 weights: f16 scale, 16 bytes of 4-bit values offset by 8.
    Q4_0,
    /// 32 weights: f16 scale and minimum, 16 bytes of 4-bit values.
    Q4_1,
    /// 32 weights: f16 scale, 32 fifth bits, 16 bytes of 4-bit values; 5-bit values offset by 16.
    Q5_0,
    /// 32 weights: f16 scale and minimum, 32 fifth bits, 16 bytes of 4-bit values.
    Q5_1,
    /// 32 weights: f16 scale, 16 bytes of 4-bit indices into a fixed non-linear table.
    Iq4Nl,
    /// 256 weights: IQ4_NL indices in 8 sub-blocks with 6-bit scales, f16 super-scale.
    Iq4Xs,
    /// 256 weights: 2-bit values in 16 sub-blocks with 4-bit scales and minimums, f16 scale and
    /// minimum.
    Q2K,
    /// 256 weights: 3-bit values (2 low bits, a high-bit mask) in 16 sub-blocks with 6-bit
    /// scales, f16 super-scale.
    Q3K,
    /// 256 weights: f16 scale and minimum, 6-bit sub-block scales/minima, 4-bit values.
    Q4K,
    /// 256 weights: as Q4_K with a fifth bit per value.
    Q5K,
    /// 256 weights: 6-bit values in 16 sub-blocks with 8-bit scales, f16 super-scale.
    Q6K,
    /// Any other ggml type (kept so errors can name it).
    Other(u32),
}

impl GgmlType {
    /// The type with ggml id `id`.
    pub fn from_id(id: u32) -> Self {
        match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            10 => Self::Q2K,
            20 => Self::Iq4Nl,
            23 => Self::Iq4Xs,
            11 => Self::Q3K,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            30 => Self::Bf16,
            other => Self::Other(other),
        }
    }

    /// The ggml id.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q2K => 10,
            Self::Iq4Nl => 20,
            Self::Iq4Xs => 23,
            Self::Q3K => 11,
            Self::Q4K => 12,
            Self::Q5K => 13,
            Self::Q6K => 14,
            Self::Bf16 => 30,
            Self::Other(id) => id,
        }
    }

    /// The in-place block format of a quantized type (the kernels' layout is GGUF's), `None`
    /// for the float types and the types dera cannot read.
    pub fn block_format(self) -> Option<BlockFormat> {
        Some(match self {
            Self::Q8_0 => BlockFormat::Q8_0,
            Self::Q4_0 => BlockFormat::Q4_0,
            Self::Q4_1 => BlockFormat::Q4_1,
            Self::Q5_0 => BlockFormat::Q5_0,
            Self::Q5_1 => BlockFormat::Q5_1,
            Self::Q2K => BlockFormat::Q2K,
            Self::Q3K => BlockFormat::Q3K,
            Self::Q4K => BlockFormat::Q4K,
            Self::Q5K => BlockFormat::Q5K,
            Self::Q6K => BlockFormat::Q6K,
            Self::Iq4Nl => BlockFormat::Iq4Nl,
            Self::Iq4Xs => BlockFormat::Iq4Xs,
            Self::F32 | Self::F16 | Self::Bf16 | Self::Other(_) => return None,
        })
    }

    /// `(weights per block, bytes per block)`, or `None` for a type dera cannot read.
    pub fn block(self) -> Option<(usize, usize)> {
        match self {
            Self::F32 => Some((1, 4)),
            Self::F16 | Self::Bf16 => Some((1, 2)),
            _ => self
                .block_format()
                .map(|f| (f.block_len(), f.block_bytes())),
        }
    }

    /// Bytes of `n` weights, or `None` when the type is unsupported, `n` is not a whole number
    /// of blocks, or the size overflows.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        let (per, size) = self.block()?;
        if !n.is_multiple_of(per) {
            return None;
        }
        (n / per).checked_mul(size)
    }

    /// The name llama.cpp prints (`Q4_K`, `F16`, ...).
    pub fn name(self) -> String {
        match self {
            Self::F32 => "F32".into(),
            Self::F16 => "F16".into(),
            Self::Bf16 => "BF16".into(),
            Self::Q8_0 => "Q8_0".into(),
            Self::Q4_0 => "Q4_0".into(),
            Self::Q4_1 => "Q4_1".into(),
            Self::Q5_0 => "Q5_0".into(),
            Self::Q5_1 => "Q5_1".into(),
            Self::Q2K => "Q2_K".into(),
            Self::Iq4Nl => "IQ4_NL".into(),
            Self::Iq4Xs => "IQ4_XS".into(),
            Self::Q3K => "Q3_K".into(),
            Self::Q4K => "Q4_K".into(),
            Self::Q5K => "Q5_K".into(),
            Self::Q6K => "Q6_K".into(),
            Self::Other(id) => format!("ggml type {id}"),
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}
