//! Little-endian byte buffers to `f32`.

use half::{bf16, f16};
use safetensors::Dtype;

/// Converts little-endian `F32`, `F16`, `BF16` or `F64` bytes to `f32` values.
///
/// Returns `None` for any other dtype. Half-precision values widen exactly; `F64` rounds to
/// nearest even.
pub fn bytes_to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        _ => return None,
    })
}

/// Non-finite elements (NaN or infinite) of a floating-point tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NonFiniteCount {
    /// How many elements are NaN or infinite.
    pub count: usize,
    /// Flat index of the first one.
    pub first: Option<usize>,
}

/// Counts the NaN and infinite elements of little-endian `F32`, `F16`, `BF16` or `F64` bytes
/// by their exponent bits (no conversion); `None` for any other dtype.
pub fn count_non_finite(dtype: Dtype, bytes: &[u8]) -> Option<NonFiniteCount> {
    let bad: Box<dyn Iterator<Item = bool>> =
        match dtype {
            Dtype::F32 => Box::new(bytes.chunks_exact(4).map(|c| {
                u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0x7F80_0000 == 0x7F80_0000
            })),
            Dtype::BF16 => Box::new(
                bytes
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7F80 == 0x7F80),
            ),
            Dtype::F16 => Box::new(
                bytes
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7C00 == 0x7C00),
            ),
            Dtype::F64 => Box::new(bytes.chunks_exact(8).map(|c| {
                let b = [c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]];
                u64::from_le_bytes(b) & 0x7FF0_0000_0000_0000 == 0x7FF0_0000_0000_0000
            })),
            _ => return None,
        };
    let mut out = NonFiniteCount {
        count: 0,
        first: None,
    };
    for (i, b) in bad.enumerate() {
        if b {
            out.count += 1;
            out.first.get_or_insert(i);
        }
    }
    Some(out)
}

/// The safetensors spelling of a dtype (`"BF16"`, `"F32"`, ...).
pub fn dtype_name(dtype: Dtype) -> String {
    format!("{dtype:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widens_half_types_exactly() {
        let v = [1.5f32, -2.25, 0.0, 65504.0];
        let bf: Vec<u8> = v
            .iter()
            .flat_map(|&x| bf16::from_f32(x).to_bits().to_le_bytes())
            .collect();
        let h: Vec<u8> = v
            .iter()
            .flat_map(|&x| f16::from_f32(x).to_bits().to_le_bytes())
            .collect();
        assert_eq!(bytes_to_f32(Dtype::F16, &h).unwrap(), v);
        assert_eq!(bytes_to_f32(Dtype::BF16, &bf).unwrap()[..3], v[..3]);
        assert_eq!(bytes_to_f32(Dtype::BF16, &bf).unwrap()[3], 65536.0);
        assert!(bytes_to_f32(Dtype::I64, &[0; 8]).is_none());
    }

    #[test]
    fn counts_nan_and_infinities_in_every_float_dtype() {
        let v = [1.0f32, f32::NAN, 2.0, f32::NEG_INFINITY, 65504.0];
        let f32b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let f64b: Vec<u8> = v.iter().flat_map(|&x| f64::from(x).to_le_bytes()).collect();
        let bf: Vec<u8> = v
            .iter()
            .flat_map(|&x| bf16::from_f32(x).to_bits().to_le_bytes())
            .collect();
        let h: Vec<u8> = v
            .iter()
            .flat_map(|&x| f16::from_f32(x).to_bits().to_le_bytes())
            .collect();
        let want = NonFiniteCount {
            count: 2,
            first: Some(1),
        };
        for (d, b) in [
            (Dtype::F32, &f32b),
            (Dtype::F64, &f64b),
            (Dtype::BF16, &bf),
            (Dtype::F16, &h),
        ] {
            assert_eq!(count_non_finite(d, b), Some(want), "{d:?}");
        }
        assert_eq!(count_non_finite(Dtype::I64, &[0; 8]), None);
        let clean = count_non_finite(Dtype::F32, &f32b[..4]).unwrap();
        assert_eq!(clean.count, 0);
        assert_eq!(clean.first, None);
    }
}
