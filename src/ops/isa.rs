//! The SIMD builds this CPU can run: detected once, capped per thread (tests force the
//! narrower builds with [`with_cap`]), and handed to the kernels as a value.
//!
//! An [`Isa`] can only be made by [`Isa::current`], from runtime detection, so holding one is
//! proof that the CPU runs every build up to its level; [`Avx512`] is the narrower proof the
//! hand-written AVX-512 kernels take. The value is read once at an op's entry, on the calling
//! thread, and passed down into the parallel loops: a per-thread cap would not reach rayon's
//! workers, and a global one would change the builds under other threads' feet.

use std::cell::Cell;
use std::sync::OnceLock;

/// A SIMD build, narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// x86-64's SSE2 (or another architecture's default): plain Rust, no FMA.
    Baseline,
    /// AVX2 with FMA.
    Avx2,
    /// AVX-512 F, BW, VL and DQ (with AVX2 and FMA).
    Avx512,
}

impl Level {
    /// Every level, narrowest first.
    pub const ALL: [Level; 3] = [Level::Baseline, Level::Avx2, Level::Avx512];
}

/// A SIMD level this CPU is known to run (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Isa(Level);

/// Proof that the CPU runs AVX-512 F, BW, VL and DQ: the hand-written AVX-512 kernels take
/// one, so they cannot be reached on a CPU without it.
#[derive(Debug, Clone, Copy)]
pub struct Avx512(());

/// Proof that the CPU runs AVX2 with FMA, for the hand-written AVX2 kernels.
#[derive(Debug, Clone, Copy)]
pub struct Avx2(());

thread_local! {
    static CAP: Cell<Level> = const { Cell::new(Level::Avx512) };
}

fn detect() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        // The AVX2 build (no `avx512` feature) stops at AVX2, as the `gemm` crate then does.
        use std::arch::is_x86_feature_detected as has;
        if cfg!(feature = "avx512")
            && has!("avx512f")
            && has!("avx512bw")
            && has!("avx512vl")
            && has!("avx512dq")
            && has!("avx2")
            && has!("fma")
        {
            return Level::Avx512;
        }
        if has!("avx2") && has!("fma") {
            return Level::Avx2;
        }
    }
    Level::Baseline
}

impl Isa {
    /// The widest level this CPU runs.
    pub fn detected() -> Isa {
        static DETECTED: OnceLock<Level> = OnceLock::new();
        Isa(*DETECTED.get_or_init(detect))
    }

    /// The level kernels use now on this thread: the detected one, lowered by [`with_cap`].
    pub fn current() -> Isa {
        Isa(Self::detected().0.min(CAP.with(Cell::get)))
    }

    pub fn level(self) -> Level {
        self.0
    }

    /// The AVX-512 proof, where this level has it.
    pub fn avx512(self) -> Option<Avx512> {
        (self.0 == Level::Avx512).then_some(Avx512(()))
    }

    /// The AVX2 + FMA proof, where this level has it (AVX-512 includes it).
    pub fn avx2(self) -> Option<Avx2> {
        (self.0 >= Level::Avx2).then_some(Avx2(()))
    }
}

/// Runs `f` with this thread's kernels limited to `cap` (a level this CPU lacks is no
/// limit: [`Isa::current`] never exceeds the detected level). Restores the previous cap.
pub fn with_cap<R>(cap: Level, f: impl FnOnce() -> R) -> R {
    struct Restore(Level);
    impl Drop for Restore {
        fn drop(&mut self) {
            CAP.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CAP.with(|c| c.replace(cap)));
    f()
}

/// The CPU's model as the OS reports it (`/proc/cpuinfo`'s model name, family, model and
/// stepping on Linux; the architecture elsewhere): what kernel timings are kept under, since
/// they hold for one microarchitecture.
pub fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim() == name).map(|(_, v)| v.trim().to_string()))
    };
    match field("model name") {
        Some(name) => format!(
            "{name} (family {}, model {}, stepping {})",
            field("cpu family").unwrap_or_default(),
            field("model").unwrap_or_default(),
            field("stepping").unwrap_or_default()
        ),
        None => std::env::consts::ARCH.to_string(),
    }
}

/// The levels this CPU runs, narrowest first: what a test can force.
pub fn available() -> Vec<Level> {
    Level::ALL.into_iter().filter(|&l| l <= Isa::detected().level()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_lowers_the_level_on_this_thread_only_and_is_restored() {
        let top = Isa::detected().level();
        with_cap(Level::Baseline, || {
            assert_eq!(Isa::current().level(), Level::Baseline);
            assert!(Isa::current().avx512().is_none());
            let other = std::thread::spawn(|| Isa::current().level()).join().unwrap();
            assert_eq!(other, top, "another thread keeps the detected level");
        });
        assert_eq!(Isa::current().level(), top);
        with_cap(Level::Avx512, || assert_eq!(Isa::current().level(), top, "a cap never raises"));
    }
}
