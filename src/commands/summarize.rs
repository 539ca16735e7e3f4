//! `ablate summarize` and `ablate compare`: summaries rebuilt and tables across runs.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::output::aggregate::{self, Aggregate};
use crate::output::report::SummaryTable;
use crate::output::run_folder::RunFolder;

/// A run's summary, rewritten by [`summarize`].
#[derive(Debug, Clone)]
pub struct Summarized {
    pub run: PathBuf,
    /// The table as markdown.
    pub markdown: String,
    pub failed: Vec<String>,
    pub pending: Vec<String>,
}

impl Summarized {
    /// `Ok` when every variant finished well; else an error naming the failed and unfinished
    /// variants and the command that finishes them (the Slurm summary job's exit status).
    pub fn complete(&self) -> anyhow::Result<()> {
        let mut parts = Vec::new();
        if !self.failed.is_empty() {
            parts.push(format!("{} failed ({})", self.failed.len(), self.failed.join(", ")));
        }
        if !self.pending.is_empty() {
            parts.push(format!("{} not finished ({})", self.pending.len(), self.pending.join(", ")));
        }
        if parts.is_empty() {
            return Ok(());
        }
        anyhow::bail!(
            "{} of the run's variants: train them with `ablate resume {run}` (or on Slurm: `ablate slurm --resume {run} | bash`)",
            parts.join(" and "),
            run = self.run.display()
        )
    }
}

/// Rewrites a run's `summary.csv`, `summary.md` and `summary.png` from its variants' folders
/// (whichever processes trained them: the shards of a sweep, a resume).
pub fn summarize(run: &Path) -> anyhow::Result<Summarized> {
    let folder = RunFolder::open(run)?;
    let _lock = folder.lock()?;
    let table = SummaryTable::refresh(&folder)?;
    let names = |v: Vec<&str>| v.into_iter().map(String::from).collect();
    Ok(Summarized {
        run: run.to_path_buf(),
        markdown: table.markdown(),
        failed: names(table.failed()),
        pending: names(table.pending()),
    })
}

/// A column `compare` sorts by, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum SortKey {
    BestValAcc,
    ImagesPerSec,
    Params,
    Macs,
    Seconds,
}

impl SortKey {
    /// The variant's mean, oriented so that higher is better; `None` (no finished run) last.
    fn value(self, g: &Aggregate) -> Option<f64> {
        let mean = |name| g.metric(name).map(|e| e.mean);
        match self {
            SortKey::BestValAcc => mean("best_val_acc"),
            SortKey::ImagesPerSec => mean("images_per_sec"),
            SortKey::Seconds => mean("seconds").map(|v| -v),
            SortKey::Params => Some(-(g.params as f64)),
            SortKey::Macs => Some(-(g.macs as f64)),
        }
    }
}

/// Every run's variants, aggregated as in its summary (mean and interval over repeats, the
/// comparison with its baseline), in one markdown table, optionally sorted by a column
/// (accuracy, speed: highest first; size, time: lowest first).
pub fn compare(runs: &[PathBuf], sort: Option<SortKey>) -> anyhow::Result<String> {
    let mut groups = Vec::new();
    for run in runs {
        let name = RunFolder::existing(run).title();
        let summary = aggregate::from_csv(&run.join("summary.csv")).with_context(|| {
            format!("{} has no readable summary.csv (`ablate summarize` rewrites it)", run.display())
        })?;
        let named = |v: &str| if v == "." { name.clone() } else { format!("{name}/{v}") };
        groups.extend(summary.into_iter().map(|mut g| {
            g.variant = named(&g.variant);
            g.versus = g.versus.map(|(b, c)| (named(&b), c));
            g
        }));
    }
    if let Some(key) = sort {
        groups.sort_by(|a, b| {
            key.value(b).unwrap_or(f64::NEG_INFINITY).total_cmp(&key.value(a).unwrap_or(f64::NEG_INFINITY))
        });
    }
    Ok(aggregate::markdown("comparison", &groups))
}
