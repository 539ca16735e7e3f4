//! `relu6`: `min(max(x, 0), 6)` (MobileNet's activation; PyTorch's `nn.ReLU6`), shape unchanged.

use candle_core::{Module, Result, Tensor};

use super::graph::Op;
use super::{Built, Walk};

pub struct Relu6;

impl Module for Relu6 {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        crate::ops::norm::relu6(xs)
    }
}

/// A ReLU6 that alone reads a BatchNorm is computed inside it: then only its summary row remains.
pub(super) fn build(walk: &mut Walk) -> std::result::Result<Built, String> {
    let shape = walk.shape.clone();
    if walk.fused {
        return Ok(Built { op: Op::Same, ..walk.plain(Box::new(Relu6), "relu6", shape) });
    }
    Ok(walk.plain(Box::new(Relu6), "relu6", shape))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn clamps_to_0_6_and_passes_gradient_only_inside() {
        // PyTorch: F.relu6(x) = hardtanh(x, 0, 6); its gradient is 1 on (0, 6), 0 outside.
        let x = Var::new(&[-2.0f32, 0.5, 3.0, 5.9, 6.1, 9.0], &Device::Cpu).unwrap();
        let y = Relu6.forward(x.as_tensor()).unwrap();
        assert_eq!(y.to_vec1::<f32>().unwrap(), [0.0, 0.5, 3.0, 5.9, 6.0, 6.0]);
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert_eq!(grads.get(&x).unwrap().to_vec1::<f32>().unwrap(), [0.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
    }
}
