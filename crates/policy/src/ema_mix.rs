//! The EMA mix `θ_T ← (1 − η)·θ_T + η·θ_S` of one parameter on the CPU backend, in one pass
//! over the teacher's buffer in its own storage order, so a weight kept as the transposed view
//! of a row-major matrix (how checkpoints load, what the decode kernels read) stays one. burn's
//! elementwise ops would write it row-major in logical order, which the decode kernels read
//! through their slower strided path.

use burn::backend::flex::FlexTensor;
use burn::prelude::*;
use burn::tensor::{DType, TensorMetadata};
use rayon::prelude::*;

use crate::flex_tensor::{from_flex, into_flex, is_transposed_view, to_flex};

/// Elements per parallel task.
const CHUNK: usize = 1 << 16;

/// `(1 − η)·teacher + η·student` elementwise, rounded as burn's `mul_scalar`s and `add` round
/// it, in the teacher's layout (its buffer written in place when not shared), when both are
/// f32 `flex` tensors of one shape; otherwise the teacher back, untouched.
pub(crate) fn mix<B: Backend, const D: usize>(
    teacher: Tensor<B, D>,
    student: &Tensor<B, D>,
    eta: f64,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    let shape = teacher.shape();
    let fits = |t: &FlexTensor| t.dtype() == DType::F32 && t.shape() == shape;
    let back = |t: FlexTensor| from_flex(t).expect("a flex tensor came from this backend");
    let theta = match into_flex(teacher) {
        Ok(theta) if fits(&theta) => theta,
        Ok(other) => return Err(back(other)),
        Err(teacher) => return Err(teacher),
    };
    let Some(student) = to_flex(student.clone()).filter(fits) else {
        return Err(back(theta));
    };
    let transposed = is_transposed_view(&theta);
    // In storage order: a transposed view turned back is its row-major `[n, k]` buffer.
    let orient = |t: FlexTensor| if transposed { t.transpose(0, 1) } else { t };
    let mut theta = orient(theta).to_contiguous();
    let student = orient(student).to_contiguous();
    let (keep, take) = ((1.0 - eta) as f32, eta as f32);
    let values = student.storage::<f32>();
    theta
        .storage_mut::<f32>()
        .par_chunks_mut(CHUNK)
        .zip(values.par_chunks(CHUNK))
        .for_each(|(t, s)| {
            for (t, &s) in t.iter_mut().zip(s) {
                *t = *t * keep + s * take;
            }
        });
    Ok(back(orient(theta)))
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use burn::tensor::{Distribution, Tensor};

    use super::mix;
    use crate::flex_tensor::is_transposed;

    /// The same values as burn's ops, bit for bit, and the teacher's layout kept (transposed
    /// or not); the student is left alone, also when it shares the teacher's buffer.
    #[test]
    fn mixes_like_burns_ops_and_keeps_the_teachers_layout() {
        let device = Default::default();
        let random =
            |dims: [usize; 2]| Tensor::<Flex, 2>::random(dims, Distribution::Default, &device);
        let eta = 0.05;
        for transposed in [true, false] {
            let (teacher, student) = match transposed {
                true => (random([7, 5]).transpose(), random([7, 5]).transpose()),
                false => (random([5, 7]), random([5, 7])),
            };
            let expected = teacher.clone().mul_scalar(1.0 - eta) + student.clone().mul_scalar(eta);
            let before = student.to_data();
            let mixed = mix(teacher, &student, eta).unwrap();
            assert_eq!(mixed.to_data(), expected.to_data());
            assert_eq!(is_transposed(&mixed), transposed);
            assert_eq!(student.to_data(), before);
        }
        // A teacher sharing its buffer (an EMA teacher starts as the student's weights) is
        // copied, not written; a student in the other layout is read in the teacher's order.
        let shared = random([6, 4]).transpose();
        let before = shared.to_data();
        let student = random([4, 6]);
        let mixed = mix(shared.clone(), &student, 0.25).unwrap();
        let expected = shared.clone().mul_scalar(0.75) + student.mul_scalar(0.25);
        assert_eq!(mixed.to_data(), expected.to_data());
        assert!(is_transposed(&mixed));
        assert_eq!(shared.to_data(), before);
    }
}
