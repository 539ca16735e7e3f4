//! Layer modules and the builder that walks the layer list, inferring each output shape.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::{D, DType, Device, Result, Tensor, Var};
use candle_nn::ModuleT;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::summary::{Summary, SummaryRow};
use super::{LayerConfig, ModelError};
use crate::ops::conv::{ConvParams, conv2d};
use crate::ops::pool::{PoolParams, pool2d};

/// Batch normalisation with PyTorch's semantics: batch statistics and running-stat updates
/// (momentum 0.1, unbiased variance) in training, running statistics in evaluation.
pub struct BatchNorm {
    pub name: String,
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    batches_tracked: AtomicI64,
    momentum: f64,
    eps: f64,
}

impl BatchNorm {
    pub fn batches_tracked_tensor(&self) -> Tensor {
        Tensor::new(&[self.batches_tracked.load(Ordering::Relaxed)], self.running_mean.device())
            .and_then(|t| t.squeeze(0))
            .expect("a scalar tensor")
    }

    pub fn set_batches_tracked(&self, t: &Tensor) -> Result<()> {
        let v = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        self.batches_tracked.store(v.first().copied().unwrap_or(0.0) as i64, Ordering::Relaxed);
        Ok(())
    }

    /// `(n, c, h, w)` or `(n, c)` -> same shape.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let c = xs.dim(1)?;
        let shape: Vec<usize> = (0..xs.rank()).map(|i| if i == 1 { c } else { 1 }).collect();
        let (mean, var) = if train {
            // Mean over every dim but the channel's: move channels first, flatten the rest.
            let flat = xs.transpose(0, 1)?.contiguous()?.reshape((c, ()))?;
            let count = flat.dim(1)?;
            let mean = flat.mean_keepdim(D::Minus1)?;
            let centred = flat.broadcast_sub(&mean)?;
            let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
            let m = self.momentum;
            let unbiased = (var.detach() * (count as f64 / (count.max(2) - 1) as f64))?.flatten_all()?;
            self.running_mean
                .set(&((self.running_mean.as_tensor() * (1.0 - m))? + (mean.detach().flatten_all()? * m)?)?)?;
            self.running_var.set(&((self.running_var.as_tensor() * (1.0 - m))? + (unbiased * m)?)?)?;
            self.batches_tracked.fetch_add(1, Ordering::Relaxed);
            (mean.reshape(shape.as_slice())?, var.reshape(shape.as_slice())?)
        } else {
            (
                self.running_mean.as_tensor().reshape(shape.as_slice())?,
                self.running_var.as_tensor().reshape(shape.as_slice())?,
            )
        };
        let inv_std = (var + self.eps)?.sqrt()?.recip()?;
        let scale = self.weight.reshape(shape.as_slice())?.broadcast_mul(&inv_std)?;
        xs.broadcast_sub(&mean)?.broadcast_mul(&scale)?.broadcast_add(&self.bias.reshape(shape.as_slice())?)
    }
}

/// One built layer.
pub enum Layer {
    Conv {
        weight: Tensor,
        bias: Option<Tensor>,
        params: ConvParams,
    },
    Pool(PoolParams),
    GlobalAvgPool,
    Relu,
    Flatten,
    Linear {
        weight: Tensor,
        bias: Option<Tensor>,
    },
    /// Masks drawn from the model's seeded generator, so runs repeat exactly.
    Dropout {
        p: f64,
        rng: Arc<Mutex<ChaCha8Rng>>,
    },
    BatchNorm(BatchNorm),
}

impl ModuleT for Layer {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            // (n, c, h, w) -> (n, out, oh, ow)
            Layer::Conv { weight, bias, params } => {
                let y = conv2d(xs, weight, *params)?;
                match bias {
                    Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
                    None => Ok(y),
                }
            }
            Layer::Pool(p) => pool2d(xs, *p),
            // (n, c, h, w) -> (n, c)
            Layer::GlobalAvgPool => xs.mean((2, 3)),
            Layer::Relu => xs.relu(),
            Layer::Flatten => xs.flatten_from(1),
            // (n, in) or (n, c, h, w) -> (n, out)
            Layer::Linear { weight, bias } => {
                let x = if xs.rank() > 2 { xs.flatten_from(1)? } else { xs.clone() };
                let y = x.matmul(&weight.t()?)?;
                match bias {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            }
            Layer::Dropout { p, rng } => {
                if !train || *p == 0.0 {
                    return Ok(xs.clone());
                }
                let keep = 1.0 / (1.0 - p);
                let mask: Vec<f32> = {
                    let mut rng = rng.lock().expect("dropout rng poisoned");
                    (0..xs.elem_count()).map(|_| if rng.gen_bool(*p) { 0.0 } else { keep as f32 }).collect()
                };
                xs.mul(&Tensor::from_vec(mask, xs.shape(), xs.device())?)
            }
            Layer::BatchNorm(bn) => bn.forward_t(xs, train),
        }
    }
}

pub(super) struct Built {
    pub layers: Vec<Layer>,
    pub params: BTreeMap<String, Var>,
    pub buffers: BTreeMap<String, Var>,
    pub summary: Summary,
}

/// Uniform(-bound, bound) values drawn from `rng`, as a tensor on `device`.
fn uniform(rng: &mut ChaCha8Rng, shape: &[usize], bound: f64, device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.gen_range(-bound..bound) as f32).collect();
    Tensor::from_vec(v, shape, device)
}

pub(super) fn build(
    configs: &[LayerConfig],
    (h, w): (usize, usize),
    seed: u64,
    device: &Device,
) -> std::result::Result<Built, ModelError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dropout_rng = Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(seed.wrapping_add(0xD80)))); // own stream
    let n_linear = configs.iter().filter(|c| matches!(c, LayerConfig::Linear(_))).count();
    let (mut n_conv, mut n_fc, mut n_bn) = (0, 0, 0);
    let mut shape = vec![3usize, h, w];
    let mut out = Built {
        layers: Vec::new(),
        params: BTreeMap::new(),
        buffers: BTreeMap::new(),
        summary: Summary::new(vec![3, h, w]),
    };

    for (index, cfg) in configs.iter().enumerate() {
        let kind = cfg.kind();
        let fail = |message: String| ModelError::Shape { index, kind, message };
        let add_param = |name: String, t: Tensor, out: &mut Built| -> std::result::Result<Tensor, ModelError> {
            let var = Var::from_tensor(&t)?;
            let t = var.as_tensor().clone();
            if out.params.insert(name.clone(), var).is_some() {
                return Err(fail(format!("two layers are named `{name}`: give one a different name")));
            }
            Ok(t)
        };
        let (layer, name, n_params, macs) = match cfg {
            LayerConfig::Conv(c) => {
                let [c_in, ih, iw] = shape[..] else {
                    return Err(fail(format!("expects a (channels, height, width) input, got {shape:?}")));
                };
                let g = c.params.groups;
                if c_in % g != 0 || c.out % g != 0 {
                    return Err(fail(format!(
                        "groups = {g} must divide both input channels ({c_in}) and output channels ({})",
                        c.out
                    )));
                }
                let (Some(oh), Some(ow)) = (c.params.out_size(ih, c.kernel), c.params.out_size(iw, c.kernel)) else {
                    return Err(fail(format!(
                        "kernel {0}x{0} (dilation {1}) does not fit the {ih}x{iw} input with padding {2}",
                        c.kernel, c.params.dilation, c.params.padding
                    )));
                };
                n_conv += 1;
                let name = c.name.clone().unwrap_or_else(|| format!("conv{n_conv}"));
                let fan_in = c_in / g * c.kernel * c.kernel;
                let bound = 1.0 / (fan_in as f64).sqrt();
                let wshape = [c.out, c_in / g, c.kernel, c.kernel];
                let weight = add_param(format!("{name}.weight"), uniform(&mut rng, &wshape, bound, device)?, &mut out)?;
                let bias = if c.bias {
                    Some(add_param(format!("{name}.bias"), uniform(&mut rng, &[c.out], bound, device)?, &mut out)?)
                } else {
                    None
                };
                let n_params = c.out * fan_in + if c.bias { c.out } else { 0 };
                shape = vec![c.out, oh, ow];
                let macs = (c.out * oh * ow * fan_in) as u64;
                (Layer::Conv { weight, bias, params: c.params }, name, n_params, macs)
            }
            LayerConfig::Pool(p) => {
                let [c, ih, iw] = shape[..] else {
                    return Err(fail(format!("expects a (channels, height, width) input, got {shape:?}")));
                };
                let Some((oh, ow)) = p.out_size(ih, iw) else {
                    return Err(fail(format!(
                        "window {:?} with padding {:?} does not fit the {ih}x{iw} input",
                        p.kernel, p.padding
                    )));
                };
                shape = vec![c, oh, ow];
                (Layer::Pool(*p), format!("pool{index}"), 0, 0)
            }
            LayerConfig::GlobalAvgPool => {
                if shape.len() != 3 {
                    return Err(fail(format!("expects a (channels, height, width) input, got {shape:?}")));
                }
                shape = vec![shape[0]];
                (Layer::GlobalAvgPool, format!("pool{index}"), 0, 0)
            }
            LayerConfig::Relu => (Layer::Relu, format!("relu{index}"), 0, 0),
            LayerConfig::Flatten => {
                shape = vec![shape.iter().product()];
                (Layer::Flatten, format!("flatten{index}"), 0, 0)
            }
            LayerConfig::Linear(l) => {
                let fan_in: usize = shape.iter().product();
                n_fc += 1;
                let name =
                    l.name.clone().unwrap_or_else(|| if n_linear == 1 { "fc".into() } else { format!("fc{n_fc}") });
                let bound = 1.0 / (fan_in as f64).sqrt();
                let weight =
                    add_param(format!("{name}.weight"), uniform(&mut rng, &[l.out, fan_in], bound, device)?, &mut out)?;
                let bias = if l.bias {
                    Some(add_param(format!("{name}.bias"), uniform(&mut rng, &[l.out], bound, device)?, &mut out)?)
                } else {
                    None
                };
                shape = vec![l.out];
                (
                    Layer::Linear { weight, bias },
                    name,
                    l.out * fan_in + if l.bias { l.out } else { 0 },
                    (l.out * fan_in) as u64,
                )
            }
            LayerConfig::Dropout(p) => {
                (Layer::Dropout { p: *p, rng: dropout_rng.clone() }, format!("dropout{index}"), 0, 0)
            }
            LayerConfig::BatchNorm => {
                let c = shape[0];
                if shape.len() != 3 && shape.len() != 1 {
                    return Err(fail(format!("expects (channels, h, w) or (features) input, got {shape:?}")));
                }
                n_bn += 1;
                let name = format!("bn{n_bn}");
                let weight = add_param(format!("{name}.weight"), Tensor::ones(c, DType::F32, device)?, &mut out)?;
                let bias = add_param(format!("{name}.bias"), Tensor::zeros(c, DType::F32, device)?, &mut out)?;
                let running_mean = Var::zeros(c, DType::F32, device)?;
                let running_var = Var::ones(c, DType::F32, device)?;
                out.buffers.insert(format!("{name}.running_mean"), running_mean.clone());
                out.buffers.insert(format!("{name}.running_var"), running_var.clone());
                let bn = BatchNorm {
                    name: name.clone(),
                    weight,
                    bias,
                    running_mean,
                    running_var,
                    batches_tracked: AtomicI64::new(0),
                    momentum: 0.1,
                    eps: 1e-5,
                };
                (Layer::BatchNorm(bn), name, 2 * c, 0)
            }
        };
        out.summary.rows.push(SummaryRow { index, kind, name, out_shape: shape.clone(), params: n_params, macs });
        out.layers.push(layer);
    }
    if shape.len() != 1 {
        return Err(ModelError::Shape {
            index: configs.len() - 1,
            kind: configs[configs.len() - 1].kind(),
            message: format!(
                "the network must end in (classes) logits, it ends in {shape:?}: add global_avg_pool or a linear layer"
            ),
        });
    }
    Ok(out)
}
