//! Direct convolution for few channels (LeNet's 3 -> 6 -> 16 with 5x5 kernels): stride 1, no
//! padding, one group. There im2col + GEMM spends most of its time writing and packing a
//! (c*kh*kw) x (oh*ow) matrix for a GEMM whose other side has 6 or 16 rows; these kernels
//! instead walk the image row by row with 16-lane accumulators that stay in L1, so the three
//! passes (forward, input gradient, weight gradient) do their multiply-adds straight from the
//! input rows. No BLAS-like crate offers small-channel direct convolution, hence by hand.
//!
//! Each pass has an AVX-512 and an AVX2+FMA body written with intrinsics (LLVM kept part of
//! the plain-Rust body's accumulators on the stack), picked at run time; the plain-Rust body
//! is the baseline build for CPUs with neither.

/// Shape of one image's convolution: input (c, h, w), weight (o, c, k, k'), output (o, oh, ow).
#[derive(Debug, Clone, Copy)]
pub(super) struct Dims {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub oh: usize,
    pub ow: usize,
}

use std::mem::MaybeUninit;

use crate::ops::isa::{Isa, Level};
use crate::ops::write_slice;

const LANES: usize = 16;
/// Output columns per forward block: four 16-lane registers per output channel.
const COLS: usize = 64;
/// Output channels per block: 4 x 4 accumulators plus the loads fit in 32 registers.
const OB: usize = 4;

/// Whether the direct kernels beat im2col + GEMM for this geometry: few output channels and
/// few taps per output (measured on LeNet; ResNet's convs have hundreds of channels).
pub(super) fn applies(stride: usize, padding: usize, dilation: usize, groups: usize, d: &Dims) -> bool {
    stride == 1
        && padding == 0
        && dilation == 1
        && groups == 1
        && d.o <= 32
        && d.c * d.kh * d.kw <= 400
        && d.ow >= COLS
        && matches!(d.kw, 3 | 5)
}

/// Multiply-add as the baseline build computes it (separate multiply and add: no FMA).
trait Mac {
    fn mac(a: f32, b: f32, c: f32) -> f32;
}
struct Plain;
impl Mac for Plain {
    #[inline(always)]
    fn mac(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// The baseline build of a kernel generic over [`Mac`]. AVX-512 and AVX2 CPUs do not get
/// here: [`forward`] and [`weight_grad`] take them to their intrinsics bodies first (the
/// generic body's AVX2 build, which this macro used to pick, kept part of its accumulators on
/// the stack and ran LeNet's passes 1.3-4x slower than them).
macro_rules! dispatch {
    ($name:ident, $body:ident, ($($arg:ident: $ty:ty),*)) => {
        fn $name(isa: Isa, $($arg: $ty),*) {
            debug_assert!(isa.level() < Level::Avx2 || cfg!(not(target_arch = "x86_64")));
            $body::<Plain>($($arg),*)
        }
    };
}

/// `B` output channels from `o0`, output row `oy`, columns `[j0, j0 + COLS)`: the
/// accumulators stay in registers across every tap.
#[inline(always)]
fn forward_block<M: Mac, const B: usize>(
    x: &[f32],
    wt: &[f32],
    d: &Dims,
    oy: usize,
    o0: usize,
    j0: usize,
    out: &mut [MaybeUninit<f32>],
) {
    let taps = d.c * d.kh * d.kw;
    let mut acc = Aligned([[0f32; COLS]; B]);
    let acc = &mut acc.0;
    for c in 0..d.c {
        for ki in 0..d.kh {
            let row = &x[(c * d.h + oy + ki) * d.w + j0..];
            for kj in 0..d.kw {
                let xs: &[f32; COLS] = row[kj..kj + COLS].try_into().expect("a block of columns");
                let t = (c * d.kh + ki) * d.kw + kj;
                for (b, acc) in acc.iter_mut().enumerate() {
                    let a = wt[(o0 + b) * taps + t];
                    for l in 0..COLS {
                        acc[l] = M::mac(a, xs[l], acc[l]);
                    }
                }
            }
        }
    }
    for (b, acc) in acc.iter().enumerate() {
        let at = ((o0 + b) * d.oh + oy) * d.ow + j0;
        write_slice(&mut out[at..at + COLS], acc);
    }
}

/// Forward of one image: `out (o, oh, ow) = x (c, h, w) * wt (o, c, kh, kw)` (cross-correlation,
/// as every framework's conv). The last column block is anchored at `ow - COLS` and recomputes
/// a few columns: the same values, written again. Every output is written (every block of
/// channels, every row, column blocks from 0 to `ow`), so `out` may start uninitialised; the
/// intrinsics bodies cover it the same way.
#[inline(always)]
fn forward_body<M: Mac>(x: &[f32], wt: &[f32], d: Dims, out: &mut [MaybeUninit<f32>]) {
    for_each_block(&d, COLS, |b, (oy, o0, j0)| match b {
        1 => forward_block::<M, 1>(x, wt, &d, oy, o0, j0, out),
        2 => forward_block::<M, 2>(x, wt, &d, oy, o0, j0, out),
        3 => forward_block::<M, 3>(x, wt, &d, oy, o0, j0, out),
        _ => forward_block::<M, OB>(x, wt, &d, oy, o0, j0, out),
    });
}

/// The forward's blocking, shared by every build: `block(b, (oy, o0, j0))` for each output
/// row `oy`, block of `b <= OB` channels from `o0` and block of `cols` columns from `j0` (the
/// last anchored at `ow - cols`), so that every output is written.
#[inline(always)]
fn for_each_block(d: &Dims, cols: usize, mut block: impl FnMut(usize, (usize, usize, usize))) {
    let starts: Vec<usize> = (0..d.ow - cols).step_by(cols).chain(std::iter::once(d.ow - cols)).collect();
    for oy in 0..d.oh {
        for o0 in (0..d.o).step_by(OB) {
            for &j0 in &starts {
                block((d.o - o0).min(OB), (oy, o0, j0));
            }
        }
    }
}
dispatch!(forward_generic, forward_body, (x: &[f32], wt: &[f32], d: Dims, out: &mut [MaybeUninit<f32>]));

/// Forward of one image (see [`forward_body`]): on AVX-512 by [`forward_block_v4`], else by the
/// generic body in the build `isa` names.
pub(super) fn forward(isa: Isa, x: &[f32], wt: &[f32], d: Dims, out: &mut [MaybeUninit<f32>]) {
    #[cfg(target_arch = "x86_64")]
    if isa.avx512().is_some() {
        // SAFETY: `isa` proves AVX-512F.
        unsafe { forward_v4(x, wt, &d, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa.avx2().is_some() {
        // SAFETY: `isa` proves AVX2 and FMA.
        unsafe { forward_v3(x, wt, &d, out) };
        return;
    }
    forward_generic(isa, x, wt, d, out)
}

/// [`forward_body`] on AVX-512 through [`forward_block_v4`].
///
/// # Safety
/// AVX-512F present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn forward_v4(x: &[f32], wt: &[f32], d: &Dims, out: &mut [MaybeUninit<f32>]) {
    // SAFETY (each call): AVX-512F, from this function's contract.
    for_each_block(d, COLS, |b, at| unsafe {
        match b {
            1 => forward_block_v4::<1>(x, wt, d, at, out),
            2 => forward_block_v4::<2>(x, wt, d, at, out),
            3 => forward_block_v4::<3>(x, wt, d, at, out),
            _ => forward_block_v4::<OB>(x, wt, d, at, out),
        }
    });
}

/// [`forward_block`] written with AVX-512 intrinsics, its `B x 4` accumulators in registers
/// (the generic body's arrays were partly kept on the stack, as in the weight gradient).
///
/// # Safety
/// AVX-512F present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn forward_block_v4<const B: usize>(
    x: &[f32],
    wt: &[f32],
    d: &Dims,
    (oy, o0, j0): (usize, usize, usize),
    out: &mut [MaybeUninit<f32>],
) {
    use std::arch::x86_64::*;
    const V: usize = COLS / LANES;
    let taps = d.c * d.kh * d.kw;
    let mut acc = [[_mm512_setzero_ps(); V]; B];
    for c in 0..d.c {
        for ki in 0..d.kh {
            let row = &x[(c * d.h + oy + ki) * d.w + j0..];
            for kj in 0..d.kw {
                let xs = &row[kj..kj + COLS];
                let t = (c * d.kh + ki) * d.kw + kj;
                // SAFETY: xs holds COLS = 16 V floats (sliced above).
                let xv: [__m512; V] = unsafe {
                    [
                        _mm512_loadu_ps(xs.as_ptr()),
                        _mm512_loadu_ps(xs.as_ptr().add(16)),
                        _mm512_loadu_ps(xs.as_ptr().add(32)),
                        _mm512_loadu_ps(xs.as_ptr().add(48)),
                    ]
                };
                for (b, acc) in acc.iter_mut().enumerate() {
                    let a = _mm512_set1_ps(wt[(o0 + b) * taps + t]);
                    for v in 0..V {
                        acc[v] = _mm512_fmadd_ps(a, xv[v], acc[v]);
                    }
                }
            }
        }
    }
    for (b, acc) in acc.iter().enumerate() {
        let at = ((o0 + b) * d.oh + oy) * d.ow + j0;
        let dst = &mut out[at..at + COLS];
        for (v, a) in acc.iter().enumerate() {
            // SAFETY: dst holds COLS = 16 V floats (sliced above).
            unsafe { _mm512_storeu_ps(dst.as_mut_ptr().cast::<f32>().add(16 * v), *a) };
        }
    }
}

/// Input gradient of one image: the full correlation of `dy` with the flipped kernel, i.e. the
/// forward kernel on `dy` padded by `k - 1` with the weights transposed (o <-> c) and flipped.
/// `wt_flipped` is [`flip_weights`]'s, `padded` scratch of [`input_grad_scratch`] floats.
pub(super) fn input_grad(
    isa: Isa,
    dy: &[f32],
    wt_flipped: &[f32],
    d: Dims,
    dx: &mut [MaybeUninit<f32>],
    padded: &mut [f32],
) {
    let (ph, pw) = (d.kh - 1, d.kw - 1);
    let (hp, wp) = (d.oh + 2 * ph, d.ow + 2 * pw);
    padded.fill(0.0);
    for o in 0..d.o {
        for oy in 0..d.oh {
            let src = &dy[(o * d.oh + oy) * d.ow..(o * d.oh + oy + 1) * d.ow];
            let at = (o * hp + oy + ph) * wp + pw;
            padded[at..at + d.ow].copy_from_slice(src);
        }
    }
    let t = Dims { c: d.o, h: hp, w: wp, o: d.c, kh: d.kh, kw: d.kw, oh: d.h, ow: d.w };
    forward(isa, padded, wt_flipped, t, dx);
}

/// Scratch floats [`input_grad`] needs.
pub(super) fn input_grad_scratch(d: &Dims) -> usize {
    d.o * (d.oh + 2 * (d.kh - 1)) * (d.ow + 2 * (d.kw - 1))
}

/// `wt (o, c, kh, kw)` as `(c, o, kh, kw)`, each kernel rotated by 180 degrees.
pub(super) fn flip_weights(wt: &[f32], d: &Dims) -> Vec<f32> {
    let taps = d.kh * d.kw;
    let mut out = vec![0f32; wt.len()];
    for o in 0..d.o {
        for c in 0..d.c {
            for t in 0..taps {
                out[(c * d.o + o) * taps + (taps - 1 - t)] = wt[(o * d.c + c) * taps + t];
            }
        }
    }
    out
}

/// `acc += g * x`, lane by lane: one vector multiply-add.
#[inline(always)]
fn fma16<M: Mac>(acc: &mut [f32; LANES], g: &[f32; LANES], x: &[f32; LANES]) {
    for l in 0..LANES {
        acc[l] = M::mac(g[l], x[l], acc[l]);
    }
}

/// A 64-byte (cache-line, one AVX-512 vector) aligned value.
#[repr(C, align(64))]
struct Aligned<T>(T);

/// Weight gradient sums for output channels `[o0, o0 + B)`, input channel `c`, kernel row
/// `ki` and every kernel column (`K` of them), in 16 lanes each, over the whole image.
#[inline(always)]
fn weight_grad_block<M: Mac, const B: usize, const K: usize>(
    x: &[f32],
    dy: &[f32],
    d: &Dims,
    o0: usize,
    c: usize,
    ki: usize,
    dw: &mut [f32],
) {
    let full = d.ow / LANES * LANES;
    // 64-byte aligned: LLVM keeps part of these accumulators on the stack, and a build where
    // the frame put them across cache lines spent a third of this kernel on those stores
    // (perf, LeNet: the weight gradient 32 -> 37 % of a step with no change to this code).
    let mut acc = Aligned([[[0f32; LANES]; K]; B]);
    let acc = &mut acc.0;
    let mut tail = [[0f32; K]; B];
    for oy in 0..d.oh {
        let row = &x[(c * d.h + oy + ki) * d.w..(c * d.h + oy + ki + 1) * d.w];
        let g: [&[f32]; B] =
            std::array::from_fn(|b| &dy[((o0 + b) * d.oh + oy) * d.ow..((o0 + b) * d.oh + oy + 1) * d.ow]);
        for j in (0..full).step_by(LANES) {
            let gv: [[f32; LANES]; B] = std::array::from_fn(|b| g[b][j..j + LANES].try_into().expect("16 lanes"));
            for kj in 0..K {
                let xv: [f32; LANES] = row[j + kj..j + kj + LANES].try_into().expect("16 lanes");
                for b in 0..B {
                    fma16::<M>(&mut acc[b][kj], &gv[b], &xv);
                }
            }
        }
        for j in full..d.ow {
            for kj in 0..K {
                for b in 0..B {
                    tail[b][kj] = M::mac(g[b][j], row[j + kj], tail[b][kj]);
                }
            }
        }
    }
    let taps = d.c * d.kh * d.kw;
    for b in 0..B {
        for kj in 0..K {
            dw[(o0 + b) * taps + (c * d.kh + ki) * d.kw + kj] += acc[b][kj].iter().sum::<f32>() + tail[b][kj];
        }
    }
}

#[inline(always)]
fn weight_grad_k<M: Mac, const K: usize>(x: &[f32], dy: &[f32], d: &Dims, dw: &mut [f32]) {
    let mut o0 = 0;
    while o0 < d.o {
        for c in 0..d.c {
            for ki in 0..d.kh {
                match d.o - o0 {
                    1 => weight_grad_block::<M, 1, K>(x, dy, d, o0, c, ki, dw),
                    2 => weight_grad_block::<M, 2, K>(x, dy, d, o0, c, ki, dw),
                    3 => weight_grad_block::<M, 3, K>(x, dy, d, o0, c, ki, dw),
                    _ => weight_grad_block::<M, OB, K>(x, dy, d, o0, c, ki, dw),
                }
            }
        }
        o0 += OB;
    }
}

/// Weight gradient of one image, added to `dw (o, c, kh, kw)`:
/// `dw[o, c, ki, kj] += sum over (oy, ox) of dy[o, oy, ox] * x[c, oy + ki, ox + kj]`.
#[inline(always)]
fn weight_grad_body<M: Mac>(x: &[f32], dy: &[f32], d: Dims, dw: &mut [f32]) {
    match d.kw {
        3 => weight_grad_k::<M, 3>(x, dy, &d, dw),
        5 => weight_grad_k::<M, 5>(x, dy, &d, dw),
        k => unreachable!("applies() admits kernel widths 3 and 5, not {k}"),
    }
}
dispatch!(weight_grad_generic, weight_grad_body, (x: &[f32], dy: &[f32], d: Dims, dw: &mut [f32]));

/// Weight gradient of one image, added to `dw (o, c, kh, kw)`:
/// `dw[o, c, ki, kj] += sum over (oy, ox) of dy[o, oy, ox] * x[c, oy + ki, ox + kj]`. On
/// AVX-512 by [`weight_grad_block_v4`], else by the generic body in the build `isa` names.
pub(super) fn weight_grad(isa: Isa, x: &[f32], dy: &[f32], d: Dims, dw: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa.avx512().is_some() {
        // SAFETY: `isa` proves AVX-512F.
        unsafe { weight_grad_v4(x, dy, &d, dw) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa.avx2().is_some() {
        // SAFETY: `isa` proves AVX2 and FMA.
        unsafe { weight_grad_v3(x, dy, &d, dw) };
        return;
    }
    weight_grad_generic(isa, x, dy, d, dw)
}

/// [`weight_grad_body`] on AVX-512 through [`weight_grad_block_v4`].
///
/// # Safety
/// AVX-512F present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn weight_grad_v4(x: &[f32], dy: &[f32], d: &Dims, dw: &mut [f32]) {
    let mut o0 = 0;
    while o0 < d.o {
        for c in 0..d.c {
            for ki in 0..d.kh {
                let at = (o0, c, ki);
                // SAFETY (each call): AVX-512F, from this function's contract.
                unsafe {
                    match (d.kw, d.o - o0) {
                        (3, 1) => weight_grad_block_v4::<1, 3>(x, dy, d, at, dw),
                        (3, 2) => weight_grad_block_v4::<2, 3>(x, dy, d, at, dw),
                        (3, 3) => weight_grad_block_v4::<3, 3>(x, dy, d, at, dw),
                        (3, _) => weight_grad_block_v4::<OB, 3>(x, dy, d, at, dw),
                        (5, 1) => weight_grad_block_v4::<1, 5>(x, dy, d, at, dw),
                        (5, 2) => weight_grad_block_v4::<2, 5>(x, dy, d, at, dw),
                        (5, 3) => weight_grad_block_v4::<3, 5>(x, dy, d, at, dw),
                        (5, _) => weight_grad_block_v4::<OB, 5>(x, dy, d, at, dw),
                        (k, _) => unreachable!("applies() admits kernel widths 3 and 5, not {k}"),
                    }
                }
            }
        }
        o0 += OB;
    }
}

/// [`weight_grad_block`] written with AVX-512 intrinsics: LLVM kept part of the generic
/// body's `[[f32; 16]; K]` accumulators on the stack inside the loop (perf annotate), and the
/// kernel ran at ~104 GFLOP/s on an Intel Xeon, a third of a LeNet step. Here the `B x K`
/// accumulators are registers, and the columns past the last whole vector are one masked
/// vector instead of a scalar loop.
///
/// # Safety
/// AVX-512F present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // indices keep the B x K register tile's shape in view
unsafe fn weight_grad_block_v4<const B: usize, const K: usize>(
    x: &[f32],
    dy: &[f32],
    d: &Dims,
    (o0, c, ki): (usize, usize, usize),
    dw: &mut [f32],
) {
    use std::arch::x86_64::*;
    debug_assert_eq!(d.w, d.ow + K - 1, "stride 1, no padding");
    let full = d.ow / LANES * LANES;
    let rem = d.ow - full;
    let mask = ((1u32 << rem) - 1) as __mmask16;
    let mut acc = [[_mm512_setzero_ps(); K]; B];
    let mut gv = [_mm512_setzero_ps(); B];
    for oy in 0..d.oh {
        let row = &x[(c * d.h + oy + ki) * d.w..(c * d.h + oy + ki + 1) * d.w];
        let mut g = [row.as_ptr(); B];
        for (b, g) in g.iter_mut().enumerate() {
            *g = dy[((o0 + b) * d.oh + oy) * d.ow..((o0 + b) * d.oh + oy + 1) * d.ow].as_ptr();
        }
        // SAFETY: each g[b] row holds ow floats, and x's row w = ow + K - 1: the whole vectors
        // read g[b][j..j + 16] and row[j + kj..j + kj + 16] with j + 16 <= full <= ow, kj < K;
        // the masked tail reads only lanes below rem, g[b][full..ow] and row[full + kj..ow + kj].
        unsafe {
            let mut j = 0;
            while j < full {
                for b in 0..B {
                    gv[b] = _mm512_loadu_ps(g[b].add(j));
                }
                for kj in 0..K {
                    let xv = _mm512_loadu_ps(row.as_ptr().add(j + kj));
                    for b in 0..B {
                        acc[b][kj] = _mm512_fmadd_ps(gv[b], xv, acc[b][kj]);
                    }
                }
                j += LANES;
            }
            if rem > 0 {
                for b in 0..B {
                    gv[b] = _mm512_maskz_loadu_ps(mask, g[b].add(full));
                }
                for kj in 0..K {
                    let xv = _mm512_maskz_loadu_ps(mask, row.as_ptr().add(full + kj));
                    for b in 0..B {
                        acc[b][kj] = _mm512_fmadd_ps(gv[b], xv, acc[b][kj]);
                    }
                }
            }
        }
    }
    let taps = d.c * d.kh * d.kw;
    for b in 0..B {
        for kj in 0..K {
            dw[(o0 + b) * taps + (c * d.kh + ki) * d.kw + kj] += _mm512_reduce_add_ps(acc[b][kj]);
        }
    }
}

/// Output columns per AVX2 forward block: three 8-lane registers per output channel, so that
/// [`OB`] channels' 12 accumulators, the 3 input vectors and a broadcast weight fit AVX2's 16
/// registers.
const COLS_V3: usize = 24;

/// [`forward_body`] on AVX2 through [`forward_block_v3`].
///
/// # Safety
/// AVX2 and FMA present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_v3(x: &[f32], wt: &[f32], d: &Dims, out: &mut [MaybeUninit<f32>]) {
    // SAFETY (each call): AVX2 and FMA, from this function's contract.
    for_each_block(d, COLS_V3, |b, at| unsafe {
        match b {
            1 => forward_block_v3::<1>(x, wt, d, at, out),
            2 => forward_block_v3::<2>(x, wt, d, at, out),
            3 => forward_block_v3::<3>(x, wt, d, at, out),
            _ => forward_block_v3::<OB>(x, wt, d, at, out),
        }
    });
}

/// [`forward_block_v4`] for AVX2: `B x 3` accumulators of 8 lanes over [`COLS_V3`] columns.
/// The generic body's AVX2 build kept part of its 64-column accumulators on the stack
/// (LeNet's second forward, batch 64: 53 ms there, 39 ms here).
///
/// # Safety
/// AVX2 and FMA present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_block_v3<const B: usize>(
    x: &[f32],
    wt: &[f32],
    d: &Dims,
    (oy, o0, j0): (usize, usize, usize),
    out: &mut [MaybeUninit<f32>],
) {
    use std::arch::x86_64::*;
    const V: usize = COLS_V3 / 8;
    let taps = d.c * d.kh * d.kw;
    let mut acc = [[_mm256_setzero_ps(); V]; B];
    for c in 0..d.c {
        for ki in 0..d.kh {
            let row = &x[(c * d.h + oy + ki) * d.w + j0..];
            for kj in 0..d.kw {
                let xs = &row[kj..kj + COLS_V3];
                let t = (c * d.kh + ki) * d.kw + kj;
                // SAFETY: xs holds COLS_V3 = 8 V floats (sliced above).
                let xv: [__m256; V] = unsafe {
                    [
                        _mm256_loadu_ps(xs.as_ptr()),
                        _mm256_loadu_ps(xs.as_ptr().add(8)),
                        _mm256_loadu_ps(xs.as_ptr().add(16)),
                    ]
                };
                for (b, acc) in acc.iter_mut().enumerate() {
                    let a = _mm256_set1_ps(wt[(o0 + b) * taps + t]);
                    for v in 0..V {
                        acc[v] = _mm256_fmadd_ps(a, xv[v], acc[v]);
                    }
                }
            }
        }
    }
    for (b, acc) in acc.iter().enumerate() {
        let at = ((o0 + b) * d.oh + oy) * d.ow + j0;
        let dst = &mut out[at..at + COLS_V3];
        for (v, a) in acc.iter().enumerate() {
            // SAFETY: dst holds COLS_V3 = 8 V floats (sliced above).
            unsafe { _mm256_storeu_ps(dst.as_mut_ptr().cast::<f32>().add(8 * v), *a) };
        }
    }
}

/// [`weight_grad_body`] on AVX2 through [`weight_grad_block_v3`]: blocks of 3 output channels
/// for 3-wide kernels, 2 for 5-wide (`B x K` accumulators, `B` rows of `dy` and a row of `x`
/// within AVX2's 16 registers).
///
/// # Safety
/// AVX2 and FMA present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn weight_grad_v3(x: &[f32], dy: &[f32], d: &Dims, dw: &mut [f32]) {
    let block = if d.kw == 3 { 3 } else { 2 };
    let mut o0 = 0;
    while o0 < d.o {
        for c in 0..d.c {
            for ki in 0..d.kh {
                let at = (o0, c, ki);
                // SAFETY (each call): AVX2 and FMA, from this function's contract.
                unsafe {
                    match (d.kw, d.o - o0) {
                        (3, 1) => weight_grad_block_v3::<1, 3>(x, dy, d, at, dw),
                        (3, 2) => weight_grad_block_v3::<2, 3>(x, dy, d, at, dw),
                        (3, _) => weight_grad_block_v3::<3, 3>(x, dy, d, at, dw),
                        (5, 1) => weight_grad_block_v3::<1, 5>(x, dy, d, at, dw),
                        (5, _) => weight_grad_block_v3::<2, 5>(x, dy, d, at, dw),
                        (k, _) => unreachable!("applies() admits kernel widths 3 and 5, not {k}"),
                    }
                }
            }
        }
        o0 += block;
    }
}

/// [`weight_grad_block_v4`] for AVX2: 8 lanes, the columns past the last whole vector one
/// masked load (`vmaskmovps`). LeNet's weight gradients at batch 64: 69 and 95 ms with the
/// generic body's AVX2 build, 23 and 27 ms here.
///
/// # Safety
/// AVX2 and FMA present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::needless_range_loop)] // indices keep the B x K register tile's shape in view
unsafe fn weight_grad_block_v3<const B: usize, const K: usize>(
    x: &[f32],
    dy: &[f32],
    d: &Dims,
    (o0, c, ki): (usize, usize, usize),
    dw: &mut [f32],
) {
    use std::arch::x86_64::*;
    debug_assert_eq!(d.w, d.ow + K - 1, "stride 1, no padding");
    let full = d.ow / 8 * 8;
    let rem = (d.ow - full) as i32;
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(rem), lanes);
    let mut acc = [[_mm256_setzero_ps(); K]; B];
    let mut gv = [_mm256_setzero_ps(); B];
    for oy in 0..d.oh {
        let row = &x[(c * d.h + oy + ki) * d.w..(c * d.h + oy + ki + 1) * d.w];
        let mut g = [row.as_ptr(); B];
        for (b, g) in g.iter_mut().enumerate() {
            *g = dy[((o0 + b) * d.oh + oy) * d.ow..((o0 + b) * d.oh + oy + 1) * d.ow].as_ptr();
        }
        // SAFETY: as in weight_grad_block_v4, with 8 lanes: whole vectors read g[b][j..j + 8]
        // and row[j + kj..j + kj + 8] with j + 8 <= full <= ow, kj < K; the masked tail
        // touches only lanes below rem.
        unsafe {
            let mut j = 0;
            while j < full {
                for b in 0..B {
                    gv[b] = _mm256_loadu_ps(g[b].add(j));
                }
                for kj in 0..K {
                    let xv = _mm256_loadu_ps(row.as_ptr().add(j + kj));
                    for b in 0..B {
                        acc[b][kj] = _mm256_fmadd_ps(gv[b], xv, acc[b][kj]);
                    }
                }
                j += 8;
            }
            if rem > 0 {
                for b in 0..B {
                    gv[b] = _mm256_maskload_ps(g[b].add(full), mask);
                }
                for kj in 0..K {
                    let xv = _mm256_maskload_ps(row.as_ptr().add(full + kj), mask);
                    for b in 0..B {
                        acc[b][kj] = _mm256_fmadd_ps(gv[b], xv, acc[b][kj]);
                    }
                }
            }
        }
    }
    let taps = d.c * d.kh * d.kw;
    for b in 0..B {
        for kj in 0..K {
            dw[(o0 + b) * taps + (c * d.kh + ki) * d.kw + kj] += hsum256(acc[b][kj]);
        }
    }
}

/// The sum of an AVX2 vector's 8 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn hsum256(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}
