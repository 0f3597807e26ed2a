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
}
