//! The implicit GEMM for stride-1 "same" convolutions (output as large as the input: ResNet's
//! and ResNeXt's 3x3s with padding 1, their input gradients too), with no padded copy of the
//! input and no grid to crop; and for stride-2 forwards that halve an even plane (ResNet's
//! 3x3/2s and 7x7/2 stem), over the input split into its four phases ([`phases`]): tap
//! `(ky, kx)` then reads one phase, a plane of the output's size, shifted by at most the
//! window's reach, masked as at stride 1 (ResNet18's 3x3/2 forwards 1-1.7 ms faster each than
//! on im2col + GEMM, the stem's 26 -> 22 ms, `examples/bench convs` on a Zen 4).
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
//! On AVX2 the gather loads whole 8-lane halves where every lane is inside, and uses a
//! masked load (`vmaskmovps`) only for the halves that cross a border. Before the panels,
//! the AVX2 tile read its inputs through masked loads on every tap and lost to the padded
//! route (an Intel Xeon, ResNeXt's 3x3s at 32x32: a g4 forward 15.6 against 14.1 ms); now a
//! masked load is once per panel vector, and the route wins (the AVX2 build on a Zen 4,
//! forwards by turns against the padded route with the former tile, best of 10: 56x56 23.6
//! against 26.0 ms, 28x28 19.5 against 24.0, 14x14 20.3 against 24.3, 7x7 folded 17.9
//! against 27.2, stride-2 56 -> 28 11.6 against 14.5).
//!
//! A tile's inputs for a block of channels are gathered once, under the masks, into an
//! aligned panel ([`Panel`]) that every output block of the task then reads; the weights are
//! read where they lie ([`Weights`]: no packed copy, for the input gradient no transposed,
//! flipped one). Each block's sums are added to the output: chains of at most
//! [`super::SUM_BLOCK`] products, as on the padded route.
//!
//! Small planes (ResNet18's 7x7) are folded: the batch is regrouped so that a channel's run
//! is its first row in every image, then its second row in every image, and so on; tiles
//! cross from one image into the next (each lane's masks are those of its own plane), then
//! the output is regrouped back ([`folds`]). Where a row of the run is whole vectors, tiles
//! keep to one row, and those in the first and last rows leave out the kernel row of taps
//! that would read only padding ([`Window::tiles`]).

use std::mem::MaybeUninit;

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::panel::{Panel, Walk};
use super::{Cpu, Dims, MR, NR, NV, Pass, SUM_BLOCK, WEIGHT_CHUNK};
use crate::ops::{par_chunks_written, write_slice};

/// Whether `pass` of `d` goes this way: a forward that [`fits`], or the
/// input gradient of a stride-1 one (stride 2's is not a convolution over one plane).
pub(super) fn takes(pass: Pass, d: &Dims) -> bool {
    match pass {
        Pass::Forward => fits(d),
        Pass::InputGrad => fits(d) && d.stride == 1,
        Pass::WeightGrad => false,
    }
}

/// Whether `d`'s window fits this route: stride 1 with the output plane the input's size,
/// or stride 2 on an even plane with the output half its size (ResNet's 3x3/2 with padding
/// 1, its 7x7/2 stem with padding 3), where each of the input's four phases is a plane of
/// the output's size.
pub(super) fn fits(d: &Dims) -> bool {
    match d.stride {
        1 => d.oh() == d.h && d.ow() == d.w,
        2 => d.h.is_multiple_of(2) && d.w.is_multiple_of(2) && d.oh() == d.h / 2 && d.ow() == d.w / 2,
        _ => false,
    }
}

/// A tap of a tile: the input's shift from the output pixel (floats), and per vector of the
/// tile the lanes that read inside the plane.
type TapLanes = (isize, [u16; NV]);

/// One window over `images` planes laid side by side, row by row (a run of `h` rows of
/// `images * w` pixels per channel: row `y` of every image, then row `y + 1`): the output
/// plane's size, the window's and its padding. One image is a plane as it lies in the
/// tensor. At stride 2 each input channel is its four phases (even and odd rows by even and
/// odd columns), each such a run ([`phases`]).
struct Window {
    images: usize,
    stride: usize,
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
    /// Pixels per channel: the planes' run.
    fn len(&self) -> usize {
        self.h * self.row()
    }
    /// Pixels per row of the run: row `y` of every image.
    fn row(&self) -> usize {
        self.images * self.w
    }
    /// Floats per input channel: its run, or at stride 2 its four phases' runs.
    fn chan(&self) -> usize {
        self.stride * self.stride * self.len()
    }
    /// Per tap `(ky, kx)`: the input's shift from the output pixel, and which lanes of the
    /// tile's `nv` vectors from pixel `q0` read inside the lane's own plane (lanes past the
    /// run's end are off too). At stride `s`, output pixel `(y, x)` reads input row
    /// `s y + ky - ph`: row `y + dy` of phase `ry`, where `ky - ph = s dy + ry`.
    fn tile_taps(&self, q0: usize, nv: usize) -> Vec<TapLanes> {
        let (row, len, s) = (self.row(), self.len(), self.stride as isize);
        let mut taps = Vec::with_capacity(self.taps());
        for ky in 0..self.kh {
            for kx in 0..self.kw {
                let (ay, ax) = (ky as isize - self.ph as isize, kx as isize - self.pw as isize);
                let (dy, dx) = (ay.div_euclid(s), ax.div_euclid(s));
                let phase = (ay.rem_euclid(s) * s + ax.rem_euclid(s)) as usize;
                let mut masks = [0u16; NV];
                for (v, m) in masks.iter_mut().enumerate().take(nv) {
                    for lane in 0..16 {
                        let q = q0 + 16 * v + lane;
                        let (y, x) = ((q / row) as isize + dy, (q % self.w) as isize + dx);
                        let inside = q < len && (0..self.h as isize).contains(&y) && (0..self.w as isize).contains(&x);
                        *m |= u16::from(inside) << lane;
                    }
                }
                let shift = (phase * len) as isize + dy * row as isize + dx;
                taps.push((shift, masks));
            }
        }
        taps
    }
    /// The run's tiles, each with its first pixel, vectors and the taps it reads. Where rows
    /// are whole vectors, two full tiles or more (a folded batch of 16 7x7 planes: 7
    /// vectors), tiles stay inside a row, so in the first and last rows a kernel row of taps
    /// reads only padding and the tile leaves it out (ResNet18's 7x7 3x3s: 16.0 against 17.9
    /// ms forward, `examples/bench convs` on a Zen 4). Shorter rows (a 32x32 plane: 2
    /// vectors) would cut every tile short, so tiles run on across them. A span's vectors are
    /// shared out as evenly as [`NV`] allows (7 as 3, 2, 2: a one-vector tile has one load
    /// per 8 broadcasts).
    fn tiles(&self) -> Vec<PlaneTile> {
        let (len, row) = (self.len(), self.row());
        let span = if row.is_multiple_of(16) && row >= 2 * MR { row } else { len };
        let mut tiles = Vec::new();
        for r0 in (0..len).step_by(span) {
            let vectors = span.div_ceil(16);
            let count = vectors.div_ceil(NV);
            let mut q0 = r0;
            for t in 0..count {
                let nv = vectors / count + usize::from(t < vectors % count);
                tiles.push(self.tile(q0, nv));
                q0 += 16 * nv;
            }
        }
        tiles
    }
    /// The tile of `nv` vectors from pixel `q0`, its taps trimmed to the range that reads any
    /// input (taps outside it would add only zeros).
    fn tile(&self, q0: usize, nv: usize) -> PlaneTile {
        let mut taps = self.tile_taps(q0, nv);
        let live = |t: &TapLanes| t.1.iter().any(|&m| m != 0);
        let first_tap = taps.iter().position(live).expect("a tile's own pixel is inside its plane");
        let end = taps.iter().rposition(live).map_or(0, |t| t + 1);
        taps.truncate(end);
        taps.drain(..first_tap);
        PlaneTile { q0, nv, first_tap, taps }
    }
}

/// One tile of a run: its first pixel, its vectors, the first of the window's taps it reads
/// and those taps from there (each with the lanes it reads, per vector).
struct PlaneTile {
    q0: usize,
    nv: usize,
    first_tap: usize,
    taps: Vec<TapLanes>,
}

/// `out (n, groups * outs, len)` of the window over `x (n, groups * cg, len)` (`len` the
/// window's run: one plane, or the batch's planes folded), per group
/// `out[o][q] = sum over (c, tap) of w(o, c, tap) * x[c][q + shift(tap)]`.
///
/// Parallel over slices of samples where there are enough of them, otherwise over ranges of
/// output blocks of each sample; a task walks its channels in chunks whose weights stay in
/// L2 ([`WEIGHT_CHUNK`]), per chunk its tiles, per tile blocks of [`SUM_BLOCK`] products:
/// one panel gathered, then every output block of the task summed from it.
fn conv(
    cpu: Cpu,
    x: &[f32],
    n: usize,
    (groups, cg, outs): (usize, usize, usize),
    win: &Window,
    w: &Weights,
) -> Vec<f32> {
    let (len, chan, taps) = (win.len(), win.chan(), win.taps());
    let block = (SUM_BLOCK / taps).max(1);
    let (blocks, per_group) = (groups * outs / NR, outs / NR);
    let parts = 2 * rayon::current_num_threads();
    let (slice, per_task) =
        if n >= parts { (n.div_ceil(parts), blocks) } else { (1, even_part(blocks, parts.div_ceil(n))) };
    let ranges = blocks / per_task;
    // Whole blocks per chunk: blocks then start at multiples of `block` whatever the
    // chunk, so the sums' order does not depend on the thread count (which sets per_task).
    let chunk = (WEIGHT_CHUNK / (taps * per_task * NR)).max(block) / block * block;
    // Every tile's first pixel, vectors and taps, once: the same for every sample, group and
    // channel chunk (worked out per tile, they cost a tenth of a 56x56 forward).
    let tiles = win.tiles();
    let task = |s: usize, out_s: &mut [MaybeUninit<f32>]| {
        let (s0, first) = (s / ranges * slice, s % ranges * per_task);
        let mut panel = Panel::new(block * taps);
        for grp in first / per_group..=(first + per_task - 1) / per_group {
            let mine = first.max(grp * per_group)..(first + per_task).min((grp + 1) * per_group);
            for c0 in (0..cg).step_by(chunk) {
                let c1 = (c0 + chunk).min(cg);
                for (j, out_n) in out_s.chunks_mut(per_task * NR * len).enumerate() {
                    let xs = &x[((s0 + j) * groups + grp) * cg * chan..][..cg * chan];
                    for tile in &tiles {
                        for b0 in (c0..c1).step_by(block) {
                            let b1 = (b0 + block).min(c1);
                            gather(cpu, &mut panel, &xs[b0 * chan..b1 * chan], chan, tile);
                            let walk = w.walk(b1 - b0, tile.taps.len());
                            for b in mine.clone() {
                                let at = w.at(grp, (b - grp * per_group) * NR, b0, tile.first_tap);
                                let out = &mut out_n[(b - first) * NR * len..][..NR * len];
                                panel.sum(cpu, (w.wt, at, &walk), (out, len, tile.q0), tile.nv, b0 > 0);
                            }
                        }
                    }
                }
            }
        }
    };
    // SAFETY: each task's first channel block (b0 == 0) stores every pixel of every row of
    // its output blocks (tiles cover [0, len)), for each of its samples, before any block
    // adds to them.
    unsafe { par_chunks_written(n * blocks * NR * len, slice * per_task * NR * len, task) }
}

/// The size of `parts` equal parts of `blocks` (or of the fewest parts above `parts` that
/// divide it evenly): a sample's output blocks split across tasks.
fn even_part(blocks: usize, parts: usize) -> usize {
    let parts = (parts.max(1)..=blocks).find(|p| blocks.is_multiple_of(*p)).unwrap_or(blocks);
    blocks / parts
}

/// Gathers `tile`'s inputs from channels `xs` (`chan` floats each) into the panel.
fn gather(cpu: Cpu, panel: &mut Panel, xs: &[f32], chan: usize, tile: &PlaneTile) {
    let rows = xs.len() / chan * tile.taps.len();
    assert!(rows * tile.nv <= panel.0.len(), "gather: the panel holds a block");
    let (x, chans, a) = (xs.as_ptr().wrapping_add(tile.q0), xs.len() / chan, panel.0.as_mut_ptr().cast());
    // SAFETY: the Cpu's proof is the build's. Each unmasked lane reads a pixel of its
    // channel inside its own plane or phase plane (`tile_taps`), so inside `xs`; the panel
    // holds `rows * nv` vectors (asserted).
    unsafe {
        match cpu {
            Cpu::Avx512(_) => gather_v4(x, chan, chans, tile, a),
            Cpu::Avx2(_) => gather_avx2(x, chan, chans, tile, a),
        }
    }
}

/// How a pass reads its weights in place (no packed copy: packing ResNet18's 512-channel
/// weights took 1.3 ms of a 10.5 ms forward, and the input gradient's transposed, flipped
/// copy 3.3 ms): the weight of output `o`, reduction channel `c` and tap `t` of group `grp`
/// is `wt[first + grp * group + o * lane + c * chan + t * tap]`.
struct Weights<'a> {
    wt: &'a [f32],
    first: usize,
    group: usize,
    lane: usize,
    chan: usize,
    /// +1 (the forward's taps), or -1 (the input gradient's, the window flipped).
    tap: isize,
}

impl Weights<'_> {
    /// The forward's: `wt (groups * og, cg, taps)`, outputs `o`, reduction over `c`.
    fn forward<'a>(wt: &'a [f32], d: &Dims) -> Weights<'a> {
        let taps = d.taps();
        Weights { wt, first: 0, group: d.og * d.cg * taps, lane: d.cg * taps, chan: taps, tap: 1 }
    }
    /// The input gradient's: outputs are input channels `c`, reduction over output channels
    /// `o`, the window flipped.
    fn input_grad<'a>(wt: &'a [f32], d: &Dims) -> Weights<'a> {
        let taps = d.taps();
        Weights { wt, first: taps - 1, group: d.og * d.cg * taps, lane: taps, chan: d.cg * taps, tap: -1 }
    }
    /// Where output `o0`'s weights for reduction channel `c0`, tap `t0`, lie in group `grp`.
    fn at(&self, grp: usize, o0: usize, c0: usize, t0: usize) -> usize {
        (self.first + grp * self.group + o0 * self.lane + c0 * self.chan).wrapping_add_signed(t0 as isize * self.tap)
    }
    /// The walk over `chans` channels of `taps` taps from a block's first weight.
    fn walk(&self, chans: usize, taps: usize) -> Walk {
        Walk { chans, taps, lane: self.lane, chan: self.chan, tap: self.tap }
    }
}

/// `src (a, b, p)` as `(b, a, p)`: a batch's rows regrouped by channel and row, or back.
fn swap_outer(src: &[f32], (a, b, p): (usize, usize, usize)) -> Vec<f32> {
    let rows = |j: usize, dst: &mut [MaybeUninit<f32>]| {
        for (i, d) in dst.chunks_mut(p).enumerate() {
            write_slice(d, &src[(i * b + j) * p..][..p]);
        }
    };
    // SAFETY: chunk j is `a` rows of `p` floats, each written.
    unsafe { par_chunks_written(a * b * p, a * p, rows) }
}

/// Whether a pass of `d` folds the batch's planes into one run per channel: when tiles over
/// one plane would compute more than an eighth more lanes than it has pixels (ResNet18's
/// 7x7 stage: 49 pixels in 64 lanes; folded, its 3x3 forward ran in 9.2 ms where per plane
/// it took 12.8 and im2col + GEMM 11.6, `examples/bench convs` on an Intel Xeon). A 14x14
/// plane (196 pixels in 208 lanes) ran faster per plane, 9.6 against 10.6 ms: the folded run
/// pays two transposes.
pub(super) fn folds(d: &Dims) -> bool {
    let plane = d.oh() * d.ow();
    plane.next_multiple_of(16) * 8 > plane * 9
}

/// The pass over `x (n, groups * cg, h, w)`, folded or per sample; at stride 2 over the
/// input's phases.
fn run(cpu: Cpu, x: &[f32], d: &Dims, (cg, outs): (usize, usize), win: Window, w: &Weights) -> Vec<f32> {
    let fold = folds(d);
    let images = if fold { d.n } else { 1 };
    let win = Window { images, ..win };
    let regrouped;
    let input = match (win.stride, fold) {
        (1, false) => x,
        // (n, channels, h, w) as (channels, h, n, w): each channel's rows of every image side by side.
        (1, true) => {
            regrouped = swap_outer(x, (d.n, d.groups * cg * d.h, d.w));
            &regrouped
        }
        _ => {
            regrouped = phases(x, d.n, d.groups * cg, (d.h, d.w), fold);
            &regrouped
        }
    };
    let y = conv(cpu, input, d.n / images, (d.groups, cg, outs), &win, w);
    if fold { swap_outer(&y, (d.groups * outs * win.h, d.n, win.w)) } else { y }
}

/// `x (n, ch, h, w)` (`h`, `w` even) split into its stride-2 phases: per channel, the planes
/// `phase[ry * 2 + rx][y][x] = x[2 y + ry][2 x + rx]` one after another, `(n, ch, 4, h / 2, w
/// / 2)`; `fold`ed, every image's row `y` of a phase side by side, `(ch, 4, h / 2, n, w / 2)`.
fn phases(x: &[f32], n: usize, ch: usize, (h, w): (usize, usize), fold: bool) -> Vec<f32> {
    let (hq, wq, images) = (h / 2, w / 2, if fold { n } else { 1 });
    let plane = hq * images * wq;
    // One chunk: channel c of `images` images from i0, laid (phase, y, image, x); each input
    // row is read once, its even and odd columns written to phases (ry, 0) and (ry, 1).
    let fill = |k: usize, dst: &mut [MaybeUninit<f32>]| {
        let (c, i0) = if fold { (k, 0) } else { (k % ch, k / ch) };
        for i in 0..images {
            for (yy, src) in x[((i0 + i) * ch + c) * h * w..][..h * w].chunks_exact(w).enumerate() {
                let at = 2 * (yy % 2) * plane + (yy / 2 * images + i) * wq;
                let (even, odd) = dst[at..].split_at_mut(plane);
                for ((e, o), pair) in even[..wq].iter_mut().zip(&mut odd[..wq]).zip(src.chunks_exact(2)) {
                    e.write(pair[0]);
                    o.write(pair[1]);
                }
            }
        }
    };
    // SAFETY: a chunk is 4 phases x hq rows x `images` images of wq floats; each is written
    // from input row 2 y + ry of its image (w = 2 wq: wq pairs).
    unsafe { par_chunks_written(n * ch * h * w, images * h * w, fill) }
}

/// Forward of a stride-1 "same" or stride-2 "half" convolution ([`fits`]).
pub(super) fn forward(cpu: Cpu, x: &[f32], wt: &[f32], d: &Dims) -> Vec<f32> {
    let win = Window { images: 1, stride: d.stride, h: d.oh(), w: d.ow(), kh: d.kh, kw: d.kw, ph: d.ph, pw: d.pw };
    run(cpu, x, d, (d.cg, d.og), win, &Weights::forward(wt, d))
}

/// Input gradient of a stride-1 "same" convolution: the full correlation of `dy` with the
/// flipped, transposed weights, itself a "same" convolution (padding `k - 1 - p`).
pub(super) fn input_grad(cpu: Cpu, dy: &[f32], wt: &[f32], d: &Dims) -> Vec<f32> {
    assert_eq!(d.stride, 1, "the masked input gradient is for stride-1 convolutions");
    let (ph, pw) = (d.kh - 1 - d.ph, d.kw - 1 - d.pw);
    let win = Window { images: 1, stride: 1, h: d.h, w: d.w, kh: d.kh, kw: d.kw, ph, pw };
    run(cpu, dy, d, (d.og, d.cg), win, &Weights::input_grad(wt, d))
}

/// Writes, for each of `chans` channels `chan` floats apart from `x` and each tap of `tile`,
/// its `nv` vectors of shifted pixels (masked-off lanes zero) to `a`, one after another.
///
/// # Safety
/// AVX-512F present; every unmasked lane in bounds; `a` aligned to 64 bytes and holding
/// `chans * taps * nv` vectors.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gather_v4(x: *const f32, chan: usize, chans: usize, tile: &PlaneTile, a: *mut f32) {
    each_vector(x, (chan, chans), tile, a, |src, m, dst| {
        // SAFETY: the caller's; the lanes `m` keeps are in bounds, `dst` aligned in `a`.
        unsafe { _mm512_store_ps(dst, _mm512_maskz_loadu_ps(m, src)) }
    });
}

/// Calls `load(src, mask, dst)` for each 16-lane vector of `tile`'s panel rows, channel by
/// channel and tap by tap: `src` where its pixels lie in `x` (formed with wrapping
/// arithmetic: a shift may point past the buffer where its lanes are masked off), `mask` the
/// lanes inside the plane, `dst` its place in the panel `a`.
#[inline(always)]
fn each_vector(
    x: *const f32,
    (chan, chans): (usize, usize),
    tile: &PlaneTile,
    a: *mut f32,
    mut load: impl FnMut(*const f32, u16, *mut f32),
) {
    let mut dst = a;
    for c in 0..chans {
        let xc = x.wrapping_add(c * chan);
        for &(shift, lanes) in &tile.taps {
            let p = xc.wrapping_offset(shift);
            for (v, &m) in lanes.iter().enumerate().take(tile.nv) {
                load(p.wrapping_add(16 * v), m, dst.wrapping_add(16 * v));
            }
            dst = dst.wrapping_add(16 * tile.nv);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn gather_v4(_: *const f32, _: usize, _: usize, _: &PlaneTile, _: *mut f32) {
    unreachable!("the AVX-512 proof is x86-64 only")
}

/// [`gather_v4`] for AVX2: each 16-lane vector as two 8-lane halves, loaded whole where all
/// their lanes are on (most of a plane), zero where none is, and through a masked load
/// (`vmaskmovps`, which suppresses the faults of masked-off lanes) only at the borders.
///
/// # Safety
/// AVX2 present; every unmasked lane in bounds; `a` aligned to 32 bytes and holding
/// `chans * taps * nv` 16-lane vectors.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gather_avx2(x: *const f32, chan: usize, chans: usize, tile: &PlaneTile, a: *mut f32) {
    let bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    each_vector(x, (chan, chans), tile, a, |src, m, dst| {
        for h in 0..2 {
            let (src, bits) = (src.wrapping_add(8 * h), i32::from(m >> (8 * h)) & 0xff);
            // SAFETY: the caller's; a half is read whole only where all its lanes are on,
            // else through its mask; `dst` is aligned in `a`.
            unsafe {
                let val = match bits {
                    0xff => _mm256_loadu_ps(src),
                    0 => _mm256_setzero_ps(),
                    _ => {
                        let mask = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(bits), bit), bit);
                        _mm256_maskload_ps(src, mask)
                    }
                };
                _mm256_store_ps(dst.add(8 * h), val);
            }
        }
    });
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn gather_avx2(_: *const f32, _: usize, _: usize, _: &PlaneTile, _: *mut f32) {
    unreachable!("the AVX2 proof is x86-64 only")
}

#[cfg(test)]
mod tests {
    use super::Window;

    /// Sixteen 7x7 planes side by side: rows of 112 pixels (7 vectors) in tiles of 3, 2 and 2
    /// vectors that keep to their row; the first row's tiles start at the kernel's second row
    /// of taps, the last row's stop before its third, the others read all nine.
    #[test]
    fn tiles_of_whole_vector_rows_leave_out_the_taps_that_read_only_padding() {
        let win = Window { images: 16, stride: 1, h: 7, w: 7, kh: 3, kw: 3, ph: 1, pw: 1 };
        let tiles = win.tiles();
        let shape: Vec<(usize, usize, usize, usize)> =
            tiles.iter().map(|t| (t.q0, t.nv, t.first_tap, t.taps.len())).collect();
        assert_eq!(shape.len(), 21);
        assert_eq!(&shape[..3], &[(0, 3, 3, 6), (48, 2, 3, 6), (80, 2, 3, 6)]);
        assert_eq!(&shape[3..6], &[(112, 3, 0, 9), (160, 2, 0, 9), (192, 2, 0, 9)]);
        assert_eq!(&shape[18..], &[(672, 3, 0, 6), (720, 2, 0, 6), (752, 2, 0, 6)]);
        // Rows of 4 x 7 = 28 pixels are not whole vectors: tiles run on across rows (13
        // vectors as 3, 3, 3, 2, 2), and only the last (all in the last row) leaves taps out.
        let odd = Window { images: 4, ..win }.tiles();
        assert_eq!(
            odd.iter().map(|t| (t.q0, t.nv)).collect::<Vec<_>>(),
            [(0, 3), (48, 3), (96, 3), (144, 2), (176, 2)]
        );
        assert_eq!(odd.iter().map(|t| t.taps.len()).collect::<Vec<_>>(), [9, 9, 9, 9, 6]);
        // One 32x32 plane: rows of 2 vectors, too short to keep tiles in; full tiles across
        // them (its 64 vectors as 20 tiles of 3, then 2 of 2).
        let plane = Window { images: 1, h: 32, w: 32, ..win }.tiles();
        assert_eq!(plane.len(), 22);
        assert!(plane[..20].iter().all(|t| t.nv == 3) && plane[20..].iter().all(|t| t.nv == 2));
    }
}
