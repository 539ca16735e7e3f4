//! Merges: nodes reading several named nodes. `add` (a residual sum; with `project`, a later
//! input of another shape goes through torchvision's `downsample` first), `concat` (DenseNet's
//! channel stacking), `mul` (a squeeze-excite gate scaling a feature map).

use candle_core::{Module, Result, Tensor};
use candle_nn::ModuleT;

use super::batch_norm::BatchNorm;
use super::conv::Conv;
use super::graph::{Merge, Op};
use super::{Built, Walk};
use crate::ops::conv::ConvParams;
use crate::ops::norm::{Fused, add_relu, relu};
use crate::ops::pool::{PoolKind, PoolParams, pool2d};
use crate::spec::Projection;

/// The shortcut's projection when a block changes shape: `<name>.0` conv, `<name>.1`
/// BatchNorm, or `<name>.1`, `<name>.2` after ResNet-D's pool (as timm numbers them).
struct Downsample {
    pool: Option<PoolParams>,
    conv: Conv,
    bn: BatchNorm,
}

impl Downsample {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let x = match self.pool {
            Some(p) => pool2d(xs, p)?,
            None => xs.clone(),
        };
        self.bn.forward_t(&self.conv.forward(&x)?, train)
    }
}

/// The element-wise sum, its ReLU computed in the same pass when one follows.
struct Add {
    /// Input `k`'s projection, when its shape is not the first's.
    project: Vec<Option<Downsample>>,
    relu_after: bool,
}

impl Merge for Add {
    fn forward_t(&self, xs: &[&Tensor], train: bool) -> Result<Tensor> {
        let projected = xs
            .iter()
            .zip(&self.project)
            .map(|(x, p)| match p {
                Some(d) => d.forward_t(x, train),
                None => Ok((*x).clone()),
            })
            .collect::<Result<Vec<_>>>()?;
        match (&projected[..], self.relu_after) {
            ([a, b], true) => add_relu(a, b),
            (all, relu_after) => {
                let sum = all[1..].iter().try_fold(all[0].clone(), |s, x| s + x)?;
                if relu_after { relu(&sum) } else { Ok(sum) }
            }
        }
    }
}

/// The stride that takes `from` pixels to `to` as a 1x1 conv without padding does.
fn stride_between(from: usize, to: usize) -> Option<usize> {
    (1..=from.max(1)).find(|s| (from - 1) / s + 1 == to)
}

/// Builds the projection of a `(c, h, w)` input onto `(oc, oh, ow)` under `name`.
fn downsample(
    walk: &mut Walk,
    kind: Projection,
    name: &str,
    (c, h, w): (usize, usize, usize),
    (oc, oh, ow): (usize, usize, usize),
) -> std::result::Result<(Downsample, usize, u64), String> {
    let stride = stride_between(h, oh)
        .filter(|s| stride_between(w, ow) == Some(*s))
        .ok_or_else(|| format!("no 1x1 conv stride takes {h}x{w} to {oh}x{ow}"))?;
    let (pool, conv_stride, first) = match kind {
        Projection::Conv => (None, stride, 0),
        Projection::AvgConv => {
            if h % stride != 0 || w % stride != 0 {
                return Err(format!("avg_conv projection needs {h}x{w} divisible by the stride {stride}"));
            }
            let p =
                PoolParams { kind: PoolKind::Avg, kernel: (stride, stride), stride: (stride, stride), padding: (0, 0) };
            ((stride > 1).then_some(p), 1, 1)
        }
    };
    let mut scope = walk.builder.pp(name);
    let params = ConvParams { stride: conv_stride, padding: 0, dilation: 1, groups: 1 };
    let conv = Conv::new(&mut scope.pp(first.to_string()), c, oc, 1, params, false)?;
    let bn = BatchNorm::new(&mut scope.pp((first + 1).to_string()), oc)?;
    Ok((Downsample { pool, conv, bn }, c * oc + 2 * oc, (oc * oh * ow * c) as u64))
}

/// `add`: every input the first's shape, or projected to it (`project`); the projection is
/// named after the node (default `downsample`, torchvision's name).
pub(super) fn build_add(project: Option<Projection>, walk: &mut Walk) -> std::result::Result<Built, String> {
    let target = walk.inputs[0].clone();
    let name = walk.name.clone().unwrap_or_else(|| "downsample".into());
    let (mut projections, mut params, mut macs) = (vec![None], 0, 0);
    for k in 1..walk.inputs.len() {
        let shape = walk.inputs[k].clone();
        if shape == target {
            projections.push(None);
            continue;
        }
        let (input, first) = (&walk.input_names[k], &walk.input_names[0]);
        let mismatch = format!("`{input}` is {shape:?} but `{first}` is {target:?}");
        let (Some(kind), &[c, h, w], &[oc, oh, ow]) = (project, &shape[..], &target[..]) else {
            return Err(format!("{mismatch}: an add needs equal shapes (or project = true for a 1x1 projection)"));
        };
        if projections.iter().any(Option::is_some) {
            return Err(format!("{mismatch}: an add projects at most one input"));
        }
        let (d, p, m) =
            downsample(walk, kind, &name, (c, h, w), (oc, oh, ow)).map_err(|e| format!("{mismatch}: {e}"))?;
        projections.push(Some(d));
        (params, macs) = (p, m);
    }
    let add = Add { project: projections, relu_after: walk.activation_follows == Fused::Relu };
    let mut row = walk.plain_row("add", &target);
    (row.params, row.macs) = (params, macs);
    Ok(Built { op: Op::Merge(Box::new(add)), rows: vec![row], out_shape: target })
}

/// Channels stacked: `(n, c1, h, w), (n, c2, h, w) -> (n, c1 + c2, h, w)` (or features).
struct Concat;

impl Merge for Concat {
    fn forward_t(&self, xs: &[&Tensor], _train: bool) -> Result<Tensor> {
        Tensor::cat(xs, 1)
    }
}

pub(super) fn build_concat(walk: &mut Walk) -> std::result::Result<Built, String> {
    let first = walk.inputs[0].clone();
    for (shape, name) in walk.inputs.iter().zip(&walk.input_names).skip(1) {
        if shape.len() != first.len() || shape[1..] != first[1..] {
            return Err(format!(
                "`{name}` is {shape:?} but `{}` is {first:?}: concat stacks channels of equal height and width",
                walk.input_names[0]
            ));
        }
    }
    let mut out = first;
    out[0] = walk.inputs.iter().map(|s| s[0]).sum();
    Ok(Built { op: Op::Merge(Box::new(Concat)), rows: vec![walk.plain_row("concat", &out)], out_shape: out })
}

/// `x * gate`, the gate `(c)` or `(c, 1, 1)` broadcast over height and width, or `x`'s shape.
struct Mul;

impl Merge for Mul {
    fn forward_t(&self, xs: &[&Tensor], _train: bool) -> Result<Tensor> {
        let (x, gate) = (xs[0], xs[1]);
        if gate.rank() < x.rank() {
            let mut shape = gate.dims().to_vec();
            shape.resize(x.rank(), 1);
            return x.broadcast_mul(&gate.reshape(shape)?);
        }
        x.broadcast_mul(gate)
    }
}

pub(super) fn build_mul(walk: &mut Walk) -> std::result::Result<Built, String> {
    let (x, gate) = (walk.inputs[0].clone(), &walk.inputs[1]);
    let fits = gate == &x || (x.len() == 3 && (gate[..] == [x[0]] || gate[..] == [x[0], 1, 1]));
    if !fits {
        return Err(format!(
            "`{}` is {gate:?}: a gate for `{}` {x:?} is ({c}), ({c}, 1, 1) or its shape",
            walk.input_names[1],
            walk.input_names[0],
            c = x[0]
        ));
    }
    Ok(Built { op: Op::Merge(Box::new(Mul)), rows: vec![walk.plain_row("mul", &x)], out_shape: x })
}
