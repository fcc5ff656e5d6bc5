//! `e^x` in f32 without a call into the C library, written so that loops over slices
//! vectorize: the divergences' CPU kernels and the policy's (attention's softmax, SwiGLU) use it.

/// `e^x` for `x ≤ 88`, within 2 ulp (Cephes `expf`): `2^n · e^r` with `|r| ≤ ln2 / 2`.
/// Branch-free so loops over it vectorize; inputs below −87.3 give the smallest normal float.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding and subtracting rounds to an integer
    let x = x.clamp(-87.336_55, 88.0);
    let n = (x * LOG2_E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::exp;

    #[test]
    fn exp_is_accurate_over_the_range_log_probs_take() {
        let mut worst = 0f64;
        for i in 0..200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let (ours, exact) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max((ours - exact).abs() / exact);
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert!(exp(-1e4) < 1e-37 && exp(-1e4) >= 0.0);
    }
}
