//! The panel the implicit tiles read: a tile's inputs for a block of the reduction,
//! gathered into aligned vectors in the weights' order, then summed against every output
//! block of a task (as a GEMM's packed panel). Read in place instead (shifted, unaligned and
//! a plane apart per channel), the same products ran 10-15 % slower on ResNet18's 3x3s
//! (`examples/bench convs` on an Intel Xeon).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::{NR, NV};
use crate::ops::isa::Avx512;

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

impl Panel {
    /// Gathers, for each reduction row `r`, the `16 nv` floats of `x` from `off[r]`: the
    /// padded route's tile, whose inputs lie in a zero-padded copy (no masks).
    pub(super) fn gather_offsets(&mut self, _: Avx512, x: &[f32], off: &[usize], nv: usize) {
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
        _: Avx512,
        (w, at, walk): (&[f32], usize, &Walk),
        (out, ld, q0): (&mut [std::mem::MaybeUninit<f32>], usize, usize),
        nv: usize,
        accumulate: bool,
    ) {
        let (lo, hi) = walk.span();
        assert!(at as isize + lo >= 0 && at as isize + hi < w.len() as isize, "Panel::sum: the walk lies in w");
        assert!(walk.chans * walk.taps * nv <= self.0.len() && out.len() == NR * ld && q0 < ld, "Panel::sum: rows");
        let inside: [u16; NV] = std::array::from_fn(|v| {
            let left = ld.saturating_sub(q0 + 16 * v).min(16);
            ((1u32 << left) - 1) as u16
        });
        let (a, out) = (self.0.as_ptr().cast(), out.as_mut_ptr().cast::<f32>().wrapping_add(q0));
        // SAFETY: the Avx512 proof is the build's; the panel holds the walk's rows of nv
        // vectors, the weights read lie in w (at + [lo, hi]), out is NR rows of ld floats and the tile stores
        // lanes before ld only (all asserted or built above).
        unsafe {
            match nv {
                3 => tile_v4::<3>(a, w.as_ptr().add(at), walk, out, ld, inside, accumulate),
                2 => tile_v4::<2>(a, w.as_ptr().add(at), walk, out, ld, inside, accumulate),
                _ => tile_v4::<1>(a, w.as_ptr().add(at), walk, out, ld, inside, accumulate),
            }
        }
    }
}
