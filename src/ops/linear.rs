//! `x W^T`, the linear layer's product, as an op of ours on CPU so that the weight's
//! gradient arrives contiguous. Written as candle's `x.matmul(&w.t())`, the backward computes
//! the gradient of the view `w.t()` and hands `w` its transpose, a strided view that candle's
//! gradient store then copies element by element on one thread: 7 % of a LeNet step (its
//! first linear layer has 7.1 M weights).

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

use super::conv::gemm::{ALL_THREADS, Mat, matmul};
use super::f32_slice;

/// `x (n, k) W^T` for `w (o, k)`: `(n, o)`. Our op on CPU (f32), candle's matmul elsewhere.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32 {
        x.contiguous()?.apply_op2(&w.contiguous()?, Linear)
    } else {
        x.matmul(&w.t()?)
    }
}

struct Linear;

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "ablate-linear"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(self.name(), s1, l1)?;
        let w = f32_slice(self.name(), s2, l2)?;
        let ((n, k), (o, kw)) = (l1.shape().dims2()?, l2.shape().dims2()?);
        if k != kw {
            candle_core::bail!("linear: input of {k} features for weights of {kw}");
        }
        let mut y = vec![0f32; n * o];
        matmul(&mut y, false, Mat::row_major(x, n, k), Mat::transposed(w, o, k), ALL_THREADS);
        Ok((CpuStorage::F32(y), Shape::from((n, o))))
    }

    /// `dx = dy W` and `dW = dy^T x`, both contiguous as they come out of the product.
    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(dy.matmul(w)?), Some(dy.t()?.matmul(x)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    /// Forward and both gradients equal candle's `x.matmul(&w.t())`, and the weight's
    /// gradient comes out contiguous (the reason for the op).
    #[test]
    fn linear_matches_candles_matmul_with_a_contiguous_weight_gradient() {
        let x = Var::from_tensor(&crate::ops::testing::uniform(&[5, 7], 1, -1.0, 1.0)).unwrap();
        let w = Var::from_tensor(&crate::ops::testing::uniform(&[3, 7], 2, -1.0, 1.0)).unwrap();
        let ours = linear(x.as_tensor(), w.as_tensor()).unwrap();
        let theirs = x.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap();
        let diff =
            |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff(&ours, &theirs) < 1e-5);
        let probe = crate::ops::testing::uniform(&[5, 3], 3, -1.0, 1.0);
        let g1 = (&ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&theirs * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &w] {
            let (a, b) = (g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap());
            assert!(diff(a, b) < 1e-5, "gradients differ by {}", diff(a, b));
        }
        // The op's backward hands out a contiguous weight gradient, which candle's gradient
        // store keeps as it is (a strided one it copies element by element).
        let (_, dw) = Linear.bwd(x.as_tensor(), w.as_tensor(), &ours, &probe).unwrap();
        assert!(dw.unwrap().is_contiguous());
    }
}
