//! Depthwise convolution: one input channel per group (MobileNet's 3x3s, `depthwise_conv`,
//! a ResNeXt swept to groups = channels), `og` output channels per input channel.
//!
//! The GEMM paths run such a conv as one tiny matrix product per channel over an im2col copy
//! nine times the input; these kernels read each channel's zero-padded plane directly, split
//! into its `stride x stride` phases (one phase at stride 1), so that every tap of the filter
//! reads one contiguous run of a phase for the whole output plane: the plane is computed over
//! the phases' full width (a few columns computed and dropped) and each tap is one long
//! multiply-add loop the compiler vectorises per SIMD build (`simd_dispatch`). The input
//! gradient scatters the same runs back; the weight gradient sums each tap's products in 16
//! f32 lanes per plane and over planes in f64.

use std::mem::MaybeUninit;

use super::gemm::with_scratch;
use crate::ops::isa::Isa;
use crate::ops::{par_chunks_written, par_chunks_zeroed, write_slice};

/// The sizes the kernels need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Dims {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// Output channels per input channel (the depth multiplier).
    pub og: usize,
    pub kh: usize,
    pub kw: usize,
    pub oh: usize,
    pub ow: usize,
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
}

impl Dims {
    /// Rows and columns of each of the `stride x stride` phases of the zero-padded input
    /// plane (phase `(a, b)` holds its rows `a, a + s, ...` and columns `b, b + s, ...`).
    fn phase_hw(&self) -> (usize, usize) {
        let s = self.stride;
        ((self.h + 2 * self.padding).div_ceil(s), (self.w + 2 * self.padding).div_ceil(s))
    }
    /// A phase's length, with one row of zeros more: the rows of a tap's window over whole
    /// phase rows run past the last by less than a row.
    fn phase_len(&self) -> usize {
        let (ph, pw) = self.phase_hw();
        (ph + 1) * pw
    }
    fn phases_len(&self) -> usize {
        self.stride * self.stride * self.phase_len()
    }
    /// Output rows computed over the phases' full width (`oh x pw`, the columns from `ow` on
    /// computed and dropped): every tap is then one contiguous run.
    fn wide_len(&self) -> usize {
        self.oh * self.phase_hw().1
    }
    /// Where tap `(i, j)`'s window starts in the phases: its phase, then its offset in it.
    fn tap(&self, i: usize, j: usize) -> usize {
        let (s, pw) = (self.stride, self.phase_hw().1);
        let (ri, rj) = (i * self.dilation, j * self.dilation);
        ((ri % s) * s + rj % s) * self.phase_len() + (ri / s) * pw + rj / s
    }
    /// The index in the phases of padded pixel `(py, px)`.
    fn phase_index(&self, py: usize, px: usize) -> usize {
        let (s, pw) = (self.stride, self.phase_hw().1);
        ((py % s) * s + px % s) * self.phase_len() + (py / s) * pw + px / s
    }
    fn taps(&self) -> usize {
        self.kh * self.kw
    }
    fn out_plane(&self) -> usize {
        self.oh * self.ow
    }
}

/// Whether a conv of `c` input channels in `groups` groups is depthwise.
pub(super) fn applies(c: usize, groups: usize) -> bool {
    groups == c
}

/// Where input row `y`'s pixels go in the phases: for each column phase `b`, the first
/// column `x0` with `(x0 + p) % s == b` and the index of its pixel; the next pixels of that
/// phase are `s` columns on in the row and one further in the phase.
fn row_runs(d: &Dims, y: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    let (s, p) = (d.stride, d.padding);
    (0..s).filter_map(move |b| {
        let x0 = (b + s - p % s) % s;
        (x0 < d.w).then(|| (x0, d.phase_index(y + p, x0 + p)))
    })
}

/// `plane (h, w)` zero-padded and split into its phases.
fn split(plane: &[f32], d: &Dims, phases: &mut [f32]) {
    phases.fill(0.0);
    for (y, row) in plane.chunks_exact(d.w).enumerate() {
        if d.stride == 1 {
            let at = d.phase_index(y + d.padding, d.padding);
            phases[at..at + d.w].copy_from_slice(row);
            continue;
        }
        for (x0, at) in row_runs(d, y) {
            for (dst, &v) in phases[at..].iter_mut().zip(row[x0..].iter().step_by(d.stride)) {
                *dst = v;
            }
        }
    }
}

/// The input pixels' values back out of the phases (the padding dropped).
fn merge(phases: &[f32], d: &Dims, plane: &mut [f32]) {
    for (y, row) in plane.chunks_exact_mut(d.w).enumerate() {
        if d.stride == 1 {
            let at = d.phase_index(y + d.padding, d.padding);
            row.copy_from_slice(&phases[at..at + d.w]);
            continue;
        }
        for (x0, at) in row_runs(d, y) {
            for (v, &src) in row[x0..].iter_mut().step_by(d.stride).zip(&phases[at..]) {
                *v = src;
            }
        }
    }
}

/// One output plane over the phases' width: `wide[y][x] = sum over taps (i, j) in order of
/// w[i][j] * phases[tap(i, j) + y pw + x]`.
#[inline(always)]
fn forward_plane_body(phases: &[f32], w: &[f32], d: Dims, wide: &mut [f32]) {
    wide.fill(0.0);
    for i in 0..d.kh {
        for j in 0..d.kw {
            let (wv, src) = (w[i * d.kw + j], &phases[d.tap(i, j)..]);
            for (o, s) in wide.iter_mut().zip(src) {
                *o += wv * s;
            }
        }
    }
}

simd_dispatch!(
    /// [`forward_plane_body`] for this CPU.
    fn forward_plane(phases: &[f32], w: &[f32], d: Dims, wide: &mut [f32]) -> () = forward_plane_body
);

/// Forward: `x (n, c, h, w)`, `wt (c og, 1, kh, kw)` -> `(n, c og, oh, ow)`.
pub(super) fn forward(isa: Isa, x: &[f32], wt: &[f32], d: &Dims) -> Vec<f32> {
    let d = *d;
    let (per_channel, pw) = (d.og * d.out_plane(), d.phase_hw().1);
    let per_channel_out = |nc: usize, out_c: &mut [MaybeUninit<f32>]| {
        let ic = nc % d.c;
        with_scratch(d.phases_len() + d.wide_len(), |scratch| {
            let (phases, wide) = scratch.split_at_mut(d.phases_len());
            assert!(wide.len() >= d.out_plane() / d.ow * pw, "depthwise: the wide plane has a row per output row");
            split(&x[nc * d.h * d.w..(nc + 1) * d.h * d.w], &d, phases);
            for (m, out_m) in out_c.chunks_exact_mut(d.out_plane()).enumerate() {
                let oc = ic * d.og + m;
                forward_plane(isa, phases, &wt[oc * d.taps()..(oc + 1) * d.taps()], d, wide);
                for (row, wide_row) in out_m.chunks_exact_mut(d.ow).zip(wide.chunks_exact(pw)) {
                    write_slice(row, &wide_row[..d.ow]);
                }
            }
        });
    };
    // SAFETY: a chunk is og planes of out_plane = oh rows of ow, and the wide plane has a row
    // for each (asserted): every row is written.
    unsafe { par_chunks_written(d.n * d.c * per_channel, per_channel, per_channel_out) }
}

/// `dy (oh, ow)` into `wide (oh, pw)`, zeros in the columns past `ow` (so they add nothing).
fn widen(dy: &[f32], d: &Dims, wide: &mut [f32]) {
    let pw = d.phase_hw().1;
    for (row, wide_row) in dy.chunks_exact(d.ow).zip(wide.chunks_exact_mut(pw)) {
        wide_row[..d.ow].copy_from_slice(row);
        wide_row[d.ow..].fill(0.0);
    }
}

/// One output plane's gradient scattered into the phases of the input's:
/// `dphases[tap(i, j) + k] += w[i][j] * wide_dy[k]`.
#[inline(always)]
fn input_grad_plane_body(wide_dy: &[f32], w: &[f32], d: Dims, dphases: &mut [f32]) {
    for i in 0..d.kh {
        for j in 0..d.kw {
            let (wv, dst) = (w[i * d.kw + j], &mut dphases[d.tap(i, j)..]);
            for (o, g) in dst.iter_mut().zip(wide_dy) {
                *o += wv * g;
            }
        }
    }
}

simd_dispatch!(
    /// [`input_grad_plane_body`] for this CPU.
    fn input_grad_plane(wide_dy: &[f32], w: &[f32], d: Dims, dphases: &mut [f32]) -> () = input_grad_plane_body
);

/// Input gradient: `dy (n, c og, oh, ow)`, `wt` -> `dx (n, c, h, w)`.
pub(super) fn input_grad(isa: Isa, dy: &[f32], wt: &[f32], d: &Dims) -> Vec<f32> {
    let d = *d;
    let (plane, per_channel) = (d.h * d.w, d.og * d.out_plane());
    par_chunks_zeroed(d.n * d.c * plane, plane, |nc, dx_c| {
        let ic = nc % d.c;
        with_scratch(d.phases_len() + d.wide_len(), |scratch| {
            let (dphases, wide) = scratch.split_at_mut(d.phases_len());
            dphases.fill(0.0);
            let dy_c = &dy[nc * per_channel..(nc + 1) * per_channel];
            for (m, dy_m) in dy_c.chunks_exact(d.out_plane()).enumerate() {
                let oc = ic * d.og + m;
                widen(dy_m, &d, wide);
                input_grad_plane(isa, wide, &wt[oc * d.taps()..(oc + 1) * d.taps()], d, dphases);
            }
            merge(dphases, &d, dx_c);
        });
    })
}

/// `sum(a[k] * b[k])` over `a`, in 16 f32 lanes folded in f64.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f64 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b[..a.len()].chunks_exact(LANES));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (xs, ys) in ac.zip(bc) {
        for j in 0..LANES {
            acc[j] += xs[j] * ys[j];
        }
    }
    acc.iter().map(|&v| v as f64).sum::<f64>() + ar.iter().zip(br).map(|(&x, &y)| (x * y) as f64).sum::<f64>()
}

/// One output plane's contribution to its filter's gradient: `dw[i][j] += sum over k of
/// wide_dy[k] * phases[tap(i, j) + k]` (the widened columns are zeros).
#[inline(always)]
fn weight_grad_plane_body(phases: &[f32], wide_dy: &[f32], d: Dims, dw: &mut [f64]) {
    for i in 0..d.kh {
        for j in 0..d.kw {
            dw[i * d.kw + j] += dot(wide_dy, &phases[d.tap(i, j)..]);
        }
    }
}

simd_dispatch!(
    /// [`weight_grad_plane_body`] for this CPU.
    fn weight_grad_plane(phases: &[f32], wide_dy: &[f32], d: Dims, dw: &mut [f64]) -> () = weight_grad_plane_body
);

/// Weight gradient: `x`, `dy (n, c og, oh, ow)` -> `dw (c og, 1, kh, kw)`, each filter summed
/// over the batch in f64.
pub(super) fn weight_grad(isa: Isa, x: &[f32], dy: &[f32], d: &Dims) -> Vec<f32> {
    let d = *d;
    let (plane, o) = (d.h * d.w, d.c * d.og);
    par_chunks_zeroed(o * d.taps(), d.taps(), |oc, dw_o| {
        let ic = oc / d.og;
        let mut acc = vec![0f64; d.taps()];
        with_scratch(d.phases_len() + d.wide_len(), |scratch| {
            let (phases, wide) = scratch.split_at_mut(d.phases_len());
            for b in 0..d.n {
                split(&x[(b * d.c + ic) * plane..(b * d.c + ic + 1) * plane], &d, phases);
                widen(&dy[(b * o + oc) * d.out_plane()..(b * o + oc + 1) * d.out_plane()], &d, wide);
                weight_grad_plane(isa, phases, wide, d, &mut acc);
            }
        });
        for (g, a) in dw_o.iter_mut().zip(acc) {
            *g = a as f32;
        }
    })
}
