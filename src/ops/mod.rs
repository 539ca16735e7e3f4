//! ablate's own candle ops: convolution and pooling with fast, correct CPU kernels and tested backwards.
//!
//! candle 0.11's CPU convolution computes its input gradient with a direct transposed
//! convolution (~80 % of a training step) and runs grouped convolutions one group at a time;
//! its `max_pool2d` passes back 1/4 of the true gradient for 2x2 windows and cannot
//! back-propagate when kernel != stride. These ops replace both on CPU; on other devices
//! (CUDA) [`generic`] composes pooling and grouped convolution from candle's tensor ops, and
//! the rest falls back to candle's own kernels.

use candle_core::{CpuStorage, Layout, Result};

/// Defines `fn $name(isa, args) -> ret` running `$body` compiled for AVX-512, AVX2+FMA or
/// the baseline, as `isa` says (an [`isa::Isa`] exists only for levels this CPU runs). The
/// crate builds for baseline x86-64 (SSE2), where an element-wise loop with a select (a ReLU
/// mask) may compile to a mispredicted branch per element; with the wider features it
/// vectorises with masked selects. `$body` must be `#[inline(always)]` so that each copy is
/// compiled with its features. Same arithmetic in every copy (Rust never contracts to FMA),
/// so results do not depend on the build.
macro_rules! simd_dispatch {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty = $body:ident) => {
        $(#[$doc])*
        fn $name(isa: $crate::ops::isa::Isa, $($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
                unsafe fn v4($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                match isa.level() {
                    // SAFETY: `isa` proves the CPU has the features v4 was compiled for.
                    $crate::ops::isa::Level::Avx512 => return unsafe { v4($($arg),*) },
                    // SAFETY: as above, for v3.
                    $crate::ops::isa::Level::Avx2 => return unsafe { v3($($arg),*) },
                    $crate::ops::isa::Level::Baseline => {}
                }
            }
            let _ = isa;
            $body($($arg),*)
        }
    };
}
pub mod conv;
pub mod generic;
pub mod isa;
pub mod linear;
pub mod norm;
pub mod params;
pub mod pool;
pub mod trace;

/// The contiguous f32 data behind a storage + layout, or an error naming the op.
pub(crate) fn f32_slice<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s
        .as_slice::<f32>()
        .map_err(|_| candle_core::Error::Msg(format!("{op}: only f32 tensors are supported, got a different dtype")))?;
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: input must be contiguous (call .contiguous() first)"),
    }
}

/// Test inputs shared by the ops' tests.
/// `a` row by row (rows of `row` floats, in parallel): element `j` of row `r` becomes
/// `per_row(r)(a[r * row + j])`, written into a vector that is never zeroed first. The
/// zeroing of freshly allocated outputs (`vec![0.0; n]`, overwritten right after) was 7-9 % of
/// a ResNet18 or LeNet training step in perf.
pub(crate) fn map_rows<F: Fn(f32) -> f32>(a: &[f32], row: usize, per_row: impl Fn(usize) -> F + Sync) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out = Vec::with_capacity(a.len());
    out.spare_capacity_mut()[..a.len()].par_chunks_mut(row.max(1)).zip(a.par_chunks(row.max(1))).enumerate().for_each(
        |(r, (o, a))| {
            let f = per_row(r);
            for (o, &a) in o.iter_mut().zip(a) {
                o.write(f(a));
            }
        },
    );
    // SAFETY: the first a.len() slots were split into chunks of the same lengths as a's and
    // paired with them one to one, and the loop above wrote every slot of every chunk.
    unsafe { out.set_len(a.len()) };
    out
}

/// A vector of `len` floats made in chunks of `chunk` (the last may be shorter), in parallel:
/// `fill(i, c)` gets chunk `i` zeroed, on the worker that then fills it. `vec![0.0; len]`
/// zeroes the whole allocation on the calling thread before any worker starts (mimalloc
/// zeroes reused blocks): 8 % of a ResNeXt step and 5 % of a ResNet18 step in perf, one core
/// busy while the other waited. Zeroed here, each chunk is written while still in cache, on
/// every core. For kernels that add into their output; those that write all of it take
/// [`par_chunks_written`] and skip the zeroing.
pub(crate) fn par_chunks_zeroed<T: Copy + Default + Send + Sync>(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [T]) + Sync,
) -> Vec<T> {
    use rayon::prelude::*;
    let mut out = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len].par_chunks_mut(chunk.max(1)).enumerate().for_each(|(i, c)| {
        for slot in c.iter_mut() {
            slot.write(T::default());
        }
        // SAFETY: every slot of `c` was just initialised, and MaybeUninit<T> has T's layout.
        let c = unsafe { &mut *(c as *mut [std::mem::MaybeUninit<T>] as *mut [T]) };
        fill(i, c);
    });
    // SAFETY: the chunks cover the first len slots, and each was initialised above.
    unsafe { out.set_len(len) };
    out
}

static POISON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether outputs are poisoned before kernels write them ([`poison_unwritten_outputs`]).
pub(crate) fn poisoned() -> bool {
    POISON.load(std::sync::atomic::Ordering::Relaxed)
}

/// From now on, in this process, every output [`par_chunks_written`] hands a kernel is filled
/// with NaN first (as in debug builds): the parity tests call it, so that a kernel leaving an
/// element unwritten fails them in release builds too.
#[doc(hidden)]
pub fn poison_unwritten_outputs() {
    POISON.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// [`par_chunks_zeroed`] for kernels that overwrite their whole chunk: `fill(i, c)` gets chunk
/// `i` uninitialised and writes it (through [`write_slice`], `MaybeUninit::write` or a GEMM
/// that does not read its destination), saving the zeroing pass, 4-7 % of a ResNet18 step.
///
/// # Safety
/// `fill` must initialise every element of the chunk it is given, and read none it has not
/// written.
pub(crate) unsafe fn par_chunks_written(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [std::mem::MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len].par_chunks_mut(chunk.max(1)).enumerate().for_each(|(i, c)| {
        // Poisoned first in debug builds and under the parity tests, so that an element a
        // kernel failed to write shows up as NaN (fresh memory is often zero, hiding it).
        if cfg!(debug_assertions) || POISON.load(std::sync::atomic::Ordering::Relaxed) {
            c.iter_mut().for_each(|v| {
                v.write(f32::NAN);
            });
        }
        fill(i, c)
    });
    // SAFETY: the chunks cover the first len slots, and the caller's `fill` initialised each.
    unsafe { out.set_len(len) };
    out
}

/// `dst[i] = src[i]` into uninitialised floats (same lengths).
pub(crate) fn write_slice(dst: &mut [std::mem::MaybeUninit<f32>], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "write_slice: lengths differ");
    dst.iter_mut().zip(src).for_each(|(d, &v)| {
        d.write(v);
    });
}

/// `f(a[i], b[i])` for every element (same lengths), in parallel chunks, into a vector that is
/// never zeroed first (see [`map_rows`]).
pub(crate) fn map2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    assert_eq!(a.len(), b.len(), "map2: lengths differ");
    let mut out = Vec::with_capacity(a.len());
    out.spare_capacity_mut()[..a.len()]
        .par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(o, (a, b))| {
            for (o, (&a, &b)) in o.iter_mut().zip(a.iter().zip(b)) {
                o.write(f(a, b));
            }
        });
    // SAFETY: as in map_rows: equal-length chunks paired one to one, every slot written.
    unsafe { out.set_len(a.len()) };
    out
}

#[cfg(test)]
pub(crate) mod testing {
    use candle_core::{Device, Tensor};
    use rand::{Rng, SeedableRng};

    /// A CPU tensor of `shape` with seeded values uniform in `[lo, hi)` (distinct in practice:
    /// no ties for max-pool to break differently).
    pub fn uniform(shape: &[usize], seed: u64, lo: f32, hi: f32) -> Tensor {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.gen_range(lo..hi)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).expect("shape matches the values")
    }

    /// `a` within 1e-5 of `b`'s scale (its largest value, at least 1e-3).
    pub fn assert_close(a: &Tensor, b: &Tensor, what: &str) {
        assert_eq!(a.dims(), b.dims(), "{what}: shapes");
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        let diff = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(diff / scale < 1e-5, "{what}: max diff {diff} (scale {scale})");
    }
}
