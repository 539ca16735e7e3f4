//! `stage`: residual blocks (He et al. 2015; ResNeXt, Xie et al. 2016) with torchvision's
//! layout and names: `BasicBlock` (two 3x3 convs) and `Bottleneck` (1x1 reduce, 3x3 grouped,
//! 1x1 expand, stride on the 3x3 as in torchvision's "v1.5"), each followed by
//! `relu(F(x) + shortcut(x))`.

use candle_core::{Module, Result, Tensor};
use candle_nn::ModuleT;

use super::batch_norm::BatchNorm;
use super::conv::Conv;
use super::{Built, Walk};
use crate::model::builder::Builder;
use crate::model::summary::SummaryRow;
use crate::ops::conv::ConvParams;
use crate::ops::norm::add_relu;
use crate::ops::pool::{PoolKind, PoolParams, pool2d};
use crate::spec::{BlockKind, DownsampleKind, MidWidth, StageConfig};

/// The shortcut's projection when a block changes shape.
pub struct Downsample {
    /// ResNet-D: average-pool first, then a stride-1 conv.
    pool: Option<PoolParams>,
    conv: Conv,
    bn: BatchNorm,
}

/// One residual block.
pub enum Block {
    Basic {
        conv1: Conv,
        bn1: BatchNorm,
        conv2: Conv,
        bn2: BatchNorm,
        downsample: Option<Downsample>,
    },
    Bottleneck {
        conv1: Conv,
        bn1: BatchNorm,
        conv2: Conv,
        bn2: BatchNorm,
        conv3: Conv,
        bn3: BatchNorm,
        downsample: Option<Downsample>,
    },
}

/// `bn(conv(xs))`; where the block wants a ReLU after, `bn` was built with it fused in.
fn conv_bn(conv: &Conv, bn: &BatchNorm, xs: &Tensor, train: bool) -> Result<Tensor> {
    bn.forward_t(&conv.forward(xs)?, train)
}

fn shortcut(ds: &Option<Downsample>, xs: &Tensor, train: bool) -> Result<Tensor> {
    match ds {
        None => Ok(xs.clone()),
        Some(d) => {
            let x = match d.pool {
                Some(p) => pool2d(xs, p)?,
                None => xs.clone(),
            };
            conv_bn(&d.conv, &d.bn, &x, train)
        }
    }
}

impl ModuleT for Block {
    /// `(n, c_in, h, w) -> (n, out, h', w')`.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let (residual, ds) = match self {
            Block::Basic { conv1, bn1, conv2, bn2, downsample } => {
                let y = conv_bn(conv1, bn1, xs, train)?;
                (conv_bn(conv2, bn2, &y, train)?, downsample)
            }
            Block::Bottleneck { conv1, bn1, conv2, bn2, conv3, bn3, downsample } => {
                let y = conv_bn(conv1, bn1, xs, train)?;
                let y = conv_bn(conv2, bn2, &y, train)?;
                (conv_bn(conv3, bn3, &y, train)?, downsample)
            }
        };
        add_relu(&residual, &shortcut(ds, xs, train)?)
    }
}

/// Parameters and multiply-adds of what a block builds, accumulated as it goes.
#[derive(Default)]
struct Cost {
    params: usize,
    macs: u64,
}

impl Cost {
    fn conv(&mut self, c_in: usize, out: usize, k: usize, groups: usize, (oh, ow): (usize, usize)) {
        let fan_in = c_in / groups * k * k;
        self.params += out * fan_in;
        self.macs += (out * oh * ow * fan_in) as u64;
    }
    fn bn(&mut self, c: usize) {
        self.params += 2 * c;
    }
}

/// Builds a block of stage `s` in `b`'s scope (`layer1.0`) with `stride` on input `shape`;
/// returns it and its row.
fn block(
    b: &mut Builder,
    s: &StageConfig,
    stride: usize,
    shape: &[usize],
) -> std::result::Result<(Block, SummaryRow), String> {
    let [c_in, h, w] = shape[..] else {
        return Err(format!("a residual stage expects a (channels, height, width) input, got {shape:?}"));
    };
    let (oh, ow) = ((h - 1) / stride + 1, (w - 1) / stride + 1);
    let mut cost = Cost::default();
    let p = |stride: usize, padding: usize, groups: usize| ConvParams { stride, padding, dilation: 1, groups };
    let downsample = if stride != 1 || c_in != s.out {
        Some(downsample(&mut b.pp("downsample"), s, stride, (c_in, h, w), &mut cost)?)
    } else {
        None
    };
    let block = match s.block {
        BlockKind::Basic => {
            if s.groups != 1 || s.mid != MidWidth::PerGroup(64) {
                return Err(
                    "a basic block has no groups or width (as in torchvision): use block = \"bottleneck\"".into()
                );
            }
            let conv1 = Conv::new(&mut b.pp("conv1"), c_in, s.out, 3, p(stride, 1, 1), false)?;
            let bn1 = BatchNorm::new(&mut b.pp("bn1"), s.out)?.with_relu();
            let conv2 = Conv::new(&mut b.pp("conv2"), s.out, s.out, 3, p(1, 1, 1), false)?;
            let bn2 = BatchNorm::new(&mut b.pp("bn2"), s.out)?;
            cost.conv(c_in, s.out, 3, 1, (oh, ow));
            cost.conv(s.out, s.out, 3, 1, (oh, ow));
            cost.bn(s.out);
            cost.bn(s.out);
            Block::Basic { conv1, bn1, conv2, bn2, downsample }
        }
        BlockKind::Bottleneck => {
            let width = s.bottleneck_width()?;
            let conv1 = Conv::new(&mut b.pp("conv1"), c_in, width, 1, p(1, 0, 1), false)?;
            let bn1 = BatchNorm::new(&mut b.pp("bn1"), width)?.with_relu();
            let conv2 = Conv::new(&mut b.pp("conv2"), width, width, 3, p(stride, 1, s.groups), false)?;
            let bn2 = BatchNorm::new(&mut b.pp("bn2"), width)?.with_relu();
            let conv3 = Conv::new(&mut b.pp("conv3"), width, s.out, 1, p(1, 0, 1), false)?;
            let bn3 = BatchNorm::new(&mut b.pp("bn3"), s.out)?;
            cost.conv(c_in, width, 1, 1, (h, w));
            cost.conv(width, width, 3, s.groups, (oh, ow));
            cost.conv(width, s.out, 1, 1, (oh, ow));
            cost.bn(width);
            cost.bn(width);
            cost.bn(s.out);
            Block::Bottleneck { conv1, bn1, conv2, bn2, conv3, bn3, downsample }
        }
    };
    let kind = match s.block {
        BlockKind::Basic => "basic_block",
        BlockKind::Bottleneck => "bottleneck",
    };
    let row = SummaryRow {
        index: 0,
        kind,
        name: b.scope(),
        out_shape: vec![s.out, oh, ow],
        params: cost.params,
        macs: cost.macs,
    };
    Ok((block, row))
}

/// The shortcut's projection (`<block>.downsample.0`, `.1`, or `.1`, `.2` after ResNet-D's
/// pool, as timm numbers them) from `(c_in, h, w)` to the stage's output.
fn downsample(
    b: &mut Builder,
    s: &StageConfig,
    stride: usize,
    (c_in, h, w): (usize, usize, usize),
    cost: &mut Cost,
) -> std::result::Result<Downsample, String> {
    let (oh, ow) = ((h - 1) / stride + 1, (w - 1) / stride + 1);
    let (pool, conv_stride, idx) = match s.downsample {
        DownsampleKind::Conv => (None, stride, 0),
        DownsampleKind::AvgConv => {
            if h % stride != 0 || w % stride != 0 {
                return Err(format!("avg_conv downsampling needs {h}x{w} divisible by the stride {stride}"));
            }
            let pool = (stride > 1).then_some(PoolParams {
                kind: PoolKind::Avg,
                kernel: (stride, stride),
                stride: (stride, stride),
                padding: (0, 0),
            });
            (pool, 1, 1)
        }
    };
    let params = ConvParams { stride: conv_stride, padding: 0, dilation: 1, groups: 1 };
    let conv = Conv::new(&mut b.pp(idx.to_string()), c_in, s.out, 1, params, false)?;
    let bn = BatchNorm::new(&mut b.pp((idx + 1).to_string()), s.out)?;
    cost.conv(c_in, s.out, 1, 1, (oh, ow));
    cost.bn(s.out);
    Ok(Downsample { pool, conv, bn })
}

/// A stage's blocks in order.
struct Blocks(Vec<Block>);

impl ModuleT for Blocks {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.0.iter().try_fold(xs.clone(), |x, block| block.forward_t(&x, train))
    }
}

/// Builds stage `layer<N>` (unless named): `repeat` blocks `layer<N>.0`, `layer<N>.1`, ...,
/// the first with the stage's stride; one summary row per block.
pub(super) fn build(s: &StageConfig, walk: &mut Walk) -> std::result::Result<Built, String> {
    let name = s.name.clone().unwrap_or_else(|| format!("layer{}", walk.count("layer")));
    let mut stage = walk.builder.pp(name);
    let (mut shape, mut blocks, mut rows) = (walk.shape.clone(), Vec::new(), Vec::new());
    for i in 0..s.repeat {
        let stride = if i == 0 { s.stride } else { 1 };
        let (b, row) = block(&mut stage.pp(i.to_string()), s, stride, &shape)?;
        shape = row.out_shape.clone();
        rows.push(SummaryRow { index: walk.index, ..row });
        blocks.push(b);
    }
    Ok(Built { module: Some(Box::new(Blocks(blocks))), rows, out_shape: shape })
}
