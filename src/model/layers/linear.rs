//! `linear`: fully connected, `(n, in)` or `(n, c, h, w)` (flattened) -> `(n, out)`.

use candle_core::{Module, Result, Tensor};

use super::{Built, Walk};
use crate::model::builder::{Autocast, Builder};
use crate::ops::generic::in_dtype;
use crate::spec::LinearConfig;

/// `x W^T + b`, PyTorch's initialisation: U(+-1/sqrt(fan_in)) for both.
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    autocast: Autocast,
}

impl Linear {
    /// `weight` (and `bias`) in `b`'s current scope.
    pub fn new(b: &mut Builder, fan_in: usize, out: usize, bias: bool) -> std::result::Result<Self, String> {
        let bound = 1.0 / (fan_in as f64).sqrt();
        let w = b.uniform(&[out, fan_in], bound).map_err(|e| e.to_string())?;
        let weight = b.param("weight", w)?;
        let bias = if bias {
            let t = b.uniform(&[out], bound).map_err(|e| e.to_string())?;
            Some(b.param("bias", t)?)
        } else {
            None
        };
        Ok(Self { weight, bias, autocast: b.autocast.clone() })
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let x = if xs.rank() > 2 { xs.flatten_from(1)? } else { xs.clone() };
        let y = in_dtype(self.autocast.dtype(), &x, &self.weight, crate::ops::linear::linear)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// Builds `fc` (several linear layers: `fc1`, `fc2`, ...) on the walk's flattened input.
pub(super) fn build(l: &LinearConfig, walk: &mut Walk) -> std::result::Result<Built, String> {
    let fan_in: usize = walk.shape.iter().product();
    let name = walk.linear_name();
    let layer = Linear::new(&mut walk.builder.pp(name.clone()), fan_in, l.out, l.bias)?;
    let params = l.out * fan_in + if l.bias { l.out } else { 0 };
    Ok(walk.built(Box::new(layer), name, vec![l.out], params, (l.out * fan_in) as u64))
}
