//! Layer modules and the builder that walks the layer list, inferring each output shape.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::{D, DType, Device, Result, Tensor, Var};
use candle_nn::ModuleT;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::blocks::{self, Block};
use super::summary::{Summary, SummaryRow};
use super::{LayerConfig, ModelError};
use crate::ops::conv::{ConvParams, conv2d};
use crate::ops::generic::in_dtype;
use crate::ops::norm::{BatchNormOp, ChannelStats, channel_bias, relu};
use crate::ops::pool::{PoolParams, pool2d};

/// Mixed precision, shared by a model's convolutions and linear layers: when on, they multiply
/// in bf16 (inputs and weights converted, results back to f32); weights, gradients,
/// BatchNorm and the loss stay f32.
#[derive(Clone, Default)]
pub struct Autocast(Arc<AtomicBool>);

impl Autocast {
    pub fn set(&self, bf16: bool) {
        self.0.store(bf16, Ordering::Relaxed);
    }

    /// The dtype to compute in, when not f32.
    pub fn dtype(&self) -> Option<DType> {
        self.0.load(Ordering::Relaxed).then_some(DType::BF16)
    }
}

/// A convolution with optional bias: `(n, c, h, w) -> (n, out, oh, ow)`.
pub struct Conv {
    weight: Tensor,
    bias: Option<Tensor>,
    params: ConvParams,
    autocast: Autocast,
}

impl Conv {
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let y = in_dtype(self.autocast.dtype(), xs, &self.weight, |x, w| conv2d(x, w, self.params))?;
        match &self.bias {
            Some(b) => channel_bias(&y, b),
            None => Ok(y),
        }
    }
}

/// Batch normalisation with PyTorch's semantics: batch statistics and running-stat updates
/// (momentum 0.1, unbiased variance) in training, running statistics in evaluation.
pub struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    batches_tracked: Arc<AtomicI64>,
    momentum: f64,
    eps: f64,
}

impl BatchNorm {
    /// `(n, c, h, w)` or `(n, c)` -> same shape: fused kernels on CPU, candle ops elsewhere.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_fused(xs, train, false)
    }

    /// `relu(self.forward_t(xs, train))`, on CPU in the same pass (and one backward pass).
    pub fn forward_relu_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_fused(xs, train, true)
    }

    fn forward_fused(&self, xs: &Tensor, train: bool, relu_after: bool) -> Result<Tensor> {
        if !xs.device().is_cpu() {
            let y = self.forward_generic(xs, train)?;
            return if relu_after { relu(&y) } else { Ok(y) };
        }
        let xs = xs.contiguous()?;
        let affine = Tensor::stack(&[&self.weight, &self.bias], 0)?;
        let (stats, batch_stats) = if train {
            let stats = xs.detach().apply_op1_no_bwd(&ChannelStats)?;
            let (c, count) = (xs.dim(1)?, xs.elem_count() / xs.dim(1)?);
            let m = self.momentum;
            let unbiased = (stats.get(1)? * (count as f64 / (count.max(2) - 1) as f64))?;
            self.running_mean.set(&((self.running_mean.as_tensor() * (1.0 - m))? + (stats.get(0)? * m)?)?)?;
            self.running_var.set(&((self.running_var.as_tensor() * (1.0 - m))? + (unbiased * m)?)?)?;
            self.batches_tracked.fetch_add(1, Ordering::Relaxed);
            debug_assert_eq!(stats.dims(), &[2, c]);
            (stats, true)
        } else {
            // Detached: candle's backward expects a gradient for every tracked input, and the
            // running statistics take none.
            let stats = Tensor::stack(&[self.running_mean.as_tensor(), self.running_var.as_tensor()], 0)?;
            (stats.detach(), false)
        };
        xs.apply_op3(&stats, &affine, BatchNormOp { eps: self.eps, batch_stats, relu: relu_after })
    }

    /// The same computation from candle's own ops (any device; the reference the fused CPU
    /// kernels are tested against).
    pub fn forward_generic(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let c = xs.dim(1)?;
        let shape: Vec<usize> = (0..xs.rank()).map(|i| if i == 1 { c } else { 1 }).collect();
        let (mean, var) = if train {
            // Statistics over every dim but the channel's: channels first, the rest flattened.
            let flat = xs.transpose(0, 1)?.contiguous()?.reshape((c, ()))?;
            let count = flat.dim(1)?;
            let mean = flat.mean_keepdim(D::Minus1)?;
            let var = flat.broadcast_sub(&mean)?.sqr()?.mean_keepdim(D::Minus1)?;
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
    Conv(Conv),
    Pool(PoolParams),
    GlobalAvgPool,
    Relu,
    Flatten,
    Linear {
        weight: Tensor,
        bias: Option<Tensor>,
        autocast: Autocast,
    },
    /// Masks drawn from the model's seeded generator, so runs repeat exactly.
    Dropout {
        p: f64,
        rng: Arc<Mutex<ChaCha8Rng>>,
    },
    BatchNorm(BatchNorm),
    Block(Box<Block>),
}

impl ModuleT for Layer {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Layer::Conv(c) => c.forward(xs),
            Layer::Pool(p) => pool2d(xs, *p),
            // (n, c, h, w) -> (n, c)
            Layer::GlobalAvgPool => xs.mean((2, 3)),
            Layer::Relu => relu(xs),
            Layer::Flatten => xs.flatten_from(1),
            // (n, in) or (n, c, h, w) -> (n, out)
            Layer::Linear { weight, bias, autocast } => {
                let x = if xs.rank() > 2 { xs.flatten_from(1)? } else { xs.clone() };
                let y = in_dtype(autocast.dtype(), &x, weight, |x, w| x.matmul(&w.t()?))?;
                match bias {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            }
            Layer::Dropout { p, rng } => {
                if !train || *p == 0.0 {
                    return Ok(xs.clone());
                }
                let keep = (1.0 / (1.0 - p)) as f32;
                let mask: Vec<f32> = {
                    let mut rng = rng.lock().expect("dropout rng poisoned");
                    (0..xs.elem_count()).map(|_| if rng.gen_bool(*p) { 0.0 } else { keep }).collect()
                };
                xs.mul(&Tensor::from_vec(mask, xs.shape(), xs.device())?)
            }
            Layer::BatchNorm(bn) => bn.forward_t(xs, train),
            Layer::Block(b) => b.forward_t(xs, train),
        }
    }
}

/// How conv weights are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvInit {
    /// PyTorch's `Conv2d` default: kaiming-uniform with a = sqrt(5), i.e. U(+-1/sqrt(fan_in)).
    PyTorchDefault,
    /// torchvision's ResNet: kaiming-normal, fan_out, ReLU gain: N(0, 2 / fan_out).
    KaimingNormalFanOut,
}

/// Creates named tensors in a fixed order from one seeded generator and records them.
pub struct Builder<'a> {
    rng: ChaCha8Rng,
    device: &'a Device,
    pub conv_init: ConvInit,
    pub params: BTreeMap<String, Var>,
    pub buffers: BTreeMap<String, Var>,
    pub counters: BTreeMap<String, Arc<AtomicI64>>,
    pub autocast: Autocast,
}

impl<'a> Builder<'a> {
    fn uniform(&mut self, shape: &[usize], bound: f64) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| self.rng.gen_range(-bound..bound) as f32).collect();
        Tensor::from_vec(v, shape, self.device)
    }

    fn normal(&mut self, shape: &[usize], std: f64) -> Result<Tensor> {
        let dist = rand_distr::Normal::new(0.0, std).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| self.rng.sample(dist) as f32).collect();
        Tensor::from_vec(v, shape, self.device)
    }

    fn param(&mut self, name: String, t: Tensor) -> std::result::Result<Tensor, String> {
        let var = Var::from_tensor(&t).map_err(|e| e.to_string())?;
        let t = var.as_tensor().clone();
        if self.params.insert(name.clone(), var).is_some() {
            return Err(format!("two layers are named `{name}`: give one a different name"));
        }
        Ok(t)
    }

    /// A conv named `name` (`name.weight`, `name.bias`) on `c_in` channels.
    pub fn conv(
        &mut self,
        name: &str,
        c_in: usize,
        out: usize,
        kernel: usize,
        params: ConvParams,
        bias: bool,
    ) -> std::result::Result<Conv, String> {
        let fan_in = c_in / params.groups * kernel * kernel;
        let wshape = [out, c_in / params.groups, kernel, kernel];
        let weight = match self.conv_init {
            ConvInit::PyTorchDefault => self.uniform(&wshape, 1.0 / (fan_in as f64).sqrt()),
            ConvInit::KaimingNormalFanOut => {
                let fan_out = out / params.groups * kernel * kernel;
                self.normal(&wshape, (2.0 / fan_out as f64).sqrt())
            }
        }
        .map_err(|e| e.to_string())?;
        let weight = self.param(format!("{name}.weight"), weight)?;
        let bias = if bias {
            let b = match self.conv_init {
                ConvInit::PyTorchDefault => self.uniform(&[out], 1.0 / (fan_in as f64).sqrt()),
                ConvInit::KaimingNormalFanOut => Tensor::zeros(out, DType::F32, self.device),
            }
            .map_err(|e| e.to_string())?;
            Some(self.param(format!("{name}.bias"), b)?)
        } else {
            None
        };
        Ok(Conv { weight, bias, params, autocast: self.autocast.clone() })
    }

    /// A BatchNorm named `name` over `c` channels: weight 1, bias 0, running stats 0 / 1.
    pub fn batch_norm(&mut self, name: &str, c: usize) -> std::result::Result<BatchNorm, String> {
        let e = |e: candle_core::Error| e.to_string();
        let weight = self.param(format!("{name}.weight"), Tensor::ones(c, DType::F32, self.device).map_err(e)?)?;
        let bias = self.param(format!("{name}.bias"), Tensor::zeros(c, DType::F32, self.device).map_err(e)?)?;
        let running_mean = Var::zeros(c, DType::F32, self.device).map_err(e)?;
        let running_var = Var::ones(c, DType::F32, self.device).map_err(e)?;
        self.buffers.insert(format!("{name}.running_mean"), running_mean.clone());
        self.buffers.insert(format!("{name}.running_var"), running_var.clone());
        let batches_tracked = Arc::new(AtomicI64::new(0));
        self.counters.insert(format!("{name}.num_batches_tracked"), batches_tracked.clone());
        Ok(BatchNorm { weight, bias, running_mean, running_var, batches_tracked, momentum: 0.1, eps: 1e-5 })
    }

    fn linear(&mut self, name: &str, fan_in: usize, out: usize, bias: bool) -> std::result::Result<Layer, String> {
        let bound = 1.0 / (fan_in as f64).sqrt();
        let w = self.uniform(&[out, fan_in], bound).map_err(|e| e.to_string())?;
        let weight = self.param(format!("{name}.weight"), w)?;
        let bias = if bias {
            let b = self.uniform(&[out], bound).map_err(|e| e.to_string())?;
            Some(self.param(format!("{name}.bias"), b)?)
        } else {
            None
        };
        Ok(Layer::Linear { weight, bias, autocast: self.autocast.clone() })
    }
}

pub(super) struct Built {
    pub dropout_rng: Arc<Mutex<ChaCha8Rng>>,
    pub layers: Vec<Layer>,
    pub params: BTreeMap<String, Var>,
    pub buffers: BTreeMap<String, Var>,
    pub counters: BTreeMap<String, Arc<AtomicI64>>,
    pub summary: Summary,
    pub autocast: Autocast,
}

fn spatial(shape: &[usize]) -> std::result::Result<(usize, usize, usize), String> {
    match shape {
        [c, h, w] => Ok((*c, *h, *w)),
        _ => Err(format!("expects a (channels, height, width) input, got {shape:?}")),
    }
}

/// Builds every layer for `(c, h, w)` inputs, drawing weights from `seed` in layer order.
///
/// Names follow torchvision where the list has its shape: top-level convs `conv1`, `conv2`, ...,
/// BatchNorms `bn1`, ..., stages `layer1`, ... with blocks `layer1.0.conv1`, and a single
/// linear layer `fc` (several: `fc1`, `fc2`, ...). Models with residual stages use
/// torchvision's ResNet initialisation for every conv; others PyTorch's layer defaults.
pub(super) fn build(
    configs: &[LayerConfig],
    (c, h, w): (usize, usize, usize),
    seed: u64,
    device: &Device,
) -> std::result::Result<Built, ModelError> {
    let has_stages = configs.iter().any(|c| matches!(c, LayerConfig::Stage(_)));
    let mut b = Builder {
        rng: ChaCha8Rng::seed_from_u64(seed),
        device,
        conv_init: if has_stages { ConvInit::KaimingNormalFanOut } else { ConvInit::PyTorchDefault },
        params: BTreeMap::new(),
        buffers: BTreeMap::new(),
        counters: BTreeMap::new(),
        autocast: Autocast::default(),
    };
    // Dropout masks come from their own stream so adding dropout leaves the weights unchanged.
    let dropout_rng = Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(seed.wrapping_add(0xD80))));
    let n_linear = configs.iter().filter(|c| matches!(c, LayerConfig::Linear(_))).count();
    let (mut n_conv, mut n_fc, mut n_bn, mut n_stage) = (0, 0, 0, 0);
    let mut shape = vec![c, h, w];
    let mut layers = Vec::new();
    let mut summary = Summary::new(vec![c, h, w]);

    for (index, cfg) in configs.iter().enumerate() {
        let kind = cfg.kind();
        let fail = |message: String| ModelError::Shape { index, kind, message };
        match cfg {
            LayerConfig::Conv(c) => {
                let (c_in, ih, iw) = spatial(&shape).map_err(fail)?;
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
                let conv = b.conv(&name, c_in, c.out, c.kernel, c.params, c.bias).map_err(fail)?;
                let fan_in = c_in / g * c.kernel * c.kernel;
                shape = vec![c.out, oh, ow];
                let params = c.out * fan_in + if c.bias { c.out } else { 0 };
                let macs = (c.out * oh * ow * fan_in) as u64;
                summary.rows.push(SummaryRow { index, kind, name, out_shape: shape.clone(), params, macs });
                layers.push(Layer::Conv(conv));
            }
            LayerConfig::Pool(p) => {
                let (c, ih, iw) = spatial(&shape).map_err(fail)?;
                let Some((oh, ow)) = p.out_size(ih, iw) else {
                    return Err(fail(format!(
                        "window {:?} with padding {:?} does not fit the {ih}x{iw} input",
                        p.kernel, p.padding
                    )));
                };
                shape = vec![c, oh, ow];
                summary.rows.push(SummaryRow::plain(index, kind, "pool", &shape));
                layers.push(Layer::Pool(*p));
            }
            LayerConfig::GlobalAvgPool => {
                let (c, _, _) = spatial(&shape).map_err(fail)?;
                shape = vec![c];
                summary.rows.push(SummaryRow::plain(index, kind, "pool", &shape));
                layers.push(Layer::GlobalAvgPool);
            }
            LayerConfig::Relu => {
                summary.rows.push(SummaryRow::plain(index, kind, "relu", &shape));
                layers.push(Layer::Relu);
            }
            LayerConfig::Flatten => {
                shape = vec![shape.iter().product()];
                summary.rows.push(SummaryRow::plain(index, kind, "flatten", &shape));
                layers.push(Layer::Flatten);
            }
            LayerConfig::Linear(l) => {
                let fan_in: usize = shape.iter().product();
                n_fc += 1;
                let name =
                    l.name.clone().unwrap_or_else(|| if n_linear == 1 { "fc".into() } else { format!("fc{n_fc}") });
                let layer = b.linear(&name, fan_in, l.out, l.bias).map_err(fail)?;
                shape = vec![l.out];
                let params = l.out * fan_in + if l.bias { l.out } else { 0 };
                let macs = (l.out * fan_in) as u64;
                summary.rows.push(SummaryRow { index, kind, name, out_shape: shape.clone(), params, macs });
                layers.push(layer);
            }
            LayerConfig::Dropout(p) => {
                summary.rows.push(SummaryRow::plain(index, kind, "dropout", &shape));
                layers.push(Layer::Dropout { p: *p, rng: dropout_rng.clone() });
            }
            LayerConfig::BatchNorm => {
                if shape.len() != 3 && shape.len() != 1 {
                    return Err(fail(format!("expects (channels, h, w) or (features) input, got {shape:?}")));
                }
                n_bn += 1;
                let name = format!("bn{n_bn}");
                let bn = b.batch_norm(&name, shape[0]).map_err(fail)?;
                summary.rows.push(SummaryRow {
                    index,
                    kind,
                    name,
                    out_shape: shape.clone(),
                    params: 2 * shape[0],
                    macs: 0,
                });
                layers.push(Layer::BatchNorm(bn));
            }
            LayerConfig::Stage(s) => {
                n_stage += 1;
                let name = s.name.clone().unwrap_or_else(|| format!("layer{n_stage}"));
                for i in 0..s.repeat {
                    let block_name = format!("{name}.{i}");
                    let stride = if i == 0 { s.stride } else { 1 };
                    let (block, row) = blocks::build(&mut b, &block_name, s, stride, &shape).map_err(fail)?;
                    shape = row.out_shape.clone();
                    summary.rows.push(SummaryRow { index, ..row });
                    layers.push(Layer::Block(Box::new(block)));
                }
            }
        }
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
    Ok(Built {
        dropout_rng,
        layers,
        params: b.params,
        buffers: b.buffers,
        counters: b.counters,
        summary,
        autocast: b.autocast,
    })
}
