//! im2col + GEMM convolution, the algorithm for every geometry the specialised kernels do not
//! take: per sample (one im2col matrix and one GEMM per group, parallel over the batch) or
//! batched (every sample's columns side by side in one matrix, one GEMM on all cores, for
//! small maps where a per-sample GEMM would run far below peak). The input gradient folds
//! the columns back with col2im. The GEMM is the `gemm` crate's (candle's own, with AVX-512
//! kernels), through matrix views that carry and check their extents.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::Geometry;
use crate::ops::{par_chunks_written, par_chunks_zeroed, write_slice};

/// Unfolds one sample's channels `[c0, c0 + cg)` into `col` (k x l, row-major).
fn im2col(x: &[f32], g: &Geometry, c0: usize, col: &mut [f32]) {
    assert!(col.len() >= g.k() * g.l());
    // SAFETY: col holds k rows of l floats and is exclusively borrowed.
    unsafe { im2col_raw(x, g, c0, col.as_mut_ptr(), g.l()) }
}

/// [`im2col`] writing row `r` at `col + r * row_stride`, so that several samples can fill
/// side-by-side column blocks of one `k x (n * l)` matrix.
///
/// # Safety
/// `col + r * row_stride + j` must be valid for writes for every `r < k`, `j < l`, and
/// written by no one else meanwhile.
unsafe fn im2col_raw(x: &[f32], g: &Geometry, c0: usize, col: *mut f32, row_stride: usize) {
    let (s, p, d) = (g.p.stride as isize, g.p.padding as isize, g.p.dilation as isize);
    for c in 0..g.cg() {
        let plane = &x[(c0 + c) * g.h * g.w..(c0 + c + 1) * g.h * g.w];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = (c * g.kh + ki) * g.kw + kj;
                // SAFETY: the caller guarantees this row of l floats is ours to write.
                let dst = unsafe { std::slice::from_raw_parts_mut(col.add(row * row_stride), g.l()) };
                for oy in 0..g.oh {
                    let iy = oy as isize * s - p + ki as isize * d;
                    let out_row = &mut dst[oy * g.ow..(oy + 1) * g.ow];
                    if iy < 0 || iy >= g.h as isize {
                        out_row.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    let x0 = kj as isize * d - p;
                    if s == 1 {
                        // Stride 1: zeros where the window hangs over the padding, one copy of
                        // the in-bounds run between.
                        let lo = ((-x0).max(0) as usize).min(g.ow);
                        let hi = ((g.w as isize - x0).max(0) as usize).clamp(lo, g.ow);
                        out_row[..lo].fill(0.0);
                        if lo < hi {
                            let at = (lo as isize + x0) as usize;
                            out_row[lo..hi].copy_from_slice(&src[at..at + (hi - lo)]);
                        }
                        out_row[hi..].fill(0.0);
                        continue;
                    }
                    // Strided: zeros outside [lo, hi), a gather of every s-th input between
                    // (no test per pixel, so that it vectorises: the stem's im2col was a quarter
                    // of its weight gradient).
                    let (lo, hi) = strided_run(x0, s, g.w, g.ow);
                    out_row[..lo].fill(0.0);
                    out_row[hi..].fill(0.0);
                    if lo < hi {
                        let at = (lo as isize * s + x0) as usize;
                        let src = &src[at..at + (hi - lo - 1) * s as usize + 1];
                        gather_every(src, s as usize, &mut out_row[lo..hi]);
                    }
                }
            }
        }
    }
}

/// The outputs `[lo, hi)` of a row whose input column `ox * s + x0` lies in `[0, w)`
/// (`lo <= hi <= ow`).
fn strided_run(x0: isize, s: isize, w: usize, ow: usize) -> (usize, usize) {
    let lo = ((-x0).max(0) as usize).div_ceil(s as usize).min(ow);
    let hi = ((w as isize - x0).max(0) as usize).div_ceil(s as usize).clamp(lo, ow);
    (lo, hi)
}

/// `dst[i] = src[i * s]`; stride 2 (every strided conv in the model zoo) as pairs, which
/// the compiler turns into shuffles rather than one load per element.
fn gather_every(src: &[f32], s: usize, dst: &mut [f32]) {
    if s == 2 {
        dst.iter_mut().zip(src.chunks(2)).for_each(|(d, pair)| *d = pair[0]);
    } else {
        dst.iter_mut().zip(src.iter().step_by(s)).for_each(|(d, v)| *d = *v);
    }
}

/// One sample's im2col matrix (k x l) for group channels `[c0, c0 + cg)`: the input itself for
/// a pointwise conv, else unfolded into `col`.
fn group_columns<'a>(x_n: &'a [f32], g: &Geometry, c0: usize, col: &'a mut [f32]) -> &'a [f32] {
    if g.is_pointwise() {
        &x_n[c0 * g.l()..(c0 + g.cg()) * g.l()]
    } else {
        im2col(x_n, g, c0, col);
        col
    }
}

/// Folds `col` (k rows of l, row `r` at `r * row_stride`) back onto one sample's channels
/// `[c0, c0 + cg)`, adding overlaps.
fn col2im(col: &[f32], g: &Geometry, c0: usize, dx: &mut [f32], row_stride: usize) {
    let (l, s, p, d) = (g.l(), g.p.stride as isize, g.p.padding as isize, g.p.dilation as isize);
    for c in 0..g.cg() {
        let plane = &mut dx[(c0 + c) * g.h * g.w..(c0 + c + 1) * g.h * g.w];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = ((c * g.kh + ki) * g.kw + kj) * row_stride;
                let src = &col[row..row + l];
                for oy in 0..g.oh {
                    let iy = oy as isize * s - p + ki as isize * d;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let dst = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    let x0 = kj as isize * d - p;
                    if s == 1 {
                        // Stride 1: the in-bounds outputs map to one run of the input row.
                        let lo = (-x0).max(0) as usize;
                        let hi = (g.w as isize - x0).clamp(0, g.ow as isize) as usize;
                        if lo < hi {
                            let at = (lo as isize + x0) as usize;
                            let run = &src[oy * g.ow + lo..oy * g.ow + hi];
                            dst[at..at + run.len()].iter_mut().zip(run).for_each(|(a, v)| *a += v);
                        }
                        continue;
                    }
                    let (lo, hi) = strided_run(x0, s, g.w, g.ow);
                    if lo < hi {
                        let at = (lo as isize * s + x0) as usize;
                        let run = &src[oy * g.ow + lo..oy * g.ow + hi];
                        let dst = &mut dst[at..at + (hi - lo - 1) * s as usize + 1];
                        dst.iter_mut().step_by(s as usize).zip(run).for_each(|(a, v)| *a += v);
                    }
                }
            }
        }
    }
}

/// A matrix view for [`matmul`]: `rows x cols`, element (i, j) at `i * rs + j * cs` of a
/// slice. Made only by [`Mat::row_major`], [`Mat::transposed`] and [`Mat::strided`], which
/// check that every element lies inside the slice: a view is sound by construction.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    fn new(data: &'a [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        let last = if rows == 0 || cols == 0 { 0 } else { (rows - 1) * rs + (cols - 1) * cs + 1 };
        assert!(last <= data.len(), "matrix view {rows}x{cols} (strides {rs}, {cs}) past a slice of {}", data.len());
        Self { data, rows, cols, rs, cs }
    }

    /// The `rows x cols` matrix at the start of `data` with rows `rs` and columns `cs` apart.
    pub(crate) fn strided(data: &'a [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        Self::new(data, rows, cols, rs, cs)
    }

    /// The `rows x cols` row-major matrix at the start of `data`.
    pub(crate) fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::new(data, rows, cols, cols, 1)
    }

    /// The transpose (`cols x rows`) of the `rows x cols` row-major matrix at the start of
    /// `data`.
    pub(crate) fn transposed(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::new(data, cols, rows, 1, cols)
    }
}

/// `dst (+)= a * b` with `dst` row-major `a.rows x b.cols`, through `gemm` on `threads`
/// (callers that parallelise over samples pass `gemm::Parallelism::None`). Every extent is
/// checked, here and in [`Mat`]'s constructors.
pub(crate) fn matmul(dst: &mut [f32], accumulate: bool, a: Mat, b: Mat, threads: gemm::Parallelism) {
    assert!(dst.len() >= a.rows * b.cols, "matmul: destination of {} floats for {}x{}", dst.len(), a.rows, b.cols);
    // SAFETY: dst holds the a.rows x b.cols floats (checked above), initialised, and is a
    // unique borrow.
    unsafe { gemm_into(dst.as_mut_ptr(), accumulate, a, b, threads) }
}

/// `dst = a * b` into uninitialised floats: with `accumulate` off, `gemm` writes each element
/// of the destination without reading it first (its `alpha` is zero for the first block of the
/// inner dimension, and later blocks add to what the first wrote).
pub(super) fn matmul_over(dst: &mut [MaybeUninit<f32>], a: Mat, b: Mat, threads: gemm::Parallelism) {
    assert!(dst.len() >= a.rows * b.cols, "matmul: destination of {} floats for {}x{}", dst.len(), a.rows, b.cols);
    // SAFETY: dst holds the a.rows x b.cols floats (checked above) and is a unique borrow; with
    // accumulate off nothing is read from it before it is written.
    unsafe { gemm_into(dst.as_mut_ptr().cast(), false, a, b, threads) }
}

/// # Safety
/// `dst` must be valid for writes (and, with `accumulate`, initialised reads) of `a.rows x
/// b.cols` floats, row-major, and used by no one else meanwhile.
unsafe fn gemm_into(dst: *mut f32, accumulate: bool, a: Mat, b: Mat, threads: gemm::Parallelism) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "matmul: inner dimensions {}x{} * {}x{}", a.rows, a.cols, b.rows, b.cols);
    // SAFETY: a and b address rows x cols elements inside their slices (checked by Mat::new);
    // dst as the caller guarantees; gemm reads and writes nothing else.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            threads,
        )
    }
}

const ONE_THREAD: gemm::Parallelism = gemm::Parallelism::None;
pub(crate) const ALL_THREADS: gemm::Parallelism = gemm::Parallelism::Rayon(0);

thread_local! {
    /// Per-thread im2col buffer, reused across calls.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer of `len` floats (contents arbitrary). Allocating
/// a fresh multi-megabyte column buffer per sample made the kernel zero new pages on every
/// call (a fifth of a ResNet18 step in perf); the buffer is kept instead.
pub(super) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0.0);
        }
        f(&mut s[..len])
    })
}

thread_local! {
    /// The batched path's column matrix and its gathered output / gradient, reused.
    static BATCH_COL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    static BATCH_TMP: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn with_batch_buffers<R>(col_len: usize, tmp_len: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    BATCH_COL.with(|c| {
        BATCH_TMP.with(|t| {
            let (mut c, mut t) = (c.borrow_mut(), t.borrow_mut());
            if c.len() < col_len {
                c.resize(col_len, 0.0);
            }
            if t.len() < tmp_len {
                t.resize(tmp_len, 0.0);
            }
            f(&mut c[..col_len], &mut t[..tmp_len])
        })
    })
}

/// A pointer that may cross threads: each task writes a disjoint set of positions.
#[derive(Clone, Copy)]
pub(super) struct SendPtr(pub(super) *mut f32);
// SAFETY: only used for writes to positions no other task touches (see the call sites).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// Through a method, so closures capture the whole (Send) wrapper, not its raw field.
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

/// Fills `col` (k x n*l) with every sample's columns for group channels `[c0, c0 + cg)`.
fn im2col_batch(x: &[f32], g: &Geometry, c0: usize, col: &mut [f32]) {
    assert!(col.len() >= g.k() * g.n * g.l());
    let (nl, ptr) = (g.n * g.l(), SendPtr(col.as_mut_ptr()));
    (0..g.n).into_par_iter().for_each(|n| {
        // SAFETY: sample n writes columns [n*l, (n+1)*l) of each row, disjoint from the others.
        unsafe { im2col_raw(&x[n * g.in_len()..(n + 1) * g.in_len()], g, c0, ptr.get().add(n * g.l()), nl) }
    });
}

/// Gathers group `grp` of `t (n, o, l)` into `dst (og x n*l)`.
fn gather_group(t: &[f32], g: &Geometry, grp: usize, dst: &mut [f32]) {
    let (l, og, nl) = (g.l(), g.og(), g.n * g.l());
    dst.par_chunks_mut(nl).enumerate().for_each(|(o, row)| {
        for n in 0..g.n {
            let src = n * g.out_len() + (grp * og + o) * l;
            row[n * l..(n + 1) * l].copy_from_slice(&t[src..src + l]);
        }
    });
}

/// Forward, per sample: `out (n, o, oh, ow)`.
pub(super) fn forward(x: &[f32], wt: &[f32], g: &Geometry) -> Vec<f32> {
    let (k, l, og) = (g.k(), g.l(), g.og());
    let scratch = if g.is_pointwise() { 0 } else { k * l };
    let per_sample = |n: usize, out_n: &mut [MaybeUninit<f32>]| {
        let x_n = &x[n * g.in_len()..(n + 1) * g.in_len()];
        with_scratch(scratch, |col| {
            for grp in 0..g.p.groups {
                let cols = group_columns(x_n, g, grp * g.cg(), col);
                let w_g = Mat::row_major(&wt[grp * og * k..], og, k);
                let dst = &mut out_n[grp * og * l..(grp + 1) * og * l];
                matmul_over(dst, w_g, Mat::row_major(cols, k, l), ONE_THREAD);
            }
        })
    };
    // SAFETY: the groups' GEMMs write og x l floats each, side by side: out_len in all.
    unsafe { par_chunks_written(g.n * g.out_len(), g.out_len(), per_sample) }
}

/// Input gradient, per sample: `dx (n, c, h, w)`.
pub(super) fn input_grad(dy: &[f32], wt: &[f32], g: &Geometry) -> Vec<f32> {
    let (k, l, og) = (g.k(), g.l(), g.og());
    let scratch = if g.is_pointwise() { 0 } else { k * l };
    par_chunks_zeroed(g.n * g.in_len(), g.in_len(), |n, dx_n| {
        let dy_n = &dy[n * g.out_len()..(n + 1) * g.out_len()];
        with_scratch(scratch, |col| {
            for grp in 0..g.p.groups {
                let c0 = grp * g.cg();
                // dcol (k x l) = w_g^T (k x og) * dy_g (og x l)
                let w_t = Mat::transposed(&wt[grp * og * k..], og, k);
                let dy_g = Mat::row_major(&dy_n[grp * og * l..], og, l);
                if g.is_pointwise() {
                    matmul(&mut dx_n[c0 * l..(c0 + g.cg()) * l], false, w_t, dy_g, ONE_THREAD);
                } else {
                    matmul(col, false, w_t, dy_g, ONE_THREAD);
                    col2im(col, g, c0, dx_n, l);
                }
            }
        })
    })
}

/// Samples are summed in this many fixed slices, whatever the thread count, so a weight
/// gradient (a reduction over the batch) is bit-identical from run to run.
const WEIGHT_GRAD_SLICES: usize = 8;

/// `sum over samples of per_sample(n, dw)`: each fixed slice of samples accumulates into its
/// own `w_len` floats (`accumulate(slice, dw)`), the slices are then added in order.
pub(super) fn sum_over_samples(
    g: &Geometry,
    w_len: usize,
    accumulate: impl Fn(&[usize], &mut [f32]) + Sync,
) -> Vec<f32> {
    let samples: Vec<usize> = (0..g.n).collect();
    let partials: Vec<Vec<f32>> = samples
        .par_chunks(g.n.div_ceil(WEIGHT_GRAD_SLICES).max(1))
        .map(|slice| {
            let mut dw = vec![0f32; w_len];
            accumulate(slice, &mut dw);
            dw
        })
        .collect();
    let mut parts = partials.into_iter();
    let mut total = parts.next().unwrap_or_else(|| vec![0f32; w_len]);
    for p in parts {
        total.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
    }
    total
}

/// A weight gradient with at most this many output channels per group transposes its im2col
/// columns to row-major `cols^T` before the GEMM. With few output rows, gemm spent a quarter
/// of a ResNeXt step (g >= 4) transposing `cols` while packing, block after block; one
/// blocked transpose up front costs less. With more rows (ResNet18's convs, 64 and up) the
/// packing amortises and the extra pass only costs (measured: 15 against 18 images/s).
const TRANSPOSE_COLS_BELOW: usize = 32;

/// `dst (cols x rows) = src (rows x cols)^T`, in cache-sized tiles.
pub(super) fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    assert!(src.len() >= rows * cols && dst.len() >= rows * cols);
    const TILE: usize = 32;
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    dst[c * rows + r] = src[r * cols + c];
                }
            }
        }
    }
}

/// Weight gradient, per sample: `dw (o, c / groups, kh, kw)`.
pub(super) fn weight_grad(x: &[f32], dy: &[f32], g: &Geometry) -> Vec<f32> {
    let (k, l, og) = (g.k(), g.l(), g.og());
    sum_over_samples(g, g.o * k, |slice, dw| {
        with_scratch(if g.is_pointwise() { 0 } else { k * l }, |col| {
            let mut cols_t: Vec<f32> = Vec::new();
            for &n in slice {
                let x_n = &x[n * g.in_len()..(n + 1) * g.in_len()];
                let dy_n = &dy[n * g.out_len()..(n + 1) * g.out_len()];
                for grp in 0..g.p.groups {
                    let cols = group_columns(x_n, g, grp * g.cg(), col);
                    let dy_g = Mat::row_major(&dy_n[grp * og * l..], og, l);
                    let dst = &mut dw[grp * og * k..(grp + 1) * og * k];
                    // dw_g (og x k) += dy_g (og x l) * cols^T (l x k)
                    let rhs = if og <= TRANSPOSE_COLS_BELOW {
                        cols_t.resize(k * l, 0.0);
                        transpose(cols, k, l, &mut cols_t);
                        Mat::row_major(&cols_t, l, k)
                    } else {
                        Mat::transposed(cols, k, l)
                    };
                    matmul(dst, true, dy_g, rhs, ONE_THREAD);
                }
            }
        })
    })
}

/// Forward, batched: one GEMM per group over every sample's columns.
pub(super) fn forward_batched(x: &[f32], wt: &[f32], g: &Geometry) -> Vec<f32> {
    let (k, l, og, nl) = (g.k(), g.l(), g.og(), g.n * g.l());
    with_batch_buffers(k * nl, og * nl, |col, tmp| {
        let mut out = Vec::new();
        for grp in 0..g.p.groups {
            im2col_batch(x, g, grp * g.cg(), col);
            let w_g = Mat::row_major(&wt[grp * og * k..], og, k);
            matmul(tmp, false, w_g, Mat::row_major(col, k, nl), ALL_THREADS);
            let tmp: &[f32] = tmp;
            let row = |n: usize, o: usize| &tmp[o * nl + n * l..o * nl + (n + 1) * l];
            if g.p.groups == 1 {
                // SAFETY: the og rows of l floats are the whole sample's output.
                out = unsafe {
                    par_chunks_written(g.n * g.out_len(), g.out_len(), |n, out_n| {
                        out_n.chunks_exact_mut(l).enumerate().for_each(|(o, dst)| write_slice(dst, row(n, o)));
                    })
                };
            } else {
                if grp == 0 {
                    out = par_chunks_zeroed(g.n * g.out_len(), g.out_len(), |_, _| {});
                }
                out.par_chunks_mut(g.out_len()).enumerate().for_each(|(n, out_n)| {
                    for o in 0..og {
                        let dst = (grp * og + o) * l;
                        out_n[dst..dst + l].copy_from_slice(row(n, o));
                    }
                });
            }
        }
        out
    })
}

/// Weight gradient, batched.
pub(super) fn weight_grad_batched(x: &[f32], dy: &[f32], g: &Geometry) -> Vec<f32> {
    let (k, og, nl) = (g.k(), g.og(), g.n * g.l());
    let mut dw = vec![0f32; g.o * k];
    with_batch_buffers(k * nl, og * nl, |col, dy_g| {
        for grp in 0..g.p.groups {
            im2col_batch(x, g, grp * g.cg(), col);
            gather_group(dy, g, grp, dy_g);
            let dst = &mut dw[grp * og * k..(grp + 1) * og * k];
            // dw_g (og x k) = dy_g (og x nl) * col^T (nl x k)
            matmul(dst, false, Mat::row_major(dy_g, og, nl), Mat::transposed(col, k, nl), ALL_THREADS);
        }
    });
    dw
}

/// Input gradient, batched.
pub(super) fn input_grad_batched(dy: &[f32], wt: &[f32], g: &Geometry) -> Vec<f32> {
    let (k, og, nl) = (g.k(), g.og(), g.n * g.l());
    with_batch_buffers(k * nl, og * nl, |col, dy_g| {
        let mut dx = Vec::new();
        for grp in 0..g.p.groups {
            gather_group(dy, g, grp, dy_g);
            // dcol (k x nl) = w_g^T (k x og) * dy_g (og x nl)
            let w_t = Mat::transposed(&wt[grp * og * k..], og, k);
            matmul(col, false, w_t, Mat::row_major(dy_g, og, nl), ALL_THREADS);
            let col: &[f32] = col;
            let fold = |n: usize, dx_n: &mut [f32]| col2im(&col[n * g.l()..], g, grp * g.cg(), dx_n, nl);
            if grp == 0 {
                dx = par_chunks_zeroed(g.n * g.in_len(), g.in_len(), fold);
            } else {
                dx.par_chunks_mut(g.in_len()).enumerate().for_each(|(n, dx_n)| fold(n, dx_n));
            }
        }
        dx
    })
}
