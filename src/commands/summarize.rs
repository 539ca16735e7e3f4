//! `ablate summarize` and `ablate compare`: summaries rebuilt and tables across runs.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::output::report::SummaryTable;
use crate::output::run_folder::RunFolder;
use crate::output::summary::{self, Row};

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
    FinalTrainLoss,
    ImagesPerSec,
    Params,
    Macs,
    Seconds,
}

impl SortKey {
    /// The row's value, oriented so that higher is better; `None` (a failed variant) last.
    fn value(self, r: &Row) -> Option<f64> {
        match self {
            SortKey::BestValAcc => r.best_val_acc,
            SortKey::ImagesPerSec => r.images_per_sec,
            SortKey::FinalTrainLoss => r.final_train_loss.map(|v| -v),
            SortKey::Seconds => r.seconds.map(|v| -v),
            SortKey::Params => Some(-(r.params as f64)),
            SortKey::Macs => Some(-(r.macs as f64)),
        }
    }
}

/// Every run's summary rows in one markdown table, optionally sorted by a column (accuracy,
/// speed: highest first; loss, size, time: lowest first).
pub fn compare(runs: &[PathBuf], sort: Option<SortKey>) -> anyhow::Result<String> {
    let mut rows = Vec::new();
    for run in runs {
        let path = run.join("summary.csv");
        let name = RunFolder::existing(run).title();
        let summary = summary::read(&path).with_context(|| format!("{} has no readable summary.csv", run.display()))?;
        rows.extend(summary.into_iter().map(|mut r| {
            r.variant = if r.variant == "." { name.clone() } else { format!("{name}/{}", r.variant) };
            r
        }));
    }
    if let Some(key) = sort {
        rows.sort_by(|a, b| {
            key.value(b).unwrap_or(f64::NEG_INFINITY).total_cmp(&key.value(a).unwrap_or(f64::NEG_INFINITY))
        });
    }
    Ok(summary::markdown("comparison", &rows))
}
