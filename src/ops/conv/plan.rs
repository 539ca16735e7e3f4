//! The convolution's kernel plan: the one place that decides, per geometry and pass, which
//! algorithm runs (and with which SIMD build), so that forward and both gradients follow the
//! same ladder, tests can force each algorithm on the same case and see which one ran.
//!
//! The ladder, first that applies:
//! 0. [`Algo::Winograd`]: Winograd F(2x2, 3x3) for 3x3, stride-1, one-group convs: the
//!    forward and input gradient with 32+ channels on maps of 100+ pixels (ResNet's 3x3s but
//!    its 7x7 stage), the weight gradient with 128+ channels (its layers 2 to 4); on any SIMD
//!    build (the GEMMs are the `gemm` crate's);
//! 1. [`Algo::Implicit`]: implicit GEMM on AVX-512 (dilation 1, 16k channels per group, maps
//!    of 100+ pixels or the small maps its masked route folds; the input gradient for stride 1
//!    only);
//! 2. [`Algo::Direct`]: LeNet-sized convs (stride 1, no padding, one group, few channels);
//! 3. [`Algo::Batched`]: im2col + one GEMM over the whole batch, for maps under
//!    [`BATCH_BELOW`] pixels;
//! 4. [`Algo::PerSample`]: im2col + one GEMM per sample, parallel over the batch.
//!
//! With tuning on (`ABLATE_TUNE`, [`super::tune`]), the ladder is only the default: every
//! algorithm that can run a pass is a [`candidate`], and the measured fastest runs.

use std::cell::{Cell, RefCell};

pub use super::{Algo, Pass};
use super::{Geometry, Kernel, implicit, winograd};
use crate::ops::isa::{Isa, Level};

/// Below this many output pixels per sample, the samples share one GEMM (`k x n*l` columns):
/// a per-sample GEMM with a few hundred columns (ResNet's 14x14 and 7x7 stages) runs far
/// below the GEMM's peak.
pub const BATCH_BELOW: usize = 1024;

/// `algo` for `pass` of `g` on `isa`, if the ladder lets it run it (the implicit kernels
/// only on AVX-512: their AVX2 build is for tuning to time).
fn kernel(algo: Algo, pass: Pass, g: &Geometry, isa: Isa) -> Option<Kernel> {
    match algo {
        Algo::Implicit if !implicit::worthwhile(pass, &g.implicit()?) || isa.avx512().is_none() => None,
        Algo::Winograd if !winograd::worthwhile(pass, &g.winograd()?) => None,
        _ => candidate(algo, pass, g, isa),
    }
}

/// `algo` for `pass` of `g` on `isa`, if it can run it at all: what tuning times (the ladder
/// also leaves out the implicit kernels on small maps, [`implicit::worthwhile`]).
pub(super) fn candidate(algo: Algo, pass: Pass, g: &Geometry, isa: Isa) -> Option<Kernel> {
    match algo {
        Algo::Implicit => {
            let d = g.implicit()?;
            if pass == Pass::InputGrad && !implicit::input_grad_applies(&d) {
                return None;
            }
            let cpu = match (isa.avx512(), isa.avx2()) {
                (Some(v4), _) => implicit::Cpu::Avx512(v4),
                (None, Some(v3)) => implicit::Cpu::Avx2(v3),
                (None, None) => return None,
            };
            Some(Kernel::Implicit(cpu, d))
        }
        Algo::Direct => g.direct().map(|d| Kernel::Direct(isa, d)),
        Algo::Depthwise => g.depthwise().map(|d| Kernel::Depthwise(isa, d)),
        Algo::Batched => Some(Kernel::Batched),
        Algo::PerSample => Some(Kernel::PerSample),
        Algo::Winograd => g.winograd().map(|d| Kernel::Winograd(isa, d)),
    }
}

/// What the ladder picks for `pass` of `g` on `isa`.
pub(super) fn choose(pass: Pass, g: &Geometry, isa: Isa) -> Kernel {
    let batched = g.l() < BATCH_BELOW && g.n > 1;
    kernel(Algo::Winograd, pass, g, isa)
        .or_else(|| kernel(Algo::Implicit, pass, g, isa))
        .or_else(|| kernel(Algo::Direct, pass, g, isa))
        .or_else(|| kernel(Algo::Depthwise, pass, g, isa))
        .unwrap_or(if batched { Kernel::Batched } else { Kernel::PerSample })
}

/// One convolution pass that ran: what [`record`] collects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ran {
    pub pass: Pass,
    pub algo: Algo,
    /// The SIMD build of ablate's own kernels (the `gemm` crate picks its own).
    pub level: Level,
    /// The route inside the algorithm, where it has more than one (the implicit kernels:
    /// `"masked"`, `"folded"`, `"phases"`, `"folded phases"` or `"padded"`, [`super::implicit::route`]).
    pub route: Option<&'static str>,
}

thread_local! {
    static FORCED: Cell<Option<Algo>> = const { Cell::new(None) };
    static RECORD: RefCell<Option<Vec<Ran>>> = const { RefCell::new(None) };
}

/// The kernel for `pass` of `g`, on this thread's SIMD level: the algorithm [`with_forced`]
/// asks for where it can run this pass, else the tuned plan's ([`super::tune`]), else the
/// ladder's choice.
pub(super) fn plan(pass: Pass, g: &Geometry) -> Kernel {
    let isa = Isa::current();
    let forced = FORCED.with(Cell::get).and_then(|algo| candidate(algo, pass, g, isa));
    let k = forced
        .or_else(|| super::tune::planned(pass, g, isa, || choose(pass, g, isa), |a| candidate(a, pass, g, isa)))
        .unwrap_or_else(|| choose(pass, g, isa));
    RECORD.with(|r| {
        if let Some(v) = r.borrow_mut().as_mut() {
            v.push(Ran { pass, algo: k.algo(), level: isa.level(), route: k.route(pass) });
        }
    });
    k
}

/// What the ladder picks for `pass` of a convolution of `x` by `w` with `p` on this thread's
/// SIMD level (`None` for shapes that do not fit).
pub fn ladder(pass: Pass, x: &[usize], w: &[usize], p: super::ConvParams) -> Option<Algo> {
    let g = Geometry::new(&x.into(), &w.into(), p).ok()?;
    Some(choose(pass, &g, Isa::current()).algo())
}

/// Whether `algo` can run `pass` of a convolution of `x` by `w` with `p` on this thread's
/// SIMD level.
pub fn supports(algo: Algo, pass: Pass, x: &[usize], w: &[usize], p: super::ConvParams) -> bool {
    let Ok(g) = Geometry::new(&x.into(), &w.into(), p) else { return false };
    candidate(algo, pass, &g, Isa::current()).is_some()
}

/// Runs `f` with every convolution pass on this thread that `algo` can run using it (ops run
/// on the calling thread, backward passes included); the others follow the ladder.
/// Restores the previous setting.
pub fn with_forced<R>(algo: Algo, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Algo>);
    impl Drop for Restore {
        fn drop(&mut self) {
            FORCED.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(FORCED.with(|c| c.replace(Some(algo))));
    f()
}

/// Runs `f` and returns, with its result, every convolution pass it ran on this thread.
pub fn record<R>(f: impl FnOnce() -> R) -> (R, Vec<Ran>) {
    let outer = RECORD.with(|r| r.borrow_mut().replace(Vec::new()));
    let out = f();
    let ran = RECORD.with(|r| std::mem::replace(&mut *r.borrow_mut(), outer)).unwrap_or_default();
    (out, ran)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::ConvParams;
    use crate::ops::conv::tune::{MARGIN, measure};

    #[test]
    fn measuring_keeps_the_ladder_unless_another_is_clearly_faster() {
        let p = ConvParams { stride: 1, padding: 1, dilation: 1, groups: 1 };
        let g = Geometry::new(&(&[2, 16, 12, 12]).into(), &(&[16, 16, 3, 3]).into(), p).unwrap();
        let isa = Isa::current();
        for pass in [Pass::Forward, Pass::InputGrad, Pass::WeightGrad] {
            let ladder = choose(pass, &g, isa);
            let (k, entry) = measure(pass, &g, ladder, &|a| candidate(a, pass, &g, isa));
            assert_eq!(k.algo(), entry.algo);
            let n = Algo::ALL.iter().filter(|&&a| candidate(a, pass, &g, isa).is_some()).count();
            assert_eq!(entry.us.len(), n, "{pass:?}: every candidate timed: {entry:?}");
            let (ladder_us, chosen_us) = (entry.us[&ladder.algo()], entry.us[&entry.algo]);
            if entry.algo != ladder.algo() {
                assert!(ladder_us > MARGIN * chosen_us, "{pass:?}: {entry:?} left the ladder's {ladder:?}");
            }
            let fastest = entry.us.values().copied().fold(f64::INFINITY, f64::min);
            assert!(chosen_us <= MARGIN * fastest, "{pass:?}: {entry:?} is not the fastest within the margin");
        }
    }
}
