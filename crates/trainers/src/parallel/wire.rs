//! Host values over an all-reduce of floats: bytes packed two to a float (every `u16` is an
//! exact `f32`), each worker's bytes in a slot of its own, zeros elsewhere, so the sum is the
//! concatenation of every worker's bytes (an all-gather built from a sum).

/// Floats holding `bytes` (two bytes each, the last padded with a zero).
pub(crate) fn pack(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks(2)
        .map(|pair| f32::from(u16::from_le_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .collect()
}

/// The first `len` bytes of floats [`pack`] wrote; `Err` when a float is not a whole number
/// in `0..=65535` (a peer that did not follow the protocol).
pub(crate) fn unpack(floats: &[f32], len: usize) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::with_capacity(2 * floats.len());
    for (i, &f) in floats.iter().enumerate() {
        if !(f.is_finite() && (0.0..=65535.0).contains(&f) && f.fract() == 0.0) {
            return Err(format!(
                "value {i} of its bytes is {f}, not a pair of bytes"
            ));
        }
        bytes.extend((f as u16).to_le_bytes());
    }
    bytes.truncate(len);
    Ok(bytes)
}

/// Where each worker's slot starts in the gathered floats, from every worker's byte count.
pub(crate) fn offsets(lengths: &[usize]) -> Vec<usize> {
    lengths
        .iter()
        .scan(0, |at, &len| {
            let start = *at;
            *at += len.div_ceil(2);
            Some(start)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_survive_packing_and_a_sum_of_slots() {
        let a: Vec<u8> = (0..=255).chain([7]).collect();
        let b: Vec<u8> = vec![255, 0, 1];
        let lengths = [a.len(), b.len()];
        let at = offsets(&lengths);
        assert_eq!(at, vec![0, 129]);
        let total = at[1] + b.len().div_ceil(2);
        let slot = |rank: usize, bytes: &[u8]| {
            let mut floats = vec![0.0f32; total];
            let packed = pack(bytes);
            floats[at[rank]..at[rank] + packed.len()].copy_from_slice(&packed);
            floats
        };
        let sum: Vec<f32> = slot(0, &a)
            .iter()
            .zip(slot(1, &b))
            .map(|(x, y)| x + y)
            .collect();
        assert_eq!(unpack(&sum[at[0]..at[1]], a.len()).unwrap(), a);
        assert_eq!(unpack(&sum[at[1]..], b.len()).unwrap(), b);
        assert!(unpack(&[65536.0], 2).is_err());
        assert!(unpack(&[1.5], 2).is_err());
    }
}
