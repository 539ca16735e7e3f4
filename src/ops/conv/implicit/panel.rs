//! The panel the implicit tiles read: a tile's inputs for a block of the reduction,
//! gathered into aligned vectors in the weights' order, then summed against every output
//! block of a task (as a GEMM's packed panel). Read in place instead (shifted, unaligned and
//! a plane apart per channel), the same products ran 10-15 % slower on ResNet18's 3x3s
//! (`examples/bench convs` on an Intel Xeon).
//!
//! On AVX2 (16 registers of 8 lanes) the same panel is summed in sub-tiles of 12
//! accumulators where the tile allows ([`tile_avx2`]). The padded route's AVX2 tile before
//! them read the padded copy in place, 16 pixels by 4 outputs, 8 accumulators; the panel's
//! ran its forwards 9-20 % faster (ResNet18's 3x3s on a Zen 4, the two by turns, best of 12:
//! 56x56 26.5 against 31.8 ms, 28x28 25.0 against 31.3, 14x14 29.7 against 32.6).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::{Cpu, NR, NV};

/// A tile's inputs for one block of the reduction: per reduction row (a channel's tap), the
/// tile's `16 nv` pixels, rows one after another.
pub(super) struct Panel(pub(super) Vec<Lanes>);

/// One vector of a panel, aligned as AVX-512's aligned loads need.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Lanes([f32; 16]);

impl Panel {
    pub(super) fn new(rows: usize) -> Self {
        Panel(vec![Lanes([0.0; 16]); rows * NV])
    }
}

/// A tile's walk over its weights, in floats: per output row `lane`, per channel `chan`, per
/// tap `tap`.
pub(super) struct Walk {
    pub(super) chans: usize,
    pub(super) taps: usize,
    pub(super) lane: usize,
    pub(super) chan: usize,
    pub(super) tap: isize,
}

/// `NR` output rows of `16 V` pixels: the sum over the panel's rows `(c, t)` of
/// `w[i * lane + c * chan + t * tap] * a[(c, t)][lane]`, stored (or, `accumulate`, added) to
/// `out + i * len` where `inside`.
///
/// # Safety
/// AVX-512F present; `a` aligned, `chans * taps * V` vectors; the weights the walk reads in
/// bounds; the stored lanes of `NR` rows `len` apart from `out` in bounds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_v4<const V: usize>(
    a: *const f32,
    w: *const f32,
    walk: &Walk,
    out: *mut f32,
    len: usize,
    inside: [u16; NV],
    accumulate: bool,
) {
    // SAFETY (whole body): the caller's; the weight pointer is formed with wrapping
    // arithmetic (a flipped walk starts past its channel's last tap).
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); V]; NR];
        let mut pa = a;
        let lane = walk.lane;
        for c in 0..walk.chans {
            let mut wk = w.add(c * walk.chan);
            for _ in 0..walk.taps {
                let av: [__m512; V] = std::array::from_fn(|v| _mm512_load_ps(pa.add(16 * v)));
                for (i, acc_i) in acc.iter_mut().enumerate() {
                    let b = _mm512_set1_ps(*wk.add(i * lane));
                    for v in 0..V {
                        acc_i[v] = _mm512_fmadd_ps(av[v], b, acc_i[v]);
                    }
                }
                pa = pa.add(16 * V);
                wk = wk.wrapping_offset(walk.tap);
            }
        }
        for (i, acc_i) in acc.iter().enumerate() {
            for (v, sum) in acc_i.iter().enumerate() {
                let (p, m) = (out.add(i * len + 16 * v), inside[v]);
                let sum = if accumulate { _mm512_add_ps(_mm512_maskz_loadu_ps(m, p), *sum) } else { *sum };
                _mm512_mask_storeu_ps(p, m, sum);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_v4<const V: usize>(
    _: *const f32,
    _: *const f32,
    _: &Walk,
    _: *mut f32,
    _: usize,
    _: [u16; NV],
    _: bool,
) {
    unreachable!("the AVX-512 proof is x86-64 only")
}

/// [`tile_v4`] for AVX2: the `NR x 16 V` tile as sub-tiles of `8 PV` pixels by `OR` outputs,
/// each a pass over the panel's rows with `PV x OR` accumulators: 12 (3 x 4 or 2 x 6, in
/// assembly, [`sums_3x4`] and [`sums_2x6`]) where the tile allows, 8 for the rest of a short
/// tile. `left`: the lanes before the output row's end, from the tile's first pixel.
///
/// # Safety
/// AVX2 and FMA present; as [`tile_v4`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2<const V: usize>(
    a: *const f32,
    w: *const f32,
    walk: &Walk,
    out: *mut f32,
    len: usize,
    left: usize,
    accumulate: bool,
) {
    let tile = Sub { a, row: 16 * V, w, walk, out, len, left, accumulate };
    // SAFETY: the caller's; each sub-tile covers pixels and outputs inside the tile.
    unsafe {
        match V {
            3 => {
                for (px, o0) in [(0, 0), (0, 4), (3, 0), (3, 4)] {
                    let sums = sums_3x4(&tile, px, o0);
                    tile.store::<3, 4>(&sums, px, o0);
                }
            }
            2 => {
                for px in [0, 2] {
                    let sums = sums_2x6(&tile, px, 0);
                    tile.store::<2, 6>(&sums, px, 0);
                }
                sub_avx2::<4, 2>(&tile, 0, 6);
            }
            _ => {
                let sums = sums_2x6(&tile, 0, 0);
                tile.store::<2, 6>(&sums, 0, 0);
                sub_avx2::<2, 2>(&tile, 0, 6);
            }
        }
    }
}

/// One AVX2 tile's operands: the panel (`row` floats per reduction row), the weights' walk,
/// the output rows (`len` apart) and how many of their lanes lie before the row's end.
struct Sub<'a> {
    a: *const f32,
    row: usize,
    w: *const f32,
    walk: &'a Walk,
    out: *mut f32,
    len: usize,
    left: usize,
    accumulate: bool,
}

/// Twelve 8-lane sums, output-major: `[i * PV + v]` for output `i`, vector `v`.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct Sums([[f32; 8]; 12]);

#[cfg(target_arch = "x86_64")]
impl Sub<'_> {
    /// The walk's loop operands for the assembly sub-tiles, in bytes: the panel's row, the
    /// step from tap to tap, the skip from a channel's last tap to the next one's first.
    fn steps(&self) -> (usize, isize, isize) {
        let tap = self.walk.tap * 4;
        (self.row * 4, tap, self.walk.chan as isize * 4 - self.walk.taps as isize * tap)
    }

    /// Stores (or adds) `OR` outputs by `PV` vectors of sums from output `o0`, vector `px`,
    /// the lanes before the row's end only.
    ///
    /// # Safety
    /// AVX2 present; the sub-tile's output rows in bounds.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn store<const PV: usize, const OR: usize>(&self, sums: &Sums, px: usize, o0: usize) {
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        for i in 0..OR {
            for v in 0..PV {
                let first = 8 * (px + v);
                // SAFETY: the caller's: output row o0 + i, lanes before `left` only.
                unsafe {
                    let sum = _mm256_load_ps(sums.0[i * PV + v].as_ptr());
                    let p = self.out.add((o0 + i) * self.len + first);
                    let live = self.left.saturating_sub(first);
                    if live >= 8 {
                        let sum = if self.accumulate { _mm256_add_ps(_mm256_loadu_ps(p), sum) } else { sum };
                        _mm256_storeu_ps(p, sum);
                    } else if live > 0 {
                        // A row's last vector: only its lanes before the row's end.
                        let m = _mm256_cmpgt_epi32(_mm256_set1_epi32(live as i32), lanes);
                        let sum = if self.accumulate { _mm256_add_ps(_mm256_maskload_ps(p, m), sum) } else { sum };
                        _mm256_maskstore_ps(p, m, sum);
                    }
                }
            }
        }
    }
}

// Why assembly: written with intrinsics, 12 accumulators, the panel's vectors and the
// broadcast take all 16 of AVX2's registers, and LLVM rotated the accumulators through
// registers on every row or spilled one to the stack, a store-to-load chain that made a
// 28x28 forward twice as slow (46 against 25 ms). Here every register is fixed.

/// An AVX2 sub-tile's sums in assembly: `ymm0..ymm11` accumulate, one row of the panel per
/// iteration (`$row`: its loads and FMAs, the panel's vectors in `ymm12..`, the broadcast in
/// `ymm15`; weights of output `i` at `[{w} + i lane]` for `i < 3`, `[{w3} + (i - 3) lane]`
/// for the rest), the weight pointers stepping as the walk does; then the 12 sums to `Sums`.
macro_rules! panel_sums {
    ($(#[$doc:meta])* $name:ident, $($row:literal),+ $(,)?) => {
        $(#[$doc])*
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $name(t: &Sub, px: usize, o0: usize) -> Sums {
            let mut sums = Sums([[0.0; 8]; 12]);
            let (row, tap, skip) = t.steps();
            let rows = t.walk.chans * t.walk.taps;
            if rows == 0 {
                return sums;
            }
            let w = t.w.wrapping_add(o0 * t.walk.lane);
            // SAFETY: the caller's: `rows` panel rows from `a + 8 px`, aligned; per row the
            // sub-tile's outputs' weights, stepping as the walk does; 12 vectors to `sums`.
            unsafe {
                std::arch::asm!(
                    "vxorps ymm0, ymm0, ymm0", "vxorps ymm1, ymm1, ymm1", "vxorps ymm2, ymm2, ymm2",
                    "vxorps ymm3, ymm3, ymm3", "vxorps ymm4, ymm4, ymm4", "vxorps ymm5, ymm5, ymm5",
                    "vxorps ymm6, ymm6, ymm6", "vxorps ymm7, ymm7, ymm7", "vxorps ymm8, ymm8, ymm8",
                    "vxorps ymm9, ymm9, ymm9", "vxorps ymm10, ymm10, ymm10", "vxorps ymm11, ymm11, ymm11",
                    "mov {left}, {taps}",
                    "2:",
                    $($row,)+
                    "add {a}, {row}",
                    "add {w}, {tap}",
                    "add {w3}, {tap}",
                    "dec {left}",
                    "jnz 3f",
                    "add {w}, {skip}",
                    "add {w3}, {skip}",
                    "mov {left}, {taps}",
                    "3:",
                    "dec {rows}",
                    "jnz 2b",
                    "vmovaps [{out}], ymm0", "vmovaps [{out} + 32], ymm1", "vmovaps [{out} + 64], ymm2",
                    "vmovaps [{out} + 96], ymm3", "vmovaps [{out} + 128], ymm4", "vmovaps [{out} + 160], ymm5",
                    "vmovaps [{out} + 192], ymm6", "vmovaps [{out} + 224], ymm7", "vmovaps [{out} + 256], ymm8",
                    "vmovaps [{out} + 288], ymm9", "vmovaps [{out} + 320], ymm10", "vmovaps [{out} + 352], ymm11",
                    a = inout(reg) t.a.add(8 * px) => _,
                    w = inout(reg) w => _,
                    w3 = inout(reg) w.wrapping_add(3 * t.walk.lane) => _,
                    lane = in(reg) t.walk.lane,
                    row = in(reg) row,
                    tap = in(reg) tap,
                    skip = in(reg) skip,
                    taps = in(reg) t.walk.taps,
                    left = out(reg) _,
                    rows = inout(reg) rows => _,
                    out = in(reg) sums.0.as_mut_ptr(),
                    out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _, out("ymm5") _,
                    out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
                    out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
                    options(nostack),
                );
            }
            sums
        }
    };
}

panel_sums!(
    /// The sums of the sub-tile of 24 pixels (3 vectors from `px`) by 4 outputs from `o0`.
    ///
    /// # Safety
    /// AVX2 and FMA present; the panel's rows and the walk's weights in bounds.
    sums_3x4,
    "vmovaps ymm12, [{a}]",
    "vmovaps ymm13, [{a} + 32]",
    "vmovaps ymm14, [{a} + 64]",
    "vbroadcastss ymm15, [{w}]",
    "vfmadd231ps ymm0, ymm12, ymm15",
    "vfmadd231ps ymm1, ymm13, ymm15",
    "vfmadd231ps ymm2, ymm14, ymm15",
    "vbroadcastss ymm15, [{w} + {lane} * 4]",
    "vfmadd231ps ymm3, ymm12, ymm15",
    "vfmadd231ps ymm4, ymm13, ymm15",
    "vfmadd231ps ymm5, ymm14, ymm15",
    "vbroadcastss ymm15, [{w} + {lane} * 8]",
    "vfmadd231ps ymm6, ymm12, ymm15",
    "vfmadd231ps ymm7, ymm13, ymm15",
    "vfmadd231ps ymm8, ymm14, ymm15",
    "vbroadcastss ymm15, [{w3}]",
    "vfmadd231ps ymm9, ymm12, ymm15",
    "vfmadd231ps ymm10, ymm13, ymm15",
    "vfmadd231ps ymm11, ymm14, ymm15",
);

panel_sums!(
    /// The sums of the sub-tile of 16 pixels (2 vectors from `px`) by 6 outputs from `o0`.
    ///
    /// # Safety
    /// As [`sums_3x4`], for 2 vectors by 6 outputs.
    sums_2x6,
    "vmovaps ymm12, [{a}]",
    "vmovaps ymm13, [{a} + 32]",
    "vbroadcastss ymm15, [{w}]",
    "vfmadd231ps ymm0, ymm12, ymm15",
    "vfmadd231ps ymm1, ymm13, ymm15",
    "vbroadcastss ymm15, [{w} + {lane} * 4]",
    "vfmadd231ps ymm2, ymm12, ymm15",
    "vfmadd231ps ymm3, ymm13, ymm15",
    "vbroadcastss ymm15, [{w} + {lane} * 8]",
    "vfmadd231ps ymm4, ymm12, ymm15",
    "vfmadd231ps ymm5, ymm13, ymm15",
    "vbroadcastss ymm15, [{w3}]",
    "vfmadd231ps ymm6, ymm12, ymm15",
    "vfmadd231ps ymm7, ymm13, ymm15",
    "vbroadcastss ymm15, [{w3} + {lane} * 4]",
    "vfmadd231ps ymm8, ymm12, ymm15",
    "vfmadd231ps ymm9, ymm13, ymm15",
    "vbroadcastss ymm15, [{w3} + {lane} * 8]",
    "vfmadd231ps ymm10, ymm12, ymm15",
    "vfmadd231ps ymm11, ymm13, ymm15",
);

/// A sub-tile of `8 PV` pixels from 8-lane vector `px` by outputs `o0..o0 + OR`, with
/// intrinsics: the 8-accumulator remainders of short tiles (few registers, no spills).
///
/// # Safety
/// AVX2 and FMA present; as [`tile_v4`] for the sub-tile's pixels and outputs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sub_avx2<const PV: usize, const OR: usize>(t: &Sub, px: usize, o0: usize) {
    // SAFETY (whole body): the caller's; the weight pointer is formed with wrapping
    // arithmetic (a flipped walk starts past its channel's last tap).
    unsafe {
        let walk = t.walk;
        let mut acc = [[_mm256_setzero_ps(); PV]; OR];
        let mut pa = t.a.add(8 * px);
        let w = t.w.wrapping_add(o0 * walk.lane);
        for c in 0..walk.chans {
            let mut wk = w.wrapping_add(c * walk.chan);
            for _ in 0..walk.taps {
                let av: [__m256; PV] = std::array::from_fn(|v| _mm256_load_ps(pa.add(8 * v)));
                for (i, acc_i) in acc.iter_mut().enumerate() {
                    let b = _mm256_broadcast_ss(&*wk.wrapping_add(i * walk.lane));
                    for v in 0..PV {
                        acc_i[v] = _mm256_fmadd_ps(av[v], b, acc_i[v]);
                    }
                }
                pa = pa.add(t.row);
                wk = wk.wrapping_offset(walk.tap);
            }
        }
        let mut sums = Sums([[0.0; 8]; 12]);
        for (i, acc_i) in acc.iter().enumerate() {
            for (v, sum) in acc_i.iter().enumerate() {
                _mm256_store_ps(sums.0[i * PV + v].as_mut_ptr(), *sum);
            }
        }
        t.store::<PV, OR>(&sums, px, o0);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_avx2<const V: usize>(_: *const f32, _: *const f32, _: &Walk, _: *mut f32, _: usize, _: usize, _: bool) {
    unreachable!("the AVX2 proof is x86-64 only")
}

impl Panel {
    /// Gathers, for each reduction row `r`, the `16 nv` floats of `x` from `off[r]`: the
    /// padded route's tile, whose inputs lie in a zero-padded copy (no masks).
    pub(super) fn gather_offsets(&mut self, x: &[f32], off: &[usize], nv: usize) {
        assert!(off.len() * nv <= self.0.len(), "gather_offsets: the panel holds a block");
        assert!(off.iter().all(|&o| o + 16 * nv <= x.len()), "gather_offsets: the reads lie in x");
        for (row, &o) in self.0.chunks_mut(nv).zip(off) {
            for (v, lanes) in row.iter_mut().enumerate() {
                lanes.0.copy_from_slice(&x[o + 16 * v..][..16]);
            }
        }
    }
}

impl Walk {
    /// The walk over weights packed `(kk, NR)` ([`super::pack`]), `rows` reduction rows.
    pub(super) fn packed(rows: usize) -> Walk {
        Walk { chans: rows, taps: 1, lane: 1, chan: NR, tap: 0 }
    }
    /// The lowest and highest float it reads from its first weight.
    fn span(&self) -> (isize, isize) {
        let mut lo_hi = (0isize, (NR - 1) as isize * self.lane as isize);
        let chans = (self.chans as isize - 1) * self.chan as isize;
        let taps = (self.taps as isize - 1) * self.tap;
        lo_hi.0 += taps.min(0);
        lo_hi.1 += chans + taps.max(0);
        lo_hi
    }
}

impl Panel {
    /// The tile's products: `NR` output rows of `16 nv` pixels from the panel's
    /// `walk.chans * walk.taps` rows and the weights along `walk` from `w[at]`, stored
    /// (`accumulate` false) or added to `out[i * ld + q0..]`, lanes past `ld` left alone.
    pub(super) fn sum(
        &self,
        cpu: Cpu,
        (w, at, walk): (&[f32], usize, &Walk),
        (out, ld, q0): (&mut [std::mem::MaybeUninit<f32>], usize, usize),
        nv: usize,
        accumulate: bool,
    ) {
        let (lo, hi) = walk.span();
        assert!(at as isize + lo >= 0 && at as isize + hi < w.len() as isize, "Panel::sum: the walk lies in w");
        assert!(walk.chans * walk.taps * nv <= self.0.len() && out.len() == NR * ld && q0 < ld, "Panel::sum: rows");
        let left = ld - q0;
        let inside: [u16; NV] = std::array::from_fn(|v| {
            let left = left.saturating_sub(16 * v).min(16);
            ((1u32 << left) - 1) as u16
        });
        let (a, out) = (self.0.as_ptr().cast(), out.as_mut_ptr().cast::<f32>().wrapping_add(q0));
        let w = w.as_ptr().wrapping_add(at);
        // SAFETY: the Cpu's proof is the build's; the panel holds the walk's rows of nv
        // vectors, the weights read lie in w (at + [lo, hi]), out is NR rows of ld floats and
        // the tile stores lanes before ld only (all asserted or built above).
        unsafe {
            match (cpu, nv) {
                (Cpu::Avx512(_), 3) => tile_v4::<3>(a, w, walk, out, ld, inside, accumulate),
                (Cpu::Avx512(_), 2) => tile_v4::<2>(a, w, walk, out, ld, inside, accumulate),
                (Cpu::Avx512(_), _) => tile_v4::<1>(a, w, walk, out, ld, inside, accumulate),
                (Cpu::Avx2(_), 3) => tile_avx2::<3>(a, w, walk, out, ld, left, accumulate),
                (Cpu::Avx2(_), 2) => tile_avx2::<2>(a, w, walk, out, ld, left, accumulate),
                (Cpu::Avx2(_), _) => tile_avx2::<1>(a, w, walk, out, ld, left, accumulate),
            }
        }
    }
}
