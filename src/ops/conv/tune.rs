//! Choosing each convolution pass's kernel by timing the candidates on the machine that runs
//! it, once per geometry, and remembering the choice (cuDNN's benchmark mode, FFTW's wisdom).
//!
//! The ladder in `plan.rs` was tuned on one CPU; which algorithm wins for a shape moves
//! with the microarchitecture (vector width, L2 size, load ports). So, when tuning is on, the
//! first time a pass of a geometry runs, every algorithm that can take it runs on scratch
//! data of that geometry and the fastest is kept (the ladder's pick unless another is more
//! than [`MARGIN`] faster: noise should not move the plan).
//!
//! A choice, once made, never changes within a process, and a process can be handed the
//! choices of an earlier one: those of the run it continues ([`pin`], the run folder's
//! `kernels.json`, which win over everything, so resumes, repeats and shards of one run use one
//! plan) and those of the machine's cache ([`remember`]). Different algorithms sum in different
//! orders, so a seeded run is bit-identical to another for the same plan, not across plans.
//! This module keeps the plan in memory; `output::kernel_plan` reads and writes the files.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Algo, Geometry, Kernel, Pass};
use crate::ops::isa::Isa;

/// Whether convolutions are planned by measurement (`ABLATE_TUNE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The ladder alone (a run's pinned plan still wins).
    Off,
    /// Known choices (pinned, then the machine's cache), measuring the rest.
    On,
    /// Measures every geometry again, ignoring the machine's cache (a pinned plan still wins).
    Force,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" | "0" => Ok(Mode::Off),
            "on" | "1" => Ok(Mode::On),
            "force" => Ok(Mode::Force),
            _ => Err(format!("ABLATE_TUNE = {s:?}: expected off, on or force")),
        }
    }
}

/// Another algorithm replaces the ladder's pick only when it is this much faster.
pub const MARGIN: f64 = 1.03;

/// Candidates run in rounds until they have run this long each (on average), or
/// [`MAX_RUNS`] times; the best run counts. Every candidate runs twice; those within 1.5x of
/// the best so far run again, the others are out. (Cut after the first run, a kernel whose
/// fresh buffers fault in was judged by that alone: the implicit AVX2 weight gradient of a
/// ResNeXt g1 was timed at 104 ms, where its warm runs take 51 ms and won.)
const CANDIDATE_BUDGET: Duration = Duration::from_millis(50);

/// At most this many runs of one candidate (small geometries time noisily).
const MAX_RUNS: usize = 4;

/// Candidates whose own buffers would exceed this many floats (64 MiB) are not timed: the
/// whole-batch im2col of a large map (LeNet's first conv at 256x256, batch 64: 1.2 GB;
/// ResNet18's stem at batch 16: 118 MB, 0.3 s a run) is slow and a memory cost no speed
/// justifies.
const MAX_SCRATCH_FLOATS: usize = 16 << 20;

/// Floats of scratch `k` allocates for `pass` of `g`, beyond inputs and output (the
/// im2col columns, and for the batched GEMM its output before reordering).
fn scratch_floats(k: Kernel, pass: Pass, g: &Geometry) -> usize {
    let columns = g.k() * g.l();
    match k {
        Kernel::Batched => g.n * (columns + if pass == Pass::WeightGrad { 0 } else { g.out_len() }),
        Kernel::PerSample => rayon::current_num_threads() * columns,
        Kernel::Winograd(_, d) => super::winograd::scratch_floats(&d),
        Kernel::Implicit(..) | Kernel::Direct(..) | Kernel::Depthwise(..) => 0,
    }
}

/// One planned pass: the algorithm, and what each candidate took when it was measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub algo: Algo,
    /// Microseconds per run of each candidate (the best timed run); empty when the entry
    /// was not measured (the ladder's pick, or one candidate only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub us: BTreeMap<Algo, f64>,
}

/// A pass of a geometry measured by this process, for the log.
#[derive(Debug, Clone)]
pub struct Timed {
    pub key: String,
    pub entry: Entry,
    /// Time spent measuring it.
    pub spent: Duration,
}

#[derive(Default)]
struct Store {
    mode: Option<Mode>,
    /// The run's plan: wins over everything.
    pinned: HashMap<String, Entry>,
    /// The machine's cache and this process's measurements.
    known: HashMap<String, Entry>,
    /// Every pass planned since the last [`pin`]: what the run folder records.
    used: BTreeMap<String, Entry>,
    /// Measured since the last [`take_timed`].
    timed: Vec<Timed>,
}

static STORE: Mutex<Option<Store>> = Mutex::new(None);

thread_local! {
    /// [`with_mode`]'s mode for this thread, over the process's.
    static THREAD_MODE: std::cell::Cell<Option<Mode>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with convolutions on this thread planned in `mode` (tests: the process's mode
/// stays, so tests on other threads keep the ladder). Restores the previous setting.
pub fn with_mode<R>(mode: Mode, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Mode>);
    impl Drop for Restore {
        fn drop(&mut self) {
            THREAD_MODE.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(THREAD_MODE.with(|c| c.replace(Some(mode))));
    f()
}
/// Set when [`STORE`] planned a pass not yet taken by [`used_plan`] or [`take_timed`]: a
/// lock-free check the learner makes after every step.
static UNSAVED: AtomicBool = AtomicBool::new(false);

fn with_store<R>(f: impl FnOnce(&mut Store) -> R) -> R {
    let mut guard = STORE.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.get_or_insert_with(Store::default))
}

/// Turns planning on (or off) for this process. Until it is called, convolutions follow the
/// ladder and nothing is recorded (the library's default, and the unit tests').
pub fn configure(mode: Mode) {
    with_store(|s| s.mode = Some(mode));
}

/// The mode [`configure`] set, if any.
pub fn mode() -> Option<Mode> {
    with_store(|s| s.mode)
}

/// Adds choices from the machine's cache (ignored under [`Mode::Force`]); a pass already
/// planned keeps its choice.
pub fn remember(entries: impl IntoIterator<Item = (String, Entry)>) {
    with_store(|s| {
        if s.mode == Some(Mode::Force) {
            return;
        }
        for (k, e) in entries {
            s.known.entry(k).or_insert(e);
        }
    });
}

/// Makes `entries` (a run's recorded plan) the plan wherever they apply, and starts a new
/// record of the passes used.
pub fn pin(entries: impl IntoIterator<Item = (String, Entry)>) {
    with_store(|s| {
        s.pinned = entries.into_iter().collect();
        s.used.clear();
    });
}

/// Whether passes were planned since the last [`used_plan`].
pub fn unsaved() -> bool {
    UNSAVED.load(Ordering::Relaxed)
}

/// Every pass planned since the last [`pin`], keyed as in the files.
pub fn used_plan() -> BTreeMap<String, Entry> {
    UNSAVED.store(false, Ordering::Relaxed);
    with_store(|s| s.used.clone())
}

/// The passes measured since the last call.
pub fn take_timed() -> Vec<Timed> {
    with_store(|s| std::mem::take(&mut s.timed))
}

/// The key of a pass in the plan files: pass, input and weight shapes, parameters, and the
/// SIMD level (a plan made with AVX-512 does not apply to an AVX2 build).
fn key(pass: Pass, g: &Geometry, isa: Isa) -> String {
    let pass = match pass {
        Pass::Forward => "forward",
        Pass::InputGrad => "input_grad",
        Pass::WeightGrad => "weight_grad",
    };
    let p = g.p;
    format!(
        "{pass} x{}x{}x{}x{} w{}x{}x{}x{} s{} p{} d{} g{} {:?}",
        g.n,
        g.c,
        g.h,
        g.w,
        g.o,
        g.cg(),
        g.kh,
        g.kw,
        p.stride,
        p.padding,
        p.dilation,
        p.groups,
        isa.level()
    )
    .to_lowercase()
}

/// The kernel for `pass` of `g`: the pinned or known choice, else (tuning on) the fastest
/// candidate, else `ladder`'s. `None` when [`configure`] was never called.
/// `candidate(algo)` is `algo` for this pass if it can run it at all (what is timed).
pub(super) fn planned(
    pass: Pass,
    g: &Geometry,
    isa: Isa,
    ladder: impl Fn() -> Kernel,
    candidate: impl Fn(Algo) -> Option<Kernel>,
) -> Option<Kernel> {
    let mut guard = STORE.lock().unwrap_or_else(|e| e.into_inner());
    let s = guard.get_or_insert_with(Store::default);
    let mode = THREAD_MODE.with(std::cell::Cell::get).or(s.mode)?;
    let key = key(pass, g, isa);
    let runnable = |e: &Entry| candidate(e.algo);
    let (kernel, entry) = match s.pinned.get(&key).or_else(|| s.known.get(&key)).and_then(|e| Some((runnable(e)?, e))) {
        Some((k, e)) => (k, e.clone()),
        None if mode == Mode::Off => {
            let k = ladder();
            (k, Entry { algo: k.algo(), us: BTreeMap::new() })
        }
        None => {
            let started = Instant::now();
            let (k, entry) = measure(pass, g, ladder(), &candidate);
            s.known.insert(key.clone(), entry.clone());
            s.timed.push(Timed { key: key.clone(), entry: entry.clone(), spent: started.elapsed() });
            (k, entry)
        }
    };
    if s.used.get(&key) != Some(&entry) {
        s.used.insert(key, entry);
        UNSAVED.store(true, Ordering::Relaxed);
    }
    Some(kernel)
}

/// Times every algorithm that can run `pass` of `g` on scratch data of its shapes; returns
/// the fastest (the ladder's pick unless another beats it by [`MARGIN`]).
pub(super) fn measure(
    pass: Pass,
    g: &Geometry,
    ladder: Kernel,
    candidate: &impl Fn(Algo) -> Option<Kernel>,
) -> (Kernel, Entry) {
    let candidates: Vec<Kernel> = Algo::ALL.iter().filter_map(|&a| candidate(a)).collect();
    if candidates.iter().filter(|&&k| scratch_floats(k, pass, g) <= MAX_SCRATCH_FLOATS).count() < 2 {
        return (ladder, Entry { algo: ladder.algo(), us: BTreeMap::new() });
    }
    let data = Scratch::new(g);
    // The ladder's pick first: a slow candidate's warm-up run is then cut short by it.
    let order: Vec<Kernel> = std::iter::once(ladder)
        .chain(candidates.iter().copied().filter(|k| k.algo() != ladder.algo()))
        .filter(|k| scratch_floats(*k, pass, g) <= MAX_SCRATCH_FLOATS)
        .collect();
    // Round robin: every candidate runs twice (the first run pays for page faults), then
    // those within 1.5x of the best run once a round, so that a slow spell of the machine
    // (the first geometry a process times ran up to 1.8x slow, `examples/bench convs`) falls
    // on all of them rather than on whichever ran then.
    let mut fastest: Vec<f64> = Vec::with_capacity(order.len());
    let mut best = f64::INFINITY;
    for &k in &order {
        let t = data.time(k, pass, g).min(data.time(k, pass, g));
        best = best.min(t);
        fastest.push(t);
    }
    let started = Instant::now();
    for _ in 2..MAX_RUNS {
        if started.elapsed() > CANDIDATE_BUDGET * order.len() as u32 {
            break;
        }
        for (k, t) in order.iter().zip(fastest.iter_mut()) {
            if *t < 1.5 * best {
                *t = t.min(data.time(*k, pass, g));
                best = best.min(*t);
            }
        }
    }
    let us: BTreeMap<Algo, f64> = order.iter().zip(&fastest).map(|(k, t)| (k.algo(), (t * 1e6).round())).collect();
    let time_of = |k: &Kernel| us.get(&k.algo()).copied().unwrap_or(f64::INFINITY);
    let fastest = *candidates.iter().min_by(|a, b| time_of(a).total_cmp(&time_of(b))).expect("two candidates");
    let chosen = if time_of(&ladder) <= MARGIN * time_of(&fastest) { ladder } else { fastest };
    (chosen, Entry { algo: chosen.algo(), us })
}

/// Inputs of one geometry's three passes, filled with values of the size activations have
/// (timing does not depend on them, but denormals would).
struct Scratch {
    x: Vec<f32>,
    wt: Vec<f32>,
    dy: Vec<f32>,
}

impl Scratch {
    fn new(g: &Geometry) -> Self {
        let fill = |len: usize, seed: u32| -> Vec<f32> {
            let mut state = seed.wrapping_mul(2_654_435_761).max(1);
            (0..len)
                .map(|_| {
                    // xorshift32: any values away from zero and denormals will do.
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
                })
                .collect()
        };
        Self { x: fill(g.n * g.in_len(), 1), wt: fill(g.o * g.k(), 2), dy: fill(g.n * g.out_len(), 3) }
    }

    /// Seconds one run of `pass` by `k` takes.
    fn time(&self, k: Kernel, pass: Pass, g: &Geometry) -> f64 {
        let started = Instant::now();
        let out = match pass {
            Pass::Forward => super::forward_by(k, &self.x, &self.wt, g),
            Pass::InputGrad => super::input_grad_by(k, &self.dy, &self.wt, g),
            Pass::WeightGrad => super::weight_grad_by(k, &self.x, &self.dy, g),
        };
        let secs = started.elapsed().as_secs_f64();
        std::hint::black_box(out);
        secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::ConvParams;

    fn geometry(x: [usize; 4], w: [usize; 4], stride: usize, padding: usize) -> Geometry {
        let p = ConvParams { stride, padding, dilation: 1, groups: 1 };
        Geometry::new(&(&x).into(), &(&w).into(), p).unwrap()
    }

    #[test]
    fn keys_name_the_pass_the_shapes_and_the_level() {
        let g = geometry([16, 64, 56, 56], [128, 64, 3, 3], 2, 1);
        let isa = Isa::current();
        let level = format!("{:?}", isa.level()).to_lowercase();
        assert_eq!(key(Pass::WeightGrad, &g, isa), format!("weight_grad x16x64x56x56 w128x64x3x3 s2 p1 d1 g1 {level}"));
    }
}
