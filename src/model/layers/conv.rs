//! `conv`: 2-D convolution with optional bias, `(n, c, h, w) -> (n, out, oh, ow)`.

use candle_core::{DType, Module, Result, Tensor};

use super::{Built, Walk};
use crate::model::builder::{Autocast, Builder, ConvInit};
use crate::ops::conv::{ConvParams, conv2d};
use crate::ops::generic::in_dtype;
use crate::ops::norm::channel_bias;
use crate::spec::{ConvConfig, DepthwiseConfig};

/// A convolution with optional bias.
pub struct Conv {
    weight: Tensor,
    bias: Option<Tensor>,
    params: ConvParams,
    autocast: Autocast,
}

impl Conv {
    /// `weight` (and `bias`) in `b`'s current scope, drawn as `b.conv_init` says.
    pub fn new(
        b: &mut Builder,
        c_in: usize,
        out: usize,
        kernel: usize,
        params: ConvParams,
        bias: bool,
    ) -> std::result::Result<Self, String> {
        let e = |e: candle_core::Error| e.to_string();
        let fan_in = c_in / params.groups * kernel * kernel;
        let wshape = [out, c_in / params.groups, kernel, kernel];
        let weight = match b.conv_init {
            ConvInit::PyTorchDefault => b.uniform(&wshape, 1.0 / (fan_in as f64).sqrt()),
            ConvInit::KaimingNormalFanOut => {
                let fan_out = out / params.groups * kernel * kernel;
                b.normal(&wshape, (2.0 / fan_out as f64).sqrt())
            }
        }
        .map_err(e)?;
        let weight = b.param("weight", weight)?;
        let bias = if bias {
            let t = match b.conv_init {
                ConvInit::PyTorchDefault => b.uniform(&[out], 1.0 / (fan_in as f64).sqrt()),
                ConvInit::KaimingNormalFanOut => Tensor::zeros(out, DType::F32, b.device()),
            }
            .map_err(e)?;
            Some(b.param("bias", t)?)
        } else {
            None
        };
        Ok(Conv { weight, bias, params, autocast: b.autocast.clone() })
    }
}

impl Module for Conv {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let y = in_dtype(self.autocast.dtype(), xs, &self.weight, |x, w| conv2d(x, w, self.params))?;
        match &self.bias {
            Some(b) => channel_bias(&y, b),
            None => Ok(y),
        }
    }
}

/// Checks that `c` fits the walk's input and builds it (named `conv<N>` unless named).
pub(super) fn build(c: &ConvConfig, walk: &mut Walk) -> std::result::Result<Built, String> {
    let (c_in, ih, iw) = walk.spatial()?;
    let g = c.params.groups;
    if !c_in.is_multiple_of(g) || !c.out.is_multiple_of(g) {
        return Err(format!("groups = {g} must divide both input channels ({c_in}) and output channels ({})", c.out));
    }
    let (Some(oh), Some(ow)) = (c.params.out_size(ih, c.kernel), c.params.out_size(iw, c.kernel)) else {
        return Err(format!(
            "kernel {0}x{0} (dilation {1}) does not fit the {ih}x{iw} input with padding {2}",
            c.kernel, c.params.dilation, c.params.padding
        ));
    };
    let name = walk.name_or("conv");
    let conv = Conv::new(&mut walk.builder.pp(name.clone()), c_in, c.out, c.kernel, c.params, c.bias)?;
    let fan_in = c_in / g * c.kernel * c.kernel;
    let params = c.out * fan_in + if c.bias { c.out } else { 0 };
    let macs = (c.out * oh * ow * fan_in) as u64;
    Ok(walk.built(Box::new(conv), name, vec![c.out, oh, ow], params, macs))
}

/// A depthwise conv: groups = input channels, `multiplier` outputs per channel (`conv<N>`).
pub(super) fn build_depthwise(d: &DepthwiseConfig, walk: &mut Walk) -> std::result::Result<Built, String> {
    let (c_in, _, _) = walk.spatial()?;
    let params = ConvParams { groups: c_in, ..d.params };
    build(&ConvConfig { out: c_in * d.multiplier, kernel: d.kernel, params, bias: d.bias }, walk)
}
