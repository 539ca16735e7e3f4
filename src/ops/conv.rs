//! 2-D convolution (groups, stride, padding, dilation) as a candle custom op: im2col + GEMM
//! forward, weight gradient and input gradient (col2im), parallel over the batch.
//!
//! A grouped convolution is one im2col per sample and one GEMM per group over that buffer, so
//! its cost follows its FLOPs instead of launching one small convolution per group as
//! candle's `conv2d` does. The input gradient is skipped when the input tracks no gradient
//! (the image fed to the first layer).

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{direct, f32_slice, implicit};

/// Geometry of one convolution; the same struct describes forward and both gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvParams {
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    pub groups: usize,
}

impl Default for ConvParams {
    fn default() -> Self {
        Self { stride: 1, padding: 0, dilation: 1, groups: 1 }
    }
}

impl ConvParams {
    /// Output side length for an input side `i` and kernel side `k`, as PyTorch computes it.
    pub fn out_size(&self, i: usize, k: usize) -> Option<usize> {
        let span = self.dilation * (k - 1) + 1;
        let padded = i + 2 * self.padding;
        (padded >= span).then(|| (padded - span) / self.stride + 1)
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
    /// The direct kernels' dims, when they apply (see [`super::direct::applies`]).
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
    /// The implicit-GEMM kernels' dims, when they apply (see [`super::implicit::applies`]).
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
    fn in_len(&self) -> usize {
        self.c * self.h * self.w
    }
    fn out_len(&self) -> usize {
        self.o * self.l()
    }
}

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
                    for (ox, v) in out_row.iter_mut().enumerate() {
                        let ix = ox as isize * s + x0;
                        *v = if ix >= 0 && ix < g.w as isize { src[ix as usize] } else { 0.0 };
                    }
                }
            }
        }
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
                    for (ox, v) in src[oy * g.ow..(oy + 1) * g.ow].iter().enumerate() {
                        let ix = ox as isize * s + x0;
                        if ix >= 0 && ix < g.w as isize {
                            dst[ix as usize] += v;
                        }
                    }
                }
            }
        }
    }
}

/// Row-major matrix view for [`matmul`]: `rows x cols`, element (i, j) at `i * rs + j * cs`.
#[derive(Clone, Copy)]
struct Mat {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

/// `dst (m x n, row-major) (+)= a (m x k) * b (k x n)` through the `gemm` crate (candle's own
/// GEMM, with its AVX-512 kernels), single-threaded: callers parallelise over samples.
///
/// # Safety
/// `a`, `b` and `dst` must address valid `m x k`, `k x n` and `m x n` matrices.
unsafe fn matmul(m: usize, n: usize, k: usize, dst: &mut [f32], accumulate: bool, a: Mat, b: Mat) {
    // SAFETY: forwarded from the caller.
    unsafe { gemm_with(m, n, k, dst, accumulate, a, b, gemm::Parallelism::None) }
}

/// `gemm::gemm` on our matrix views (its convention: `dst = alpha * dst + beta * a * b`).
///
/// # Safety
/// As [`matmul`].
#[allow(clippy::too_many_arguments)] // the GEMM's own shape: sizes, destination, operands, threads
unsafe fn gemm_with(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    a: Mat,
    b: Mat,
    par: gemm::Parallelism,
) {
    debug_assert!(dst.len() >= m * n);
    // SAFETY: the caller guarantees the views; dst is a unique, correctly sized borrow.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.ptr,
            a.cs,
            a.rs,
            b.ptr,
            b.cs,
            b.rs,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

fn row_major(ptr: &[f32], cols: usize) -> Mat {
    Mat { ptr: ptr.as_ptr(), rs: cols as isize, cs: 1 }
}

fn transposed(ptr: &[f32], cols_of_original: usize) -> Mat {
    Mat { ptr: ptr.as_ptr(), rs: 1, cs: cols_of_original as isize }
}

thread_local! {
    /// Per-thread im2col buffer, reused across calls.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer of `len` floats (contents arbitrary). Allocating
/// a fresh multi-megabyte column buffer per sample made the kernel zero new pages on every
/// call (a fifth of a ResNet18 step in perf); the buffer is kept instead.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0.0);
        }
        f(&mut s[..len])
    })
}

/// Below this many output pixels per sample, the samples share one GEMM (`k x n*l` columns):
/// a per-sample GEMM with a few hundred columns (ResNet's 14x14 and 7x7 stages) runs far
/// below the GEMM's peak.
const BATCH_BELOW: usize = 1024;

fn batched(g: &Geometry) -> bool {
    g.l() < BATCH_BELOW && g.n > 1
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
struct SendPtr(*mut f32);
// SAFETY: only used for writes to positions no other task touches (see the call sites).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// Through a method, so closures capture the whole (Send) wrapper, not its raw field.
    fn get(self) -> *mut f32 {
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

/// One GEMM on all cores: `dst (m x n) (+)= a * b`.
///
/// # Safety
/// As [`matmul`].
unsafe fn matmul_parallel(m: usize, n: usize, k: usize, dst: &mut [f32], accumulate: bool, a: Mat, b: Mat) {
    // SAFETY: forwarded from the caller.
    unsafe { gemm_with(m, n, k, dst, accumulate, a, b, gemm::Parallelism::Rayon(0)) }
}

fn conv_forward_batched(x: &[f32], wt: &[f32], g: &Geometry) -> Vec<f32> {
    let (k, l, og, nl) = (g.k(), g.l(), g.og(), g.n * g.l());
    let mut out = vec![0f32; g.n * g.out_len()];
    with_batch_buffers(k * nl, og * nl, |col, tmp| {
        for grp in 0..g.p.groups {
            im2col_batch(x, g, grp * g.cg(), col);
            let w_g = &wt[grp * og * k..(grp + 1) * og * k];
            // SAFETY: w_g is og x k, col is k x nl, tmp is og x nl.
            unsafe { matmul_parallel(og, nl, k, tmp, false, row_major(w_g, k), row_major(col, nl)) };
            out.par_chunks_mut(g.out_len()).enumerate().for_each(|(n, out_n)| {
                for o in 0..og {
                    let dst = (grp * og + o) * l;
                    out_n[dst..dst + l].copy_from_slice(&tmp[o * nl + n * l..o * nl + (n + 1) * l]);
                }
            });
        }
    });
    out
}

fn conv_weight_grad_batched(x: &[f32], dy: &[f32], g: &Geometry) -> Vec<f32> {
    let (k, og, nl) = (g.k(), g.og(), g.n * g.l());
    let mut dw = vec![0f32; g.o * k];
    with_batch_buffers(k * nl, og * nl, |col, dy_g| {
        for grp in 0..g.p.groups {
            im2col_batch(x, g, grp * g.cg(), col);
            gather_group(dy, g, grp, dy_g);
            let dst = &mut dw[grp * og * k..(grp + 1) * og * k];
            // dw_g (og x k) = dy_g (og x nl) * col^T (nl x k)
            // SAFETY: views as documented, dst sized og x k.
            unsafe { matmul_parallel(og, k, nl, dst, false, row_major(dy_g, nl), transposed(col, nl)) };
        }
    });
    dw
}

fn conv_input_grad_batched(dy: &[f32], wt: &[f32], g: &Geometry) -> Vec<f32> {
    let (k, og, nl) = (g.k(), g.og(), g.n * g.l());
    let mut dx = vec![0f32; g.n * g.in_len()];
    with_batch_buffers(k * nl, og * nl, |col, dy_g| {
        for grp in 0..g.p.groups {
            gather_group(dy, g, grp, dy_g);
            let w_g = &wt[grp * og * k..(grp + 1) * og * k];
            // dcol (k x nl) = w_g^T (k x og) * dy_g (og x nl)
            // SAFETY: views as documented, col sized k x nl.
            unsafe { matmul_parallel(k, nl, og, col, false, transposed(w_g, k), row_major(dy_g, nl)) };
            let col: &[f32] = col;
            dx.par_chunks_mut(g.in_len()).enumerate().for_each(|(n, dx_n)| {
                col2im(&col[n * g.l()..], g, grp * g.cg(), dx_n, nl);
            });
        }
    });
    dx
}

fn conv_forward(x: &[f32], wt: &[f32], g: &Geometry) -> Vec<f32> {
    if let Some(d) = g.implicit() {
        return implicit::forward(x, wt, &d);
    }
    if let Some(d) = g.direct() {
        let mut out = vec![0f32; g.n * g.out_len()];
        out.par_chunks_mut(g.out_len()).enumerate().for_each(|(n, out_n)| {
            direct::forward(&x[n * g.in_len()..(n + 1) * g.in_len()], wt, d, out_n);
        });
        return out;
    }
    if batched(g) {
        return conv_forward_batched(x, wt, g);
    }
    let (k, l, og) = (g.k(), g.l(), g.og());
    let mut out = vec![0f32; g.n * g.out_len()];
    let scratch = if g.is_pointwise() { 0 } else { k * l };
    out.par_chunks_mut(g.out_len()).enumerate().for_each(|(n, out_n)| {
        let x_n = &x[n * g.in_len()..(n + 1) * g.in_len()];
        with_scratch(scratch, |col| {
            for grp in 0..g.p.groups {
                let c0 = grp * g.cg();
                let cols = group_columns(x_n, g, c0, col);
                let w_g = &wt[grp * og * k..(grp + 1) * og * k];
                let dst = &mut out_n[grp * og * l..(grp + 1) * og * l];
                // SAFETY: w_g is og x k, cols is k x l, dst is og x l, all row-major.
                unsafe { matmul(og, l, k, dst, false, row_major(w_g, k), row_major(cols, l)) };
            }
        })
    });
    out
}

fn conv_input_grad(dy: &[f32], wt: &[f32], g: &Geometry) -> Vec<f32> {
    if let Some(d) = g.implicit().filter(|d| d.stride == 1) {
        return implicit::input_grad(dy, wt, &d);
    }
    if let Some(d) = g.direct() {
        let mut dx = vec![0f32; g.n * g.in_len()];
        let flipped = direct::flip_weights(wt, &d);
        dx.par_chunks_mut(g.in_len()).enumerate().for_each(|(n, dx_n)| {
            with_scratch(direct::input_grad_scratch(&d), |padded| {
                direct::input_grad(&dy[n * g.out_len()..(n + 1) * g.out_len()], &flipped, d, dx_n, padded);
            });
        });
        return dx;
    }
    if batched(g) {
        return conv_input_grad_batched(dy, wt, g);
    }
    let (k, l, og) = (g.k(), g.l(), g.og());
    let mut dx = vec![0f32; g.n * g.in_len()];
    let scratch = if g.is_pointwise() { 0 } else { k * l };
    dx.par_chunks_mut(g.in_len()).enumerate().for_each(|(n, dx_n)| {
        let dy_n = &dy[n * g.out_len()..(n + 1) * g.out_len()];
        with_scratch(scratch, |col| {
            for grp in 0..g.p.groups {
                let c0 = grp * g.cg();
                let w_g = &wt[grp * og * k..(grp + 1) * og * k];
                let dy_g = &dy_n[grp * og * l..(grp + 1) * og * l];
                // dcol (k x l) = w_g^T (k x og) * dy_g (og x l)
                // SAFETY: views as documented above, dst sized k x l.
                if g.is_pointwise() {
                    let dst = &mut dx_n[c0 * l..(c0 + g.cg()) * l];
                    unsafe { matmul(k, l, og, dst, false, transposed(w_g, k), row_major(dy_g, l)) };
                } else {
                    unsafe { matmul(k, l, og, col, false, transposed(w_g, k), row_major(dy_g, l)) };
                    col2im(col, g, c0, dx_n, l);
                }
            }
        })
    });
    dx
}

/// Samples are summed in this many fixed slices, whatever the thread count, so the weight
/// gradient (a reduction over the batch) is bit-identical from run to run.
const WEIGHT_GRAD_SLICES: usize = 8;

/// A weight gradient with at most this many output channels per group transposes its im2col
/// columns to row-major `cols^T` before the GEMM. With few output rows, gemm spent a quarter
/// of a ResNeXt step (g >= 4) transposing `cols` while packing, block after block; one
/// blocked transpose up front costs less. With more rows (ResNet18's convs, 64 and up) the
/// packing amortises and the extra pass only costs (measured: 15 against 18 images/s).
const TRANSPOSE_COLS_BELOW: usize = 32;

/// `dst (cols x rows) = src (rows x cols)^T`, in cache-sized tiles.
pub(super) fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
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

fn conv_weight_grad(x: &[f32], dy: &[f32], g: &Geometry) -> Vec<f32> {
    if let Some(d) = g.implicit() {
        return implicit::weight_grad(x, dy, &d);
    }
    if batched(g) && g.direct().is_none() {
        return conv_weight_grad_batched(x, dy, g);
    }
    let (k, l, og) = (g.k(), g.l(), g.og());
    let w_len = g.o * k;
    let samples: Vec<usize> = (0..g.n).collect();
    let direct = g.direct();
    let partials: Vec<Vec<f32>> = samples
        .par_chunks(g.n.div_ceil(WEIGHT_GRAD_SLICES).max(1))
        .map(|slice| {
            let mut dw = vec![0f32; w_len];
            if let Some(d) = direct {
                for &n in slice {
                    let (x_n, dy_n) =
                        (&x[n * g.in_len()..(n + 1) * g.in_len()], &dy[n * g.out_len()..(n + 1) * g.out_len()]);
                    direct::weight_grad(x_n, dy_n, d, &mut dw);
                }
                return dw;
            }
            with_scratch(if g.is_pointwise() { 0 } else { k * l }, |col| {
                let mut cols_t: Vec<f32> = Vec::new();
                for &n in slice {
                    let x_n = &x[n * g.in_len()..(n + 1) * g.in_len()];
                    let dy_n = &dy[n * g.out_len()..(n + 1) * g.out_len()];
                    for grp in 0..g.p.groups {
                        let c0 = grp * g.cg();
                        let cols = group_columns(x_n, g, c0, col);
                        let dy_g = &dy_n[grp * og * l..(grp + 1) * og * l];
                        let dst = &mut dw[grp * og * k..(grp + 1) * og * k];
                        // dw_g (og x k) += dy_g (og x l) * cols^T (l x k)
                        let rhs = if og <= TRANSPOSE_COLS_BELOW {
                            cols_t.resize(k * l, 0.0);
                            transpose(cols, k, l, &mut cols_t);
                            row_major(&cols_t, k)
                        } else {
                            transposed(cols, l)
                        };
                        // SAFETY: views as documented, dst sized og x k.
                        unsafe { matmul(og, k, l, dst, true, row_major(dy_g, l), rhs) };
                    }
                }
            });
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
        let out = conv_forward(x, wt, &g);
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
        Ok((CpuStorage::F32(conv_input_grad(dy, wt, &g)), self.x_shape.clone()))
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
        Ok((CpuStorage::F32(conv_weight_grad(x, dy, &g)), self.w_shape.clone()))
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
            // Stride 2 (forward and weight gradient over the input's phases): 3x3 with
            // padding 1, odd and even sizes, two groups, and 5x5 with padding 2.
            (1, 16, 21, 23, 16, 3, 2, 1, 1, 1),
            (2, 32, 20, 22, 32, 3, 2, 1, 1, 2),
            (1, 16, 21, 21, 16, 5, 2, 2, 1, 1),
        ];
        for (i, &(n, c, h, w, o, k, stride, padding, dilation, groups)) in cases.iter().enumerate() {
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
}
