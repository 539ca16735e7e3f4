//! A run's summary as one value: [`SummaryTable`], its rows, and its files together (the runs
//! as `runs.csv`; the variants aggregated over their runs as `summary.csv` and `summary.md`;
//! the plot as `summary.png`), made from the variants' own `status.toml` files. Here rather than in
//! `summary`, so that the plot, which reads the table's rows, and the table do not import each
//! other.

use std::path::Path;

use anyhow::Context;

use super::aggregate::{self, Aggregate};
use super::predictions;
use super::run_folder::RunFolder;
use super::summary::{self, Row, Status};
use crate::stats;

/// A run's summary: one row per run (variant, or repeat of one), in the plan's order.
#[derive(Debug, Clone)]
pub struct SummaryTable {
    pub title: String,
    pub rows: Vec<Row>,
    /// The run folder (its variants' validation predictions are compared).
    folder: RunFolder,
}

impl SummaryTable {
    pub fn new(folder: &RunFolder, rows: Vec<Row>) -> Self {
        Self { title: folder.title(), rows, folder: folder.clone() }
    }

    /// The run's table as its variants' folders say it is: the variant list of `variants.csv`
    /// (written once, when the run started), each row replaced by its folder's `status.toml`
    /// when the variant has ended. Nothing else records a status, so `run`, its shards,
    /// `resume` and `summarize` cannot disagree. A folder from before `variants.csv` existed
    /// lists its variants in `summary.csv`.
    pub fn collect(folder: &RunFolder) -> anyhow::Result<Self> {
        let list = if folder.variants_csv().is_file() { folder.variants_csv() } else { folder.summary_csv() };
        let mut rows = summary::read(&list).with_context(|| format!("reading {}", list.display()))?;
        for row in &mut rows {
            if let Some(ended) = summary::read_status(&folder.existing_variant(&row.variant).status())? {
                *row = ended;
            }
        }
        Ok(Self::new(folder, rows))
    }

    /// Writes `variants.csv`, the run's variant list (every row pending), unless it is there:
    /// every shard of a sweep writes the same list, whichever lands first is kept.
    pub fn write_list(&self, folder: &RunFolder) -> anyhow::Result<()> {
        if !folder.variants_csv().exists() {
            let pending: Vec<Row> = self
                .rows
                .iter()
                .map(|r| Row {
                    baseline: r.baseline,
                    ..Row::pending(&r.variant, &r.values, r.repeat, (r.params, r.macs))
                })
                .collect();
            summary::write_csv(&folder.variants_csv(), &pending)?;
        }
        Ok(())
    }

    /// Records how variant `i` ended: its folder's `status.toml`, and this table's row.
    pub fn record(&mut self, folder: &RunFolder, i: usize, row: Row) -> anyhow::Result<()> {
        summary::write_status(&folder.existing_variant(&row.variant).status(), &row)?;
        self.rows[i] = row;
        Ok(())
    }

    /// Rewrites the run's `summary.csv`, `.md` and `.png` from its folders (see [`collect`]),
    /// under the folder's summary lock: processes that finish variants at once (the shards of
    /// a sweep) each write a table with every status recorded before theirs.
    ///
    /// [`collect`]: Self::collect
    pub fn refresh(folder: &RunFolder) -> anyhow::Result<Self> {
        let _lock = folder.lock_summary()?;
        let table = Self::collect(folder)?;
        table.write(folder.path())?;
        Ok(table)
    }

    /// Folders of the variants that failed.
    pub fn failed(&self) -> Vec<&str> {
        self.with_status(Status::Failed)
    }

    /// Folders of the variants not finished yet.
    pub fn pending(&self) -> Vec<&str> {
        self.with_status(Status::Pending)
    }

    fn with_status(&self, status: Status) -> Vec<&str> {
        self.rows.iter().filter(|r| r.status == status).map(|r| r.variant.as_str()).collect()
    }

    /// The variants over their runs, each compared with the baseline (single runs by their
    /// validation predictions, when both validated on the same images).
    pub fn aggregates(&self) -> Vec<Aggregate> {
        let predictions =
            |r: &Row| predictions::read(&self.folder.existing_variant(&r.variant).val_predictions()).ok().flatten();
        aggregate::aggregate(&self.rows, |variant, baseline| {
            let (only_variant, only_baseline, n) =
                predictions::discordant(&predictions(variant)?, &predictions(baseline)?)?;
            Some(stats::mcnemar(only_baseline, only_variant, n))
        })
    }

    /// `summary.md`: the variants aggregated and compared, then each run when there are repeats.
    pub fn markdown(&self) -> String {
        self.markdown_of(&self.aggregates())
    }

    fn markdown_of(&self, groups: &[Aggregate]) -> String {
        let mut s = aggregate::markdown(&self.title, groups);
        if self.rows.iter().any(|r| r.repeat.is_some()) {
            s.push_str("\n## Runs\n\n");
            s.push_str(&summary::markdown(&self.rows));
        }
        s
    }

    /// Writes `runs.csv`, `summary.csv`, `summary.md` and `summary.png` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        let groups = self.aggregates();
        summary::write_csv(&dir.join("runs.csv"), &self.rows)?;
        super::write_atomic(&dir.join("summary.csv"), &aggregate::to_csv(&groups)?)?;
        super::write_atomic(&dir.join("summary.md"), self.markdown_of(&groups).as_bytes())?;
        super::plot::write_png(&dir.join("summary.png"), &self.title, &groups)
    }
}
