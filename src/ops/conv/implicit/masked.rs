//! The implicit GEMM for stride-1 "same" convolutions (output as large as the input: ResNet's
//! and ResNeXt's 3x3s with padding 1, their input gradients too), with no padded copy of the
//! input and no grid to crop.
//!
//! Why: the padded route ([`super::pad`], the grid, [`super::crop`]) copies every input and
//! output once more (1.4 of the 11 ms of a 56x56 forward, measured) and computes `wp - ow`
//! garbage columns per row (a seventh of a 14x14 map's work). Here an output plane is the
//! tile's run of pixels `q = y * w + x`, and the input under tap `(ky, kx)` is the same run
//! shifted by `(ky - ph) * w + (kx - pw)`, except where the shifted pixel leaves the plane
//! (a row above or below it, a column across its left or right edge). Those lanes are masked
//! off, per tile and tap, so they load zero, as the padding would have given: a masked-off
//! lane reads no memory (AVX-512 and AVX2 suppress its faults), so a shift past the buffer's
//! ends is safe.
//!
//! AVX-512 only: AVX2's masked loads (`vmaskmovps`) made this route slower than the padded
//! one on an Intel Xeon (ResNeXt's 3x3s at 32x32: a g4 forward 15.6 against 14.1 ms, g1 62.6
//! against 54.4 ms), so AVX2 CPUs keep the padded route.
//!
//! Inside a tile the reduction runs tap by tap (the tap's masks stay in mask registers) over a
//! block of channels, then the block's sums are added to the output: chains of at most
//! [`super::SUM_BLOCK`] products, as on the padded route.

use std::mem::MaybeUninit;

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::{Cpu, Dims, MR, NR, NV, SUM_BLOCK, WEIGHT_CHUNK};
use crate::ops::isa::Avx512;
use crate::ops::par_chunks_written;

/// The AVX-512 proof, if a pass of `d` on `cpu` goes this way: stride 1, the output plane
/// the input's size.
pub(super) fn applies(cpu: Cpu, d: &Dims) -> Option<Avx512> {
    match cpu {
        Cpu::Avx512(v4) if d.stride == 1 && d.oh() == d.h && d.ow() == d.w => Some(v4),
        _ => None,
    }
}

/// A tap of a tile: the input's shift from the output pixel (floats), and per vector of the
/// tile the lanes that read inside the plane.
type TapLanes = (isize, [u16; NV]);

/// One plane's window: the plane's size, the window's and its padding.
struct Window {
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    ph: usize,
    pw: usize,
}

impl Window {
    fn taps(&self) -> usize {
        self.kh * self.kw
    }
    /// Per tap `(ky, kx)`: the input's shift from the output pixel, and which lanes of the
    /// tile's `nv` vectors from pixel `q0` read inside the plane (lanes past the plane's end
    /// are off too).
    fn tile_taps(&self, q0: usize, nv: usize) -> Vec<TapLanes> {
        let plane = self.h * self.w;
        let mut taps = Vec::with_capacity(self.taps());
        for ky in 0..self.kh {
            for kx in 0..self.kw {
                let mut masks = [0u16; NV];
                for (v, m) in masks.iter_mut().enumerate().take(nv) {
                    for lane in 0..16 {
                        let q = q0 + 16 * v + lane;
                        let (y, x) = (q / self.w, q % self.w);
                        let inside = q < plane
                            && (y + ky).checked_sub(self.ph).is_some_and(|y| y < self.h)
                            && (x + kx).checked_sub(self.pw).is_some_and(|x| x < self.w);
                        *m |= u16::from(inside) << lane;
                    }
                }
                let shift = (ky as isize - self.ph as isize) * self.w as isize + kx as isize - self.pw as isize;
                taps.push((shift, masks));
            }
        }
        taps
    }
}

/// `out (n, groups * outs, h, w)` of the window over `x (n, groups * cg, h, w)`, per group
/// `out[o][q] = sum over (c, tap) of packed[o][c * taps + tap] * x[c][q + shift(tap)]`
/// (`packed` as [`super::pack`] lays it out).
fn conv(
    _: Avx512,
    x: &[f32],
    n: usize,
    (groups, cg, outs): (usize, usize, usize),
    win: &Window,
    packed: &[f32],
) -> Vec<f32> {
    let (plane, taps) = (win.h * win.w, win.taps());
    let k = cg * taps;
    // Channels per block of the sum, and per sweep of the weights (as on the padded route).
    let block = (SUM_BLOCK / taps).max(1);
    let chunk = (WEIGHT_CHUNK / (taps * outs)).clamp(1, cg);
    let per_sample = groups * outs * plane;
    let slice = n.div_ceil(2 * rayon::current_num_threads()).max(1);
    // Every tile's first pixel, vectors and taps, once: the same for every sample, group and
    // channel chunk (worked out per tile, they cost a tenth of a 56x56 forward).
    let tiles_of_plane: Vec<PlaneTile> = (0..plane)
        .step_by(MR)
        .map(|q0| {
            let nv = (plane - q0).div_ceil(16).min(NV);
            let inside = std::array::from_fn(|v| {
                let left = plane.saturating_sub(q0 + 16 * v).min(16);
                ((1u32 << left) - 1) as u16
            });
            PlaneTile { q0, nv, inside, taps: win.tile_taps(q0, nv) }
        })
        .collect();
    let tiles = |s: usize, out_s: &mut [MaybeUninit<f32>]| {
        for grp in 0..groups {
            for c0 in (0..cg).step_by(chunk) {
                let c1 = (c0 + chunk).min(cg);
                for (j, out_n) in out_s.chunks_mut(per_sample).enumerate() {
                    let xs = &x[((s * slice + j) * groups * cg + grp * cg + c0) * plane..];
                    for &PlaneTile { q0, nv, inside, taps: ref tile_taps } in &tiles_of_plane {
                        for ob in 0..outs / NR {
                            let w = &packed[((grp * outs / NR + ob) * k + c0 * taps) * NR..];
                            let o0 = grp * outs + ob * NR;
                            let t = Tile { chans: c1 - c0, block, plane, taps: tile_taps, inside, accumulate: c0 > 0 };
                            // SAFETY: the Avx512 proof is the tile's build. x: the unmasked lanes read
                            // pixels inside channel planes c0..c1 of this sample and group
                            // (`tile_taps`); w holds (c1 - c0) * taps * NR floats from the
                            // chunk's first channel; out: NR rows of `plane` floats from o0, the
                            // tile storing only lanes before the plane's end.
                            unsafe {
                                let (x, w, out) =
                                    (xs.as_ptr().add(q0), w.as_ptr(), out_n.as_mut_ptr().add(o0 * plane + q0).cast());
                                match nv {
                                    3 => tile_v4::<3>(&t, x, w, out),
                                    2 => tile_v4::<2>(&t, x, w, out),
                                    _ => tile_v4::<1>(&t, x, w, out),
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    // SAFETY: the first channel chunk (c0 == 0) stores every pixel of every output plane of
    // each sample (tiles cover [0, plane), every output block), before any tile adds to them.
    unsafe { par_chunks_written(n * per_sample, slice * per_sample, tiles) }
}

/// One tile of an output plane: its first pixel, its vectors, per vector the lanes inside
/// the plane, its taps.
struct PlaneTile {
    q0: usize,
    nv: usize,
    inside: [u16; NV],
    taps: Vec<TapLanes>,
}

/// What a tile sums: `chans` channels `plane` floats apart, in blocks of `block`, each under
/// `taps` (shift, lane masks).
struct Tile<'a> {
    chans: usize,
    block: usize,
    plane: usize,
    taps: &'a [TapLanes],
    /// Per vector, the lanes inside the plane: the ones the tile stores (past the plane's
    /// end lies the next output row).
    inside: [u16; NV],
    /// Add to the output (a later channel chunk) rather than store.
    accumulate: bool,
}

/// Forward of a stride-1 "same" convolution.
pub(super) fn forward(cpu: Avx512, x: &[f32], wt: &[f32], d: &Dims) -> Vec<f32> {
    let k = d.cg * d.taps();
    let packed = super::pack(d.groups, d.og, k, |grp, o, kk| wt[(grp * d.og + o) * k + kk]);
    let win = Window { h: d.h, w: d.w, kh: d.kh, kw: d.kw, ph: d.ph, pw: d.pw };
    conv(cpu, x, d.n, (d.groups, d.cg, d.og), &win, &packed)
}

/// Input gradient of a stride-1 "same" convolution: the full correlation of `dy` with the
/// flipped, transposed weights, itself a "same" convolution (padding `k - 1 - p`).
pub(super) fn input_grad(cpu: Avx512, dy: &[f32], wt: &[f32], d: &Dims) -> Vec<f32> {
    let (taps, kin) = (d.taps(), d.og * d.taps());
    let packed = super::pack(d.groups, d.cg, kin, |grp, c, kk| {
        let (o, t) = (kk / taps, kk % taps);
        wt[((grp * d.og + o) * d.cg + c) * taps + (taps - 1 - t)]
    });
    let win = Window { h: d.h, w: d.w, kh: d.kh, kw: d.kw, ph: d.kh - 1 - d.ph, pw: d.kw - 1 - d.pw };
    conv(cpu, dy, d.n, (d.groups, d.og, d.cg), &win, &packed)
}

/// `NR` output rows of `16 V` pixels: per block of channels, the sum over taps and the
/// block's channels of `w[(c * taps + tap) * NR + i] * x[c * plane + shift(tap) + lane]`
/// (masked lanes read zero), stored (first block, unless `accumulate`) or added to
/// `out + i * plane`, lanes past the plane's end left alone.
///
/// # Safety
/// AVX-512F present; the unmasked reads and the writes described are in bounds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_v4<const V: usize>(t: &Tile, x: *const f32, w: *const f32, out: *mut f32) {
    let taps = t.taps.len();
    // SAFETY (whole body): the caller guarantees every unmasked access below is in bounds;
    // pointers are formed with wrapping arithmetic, so a shift past the buffer is no UB.
    unsafe {
        let mut first = !t.accumulate;
        for b0 in (0..t.chans).step_by(t.block) {
            let b1 = (b0 + t.block).min(t.chans);
            let mut acc = [[_mm512_setzero_ps(); V]; NR];
            for (tap, &(shift, lanes)) in t.taps.iter().enumerate() {
                let mut p = x.wrapping_offset(shift).wrapping_add(b0 * t.plane);
                let mut wk = w.add((b0 * taps + tap) * NR);
                for _ in b0..b1 {
                    let a: [__m512; V] =
                        std::array::from_fn(|v| _mm512_maskz_loadu_ps(lanes[v], p.wrapping_add(16 * v)));
                    for (i, acc_i) in acc.iter_mut().enumerate() {
                        let b = _mm512_set1_ps(*wk.add(i));
                        for v in 0..V {
                            acc_i[v] = _mm512_fmadd_ps(a[v], b, acc_i[v]);
                        }
                    }
                    p = p.wrapping_add(t.plane);
                    wk = wk.add(taps * NR);
                }
            }
            for (i, acc_i) in acc.iter().enumerate() {
                for (v, a) in acc_i.iter().enumerate() {
                    let (p, inside) = (out.add(i * t.plane + 16 * v), t.inside[v]);
                    let sum = if first { *a } else { _mm512_add_ps(_mm512_maskz_loadu_ps(inside, p), *a) };
                    _mm512_mask_storeu_ps(p, inside, sum);
                }
            }
            first = false;
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_v4<const V: usize>(_: &Tile, _: *const f32, _: *const f32, _: *mut f32) {
    unreachable!("the AVX-512 proof is x86-64 only")
}
