//! The kernel plan's two files (the plan itself lives in `ops::conv::tune`):
//! - each variant's `kernels.json`: every convolution pass it planned, read back by its
//!   resume (which must run what it ran: bit-identical results need it) and by the run's other
//!   variants, repeats and shards (so they agree);
//! - the machine's cache, `$XDG_CACHE_HOME/ablate/kernels-<cpu>.json` (else
//!   `~/.cache/ablate/...`): the measured choices, reused by every later run on this CPU model
//!   and thread count, ignored when written on another CPU or by another kernel version.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::ops::conv::tune::{self, Entry, Mode};
use crate::ops::isa;

/// The kernels' version: a cache written by other kernels measured other code. Bump it when a
/// kernel's speed changes (3: outputs no longer zeroed first, AVX2 direct kernels; 4: 48-pixel
/// implicit tiles, masked borders for stride-1 "same" convolutions; 5: gathered panels and
/// folded small planes on the masked route; 6: folded rows side by side, padding-only taps left
/// out, the weight gradient's dy transposed in registers; 7: stride-2 forwards over phases on
/// the masked route; 8: the masked route and 12-accumulator panel tiles on AVX2).
pub const VERSION: u32 = 9;

/// The plan file, in each variant's folder.
pub const RUN_FILE: &str = "kernels.json";

/// What both files hold.
#[derive(Debug, Serialize, Deserialize)]
struct PlanFile {
    version: u32,
    /// [`isa::cpu_model`] of the machine that wrote it.
    cpu: String,
    /// Pass key (`forward x16x64x56x56 w64x64x3x3 s1 p1 d1 g1 avx512`; in the cache, with the
    /// thread count appended: `... t2`) -> choice.
    plan: BTreeMap<String, Entry>,
}

impl PlanFile {
    fn new() -> Self {
        Self { version: VERSION, cpu: isa::cpu_model(), plan: BTreeMap::new() }
    }

    fn read(path: &Path) -> anyhow::Result<Option<Self>> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{}: not a kernel plan (delete it to plan afresh)", path.display()))
                .map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(super::io_error("read", path, e).into()),
        }
    }

    fn write(&self, path: &Path) -> anyhow::Result<()> {
        let mut json = serde_json::to_vec_pretty(self)?;
        json.push(b'\n');
        Ok(super::write_atomic(path, &json)?)
    }
}

/// The machine's cache file for this CPU model, if a home or cache folder is known.
pub fn cache_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let cpu = isa::cpu_model();
    let name: String = cpu
        .split(" (")
        .next()
        .unwrap_or(&cpu)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect();
    let name = name.split('-').filter(|s| !s.is_empty()).collect::<Vec<_>>().join("-");
    Some(base.join("ablate").join(format!("kernels-{name}.json")))
}

/// The cache key of a pass key: with this process's thread count, since the fastest
/// algorithm depends on it.
fn thread_suffix() -> String {
    format!(" t{}", rayon::current_num_threads())
}

/// Sets this process's tuning from `ABLATE_TUNE` (`off`, `on` (the default) or `force`) and
/// loads the machine's cache.
pub fn configure_from_env() -> anyhow::Result<Mode> {
    let mode = match std::env::var("ABLATE_TUNE") {
        Ok(v) => v.parse::<Mode>().map_err(anyhow::Error::msg)?,
        Err(_) => Mode::On,
    };
    tune::configure(mode);
    if mode == Mode::On
        && let Some(path) = cache_path()
    {
        // A damaged or foreign cache is only a cache: plan afresh, and overwrite it later.
        if let Ok(Some(file)) = PlanFile::read(&path)
            && file.version == VERSION
            && file.cpu == isa::cpu_model()
        {
            let suffix = thread_suffix();
            tune::remember(file.plan.into_iter().filter_map(|(k, e)| Some((k.strip_suffix(&suffix)?.to_string(), e))));
        }
    }
    Ok(mode)
}

/// Makes the plans recorded in the variant folder `variant` and in the other variants of the
/// run folder `run` this process's plan wherever they apply (the variant's own wins: its
/// resume must run what it ran; the others' make repeats and shards agree). Returns a line for
/// the log saying how convolutions are planned.
pub fn pin_variant(variant: &Path, run: &Path) -> anyhow::Result<String> {
    let own = PlanFile::read(&variant.join(RUN_FILE))?.map(|f| f.plan).unwrap_or_default();
    let recorded = own.len();
    let mut plan = BTreeMap::new();
    let siblings = std::fs::read_dir(run).into_iter().flatten().flatten().map(|e| e.path().join(RUN_FILE));
    for path in std::iter::once(run.join(RUN_FILE)).chain(siblings).filter(|p| p.parent() != Some(variant)) {
        // Another variant's damaged plan is its resume's problem, not this variant's.
        if let Ok(Some(file)) = PlanFile::read(&path) {
            plan.extend(file.plan);
        }
    }
    plan.extend(own);
    tune::pin(plan);
    let how = match tune::mode() {
        None | Some(Mode::Off) => "the built-in ladder (ABLATE_TUNE=off)".to_string(),
        Some(Mode::On) => format!(
            "timed on first use (ABLATE_TUNE=on), reusing {}",
            cache_path().map_or("nothing".to_string(), |p| p.display().to_string())
        ),
        Some(Mode::Force) => "timed again on first use (ABLATE_TUNE=force)".to_string(),
    };
    Ok(if recorded == 0 {
        format!("convolution kernels: {how}")
    } else {
        format!("convolution kernels: the {recorded} passes recorded in {RUN_FILE}, others {how}")
    })
}

/// Records the passes planned since the last save in the variant folder's `kernels.json`
/// (entries already there are kept) and the measured ones in the machine's cache. Returns the
/// log line for what was measured, if anything was. Does nothing when nothing new was
/// planned.
pub fn save(variant: &Path) -> anyhow::Result<Option<String>> {
    if !tune::unsaved() {
        return Ok(None);
    }
    let used = tune::used_plan();
    let path = variant.join(RUN_FILE);
    let mut file = PlanFile::read(&path)?.unwrap_or_else(PlanFile::new);
    let before = file.plan.len();
    for (k, e) in used {
        file.plan.entry(k).or_insert(e);
    }
    if file.plan.len() != before || !path.exists() {
        file.write(&path)?;
    }
    let timed = tune::take_timed();
    if timed.is_empty() {
        return Ok(None);
    }
    let cache = cache_path();
    if let Some(cache) = &cache {
        save_cache(cache, &timed).with_context(|| format!("cannot update the kernel cache {}", cache.display()))?;
    }
    let secs: f64 = timed.iter().map(|t| t.spent.as_secs_f64()).sum();
    let mut counts = BTreeMap::new();
    for t in &timed {
        *counts.entry(t.entry.algo.name()).or_insert(0) += 1;
    }
    let counts: Vec<String> = counts.iter().map(|(a, n)| format!("{a} {n}")).collect();
    Ok(Some(format!(
        "kernel plan: timed {} convolution passes in {secs:.2} s ({}); kept in {}{}",
        timed.len(),
        counts.join(", "),
        path.display(),
        cache.map_or(String::new(), |c| format!(" and {}", c.display()))
    )))
}

fn save_cache(path: &Path, timed: &[tune::Timed]) -> anyhow::Result<()> {
    let dir = path.parent().expect("a file in a folder");
    std::fs::create_dir_all(dir).map_err(|e| super::io_error("create", dir, e))?;
    let mut file = match PlanFile::read(path) {
        Ok(Some(f)) if f.version == VERSION && f.cpu == isa::cpu_model() => f,
        _ => PlanFile::new(),
    };
    let suffix = thread_suffix();
    for t in timed {
        file.plan.insert(format!("{}{suffix}", t.key), t.entry.clone());
    }
    file.write(path)
}
