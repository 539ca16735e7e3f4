//! Implicit-GEMM convolution for dilation 1 (ResNet's and ResNeXt's 3x3 convs), on AVX-512
//! and AVX2: the passes multiply straight out of a zero-padded copy of the input, with no
//! im2col matrix and no GEMM packing of it. Stride 1: forward, input and weight gradients;
//! stride 2: forward and weight gradient (the input gradient stays on im2col + GEMM +
//! col2im). Stride-1 "same" forwards and input gradients, and stride-2 forwards on even
//! planes, skip even the padded copy ([`masked`]); this file is the padded route, which
//! every other pass takes ([`route`]).
//!
//! Why by hand: im2col + `gemm` wrote a 9x copy of every activation, and `gemm` then packed
//! that copy again; together a quarter of a ResNet18 step (perf), with the multiply-adds
//! themselves at the GEMM's peak. No BLAS-like crate takes an implicit (shifted-window)
//! operand, so the blocking and the two register tiles below are ours.
//!
//! The trick: pad each input plane to `hp x wp` and compute the output on the padded width,
//! `oh x wp` ("the grid", its last `wp - ow` columns garbage, cropped afterwards). Then the
//! input under tap `(ky, kx)` for grid pixel `q` is `plane[q + ky * wp + kx]`: every tap is
//! the same contiguous run, shifted. So
//! - forward: `grid[o][q] = sum over (c, ky, kx) of w[o][c][ky][kx] * xpad[c][q + ky*wp + kx]`,
//!   16 grid pixels per vector load, weights broadcast;
//! - input gradient: the same with `dy` padded by `k - 1 - p` and the weights flipped and
//!   transposed (a stride-1 conv's input gradient is a full correlation);
//! - weight gradient: `dw[o][c][ky][kx] = sum over q of dy[o][q] * xpad[c][q + ky*wp + kx]`,
//!   16 output channels per vector load from `dy` transposed to `(q, o)` (zero on garbage
//!   columns), input values broadcast.
//!
//! Stride 2: the padded plane is split into its 4 phases (even/odd rows x even/odd columns);
//! tap `(ky, kx)` reads phase `(ky % 2, kx % 2)` shifted by `(ky / 2, kx / 2)`, again one
//! contiguous run over a grid of the phase's width (see [`Padded`]).
//!
//! All three keep their accumulators in registers over a block of the reduction that stays
//! in L1/L2 (channel chunks for the weights, pixel chunks for the weight gradient).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::Pass;
use super::gemm::transpose;
use crate::ops::isa::{Avx2, Avx512};
use crate::ops::{par_chunks_written, write_slice};

/// The SIMD build the implicit kernels run, with the proof the CPU has it: AVX-512 (16-lane
/// tiles), or AVX2 + FMA (the same panels summed in 8-lane sub-tiles, and the weight
/// gradient's tile as 8-lane halves, for CPUs without AVX-512).
#[derive(Debug, Clone, Copy)]
pub(super) enum Cpu {
    Avx512(Avx512),
    Avx2(Avx2),
}

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

mod masked;
mod panel;

use panel::{Panel, Walk};

/// How a pass of these kernels meets the window's borders: `"masked"` (stride-1 "same"
/// forwards and input gradients, [`masked`]: the input as it is, out-of-plane
/// lanes masked off), `"folded"` (the same with the batch's small planes run as one,
/// [`masked::folds`]), `"phases"` and `"folded phases"` (the same for stride-2 forwards, over
/// the input split into its four phases) or `"padded"` (a zero-padded copy of the input and
/// a grid cropped afterwards).
pub(super) fn route(pass: Pass, d: &Dims) -> &'static str {
    match (masked::takes(pass, d), d.stride, masked::folds(d)) {
        (false, ..) => "padded",
        (true, 1, false) => "masked",
        (true, 1, true) => "folded",
        (true, _, false) => "phases",
        (true, _, true) => "folded phases",
    }
}

/// 16-lane vectors of grid pixels per full forward tile: 3 vectors by [`NR`] outputs is 24
/// accumulators, 3 loads and 8 broadcasts per 24 FMAs (2 vectors, 16 accumulators, measured
/// 7-10 % slower on ResNet18's 56x56 and 28x28 forwards on an Intel Xeon). A grid's last
/// tile takes 1 or 2 vectors, so grids round up to whole vectors only.
const NV: usize = 3;
/// Grid pixels per full forward tile.
const MR: usize = 16 * NV;
/// Output channels per forward tile: 8 broadcasts against NV vectors, 8 NV accumulators.
const NR: usize = 8;
/// Products each forward accumulator sums before it is added to the output: a reduction of
/// `k` products becomes `k / SUM_BLOCK` chains, and a chain's rounding error grows with its
/// length (ResNet18's layer1 reduces 576 products, layer4 4,608). One chain made this
/// kernel's forward about twice as far from float64 as PyTorch's on layer1; blocks of 32
/// halved that but cost 15 % of layer1's forward in the extra loads, adds and stores; 128
/// measures as fast as one chain (`examples/bench convs`, docs/BENCHMARKS.md).
const SUM_BLOCK: usize = 128;
/// Taps per weight-gradient tile: 6 broadcasts against up to 4 vectors of output channels,
/// 24 accumulators (each `dy` row loaded serves 6 taps); the last few taps go in pairs.
const NK: usize = 6;
/// Target size of the weights one channel chunk of the forward sweeps (floats): 256 KiB, a
/// quarter of this machine's L2, so they stay cached across the chunk's pixel tiles.
const WEIGHT_CHUNK: usize = 64 * 1024;
/// Target size of one pixel chunk of `dy` transposed, for the weight gradient, and of one
/// weight-gradient task's rows (floats).
const DY_CHUNK: usize = 64 * 1024;

/// One dilation-1 convolution, per group sizes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Dims {
    pub n: usize,
    pub stride: usize,
    pub groups: usize,
    /// Input channels per group.
    pub cg: usize,
    /// Output channels per group.
    pub og: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub ph: usize,
    pub pw: usize,
}

impl Dims {
    fn oh(&self) -> usize {
        (self.h + 2 * self.ph - self.kh) / self.stride + 1
    }
    fn ow(&self) -> usize {
        (self.w + 2 * self.pw - self.kw) / self.stride + 1
    }
    fn taps(&self) -> usize {
        self.kh * self.kw
    }
}

/// Output maps smaller than this (pixels) stay with im2col + GEMM on the ladder: on ResNet18's
/// 7x7 stage the grid's padded columns and tile rounding waste a third of these kernels' work
/// (measured on a Zen 5: 12 + 36 ms against 12 + 24 ms per conv); from 14x14 up they win.
/// Tuning times them on every map.
const MIN_PIXELS: usize = 100;

/// Whether these kernels can take the convolution's forward and weight gradient: stride 1 or
/// 2, dilation 1, a real window, output channels per group in whole vectors (any number of
/// input channels: an RGB stem too) and padding no wider than the window (the plan also asks
/// for an AVX-512 CPU, which the kernels take as proof). The input gradient needs more,
/// [`input_grad_applies`].
pub(super) fn applies(dilation: usize, d: &Dims) -> bool {
    matches!(d.stride, 1 | 2) && dilation == 1 && d.taps() > 1 && d.og.is_multiple_of(16) && d.ph < d.kh && d.pw < d.kw
}

/// Whether [`input_grad`] takes a convolution [`applies`] accepts: stride 1, and input
/// channels per group (its outputs) in whole vectors.
pub(super) fn input_grad_applies(d: &Dims) -> bool {
    d.stride == 1 && d.cg.is_multiple_of(16)
}

/// Whether the ladder picks these kernels for `pass` where they apply: input channels per
/// group in whole vectors (on an RGB stem im2col + GEMM measured faster, 25 against 42 ms
/// forward, on an Intel Xeon; tuning still times them there), and maps of at least
/// [`MIN_PIXELS`], or smaller ones the masked route folds (no lanes wasted, [`masked::folds`]).
pub(super) fn worthwhile(pass: Pass, d: &Dims) -> bool {
    let folded = masked::takes(pass, d) && masked::folds(d);
    (d.oh() * d.ow() >= MIN_PIXELS || folded) && d.cg.is_multiple_of(16)
}

/// A batch of zero-padded planes, each split into its `s x s` stride phases: per sample and
/// channel, phase `(ry, rx)` is the `hq x wq` plane `phase[i][j] = padded[s*i + ry][s*j + rx]`
/// (for stride 1, the padded plane itself). A stride-`s` window then reads, for tap
/// `(ky, kx)`, phase `(ky % s, kx % s)` shifted by `(ky / s, kx / s)`: every tap is again one
/// contiguous run over the output grid. Each sample is followed by zeroed slack so that tiles
/// running past the last grid pixel read zeros, not past the buffer.
struct Padded {
    data: Vec<f32>,
    ch: usize,
    s: usize,
    hq: usize,
    wq: usize,
    /// Floats from one sample to the next.
    sample: usize,
}

impl Padded {
    fn plane(&self) -> usize {
        self.hq * self.wq
    }
    /// Floats from one channel to the next (its `s * s` phases).
    fn channel(&self) -> usize {
        self.s * self.s * self.plane()
    }
}

/// Floats per channel of an output grid of `rows` rows of width `wq`, rounded up to whole
/// vectors.
fn grid_len(rows: usize, wq: usize) -> usize {
    (rows * wq).div_ceil(16) * 16
}

/// Pads `src (n, ch, h, w)` by `(ph, pw)` on each side and splits it into stride-`s` phases,
/// with slack for an output grid of `rows` rows under a `kh x kw` window.
fn pad(
    src: &[f32],
    n: usize,
    ch: usize,
    (h, w): (usize, usize),
    (ph, pw): (usize, usize),
    s: usize,
    (rows, kh, kw): (usize, usize, usize),
) -> Padded {
    let (hq, wq) = ((h + 2 * ph).div_ceil(s), (w + 2 * pw).div_ceil(s));
    let plane = hq * wq;
    // The furthest read: last channel and phase, last tap, last grid pixel of the last tile.
    let slack = grid_len(rows, wq) + kh * wq + kw + MR;
    let sample = ch * s * s * plane + slack;
    let fill = |i: usize, dst: &mut [MaybeUninit<f32>]| {
        for c in 0..ch {
            let src_c = &src[(i * ch + c) * h * w..(i * ch + c + 1) * h * w];
            for (ry, rx) in (0..s).flat_map(|ry| (0..s).map(move |rx| (ry, rx))) {
                let base = (c * s * s + ry * s + rx) * plane;
                for qy in 0..hq {
                    let out = &mut dst[base + qy * wq..base + (qy + 1) * wq];
                    let Some(y) = (s * qy + ry).checked_sub(ph).filter(|&y| y < h) else {
                        zero(out);
                        continue;
                    };
                    let row = &src_c[y * w..(y + 1) * w];
                    if s == 1 {
                        zero(&mut out[..pw]);
                        write_slice(&mut out[pw..pw + w], row);
                        zero(&mut out[pw + w..]);
                        continue;
                    }
                    // Columns qx whose source x = s qx + rx - pw lies in the row: [lo, hi). (Per
                    // pixel with bounds checks, this copy drew about 8 % of perf's samples in
                    // ResNet18's l2 3x3/2 forward and weight gradient on this route.)
                    let lo = pw.saturating_sub(rx).div_ceil(s).min(wq);
                    let hi = (w + pw).saturating_sub(rx).div_ceil(s).clamp(lo, wq);
                    zero(&mut out[..lo]);
                    let src = row[(s * lo + rx).saturating_sub(pw).min(w)..].iter().step_by(s);
                    for (v, &x) in out[lo..hi].iter_mut().zip(src) {
                        v.write(x);
                    }
                    zero(&mut out[hi..]);
                }
            }
        }
        zero(&mut dst[ch * s * s * plane..]);
    };
    // SAFETY: per sample, every row of every channel's phases is written (copied or zero),
    // and the slack after them zeroed.
    let data = unsafe { par_chunks_written(n * sample, sample, fill) };
    Padded { data, ch, s, hq, wq, sample }
}

/// `off[c * taps + ky * kw + kx]`: where each reduction index reads, relative to the group's
/// first channel and the grid pixel: channel `c`, phase `(ky % s, kx % s)`, shifted by
/// `(ky / s, kx / s)`.
fn offsets(cg: usize, p: &Padded, kh: usize, kw: usize) -> Vec<usize> {
    let s = p.s;
    let mut off = Vec::with_capacity(cg * kh * kw);
    for c in 0..cg {
        for ky in 0..kh {
            for kx in 0..kw {
                off.push(c * p.channel() + ((ky % s) * s + kx % s) * p.plane() + (ky / s) * p.wq + kx / s);
            }
        }
    }
    off
}

/// Weights packed for the forward tile: per group, per block of [`NR`] outputs, the
/// reduction index `kk` major and the block's outputs minor. `at(grp, out, kk)` reads the
/// weight of group-local output `out` at reduction index `kk`.
fn pack(groups: usize, outs: usize, k: usize, at: impl Fn(usize, usize, usize) -> f32 + Sync) -> Vec<f32> {
    let mut packed = vec![0f32; groups * outs * k];
    packed.par_chunks_mut(NR * k).enumerate().for_each(|(blk, dst)| {
        let (grp, o0) = (blk / (outs / NR), blk % (outs / NR) * NR);
        for kk in 0..k {
            for i in 0..NR {
                dst[kk * NR + i] = at(grp, o0 + i, kk);
            }
        }
    });
    packed
}

/// `grid (n, groups * outs, lr)` of the window `kh x kw` over `x`, `rows` output rows: per
/// group, `grid[o][q] = sum over kk of packed[o][kk] * x[off[kk] + q]`.
fn forward_grid(
    cpu: Cpu,
    x: &Padded,
    groups: usize,
    outs: usize,
    (kh, kw): (usize, usize),
    rows: usize,
    packed: &[f32],
) -> (Vec<f32>, usize) {
    let n = x.data.len() / x.sample;
    let cg = x.ch / groups;
    let taps = kh * kw;
    let k = cg * taps;
    let lr = grid_len(rows, x.wq);
    let off = offsets(cg, x, kh, kw);
    let chunk = (WEIGHT_CHUNK / (taps * outs)).clamp(1, cg);
    let per_sample = groups * outs * lr;
    // A few samples per task: each channel chunk's weights serve them all while cached.
    let slice = n.div_ceil(2 * rayon::current_num_threads()).max(1);
    let tiles = |s: usize, grid_s: &mut [MaybeUninit<f32>]| {
        let mut panel = Panel::new(SUM_BLOCK);
        for grp in 0..groups {
            for c0 in (0..cg).step_by(chunk) {
                let (kk0, kk1) = (c0 * taps, (c0 + chunk).min(cg) * taps);
                for (j, grid_n) in grid_s.chunks_mut(per_sample).enumerate() {
                    let xs = &x.data[(s * slice + j) * x.sample + grp * cg * x.channel()..];
                    for q0 in (0..lr).step_by(MR) {
                        // Whole vectors left in the grid (lr is a multiple of 16).
                        let nv = ((lr - q0) / 16).min(NV);
                        let block = |ob: usize| grp * outs / NR + ob;
                        for b0 in (kk0..kk1).step_by(SUM_BLOCK) {
                            let b1 = (b0 + SUM_BLOCK).min(kk1);
                            panel.gather_offsets(&xs[q0..], &off[b0..b1], nv);
                            for ob in 0..outs / NR {
                                let w = &packed[(block(ob) * k + b0) * NR..][..(b1 - b0) * NR];
                                let out = &mut grid_n[block(ob) * NR * lr..][..NR * lr];
                                panel.sum(cpu, (w, 0, &Walk::packed(b1 - b0)), (out, lr, q0), nv, b0 > 0);
                            }
                        }
                    }
                }
            }
        }
    };
    // SAFETY: the first channel chunk (c0 == 0) stores every tile of every group, outs / NR
    // blocks of NR rows by runs of 16 nv floats covering [0, lr): each sample's
    // groups * outs * lr floats, before any tile adds to them.
    let grid = unsafe { par_chunks_written(n * per_sample, slice * per_sample, tiles) };
    (grid, lr)
}

/// `out (n, ch, rows, cols)` from the grid `(n, ch, lr)` of row width `wp`.
fn crop(grid: &[f32], n: usize, ch: usize, lr: usize, wp: usize, (rows, cols): (usize, usize)) -> Vec<f32> {
    let planes = |i: usize, out_n: &mut [MaybeUninit<f32>]| {
        for (c, plane) in out_n.chunks_mut(rows * cols).enumerate() {
            let src = &grid[(i * ch + c) * lr..];
            for y in 0..rows {
                write_slice(&mut plane[y * cols..(y + 1) * cols], &src[y * wp..y * wp + cols]);
            }
        }
    };
    // SAFETY: ch planes of rows x cols, every row written.
    unsafe { par_chunks_written(n * ch * rows * cols, ch * rows * cols, planes) }
}

/// Forward: `x (n, groups * cg, h, w)`, `wt (groups * og, cg, kh, kw)` -> `(n, groups * og, oh, ow)`.
pub(super) fn forward(cpu: Cpu, x: &[f32], wt: &[f32], d: &Dims) -> Vec<f32> {
    if masked::fits(d) {
        return masked::forward(cpu, x, wt, d);
    }
    let (taps, k) = (d.taps(), d.cg * d.taps());
    let xp = pad(x, d.n, d.groups * d.cg, (d.h, d.w), (d.ph, d.pw), d.stride, (d.oh(), d.kh, d.kw));
    let packed = pack(d.groups, d.og, k, |grp, o, kk| wt[(grp * d.og + o) * k + kk]);
    debug_assert_eq!(k % taps, 0);
    let (grid, lr) = forward_grid(cpu, &xp, d.groups, d.og, (d.kh, d.kw), d.oh(), &packed);
    crop(&grid, d.n, d.groups * d.og, lr, xp.wq, (d.oh(), d.ow()))
}

/// Input gradient of a stride-1 convolution: `dy (n, groups * og, oh, ow)` -> `dx (n,
/// groups * cg, h, w)`, the full correlation of `dy` with the flipped, transposed weights.
pub(super) fn input_grad(cpu: Cpu, dy: &[f32], wt: &[f32], d: &Dims) -> Vec<f32> {
    assert_eq!(d.stride, 1, "the implicit input gradient is for stride-1 convolutions");
    if masked::fits(d) {
        return masked::input_grad(cpu, dy, wt, d);
    }
    let (taps, kin) = (d.taps(), d.og * d.taps());
    let (qh, qw) = (d.kh - 1 - d.ph, d.kw - 1 - d.pw);
    let dyp = pad(dy, d.n, d.groups * d.og, (d.oh(), d.ow()), (qh, qw), 1, (d.h, d.kh, d.kw));
    // Reduction index kk = (o, ky', kx') of the flipped window; outputs are input channels.
    let packed = pack(d.groups, d.cg, kin, |grp, c, kk| {
        let (o, t) = (kk / taps, kk % taps);
        wt[((grp * d.og + o) * d.cg + c) * taps + (taps - 1 - t)]
    });
    let (grid, lr) = forward_grid(cpu, &dyp, d.groups, d.cg, (d.kh, d.kw), d.h, &packed);
    crop(&grid, d.n, d.groups * d.cg, lr, dyp.wq, (d.h, d.w))
}

/// Weight gradient: `x`, `dy` -> `dw (groups * og, cg, kh, kw)`.
///
/// Parallel over blocks of the reduction index `kk` (each task owns its rows of `dw`, so no
/// per-thread partial weights and a fixed summation order whatever the thread count). Each
/// task walks the batch's grid pixels in chunks of about [`DY_CHUNK`] floats of `dy`, its
/// rows of `dw` and the chunk staying in L2.
pub(super) fn weight_grad(cpu: Cpu, x: &[f32], dy: &[f32], d: &Dims) -> Vec<f32> {
    let (taps, o_all) = (d.taps(), d.groups * d.og);
    let k = d.cg * taps;
    let (oh, ow) = (d.oh(), d.ow());
    let xp = pad(x, d.n, d.groups * d.cg, (d.h, d.w), (d.ph, d.pw), d.stride, (oh, d.kh, d.kw));
    let wp = xp.wq;
    let lr = grid_len(oh, wp);
    let off = offsets(d.cg, &xp, d.kh, d.kw);
    // SAFETY: transpose_dy writes every row of its sample's grid.
    let dyt = unsafe {
        par_chunks_written(d.n * lr * o_all, lr * o_all, |n, dst| {
            transpose_dy(cpu, &dy[n * o_all * oh * ow..(n + 1) * o_all * oh * ow], o_all, (oh, ow), wp, dst);
        })
    };
    // Segments (sample, q0, q1) of the batch's grids, grouped into chunks.
    let q_chunk = (DY_CHUNK / o_all / MR).max(1) * MR;
    let mut chunks: Vec<Vec<(usize, usize, usize)>> = vec![Vec::new()];
    let mut filled = 0;
    for n in 0..d.n {
        for q0 in (0..lr).step_by(q_chunk) {
            let q1 = (q0 + q_chunk).min(lr);
            if filled > 0 && filled + q1 - q0 > q_chunk {
                chunks.push(Vec::new());
                filled = 0;
            }
            chunks.last_mut().expect("one chunk at least").push((n, q0, q1));
            filled += q1 - q0;
        }
    }
    // Rows of dw^T per task: a few tasks per thread at least, else about one L2's worth, in a
    // whole number of rounds over the threads (9 tasks on 2 threads left one running alone:
    // a tenth of ResNet18's 14x14 weight gradients).
    let threads = rayon::current_num_threads();
    let tasks = (4 * threads).max(k * d.og / DY_CHUNK).next_multiple_of(threads).min(k / NK).max(1);
    let rows = (k / NK).max(1).div_ceil(tasks) * NK;
    // dw transposed, per group: (groups, k, og).
    let mut dwt = vec![0f32; d.groups * k * d.og];
    let jobs: Vec<(usize, &mut [f32])> = dwt
        .chunks_mut(k * d.og)
        .enumerate()
        .flat_map(|(grp, g)| g.chunks_mut(rows * d.og).map(move |r| (grp, r)))
        .collect();
    jobs.into_par_iter().enumerate().for_each(|(j, (grp, dst))| {
        let kb0 = (j % k.div_ceil(rows)) * rows;
        for chunk in &chunks {
            let segs: Vec<Segment> = chunk
                .iter()
                .map(|&(n, q0, q1)| Segment {
                    x: xp.data[n * xp.sample + grp * d.cg * xp.channel() + q0..].as_ptr(),
                    dyt: dyt[(n * lr + q0) * o_all + grp * d.og..].as_ptr(),
                    len: q1 - q0,
                })
                .collect();
            let rows_here = dst.len() / d.og;
            let mut kb = 0;
            while kb < rows_here {
                // Blocks of NK taps, then pairs, then a last single tap (an odd k: RGB stems).
                let taps_done = match rows_here - kb {
                    NK.. => {
                        weight_rows::<NK>(cpu, &segs, std::array::from_fn(|i| off[kb0 + kb + i]), dst, kb, d.og, o_all)
                    }
                    2.. => {
                        weight_rows::<2>(cpu, &segs, std::array::from_fn(|i| off[kb0 + kb + i]), dst, kb, d.og, o_all)
                    }
                    _ => weight_rows::<1>(cpu, &segs, [off[kb0 + kb]], dst, kb, d.og, o_all),
                };
                kb += taps_done;
            }
        }
    });
    let mut dw = vec![0f32; o_all * k];
    dw.par_chunks_mut(d.og * k).zip(dwt.par_chunks(k * d.og)).for_each(|(dst, src)| transpose(src, k, d.og, dst));
    dw
}

/// `NT` rows (taps) of `dw^T` from row `kb` of `dst`, every output channel, through the
/// widest tiles that fit. Returns `NT`.
fn weight_rows<const NT: usize>(
    cpu: Cpu,
    segs: &[Segment],
    offs: [usize; NT],
    dst: &mut [f32],
    kb: usize,
    og: usize,
    o_all: usize,
) -> usize {
    assert!(dst.len() >= (kb + NT) * og);
    let mut ob = 0;
    while ob < og {
        let at = dst[kb * og + ob..].as_mut_ptr();
        // SAFETY: `cpu` proves AVX-512F or AVX2 + FMA, the tile's build; x reads at offs[i] +
        // [0, len) stay inside each sample's slack (as in the forward); each segment's dyt rows
        // hold o_all floats from the group's first output; at holds NT rows of og from ob
        // (asserted), and og - ob covers the tile's 16 NV columns (og is a multiple of 16).
        unsafe {
            ob += match (cpu, og - ob) {
                (Cpu::Avx2(_), _) => weight_tile_avx2::<NT>(segs, &offs, o_all, ob, at, og),
                (Cpu::Avx512(_), 64..) => weight_tile::<4, NT>(segs, &offs, o_all, ob, at, og),
                (Cpu::Avx512(_), 32..) => weight_tile::<2, NT>(segs, &offs, o_all, ob, at, og),
                (Cpu::Avx512(_), _) => weight_tile::<1, NT>(segs, &offs, o_all, ob, at, og),
            };
        }
    }
    NT
}

/// A run of grid pixels for the weight gradient: the input at its first pixel (before the
/// tap offsets), its rows of `dy` transposed (from the group's first output), its length.
struct Segment {
    x: *const f32,
    dyt: *const f32,
    len: usize,
}

/// `dyt[q][o] = dy[o][q / wp][q % wp]` over one sample's grid, zero on its garbage columns
/// and past its last row: every element of `dyt` written. On AVX-512 in 16 x 16 blocks
/// transposed in registers (element by element, this took 3.5 % of a ResNet18 step).
fn transpose_dy(cpu: Cpu, dy: &[f32], o_all: usize, (oh, ow): (usize, usize), wp: usize, dyt: &mut [MaybeUninit<f32>]) {
    const TILE: usize = 16;
    assert!(dy.len() == o_all * oh * ow && dyt.len() >= oh * wp * o_all && wp >= ow);
    match cpu {
        Cpu::Avx512(_) if o_all.is_multiple_of(TILE) => {
            for o0 in (0..o_all).step_by(TILE) {
                for y in 0..oh {
                    for x0 in (0..ow).step_by(TILE) {
                        let cols = (ow - x0).min(TILE);
                        // SAFETY: the Avx512 proof is the build's; reads 16 rows (o0..o0 + 16
                        // < o_all) of `cols` floats from pixel (y, x0), inside dy (asserted
                        // sizes); writes `cols` rows of 16 floats at grid pixels y * wp + x0..,
                        // inside dyt (wp >= ow).
                        unsafe {
                            let src = dy.as_ptr().add(o0 * oh * ow + y * ow + x0);
                            let dst = dyt.as_mut_ptr().add((y * wp + x0) * o_all + o0).cast();
                            transpose16(src, oh * ow, dst, o_all, cols);
                        }
                    }
                }
            }
        }
        _ => {
            for o0 in (0..o_all).step_by(TILE) {
                for y in 0..oh {
                    for x in 0..ow {
                        let row = &mut dyt[(y * wp + x) * o_all..];
                        for o in o0..(o0 + TILE).min(o_all) {
                            row[o].write(dy[(o * oh + y) * ow + x]);
                        }
                    }
                }
            }
        }
    }
    for y in 0..oh {
        zero(&mut dyt[(y * wp + ow) * o_all..(y + 1) * wp * o_all]);
    }
    zero(&mut dyt[oh * wp * o_all..]);
}

/// `dst[j * ld_dst + i] = src[i * ld_src + j]` for rows `i < 16` and columns `j < cols`
/// (`cols <= 16`): a 16 x 16 block transposed in registers (unpack pairs of rows, then
/// shuffle pairs of pairs, then 128-bit lanes twice).
///
/// # Safety
/// AVX-512F present; the reads and writes described are in bounds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose16(src: *const f32, ld_src: usize, dst: *mut f32, ld_dst: usize, cols: usize) {
    // SAFETY (whole body): the caller's; masked-off lanes read nothing.
    unsafe {
        let mask = ((1u32 << cols) - 1) as u16;
        let r: [__m512; 16] = std::array::from_fn(|i| _mm512_maskz_loadu_ps(mask, src.add(i * ld_src)));
        // t[2k], t[2k+1]: rows 2k and 2k+1 interleaved (low and high pairs of each 128-bit lane).
        let t: [__m512; 16] = std::array::from_fn(|i| {
            let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
            if i % 2 == 0 { _mm512_unpacklo_ps(a, b) } else { _mm512_unpackhi_ps(a, b) }
        });
        // u: four rows' elements per 128-bit lane.
        let u: [__m512; 16] = std::array::from_fn(|i| {
            let (g, k) = (i / 4 * 4, i % 4);
            let (a, b) = (t[g + k % 2], t[g + 2 + k % 2]);
            if k < 2 { _mm512_shuffle_ps::<0x44>(a, b) } else { _mm512_shuffle_ps::<0xEE>(a, b) }
        });
        // v: eight rows per 256 bits; w: all sixteen.
        let v: [__m512; 16] = std::array::from_fn(|i| {
            let (g, k) = (i / 8 * 8, i % 8);
            let (a, b) = (u[g + k % 4], u[g + 4 + k % 4]);
            if k < 4 { _mm512_shuffle_f32x4::<0x88>(a, b) } else { _mm512_shuffle_f32x4::<0xDD>(a, b) }
        });
        let w: [__m512; 16] = std::array::from_fn(|i| {
            let (a, b) = (v[i % 8], v[8 + i % 8]);
            if i < 8 { _mm512_shuffle_f32x4::<0x88>(a, b) } else { _mm512_shuffle_f32x4::<0xDD>(a, b) }
        });
        for j in 0..cols {
            _mm512_storeu_ps(dst.add(j * ld_dst), w[COLUMN[j]]);
        }
    }
}

/// Which of [`transpose16`]'s final registers holds column `j`.
#[cfg(target_arch = "x86_64")]
const COLUMN: [usize; 16] = [0, 2, 1, 3, 4, 6, 5, 7, 8, 10, 9, 11, 12, 14, 13, 15];

#[cfg(not(target_arch = "x86_64"))]
unsafe fn transpose16(_: *const f32, _: usize, _: *mut f32, _: usize, _: usize) {
    unreachable!("the AVX-512 proof is x86-64 only")
}

/// Writes zeros.
fn zero(dst: &mut [MaybeUninit<f32>]) {
    dst.fill(MaybeUninit::new(0.0));
}

/// `dst[i * ld_dst + 0..16 NV] += sum over the segments' pixels q of
/// x[offs[i] + q] * dyt[q * ld + ob + 0..16 NV]`; returns the columns done (16 NV).
///
/// # Safety
/// AVX-512F present; the reads and writes described are in bounds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn weight_tile<const NV: usize, const NT: usize>(
    segs: &[Segment],
    offs: &[usize; NT],
    ld: usize,
    ob: usize,
    dst: *mut f32,
    ld_dst: usize,
) -> usize {
    // SAFETY (whole body): the caller guarantees every pointer below is in bounds.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); NV]; NT];
        for seg in segs {
            let xs: [*const f32; NT] = std::array::from_fn(|i| seg.x.add(offs[i]));
            let dyt = seg.dyt.add(ob);
            for q in 0..seg.len {
                let row = dyt.add(q * ld);
                let a: [__m512; NV] = std::array::from_fn(|v| _mm512_loadu_ps(row.add(16 * v)));
                for (i, acc_i) in acc.iter_mut().enumerate() {
                    let b = _mm512_set1_ps(*xs[i].add(q));
                    for v in 0..NV {
                        acc_i[v] = _mm512_fmadd_ps(a[v], b, acc_i[v]);
                    }
                }
            }
        }
        for (i, acc_i) in acc.iter().enumerate() {
            for (v, a) in acc_i.iter().enumerate() {
                let p = dst.add(i * ld_dst + 16 * v);
                _mm512_storeu_ps(p, _mm512_add_ps(_mm512_loadu_ps(p), *a));
            }
        }
    }
    16 * NV
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn weight_tile<const NV: usize, const NT: usize>(
    _: &[Segment],
    _: &[usize; NT],
    _: usize,
    _: usize,
    _: *mut f32,
    _: usize,
) -> usize {
    unreachable!("applies() requires AVX-512")
}

/// [`weight_tile`] for AVX2: 16 output channels (two 8-lane vectors) by `NT` taps, `2 NT`
/// accumulators (AVX2 has 16 registers). Returns 16.
///
/// # Safety
/// AVX2 and FMA present; the reads and writes of [`weight_tile`] with one 16-lane vector.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn weight_tile_avx2<const NT: usize>(
    segs: &[Segment],
    offs: &[usize; NT],
    ld: usize,
    ob: usize,
    dst: *mut f32,
    ld_dst: usize,
) -> usize {
    // SAFETY (whole body): the caller guarantees every pointer below is in bounds.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 2]; NT];
        for seg in segs {
            let xs: [*const f32; NT] = std::array::from_fn(|i| seg.x.add(offs[i]));
            let dyt = seg.dyt.add(ob);
            for q in 0..seg.len {
                let row = dyt.add(q * ld);
                let a = [_mm256_loadu_ps(row), _mm256_loadu_ps(row.add(8))];
                for (i, acc_i) in acc.iter_mut().enumerate() {
                    let b = _mm256_broadcast_ss(&*xs[i].add(q));
                    acc_i[0] = _mm256_fmadd_ps(a[0], b, acc_i[0]);
                    acc_i[1] = _mm256_fmadd_ps(a[1], b, acc_i[1]);
                }
            }
        }
        for (i, acc_i) in acc.iter().enumerate() {
            for (v, a) in acc_i.iter().enumerate() {
                let p = dst.add(i * ld_dst + 8 * v);
                _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), *a));
            }
        }
    }
    16
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn weight_tile_avx2<const NT: usize>(
    _: &[Segment],
    _: &[usize; NT],
    _: usize,
    _: usize,
    _: *mut f32,
    _: usize,
) -> usize {
    unreachable!("the AVX2 proof is x86-64 only")
}

#[cfg(test)]
mod tests {
    use super::{Cpu, transpose_dy};
    use crate::ops::isa::Isa;

    /// The AVX-512 transpose (16 x 16 blocks in registers, a tail of columns) against the
    /// element-by-element one, garbage columns and the grid's tail included.
    #[test]
    fn transpose_dy_in_blocks_matches_element_by_element() {
        let Some(v4) = Isa::detected().avx512() else {
            eprintln!("WARNING: no AVX-512: the blocked transpose_dy is not tested here");
            return;
        };
        let Some(v3) = Isa::detected().avx2() else { return };
        let (o_all, oh, ow, wp) = (32, 5, 21, 23);
        let dy: Vec<f32> = (0..o_all * oh * ow).map(|v| v as f32).collect();
        let len = (oh * wp + 7) * o_all;
        let run = |cpu| {
            let mut dyt = vec![std::mem::MaybeUninit::new(f32::NAN); len];
            transpose_dy(cpu, &dy, o_all, (oh, ow), wp, &mut dyt);
            // SAFETY: every element was initialised (NaN) before transpose_dy wrote over it.
            dyt.into_iter().map(|v| unsafe { v.assume_init() }).collect::<Vec<f32>>()
        };
        let (blocked, plain) = (run(Cpu::Avx512(v4)), run(Cpu::Avx2(v3)));
        assert_eq!(plain[(2 * wp + 20) * o_all + 17], dy[(17 * oh + 2) * ow + 20]);
        assert!(blocked.iter().zip(&plain).all(|(a, b)| a.to_bits() == b.to_bits()), "the blocked transpose differs");
    }
}
