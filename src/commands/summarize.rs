//! `ablate summarize` and `ablate compare`: summaries rebuilt and tables across runs.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::output::report::SummaryTable;
use crate::output::run_folder::RunFolder;
use crate::output::summary::{self, Row};

/// Merges a sharded run's shard summaries into `summary.csv`, `summary.md` and `summary.png`,
/// or redraws them from an unsharded run's `summary.csv`. Returns the markdown table and a
/// note per shard that has not written its summary, and one if variants are unfinished.
pub fn summarize(run: &Path) -> anyhow::Result<(String, Vec<String>)> {
    let folder = RunFolder::open(run)?;
    let _lock = folder.lock()?;
    let (table, mut notes) = if folder.shards_dir().is_dir() {
        SummaryTable::merge_shards(&folder.shards_dir(), folder.title())?
    } else {
        (SummaryTable::read(run, folder.title())?, Vec::new())
    };
    let unfinished = table.pending().len();
    if unfinished > 0 {
        notes.push(format!("{unfinished} of {} variants not finished (pending)", table.rows.len()));
    }
    table.write(run)?;
    Ok((table.markdown(), notes))
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
