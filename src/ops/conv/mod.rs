//! 2-D convolution (groups, stride, padding, dilation) as a candle custom op with its own
//! forward, input gradient and weight gradient on CPU, each run by the algorithm [`plan`]
//! picks: Winograd (`winograd.rs`), implicit GEMM (`implicit.rs`), direct (`direct.rs`) or
//! im2col + GEMM (`gemm.rs`).
//!
//! A grouped convolution costs what its FLOPs say, instead of launching one small
//! convolution per group as candle's `conv2d` does. The input gradient is skipped when the
//! input tracks no gradient (the image fed to the first layer).

mod depthwise;
mod direct;
pub(crate) mod gemm;
mod implicit;
pub mod plan;
pub mod tune;
mod winograd;

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use super::{f32_slice, par_chunks_written};
use crate::ops::isa::Isa;
use plan::plan;

pub use super::params::ConvParams;

/// A convolution algorithm (see the module docs for when each runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algo {
    Implicit,
    Direct,
    Depthwise,
    Batched,
    PerSample,
    Winograd,
}

impl Algo {
    pub const ALL: [Algo; 6] =
        [Algo::Implicit, Algo::Direct, Algo::Depthwise, Algo::Batched, Algo::PerSample, Algo::Winograd];

    /// The name in plan files and logs.
    pub fn name(self) -> &'static str {
        match self {
            Algo::Implicit => "implicit",
            Algo::Direct => "direct",
            Algo::Depthwise => "depthwise",
            Algo::Batched => "batched",
            Algo::PerSample => "per_sample",
            Algo::Winograd => "winograd",
        }
    }
}

/// One of a convolution's three computations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pass {
    Forward,
    InputGrad,
    WeightGrad,
}

/// A chosen algorithm with what it needs to run: the specialised kernels' dimensions and, for
/// the AVX-512 one, the proof that the CPU has it.
#[derive(Debug, Clone, Copy)]
enum Kernel {
    Implicit(implicit::Cpu, implicit::Dims),
    Direct(Isa, direct::Dims),
    Depthwise(Isa, depthwise::Dims),
    Batched,
    PerSample,
    Winograd(Isa, winograd::Dims),
}

impl Kernel {
    fn algo(&self) -> Algo {
        match self {
            Kernel::Implicit(..) => Algo::Implicit,
            Kernel::Direct(..) => Algo::Direct,
            Kernel::Depthwise(..) => Algo::Depthwise,
            Kernel::Batched => Algo::Batched,
            Kernel::PerSample => Algo::PerSample,
            Kernel::Winograd(..) => Algo::Winograd,
        }
    }
    /// Which route inside the algorithm `pass` takes, where it has more than one.
    fn route(&self, pass: Pass) -> Option<&'static str> {
        match self {
            Kernel::Implicit(_, d) => Some(implicit::route(pass, d)),
            _ => None,
        }
    }
}

/// Every size a kernel needs, derived once from the input and weight shapes.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    p: ConvParams,
}

impl Geometry {
    fn new(x: &Shape, wt: &Shape, p: ConvParams) -> Result<Self> {
        let (n, c, h, w) = x.dims4()?;
        let (o, cg, kh, kw) = wt.dims4()?;
        if p.groups == 0 || c % p.groups != 0 || o % p.groups != 0 || cg * p.groups != c {
            candle_core::bail!(
                "conv2d: input {:?} and weight {:?} do not fit groups = {}",
                x.dims(),
                wt.dims(),
                p.groups
            );
        }
        let (Some(oh), Some(ow)) = (p.out_size(h, kh), p.out_size(w, kw)) else {
            candle_core::bail!("conv2d: kernel {kh}x{kw} larger than padded input {h}x{w}");
        };
        Ok(Self { n, c, h, w, o, kh, kw, oh, ow, p })
    }
    fn cg(&self) -> usize {
        self.c / self.p.groups
    }
    fn og(&self) -> usize {
        self.o / self.p.groups
    }
    /// Rows of one group's im2col matrix.
    fn k(&self) -> usize {
        self.cg() * self.kh * self.kw
    }
    /// Columns of the im2col matrix: output pixels.
    fn l(&self) -> usize {
        self.oh * self.ow
    }
    /// A 1x1, stride-1, unpadded conv reads its input as the im2col matrix itself.
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.p.stride == 1 && self.p.padding == 0
    }
    /// The direct kernels' dims, when they apply (see [`direct::applies`]).
    fn direct(&self) -> Option<direct::Dims> {
        let d = direct::Dims {
            c: self.c,
            h: self.h,
            w: self.w,
            o: self.o,
            kh: self.kh,
            kw: self.kw,
            oh: self.oh,
            ow: self.ow,
        };
        direct::applies(self.p.stride, self.p.padding, self.p.dilation, self.p.groups, &d).then_some(d)
    }
    /// The depthwise kernels' dims, when they apply (one input channel per group).
    fn depthwise(&self) -> Option<depthwise::Dims> {
        let d = depthwise::Dims {
            n: self.n,
            c: self.c,
            h: self.h,
            w: self.w,
            og: self.og(),
            kh: self.kh,
            kw: self.kw,
            oh: self.oh,
            ow: self.ow,
            stride: self.p.stride,
            padding: self.p.padding,
            dilation: self.p.dilation,
        };
        depthwise::applies(self.c, self.p.groups).then_some(d)
    }
    /// The implicit-GEMM kernels' dims, when they apply (see [`implicit::applies`]).
    fn implicit(&self) -> Option<implicit::Dims> {
        let d = implicit::Dims {
            n: self.n,
            stride: self.p.stride,
            groups: self.p.groups,
            cg: self.cg(),
            og: self.og(),
            h: self.h,
            w: self.w,
            kh: self.kh,
            kw: self.kw,
            ph: self.p.padding,
            pw: self.p.padding,
        };
        implicit::applies(self.p.dilation, &d).then_some(d)
    }
    /// The Winograd kernels' dims, when they apply (see [`winograd::applies`]).
    fn winograd(&self) -> Option<winograd::Dims> {
        let p = self.p;
        winograd::applies((self.kh, self.kw), p.stride, p.padding, p.dilation, p.groups).then_some(winograd::Dims {
            n: self.n,
            c: self.c,
            o: self.o,
            h: self.h,
            w: self.w,
            p: p.padding,
        })
    }
    fn in_len(&self) -> usize {
        self.c * self.h * self.w
    }
    fn out_len(&self) -> usize {
        self.o * self.l()
    }
}

/// Forward by `k`: `out (n, o, oh, ow)`.
fn forward_by(k: Kernel, x: &[f32], wt: &[f32], g: &Geometry) -> Vec<f32> {
    match k {
        Kernel::Implicit(cpu, d) => implicit::forward(cpu, x, wt, &d),
        // SAFETY: the direct forward writes every output of its image (direct::forward).
        Kernel::Direct(isa, d) => unsafe {
            par_chunks_written(g.n * g.out_len(), g.out_len(), |n, out_n| {
                direct::forward(isa, &x[n * g.in_len()..(n + 1) * g.in_len()], wt, d, out_n);
            })
        },
        Kernel::Depthwise(isa, d) => depthwise::forward(isa, x, wt, &d),
        Kernel::Batched => gemm::forward_batched(x, wt, g),
        Kernel::PerSample => gemm::forward(x, wt, g),
        Kernel::Winograd(isa, d) => winograd::forward(isa, x, wt, &d),
    }
}

/// Input gradient by `k`: `dx (n, c, h, w)`.
fn input_grad_by(k: Kernel, dy: &[f32], wt: &[f32], g: &Geometry) -> Vec<f32> {
    match k {
        Kernel::Implicit(cpu, d) => implicit::input_grad(cpu, dy, wt, &d),
        Kernel::Direct(isa, d) => {
            let flipped = direct::flip_weights(wt, &d);
            // SAFETY: the direct input gradient is the direct forward of padded dy, which writes
            // every element of the image's dx.
            unsafe {
                par_chunks_written(g.n * g.in_len(), g.in_len(), |n, dx_n| {
                    let dy_n = &dy[n * g.out_len()..(n + 1) * g.out_len()];
                    gemm::with_scratch(direct::input_grad_scratch(&d), |padded| {
                        direct::input_grad(isa, dy_n, &flipped, d, dx_n, padded);
                    });
                })
            }
        }
        Kernel::Depthwise(isa, d) => depthwise::input_grad(isa, dy, wt, &d),
        Kernel::Batched => gemm::input_grad_batched(dy, wt, g),
        Kernel::PerSample => gemm::input_grad(dy, wt, g),
        Kernel::Winograd(isa, d) => winograd::input_grad(isa, dy, wt, &d),
    }
}

/// Weight gradient by `k`: `dw (o, c / groups, kh, kw)`.
fn weight_grad_by(k: Kernel, x: &[f32], dy: &[f32], g: &Geometry) -> Vec<f32> {
    match k {
        Kernel::Implicit(cpu, d) => implicit::weight_grad(cpu, x, dy, &d),
        Kernel::Direct(isa, d) => gemm::sum_over_samples(g, g.o * g.k(), |slice, dw| {
            for &n in slice {
                let (x_n, dy_n) =
                    (&x[n * g.in_len()..(n + 1) * g.in_len()], &dy[n * g.out_len()..(n + 1) * g.out_len()]);
                direct::weight_grad(isa, x_n, dy_n, d, dw);
            }
        }),
        Kernel::Depthwise(isa, d) => depthwise::weight_grad(isa, x, dy, &d),
        Kernel::Batched => gemm::weight_grad_batched(x, dy, g),
        Kernel::PerSample => gemm::weight_grad(x, dy, g),
        Kernel::Winograd(isa, d) => winograd::weight_grad(isa, x, dy, &d),
    }
}

/// Forward convolution: `x (n, c, h, w)`, `weight (o, c/groups, kh, kw)` -> `(n, o, oh, ow)`.
#[derive(Debug, Clone, Copy)]
pub struct Conv2d(pub ConvParams);

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "ablate-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::new(l1.shape(), l2.shape(), self.0)?;
        let x = f32_slice(self.name(), s1, l1)?;
        let wt = f32_slice(self.name(), s2, l2)?;
        let out = forward_by(plan(Pass::Forward, &g), x, wt, &g);
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.o, g.oh, g.ow))))
    }

    fn bwd(&self, x: &Tensor, wt: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        // The image itself needs no gradient: skip the input-gradient GEMMs for it.
        let dx = if x.track_op() {
            Some(dy.apply_op2_no_bwd(wt, &ConvInputGrad { params: self.0, x_shape: x.shape().clone() })?)
        } else {
            None
        };
        let dw = x.apply_op2_no_bwd(&dy, &ConvWeightGrad { params: self.0, w_shape: wt.shape().clone() })?;
        Ok((dx, Some(dw)))
    }
}

/// Input gradient: `dy (n, o, oh, ow)`, `weight` -> `dx` with the forward input's shape.
struct ConvInputGrad {
    params: ConvParams,
    x_shape: Shape,
}

impl CustomOp2 for ConvInputGrad {
    fn name(&self) -> &'static str {
        "ablate-conv2d-input-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::new(&self.x_shape, l2.shape(), self.params)?;
        let dy = f32_slice(self.name(), s1, l1)?;
        let wt = f32_slice(self.name(), s2, l2)?;
        Ok((CpuStorage::F32(input_grad_by(plan(Pass::InputGrad, &g), dy, wt, &g)), self.x_shape.clone()))
    }
}

/// Weight gradient: `x`, `dy (n, o, oh, ow)` -> `dw` with the weight's shape.
struct ConvWeightGrad {
    params: ConvParams,
    w_shape: Shape,
}

impl CustomOp2 for ConvWeightGrad {
    fn name(&self) -> &'static str {
        "ablate-conv2d-weight-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::new(l1.shape(), &self.w_shape, self.params)?;
        let x = f32_slice(self.name(), s1, l1)?;
        let dy = f32_slice(self.name(), s2, l2)?;
        Ok((CpuStorage::F32(weight_grad_by(plan(Pass::WeightGrad, &g), x, dy, &g)), self.w_shape.clone()))
    }
}

/// Convolves `x (n, c, h, w)` with `weight (o, c/groups, kh, kw)`: our kernels for f32 on CPU;
/// elsewhere (and for other dtypes) candle's `conv2d` (cuDNN with the `cudnn` feature) for one
/// group, and the batched im2col of [`super::generic::conv2d`] for several.
pub fn conv2d(x: &Tensor, weight: &Tensor, p: ConvParams) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op2(&weight.contiguous()?, Conv2d(p))
    } else if p.groups == 1 {
        x.conv2d(weight, p.padding, p.stride, p.dilation, 1)
    } else {
        super::generic::conv2d(x, weight, p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn seeded(shape: &[usize], seed: u64) -> Tensor {
        crate::ops::testing::uniform(shape, seed, -1.0, 1.0)
    }

    fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs() / scale))
    }

    /// Forward and both gradients equal candle's reference conv (its forward and autograd).
    #[test]
    fn matches_candle_reference_conv() {
        // (n, c, h, w, o, k, stride, padding, dilation, groups)
        let cases = [
            (2, 3, 9, 7, 4, 3, 1, 1, 1, 1),
            (2, 4, 9, 9, 4, 3, 1, 2, 2, 1),
            (1, 2, 4, 5, 3, 5, 1, 2, 1, 1),
            // The direct kernels (few channels, stride 1, no padding): LeNet's shapes, with
            // output widths of 16 lanes and more plus a tail.
            (2, 3, 9, 70, 6, 5, 1, 0, 1, 1),
            (3, 6, 7, 90, 16, 5, 1, 0, 1, 1),
            (1, 2, 5, 66, 7, 3, 1, 0, 1, 1),
            (1, 4, 8, 8, 6, 3, 2, 1, 1, 2),
            (3, 8, 7, 9, 8, 3, 1, 1, 1, 8),
            (2, 6, 11, 10, 4, 5, 1, 0, 1, 1),
            (2, 8, 6, 6, 16, 1, 1, 0, 1, 4),
            (1, 4, 10, 10, 4, 3, 2, 2, 2, 1),
            (2, 4, 5, 5, 8, 1, 2, 0, 1, 1),
            (1, 3, 13, 13, 5, 7, 3, 3, 1, 1),
            // The implicit-GEMM kernels (stride 1, 16k channels per group): 3x3 with padding
            // 1 and 0, 5x5 with 2 (400 taps: a pair tail after the blocks of 6), odd sizes, two
            // groups, batch 1, 48 output channels (a one-vector tail in the weight gradient),
            // and a map of one grid tile or less.
            (2, 16, 9, 11, 32, 3, 1, 1, 1, 1),
            (1, 32, 7, 5, 16, 3, 1, 0, 1, 1),
            (3, 16, 8, 13, 48, 5, 1, 2, 1, 1),
            (2, 64, 6, 7, 32, 3, 1, 1, 1, 2),
            (2, 16, 3, 3, 16, 3, 1, 1, 1, 1),
            // 80 outputs: a four-vector weight-gradient tile and a one-vector tail.
            (2, 16, 6, 9, 80, 3, 1, 1, 1, 1),
            // Winograd: padding 0 and 2 (the input gradient's 2 and 0), odd maps (half tiles
            // at the right and bottom), a 1x1 output.
            (2, 5, 7, 10, 6, 3, 1, 0, 1, 1),
            (1, 4, 5, 6, 3, 3, 1, 2, 1, 1),
            (2, 3, 3, 3, 2, 3, 1, 0, 1, 1),
            // RGB stems (3 input channels: an odd reduction, a single-tap tail in the weight
            // gradient; the input gradient on im2col): 7x7 stride 2 padding 3, and 3x3.
            (2, 3, 23, 21, 16, 7, 2, 3, 1, 1),
            (2, 3, 12, 11, 32, 3, 1, 1, 1, 1),
            // Stride 2 (forward and weight gradient over the input's phases): 3x3 with
            // padding 1, odd and even sizes, two groups, and 5x5 with padding 2.
            (1, 16, 21, 23, 16, 3, 2, 1, 1, 1),
            (2, 32, 20, 22, 32, 3, 2, 1, 1, 2),
            (1, 16, 21, 21, 16, 5, 2, 2, 1, 1),
            // Depthwise (one input channel per group): stride 1 and 2, multiplier 2, 5x5,
            // dilation 2, stride 3.
            (2, 12, 10, 9, 12, 3, 1, 1, 1, 12),
            (2, 8, 11, 13, 8, 3, 2, 1, 1, 8),
            (1, 4, 9, 9, 8, 5, 2, 2, 1, 4),
            (2, 6, 12, 11, 6, 3, 1, 2, 2, 6),
            (1, 5, 9, 12, 5, 3, 3, 0, 1, 5),
        ];
        // Each case on the ladder's plan, then with the implicit kernels wherever they can run,
        // in their AVX-512 and AVX2 builds (on a CPU without AVX-512, the AVX2 build twice),
        // then with the Winograd kernels wherever they can.
        let plans: [fn(&mut dyn FnMut()); 4] = [
            |f| f(),
            |f| plan::with_forced(plan::Algo::Winograd, f),
            |f| plan::with_forced(plan::Algo::Implicit, f),
            |f| crate::ops::isa::with_cap(crate::ops::isa::Level::Avx2, || plan::with_forced(plan::Algo::Implicit, f)),
        ];
        for (i, &(n, c, h, w, o, k, stride, padding, dilation, groups)) in cases.iter().enumerate() {
            for run_on in plans {
                run_on(&mut || {
                    let p = ConvParams { stride, padding, dilation, groups };
                    let x = Var::from_tensor(&seeded(&[n, c, h, w], i as u64)).unwrap();
                    let wt = Var::from_tensor(&seeded(&[o, c / groups, k, k], 100 + i as u64)).unwrap();
                    let probe = seeded(&[n, o, p.out_size(h, k).unwrap(), p.out_size(w, k).unwrap()], 7);

                    let ours = conv2d(&x, &wt, p).unwrap();
                    let reference = x.conv2d(&wt, padding, stride, dilation, groups).unwrap();
                    assert!(max_rel_diff(&ours, &reference) < 1e-4, "forward, case {i}");

                    let g_ours = (ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                    let g_ref = (reference * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                    for (name, v) in [("input", &x), ("weight", &wt)] {
                        let (a, b) = (g_ours.get(v).unwrap(), g_ref.get(v).unwrap());
                        assert!(max_rel_diff(a, b) < 1e-4, "{name} gradient, case {i}");
                    }
                });
            }
        }
    }

    /// The image (a plain tensor, not a Var) gets no gradient: the input-grad pass is skipped.
    #[test]
    fn no_input_gradient_for_untracked_input() {
        let x = seeded(&[2, 3, 6, 6], 1);
        let wt = Var::from_tensor(&seeded(&[4, 3, 3, 3], 2)).unwrap();
        let grads = conv2d(&x, &wt, ConvParams::default()).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&x).is_none());
        assert_eq!(grads.get(&wt).unwrap().dims(), &[4, 3, 3, 3]);
    }

    /// A grouped conv equals a dense conv whose weight is block-diagonal over the groups, in
    /// its output and both gradients (the dense weight's gradient restricted to the blocks).
    #[test]
    fn grouped_conv_equals_block_diagonal_dense_conv() {
        let (n, c, h, w, k) = (2, 64, 6, 5, 3);
        for groups in [1, 2, 4, 32, 64] {
            let cg = c / groups;
            let wg = seeded(&[c, cg, k, k], groups as u64);
            let wg_v = wg.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mut dense = vec![0f32; c * c * k * k];
            for o in 0..c {
                let g = o / cg;
                for i in 0..cg {
                    for t in 0..k * k {
                        dense[((o * c) + g * cg + i) * k * k + t] = wg_v[(o * cg + i) * k * k + t];
                    }
                }
            }
            let x = Var::from_tensor(&seeded(&[n, c, h, w], 3)).unwrap();
            let wg = Var::from_tensor(&wg).unwrap();
            let wd = Var::from_vec(dense, (c, c, k, k), &Device::Cpu).unwrap();
            let p = ConvParams { stride: 2, padding: 1, dilation: 1, groups };
            let probe = seeded(&[n, c, 3, 3], 4);
            let yg = conv2d(&x, &wg, p).unwrap();
            let yd = conv2d(&x, &wd, ConvParams { groups: 1, ..p }).unwrap();
            assert!(max_rel_diff(&yg, &yd) < 1e-4, "forward, groups {groups}");
            let gg = (yg * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let gd = (yd * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(max_rel_diff(gg.get(&x).unwrap(), gd.get(&x).unwrap()) < 1e-4, "input grad, groups {groups}");
            let dwd = gd.get(&wd).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mut blocks = vec![0f32; c * cg * k * k];
            for o in 0..c {
                let g = o / cg;
                for i in 0..cg {
                    for t in 0..k * k {
                        blocks[(o * cg + i) * k * k + t] = dwd[((o * c) + g * cg + i) * k * k + t];
                    }
                }
            }
            let blocks = Tensor::from_vec(blocks, (c, cg, k, k), &Device::Cpu).unwrap();
            assert!(max_rel_diff(gg.get(&wg).unwrap(), &blocks) < 1e-4, "weight grad, groups {groups}");
        }
    }

    /// The composed grouped conv of `generic` (the GPU path) equals the CPU kernels.
    #[test]
    fn grouped_conv_matches_the_cpu_kernels() {
        // (n, c, h, w, o, k, stride, padding, dilation, groups)
        let cases = [
            (2, 8, 7, 7, 8, 3, 1, 1, 1, 4),
            (1, 6, 9, 8, 12, 3, 2, 1, 1, 3),
            (2, 8, 6, 6, 8, 3, 1, 1, 1, 8),
            (2, 4, 8, 8, 4, 3, 1, 2, 2, 2),
            (2, 3, 7, 6, 5, 5, 2, 0, 1, 1),
            (1, 8, 5, 5, 16, 1, 1, 0, 1, 4),
        ];
        for (i, (n, c, h, w, o, k, stride, padding, dilation, groups)) in cases.into_iter().enumerate() {
            let p = ConvParams { stride, padding, dilation, groups };
            let x = Var::from_tensor(&seeded(&[n, c, h, w], i as u64)).unwrap();
            let wt = Var::from_tensor(&seeded(&[o, c / groups, k, k], 50 + i as u64)).unwrap();
            let ours = crate::ops::generic::conv2d(&x, &wt, p).unwrap();
            let cpu = conv2d(&x, &wt, p).unwrap();
            crate::ops::testing::assert_close(&ours, &cpu, &format!("case {i} forward"));
            let probe = seeded(ours.dims(), 100 + i as u64);
            let g1 = (ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (cpu * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            crate::ops::testing::assert_close(
                g1.get(&x).unwrap(),
                g2.get(&x).unwrap(),
                &format!("case {i} input gradient"),
            );
            crate::ops::testing::assert_close(
                g1.get(&wt).unwrap(),
                g2.get(&wt).unwrap(),
                &format!("case {i} weight gradient"),
            );
        }
    }
}
