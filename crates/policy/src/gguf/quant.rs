//! ggml storage types and their dequantization to f32 (the block layouts of ggml-quants).

use half::{bf16, f16};

/// A ggml tensor storage type that opd reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    Bf16,
    /// Blocks of 32: f16 scale `d`, 32 × i8; `x = d·q`.
    Q8_0,
    /// Blocks of 32: f16 `d`, 32 × u4; `x = d·(q − 8)`.
    Q4_0,
    /// Blocks of 32: f16 `d`, f16 `m`, 32 × u4; `x = d·q + m`.
    Q4_1,
    /// Super-blocks of 256: f16 `d`, `dmin`, 8 six-bit scale/min pairs, 256 × u4.
    Q4K,
    /// Super-blocks of 256: 256 × 6-bit quants, 16 × i8 scales, f16 `d`; `x = d·s·(q − 32)`.
    Q6K,
}

impl GgmlType {
    /// The type with ggml id `id`, if opd supports it.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            14 => Self::Q6K,
            30 => Self::Bf16,
            _ => return None,
        })
    }

    /// `(elements per block, bytes per block)`.
    pub fn block(self) -> (u64, u64) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::Bf16 => (1, 2),
            Self::Q8_0 => (32, 34),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q4K => (256, 144),
            Self::Q6K => (256, 210),
        }
    }

    /// Bytes taken by `elements` values, or `None` if that is not a whole number of blocks
    /// or overflows.
    pub fn byte_size(self, elements: u64) -> Option<u64> {
        let (per_block, bytes) = self.block();
        elements
            .is_multiple_of(per_block)
            .then(|| (elements / per_block).checked_mul(bytes))
            .flatten()
    }

    /// Dequantizes `data` holding `elements` values (its size checked by the reader).
    pub fn dequantize(self, data: &[u8], elements: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(elements);
        let (_, block_bytes) = self.block();
        for block in data.chunks_exact(block_bytes as usize) {
            match self {
                Self::F32 => out.push(f32::from_le_bytes(block.try_into().expect("4 bytes"))),
                Self::F16 => out.push(half_at(block, 0)),
                Self::Bf16 => out.push(bf16::from_le_bytes([block[0], block[1]]).to_f32()),
                Self::Q8_0 => {
                    let d = half_at(block, 0);
                    out.extend(block[2..34].iter().map(|&q| d * (q as i8) as f32));
                }
                Self::Q4_0 => {
                    let d = half_at(block, 0);
                    let qs = &block[2..18];
                    out.extend(qs.iter().map(|&q| d * ((q & 0xF) as f32 - 8.0)));
                    out.extend(qs.iter().map(|&q| d * ((q >> 4) as f32 - 8.0)));
                }
                Self::Q4_1 => {
                    let (d, m) = (half_at(block, 0), half_at(block, 2));
                    let qs = &block[4..20];
                    out.extend(qs.iter().map(|&q| d * (q & 0xF) as f32 + m));
                    out.extend(qs.iter().map(|&q| d * (q >> 4) as f32 + m));
                }
                Self::Q4K => dequantize_q4k(block, &mut out),
                Self::Q6K => dequantize_q6k(block, &mut out),
            }
        }
        out
    }
}

fn half_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Scale and min `j` (0..8) of a Q4_K super-block, packed in 12 bytes as 6-bit values.
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    if j < 4 {
        ((q[j] & 63) as f32, (q[j + 4] & 63) as f32)
    } else {
        (
            ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4)) as f32,
            ((q[j + 4] >> 4) | ((q[j] >> 6) << 4)) as f32,
        )
    }
}

/// 144 bytes: `d`, `dmin` (f16), scales[12], qs[128]. Four groups of 64 values, each two
/// runs of 32 sharing a byte of `qs` (low nibble, then high): `x = d·sc·q − dmin·m`.
fn dequantize_q4k(block: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (half_at(block, 0), half_at(block, 2));
    let scales = &block[4..16];
    for (group, qs) in block[16..144].chunks_exact(32).enumerate() {
        let (sc_lo, m_lo) = scale_min_k4(2 * group, scales);
        let (sc_hi, m_hi) = scale_min_k4(2 * group + 1, scales);
        out.extend(
            qs.iter()
                .map(|&q| d * sc_lo * (q & 0xF) as f32 - dmin * m_lo),
        );
        out.extend(
            qs.iter()
                .map(|&q| d * sc_hi * (q >> 4) as f32 - dmin * m_hi),
        );
    }
}

/// 210 bytes: ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] (i8), `d` (f16).
/// Two halves of 128 values; in each, position `l` of four runs of 32 shares `ql`/`qh` bytes.
fn dequantize_q6k(block: &[u8], out: &mut Vec<f32>) {
    let d = half_at(block, 208);
    let scales = &block[192..208];
    for half in 0..2 {
        let ql = &block[64 * half..64 * half + 64];
        let qh = &block[128 + 32 * half..128 + 32 * half + 32];
        let sc = &scales[8 * half..8 * half + 8];
        let mut values = [0f32; 128];
        for l in 0..32 {
            let is = l / 16;
            let q = [
                (ql[l] & 0xF) | ((qh[l] & 3) << 4),
                (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4),
                (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
            ];
            for (run, &q) in q.iter().enumerate() {
                let scale = sc[is + 2 * run] as i8 as f32;
                values[l + 32 * run] = d * scale * (q as i32 - 32) as f32;
            }
        }
        out.extend_from_slice(&values);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bytes(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q8_0_block() {
        let mut block = f16_bytes(0.5).to_vec();
        block.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let x = GgmlType::Q8_0.dequantize(&block, 32);
        assert_eq!(x[0], -8.0);
        assert_eq!(x[31], 7.5);
    }

    #[test]
    fn q4_0_and_q4_1_blocks_put_low_nibbles_first() {
        let mut q40 = f16_bytes(2.0).to_vec();
        q40.extend(std::iter::repeat_n(0x9Fu8, 16)); // low 15, high 9
        let x = GgmlType::Q4_0.dequantize(&q40, 32);
        assert!(x[..16].iter().all(|&v| v == 14.0) && x[16..].iter().all(|&v| v == 2.0));
        let mut q41 = f16_bytes(0.5).to_vec();
        q41.extend(f16_bytes(-1.0));
        q41.extend(std::iter::repeat_n(0x31u8, 16)); // low 1, high 3
        let x = GgmlType::Q4_1.dequantize(&q41, 32);
        assert!(x[..16].iter().all(|&v| v == -0.5) && x[16..].iter().all(|&v| v == 0.5));
    }

    #[test]
    fn q4k_scales_unpack_six_bit_pairs() {
        // Scales 0..8 = 1..=8 and mins = 0 except the packed high bits of j ≥ 4.
        let mut block = f16_bytes(1.0).to_vec();
        block.extend(f16_bytes(1.0));
        let mut scales = [0u8; 12];
        for j in 0..4 {
            scales[j] = j as u8 + 1; // scale j
            scales[j + 4] = 2; // min j
            scales[j + 8] = (j as u8 + 5) | (3 << 4); // low bits of scale j+4, min j+4
        }
        block.extend(scales);
        block.extend(std::iter::repeat_n(0x21u8, 128)); // low 1, high 2
        let x = GgmlType::Q4K.dequantize(&block, 256);
        // group 0: scale 1 (low nibble 1) min 2 → −1; then scale 2 (high nibble 2) min 2 → 2.
        assert_eq!((x[0], x[32]), (1.0 * 1.0 - 2.0, 2.0 * 2.0 - 2.0));
        // group 2 second half: scale index 5 = 6, min 3 → 6·2 − 3 = 9.
        assert_eq!(x[2 * 64 + 32], 9.0);
    }

    #[test]
    fn q6k_centres_at_32() {
        let mut block = vec![0u8; 210];
        block[..128].fill(0x00);
        block[128..192].fill(0b10_10_10_10); // high bits 2 → q = 32 everywhere
        for (i, s) in block[192..208].iter_mut().enumerate() {
            *s = i as u8 + 1;
        }
        block[208..210].copy_from_slice(&f16_bytes(1.0));
        let x = GgmlType::Q6K.dequantize(&block, 256);
        assert!(x.iter().all(|&v| v == 0.0));
        block[0] = 0x05; // ql[0] low nibble 5 → q = 37 at position 0 (scale 1)
        let x = GgmlType::Q6K.dequantize(&block, 256);
        assert_eq!(x[0], 5.0);
        assert_eq!(x[64], 0.0);
    }
}
