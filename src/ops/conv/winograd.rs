//! Winograd F(2x2, 3x3) for 3x3, stride-1, dilation-1, one-group convolutions (ResNet's
//! 3x3s): the forward, the input gradient (itself a 3x3 stride-1 convolution of `dy`, by
//! the flipped, transposed weights) and the weight gradient (the forward's adjoint in the
//! weights, [`weight_grad`]).
//!
//! Each 2x2 block of outputs ("tile") is `A^T [ U ⊙ V ] A`, where `V = B^T d B` is the
//! tile's 4x4 input window transformed and `U = G g G^T` the 3x3 weights transformed
//! (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2015). Summed over
//! input channels, each of the 16 transformed positions `ξ` is one GEMM: `M[ξ] = U[ξ] V[ξ]`,
//! `(o x c) (c x tiles)`. That is 16 multiply-adds per 4 outputs and input channel, against
//! 36 for a direct or implicit-GEMM convolution: 2.25x fewer (less on odd or tiny maps, whose
//! last tiles are partly outside), for three transforms that are cheap adds.
//!
//! Why by hand: no Rust crate has a Winograd convolution (candle neither); the GEMMs are the
//! `gemm` crate's. NNPACK's and cuDNN's follow the same plan (transform, batched GEMM,
//! inverse transform) over blocks of tiles that stay cached.
//!
//! Accuracy: F(2x2, 3x3)'s transforms have entries 0, ±1 and ±1/2 only (the weights'
//! transform is computed in float64 and rounded once). In the parity suite its error
//! against float64 is within 3x PyTorch float32's (ResNet18's layer3 shape: 1.8x forward,
//! 2.8x input gradient). Larger tiles (F(4x4, 3x3) and up) save more multiplies but have
//! larger transform entries, whose error grows with the tile (Lavin and Gray); not tried.
//!
//! Work is split into chunks of whole tile rows (a fixed number of tiles, whatever the thread
//! count, so that the result does not depend on it): per chunk, the inputs are transformed
//! into `V (16, c, tiles)`, multiplied into `M (16, o, tiles)` and transformed back into the
//! chunk's output rows, a chunk sized for L2 ([`CHUNK_FLOATS`]).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::Pass;
use super::gemm::{Mat, SendPtr, matmul, matmul_over};
use crate::ops::isa::{Isa, Level};

/// Floats of one chunk's `V` and `M` together (1 MiB): the tiles per chunk follow from the
/// channels, at least [`MIN_TILES`] (so 256+ channels take more). Half and twice this, and
/// at least 128 tiles, measured no better overall on ResNet18's 3x3s (a Zen 4, AVX-512).
const CHUNK_FLOATS: usize = 256 * 1024;
/// Tiles per chunk at least: below this the GEMMs are too narrow to reach their peak.
const MIN_TILES: usize = 64;

/// One convolution the Winograd kernels take: `c` input channels of `h x w`, `o` outputs, a
/// 3x3 window, stride 1, padding `p` on every side (0 to 2).
#[derive(Debug, Clone, Copy)]
pub(super) struct Dims {
    pub n: usize,
    pub c: usize,
    pub o: usize,
    pub h: usize,
    pub w: usize,
    pub p: usize,
}

impl Dims {
    fn oh(&self) -> usize {
        self.h + 2 * self.p - 2
    }
    fn ow(&self) -> usize {
        self.w + 2 * self.p - 2
    }
    /// The input gradient's convolution: `dy` by the flipped, transposed weights, padded so
    /// that its output is the input's size.
    fn transposed(&self) -> Dims {
        Dims { n: self.n, c: self.o, o: self.c, h: self.oh(), w: self.ow(), p: 2 - self.p }
    }
    /// Tile rows per chunk of a pass that transforms `positions` of the 16 at once (the
    /// weight gradient's tasks take 4, so 4x the tiles).
    fn chunk_rows(&self, positions: usize) -> usize {
        let tiles = (CHUNK_FLOATS / (positions * (self.c + self.o))).max(MIN_TILES);
        (tiles / self.ow().div_ceil(2)).max(1)
    }
    /// Floats of scratch a thread allocates: its chunk's `V` and `M`.
    fn chunk_floats(&self) -> usize {
        16 * (self.c + self.o) * self.chunk_rows(16) * self.ow().div_ceil(2)
    }
}

/// Whether these kernels take the convolution: 3x3, stride 1, dilation 1, one group, padding
/// at most 2 (so that the input gradient's, `2 - p`, is a padding too).
pub(super) fn applies(k: (usize, usize), stride: usize, padding: usize, dilation: usize, groups: usize) -> bool {
    k == (3, 3) && stride == 1 && dilation == 1 && groups == 1 && padding <= 2
}

/// Whether the ladder picks these kernels for `pass` where they apply. Forward and input
/// gradient: 32 channels and more on each side (fewer make GEMMs too small for their
/// transforms) and maps of 100 output pixels and more. On ResNet18's 7x7 stage a quarter of
/// the tiles' outputs fall outside the map and the 512-channel weights' transform is read
/// once per chunk: its forward took 21.2 against 17.2 ms for the implicit GEMM (AVX-512, a
/// Zen 4); from 14x14 to 56x56, 13.1-14.7 against 17.9-20.1 ms, and 12.3-14.3 against
/// 19.0-23.6 on the AVX2 build. Weight gradient: 128 channels and more on each side, on maps
/// of 7x7 and more (its GEMMs reduce over tiles, so small maps do not starve them): 18.0,
/// 17.8 and 18.2 ms against the best other algorithm's 19.4, 20.7 and 19.9 at 128 to 512
/// channels, but 19.5 against 18.4 at 64 (AVX-512; on AVX2 it wins at every stage, 16.8-22.0
/// against 20.7-23.3). Tuning's timings, `bench convs`, docs/BENCHMARKS.md, sixth session of
/// 2026-12-03.
pub(super) fn worthwhile(pass: Pass, d: &Dims) -> bool {
    let px = d.oh() * d.ow();
    match pass {
        Pass::WeightGrad => d.c >= 128 && d.o >= 128 && px >= 49,
        _ => d.c >= 32 && d.o >= 32 && px >= 100,
    }
}

/// Scratch floats of a pass (the transformed weights and every thread's chunk; the weight
/// gradient's position sums and its tasks' chunks are as large), for tuning's memory cap.
pub(super) fn scratch_floats(d: &Dims) -> usize {
    16 * d.c * d.o + rayon::current_num_threads() * d.chunk_floats()
}

/// Forward: `x (n, c, h, w)`, `wt (o, c, 3, 3)` -> `(n, o, oh, ow)`.
pub(super) fn forward(isa: Isa, x: &[f32], wt: &[f32], d: &Dims) -> Vec<f32> {
    let u = transform_weights(isa, d.o, d.c, |o, c| &wt[(o * d.c + c) * 9..][..9], false);
    run(isa, x, &u, d)
}

/// Input gradient: `dy (n, o, oh, ow)`, `wt (o, c, 3, 3)` -> `dx (n, c, h, w)`, the
/// convolution of `dy` (padded by `2 - p`) with the weights flipped and transposed.
pub(super) fn input_grad(isa: Isa, dy: &[f32], wt: &[f32], d: &Dims) -> Vec<f32> {
    let u = transform_weights(isa, d.c, d.o, |c, o| &wt[(o * d.c + c) * 9..][..9], true);
    run(isa, dy, &u, &d.transposed())
}

/// Weight gradient: `x (n, c, h, w)`, `dy (n, o, oh, ow)` -> `dw (o, c, 3, 3)`, the adjoint
/// of the forward's `A^T [(G g G^T) ⊙ V] A` in `g`: per transformed position `ξ`, `P[ξ]` is
/// the sum over tiles of `Z[ξ] V[ξ]^T` (`Z = A dY A^T`, each tile's 2x2 of `dy`
/// transformed; an `(o x tiles) (tiles x c)` GEMM per chunk), then `dw = G^T P G`, in
/// float64. Parallel over the four rows of `ξ`: each task transforms its row of every chunk
/// and adds the chunks in order, so the sums do not depend on the thread count. (Each task
/// still combines all four window rows of the input before keeping its own: the input
/// transform's first step runs four times, one reason the 64-channel weight gradient loses.)
pub(super) fn weight_grad(isa: Isa, x: &[f32], dy: &[f32], d: &Dims) -> Vec<f32> {
    let (oh, ow) = (d.oh(), d.ow());
    let (th, tw) = (oh.div_ceil(2), ow.div_ceil(2));
    assert_eq!(x.len(), d.n * d.c * d.h * d.w, "winograd: input of {} floats for {d:?}", x.len());
    assert_eq!(dy.len(), d.n * d.o * oh * ow, "winograd: output gradient of {} floats for {d:?}", dy.len());
    let rows = d.chunk_rows(4);
    let per = d.o * d.c;
    let mut p = vec![0f32; 16 * per];
    p.par_chunks_mut(4 * per).enumerate().for_each(|(k, p_k)| {
        let most = rows * tw;
        let (mut v, mut z) = (vec![0f32; 4 * d.c * most], vec![0f32; 4 * d.o * most]);
        for r0 in (0..d.n * th).step_by(rows) {
            let r1 = (r0 + rows).min(d.n * th);
            let tiles = (r1 - r0) * tw;
            transform_inputs(isa, x, d, (r0, r1), (k, k + 1), &mut v[..4 * d.c * tiles]);
            transform_grads(isa, dy, d, (r0, r1), k, &mut z[..4 * d.o * tiles]);
            for j in 0..4 {
                let a = Mat::row_major(&z[j * d.o * tiles..][..d.o * tiles], d.o, tiles);
                let b = Mat::transposed(&v[j * d.c * tiles..][..d.c * tiles], d.c, tiles);
                matmul(&mut p_k[j * per..][..per], r0 > 0, a, b, gemm::Parallelism::None);
            }
        }
    });
    let mut dw = vec![0f32; 9 * per];
    dw.par_chunks_mut(9).with_min_len(256).enumerate().for_each(|(oc, k)| {
        let at = |xi: usize| f64::from(p[xi * per + oc]);
        // G^T P G: down the rows of P, then across its columns; G^T = [[1, 1/2, 1/2, 0],
        // [0, 1/2, -1/2, 0], [0, 1/2, 1/2, 1]].
        let gt = |a: f64, b: f64, c: f64, e: f64| [a + (b + c) * 0.5, (b - c) * 0.5, (b + c) * 0.5 + e];
        let cols: [[f64; 3]; 4] = std::array::from_fn(|j| gt(at(j), at(4 + j), at(8 + j), at(12 + j)));
        for y in 0..3 {
            let row = gt(cols[0][y], cols[1][y], cols[2][y], cols[3][y]);
            for (x, v) in row.into_iter().enumerate() {
                k[3 * y + x] = v as f32;
            }
        }
    });
    dw
}

/// `Z (4, o, tiles)`: row `k` of each tile's `A dY A^T` for tile rows `r0..r1`, `A^T = [[1,
/// 1, 1, 0], [0, 1, -1, -1]]`, the tile's 2x2 of `dy` zero past the output's edge: down
/// the tile's two rows for whole rows at once (`[top, top + bottom, top - bottom,
/// -bottom]`), then across even and odd columns (`[e, e + o, e - o, -o]`).
#[inline(always)]
fn transform_grads_body(dy: &[f32], d: &Dims, (r0, r1): (usize, usize), k: usize, z: &mut [f32]) {
    let (oh, ow) = (d.oh(), d.ow());
    let (th, tw) = (oh.div_ceil(2), ow.div_ceil(2));
    let tiles = (r1 - r0) * tw;
    // Two columns per tile; the last one zero where ow is odd.
    let mut row = vec![0f32; 2 * tw];
    let (mut even, mut odd) = (vec![0f32; tw], vec![0f32; tw]);
    for r in r0..r1 {
        let (i, ty) = (r / th, r % th);
        let t0 = (r - r0) * tw;
        for o in 0..d.o {
            let plane = &dy[(i * d.o + o) * oh * ow..][..oh * ow];
            let top = &plane[2 * ty * ow..][..ow];
            let bottom = (2 * ty + 1 < oh).then(|| &plane[(2 * ty + 1) * ow..][..ow]);
            let dst = &mut row[..ow];
            match (k, bottom) {
                (0, _) | (1 | 2, None) => dst.copy_from_slice(top),
                (_, None) => dst.fill(0.0),
                (1, Some(b)) => dst.iter_mut().zip(top).zip(b).for_each(|((v, t), b)| *v = t + b),
                (2, Some(b)) => dst.iter_mut().zip(top).zip(b).for_each(|((v, t), b)| *v = t - b),
                (_, Some(b)) => dst.iter_mut().zip(b).for_each(|(v, b)| *v = -b),
            }
            for ((e, od), pair) in even.iter_mut().zip(odd.iter_mut()).zip(row.chunks_exact(2)) {
                (*e, *od) = (pair[0], pair[1]);
            }
            let out = |j: usize| (j * d.o + o) * tiles + t0;
            z[out(0)..][..tw].copy_from_slice(&even);
            for (v, (e, od)) in z[out(1)..][..tw].iter_mut().zip(even.iter().zip(&odd)) {
                *v = e + od;
            }
            for (v, (e, od)) in z[out(2)..][..tw].iter_mut().zip(even.iter().zip(&odd)) {
                *v = e - od;
            }
            for (v, od) in z[out(3)..][..tw].iter_mut().zip(&odd) {
                *v = -od;
            }
        }
    }
}

simd_dispatch!(
    /// [`transform_grads_body`] for this CPU.
    fn transform_grads(dy: &[f32], d: &Dims, rows: (usize, usize), k: usize, z: &mut [f32]) -> () = transform_grads_body
);

/// `U (outs, 16, ins)`: `G g G^T` of each 3x3 kernel `at(out, in)` (flipped, `flip`), in
/// float64, rounded once. `G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]`.
/// Each output's kernels are first gathered tap-major, so that the transform runs over
/// contiguous runs of inputs (it vectorises; per kernel it took a tenth of a 512-channel
/// 7x7 forward).
fn transform_weights<'a>(
    isa: Isa,
    outs: usize,
    ins: usize,
    at: impl Fn(usize, usize) -> &'a [f32] + Sync,
    flip: bool,
) -> Vec<f32> {
    let mut u = vec![0f32; outs * 16 * ins];
    u.par_chunks_mut(16 * ins).enumerate().for_each(|(out, u_out)| {
        let mut taps = vec![0f32; 9 * ins];
        for i in 0..ins {
            let k = at(out, i);
            for t in 0..9 {
                taps[t * ins + i] = k[if flip { 8 - t } else { t }];
            }
        }
        transform_kernels(isa, &taps, u_out);
    });
    u
}

/// `u (16, ins)` from `taps (9, ins)`: [`transform_weights`] for one output's kernels.
#[inline(always)]
fn transform_kernels_body(taps: &[f32], u: &mut [f32]) {
    let ins = taps.len() / 9;
    let g = |t: usize| &taps[t * ins..][..ins];
    for i in 0..ins {
        let w = |y: usize, x: usize| f64::from(g(3 * y + x)[i]);
        // G g: the window's rows transformed, per column; then across the columns.
        let gg: [[f64; 4]; 3] = std::array::from_fn(|x| g4(w(0, x), w(1, x), w(2, x)));
        for r in 0..4 {
            let row = g4(gg[0][r], gg[1][r], gg[2][r]);
            for (j, v) in row.into_iter().enumerate() {
                u[(4 * r + j) * ins + i] = v as f32;
            }
        }
    }
}

/// `G` applied to three values.
#[inline(always)]
fn g4(a: f64, b: f64, c: f64) -> [f64; 4] {
    [a, (a + b + c) * 0.5, (a - b + c) * 0.5, c]
}

simd_dispatch!(
    /// [`transform_kernels_body`] for this CPU.
    fn transform_kernels(taps: &[f32], u: &mut [f32]) -> () = transform_kernels_body
);

thread_local! {
    /// A thread's chunk buffers (`V` and `M`), kept between calls.
    static CHUNK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The output, written by chunks on several threads: each writes only the output rows of its
/// own tiles (see `run`).
type Out = SendPtr;

/// The convolution `d` of `x` by the transformed weights `u`.
fn run(isa: Isa, x: &[f32], u: &[f32], d: &Dims) -> Vec<f32> {
    let (oh, ow) = (d.oh(), d.ow());
    let (th, tw) = (oh.div_ceil(2), ow.div_ceil(2));
    let len = d.n * d.o * oh * ow;
    assert_eq!(x.len(), d.n * d.c * d.h * d.w, "winograd: input of {} floats for {d:?}", x.len());
    assert_eq!(u.len(), 16 * d.o * d.c, "winograd: transformed weights");
    let mut out: Vec<f32> = Vec::with_capacity(len);
    if cfg!(debug_assertions) || super::super::poisoned() {
        out.resize(len, f32::NAN);
        out.clear();
    }
    let ptr = SendPtr(out.as_mut_ptr());
    let rows = d.chunk_rows(16);
    let chunks: Vec<usize> = (0..d.n * th).step_by(rows).collect();
    chunks.into_par_iter().for_each(|r0| {
        let r1 = (r0 + rows).min(d.n * th);
        let tiles = (r1 - r0) * tw;
        CHUNK.with(|buf| {
            let mut buf = buf.borrow_mut();
            let need = 16 * (d.c + d.o) * tiles;
            if buf.len() < need {
                buf.resize(need, 0.0);
            }
            let (v, m) = buf[..need].split_at_mut(16 * d.c * tiles);
            transform_inputs(isa, x, d, (r0, r1), (0, 4), v);
            for xi in 0..16 {
                let a = Mat::strided(&u[xi * d.c..], d.o, d.c, 16 * d.c, 1);
                let b = Mat::row_major(&v[xi * d.c * tiles..][..d.c * tiles], d.c, tiles);
                // SAFETY: MaybeUninit<f32> has f32's layout; the GEMM writes every element.
                let dst = unsafe {
                    &mut *(&mut m[xi * d.o * tiles..][..d.o * tiles] as *mut [f32] as *mut [MaybeUninit<f32>])
                };
                matmul_over(dst, a, b, gemm::Parallelism::None);
            }
            // SAFETY: this chunk's tile rows (r0..r1) own output rows 2 ty and 2 ty + 1 of
            // their sample in every output channel; no other chunk writes them.
            unsafe { transform_outputs(isa, m, d, (r0, r1), ptr) };
        });
    });
    // SAFETY: the chunks cover every tile row of every sample, and each writes both of its
    // output rows (the second where oh has it) in full, in every output channel.
    unsafe { out.set_len(len) };
    out
}

/// `V (4 (k1 - k0), c, tiles)` of tile rows `r0..r1` (row `r`: sample `r / th`, tile row
/// `r % th`): rows `k0..k1` of each tile's `B^T d B` (its 4x4 window transformed), `B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0],
/// [0, 1, 0, -1]]`: down the window's rows for whole padded rows at once, then across its
/// columns for every tile of the row, split into even and odd columns so that each of the
/// 16 results is a contiguous run (the loops vectorise).
#[inline(always)]
fn transform_inputs_body(x: &[f32], d: &Dims, (r0, r1): (usize, usize), (k0, k1): (usize, usize), v: &mut [f32]) {
    let (th, tw) = (d.oh().div_ceil(2), d.ow().div_ceil(2));
    let tiles = (r1 - r0) * tw;
    // Padded rows cover input columns -p .. 2 tw + 2 - p: every window of the row's tiles.
    let width = 2 * tw + 2;
    let cols = d.w.min(width - d.p);
    let mut rows = vec![0f32; 4 * width];
    let (mut even, mut odd) = (vec![0f32; tw + 1], vec![0f32; tw + 1]);
    for r in r0..r1 {
        let (i, ty) = (r / th, r % th);
        let t0 = (r - r0) * tw;
        for c in 0..d.c {
            let plane = &x[(i * d.c + c) * d.h * d.w..][..d.h * d.w];
            for (k, row) in rows.chunks_exact_mut(width).enumerate() {
                row.fill(0.0);
                if let Some(y) = (2 * ty + k).checked_sub(d.p).filter(|&y| y < d.h) {
                    row[d.p..d.p + cols].copy_from_slice(&plane[y * d.w..][..cols]);
                }
            }
            let (d0, rest) = rows.split_at_mut(width);
            let (d1, rest) = rest.split_at_mut(width);
            let (d2, d3) = rest.split_at_mut(width);
            // Down the rows, in place: [d0 - d2, d1 + d2, d2 - d1, d1 - d3].
            for (((a, b), cc), dd) in d0.iter_mut().zip(d1.iter_mut()).zip(d2.iter_mut()).zip(d3.iter_mut()) {
                let (va, vb, vc, vd) = (*a, *b, *cc, *dd);
                (*a, *b, *cc, *dd) = (va - vc, vb + vc, vc - vb, vb - vd);
            }
            for (k, row) in rows.chunks_exact(width).enumerate().take(k1).skip(k0) {
                for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(row.chunks_exact(2)) {
                    (*e, *o) = (pair[0], pair[1]);
                }
                // Across the columns: tile tx reads columns 2 tx .. 2 tx + 3, that is even[tx],
                // odd[tx], even[tx + 1], odd[tx + 1].
                let out = |j: usize| (4 * (k - k0) + j) * d.c * tiles + c * tiles + t0;
                let (a, b) = (&even[..tw], &odd[..tw]);
                let (cc, dd) = (&even[1..], &odd[1..]);
                for (dst, (x0, x2)) in v[out(0)..][..tw].iter_mut().zip(a.iter().zip(cc)) {
                    *dst = x0 - x2;
                }
                for (dst, (x1, x2)) in v[out(1)..][..tw].iter_mut().zip(b.iter().zip(cc)) {
                    *dst = x1 + x2;
                }
                for (dst, (x1, x2)) in v[out(2)..][..tw].iter_mut().zip(b.iter().zip(cc)) {
                    *dst = x2 - x1;
                }
                for (dst, (x1, x3)) in v[out(3)..][..tw].iter_mut().zip(b.iter().zip(dd)) {
                    *dst = x1 - x3;
                }
            }
        }
    }
}

simd_dispatch!(
    /// [`transform_inputs_body`] for this CPU.
    fn transform_inputs(x: &[f32], d: &Dims, rows: (usize, usize), ks: (usize, usize), v: &mut [f32]) -> () = transform_inputs_body
);

/// Writes the output rows of tile rows `r0..r1` from `M (16, o, tiles)`: per tile
/// `A^T m A`, `A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]`, for every tile of a row at once into
/// `row` (two runs of even and odd columns per output row), then interleaved and cropped.
///
/// # Safety
/// `out` holds `(n, o, oh, ow)` floats, and nobody else accesses these tile rows' output rows
/// meanwhile.
#[inline(always)]
unsafe fn transform_outputs_body(m: &[f32], d: &Dims, (r0, r1): (usize, usize), out: Out) {
    let (oh, ow) = (d.oh(), d.ow());
    let (th, tw) = (oh.div_ceil(2), ow.div_ceil(2));
    let tiles = (r1 - r0) * tw;
    // [top even, top odd, bottom even, bottom odd] columns of a tile row's outputs, and the
    // sums down the tile's rows (per column j of m).
    let mut y = vec![0f32; 4 * tw];
    let mut s = vec![0f32; 8 * tw];
    for o in 0..d.o {
        for r in r0..r1 {
            let (i, ty) = (r / th, r % th);
            let t0 = (r - r0) * tw;
            let e = |xi: usize| &m[(xi * d.o + o) * tiles + t0..][..tw];
            let (s0, s1) = s.split_at_mut(4 * tw);
            for j in 0..4 {
                let (m0, m1, m2, m3) = (e(j), e(4 + j), e(8 + j), e(12 + j));
                let (a, b) = (&mut s0[j * tw..][..tw], &mut s1[j * tw..][..tw]);
                for t in 0..tw {
                    a[t] = m0[t] + m1[t] + m2[t];
                    b[t] = m1[t] - m2[t] - m3[t];
                }
            }
            for (half, sums) in [&*s0, &*s1].into_iter().enumerate() {
                let (c0, c1, c2, c3) = (&sums[..tw], &sums[tw..2 * tw], &sums[2 * tw..3 * tw], &sums[3 * tw..]);
                let (ye, yo) = y[2 * half * tw..][..2 * tw].split_at_mut(tw);
                for t in 0..tw {
                    ye[t] = c0[t] + c1[t] + c2[t];
                    yo[t] = c1[t] - c2[t] - c3[t];
                }
            }
            for half in 0..2 {
                let yy = 2 * ty + half;
                if yy >= oh {
                    continue;
                }
                let (ye, yo) = (&y[2 * half * tw..][..tw], &y[(2 * half + 1) * tw..][..tw]);
                // SAFETY: the caller's; row yy of plane (i, o) lies in the output.
                let row = unsafe { std::slice::from_raw_parts_mut(out.get().add(((i * d.o + o) * oh + yy) * ow), ow) };
                for ((pair, &a), &b) in row.chunks_exact_mut(2).zip(ye).zip(yo) {
                    pair[0] = a;
                    pair[1] = b;
                }
                if ow % 2 == 1 {
                    row[ow - 1] = ye[tw - 1];
                }
            }
        }
    }
}

/// [`transform_outputs_body`] for this CPU.
///
/// # Safety
/// As [`transform_outputs_body`].
unsafe fn transform_outputs(isa: Isa, m: &[f32], d: &Dims, rows: (usize, usize), out: Out) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
        unsafe fn v4(m: &[f32], d: &Dims, rows: (usize, usize), out: Out) {
            // SAFETY: the caller's.
            unsafe { transform_outputs_body(m, d, rows, out) }
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn v3(m: &[f32], d: &Dims, rows: (usize, usize), out: Out) {
            // SAFETY: the caller's.
            unsafe { transform_outputs_body(m, d, rows, out) }
        }
        match isa.level() {
            // SAFETY: `isa` proves the CPU has v4's features; the rest is the caller's.
            Level::Avx512 => return unsafe { v4(m, d, rows, out) },
            // SAFETY: as above, for v3.
            Level::Avx2 => return unsafe { v3(m, d, rows, out) },
            Level::Baseline => {}
        }
    }
    // SAFETY: the caller's.
    unsafe { transform_outputs_body(m, d, rows, out) }
}
