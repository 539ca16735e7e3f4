//! A run's summary as one value: [`SummaryTable`], its rows, and its files together (the
//! table as `summary.csv` and `summary.md`, its plot as `summary.png`). Here rather than in
//! `summary`, so that the plot, which reads the table's rows, and the table do not import each
//! other.

use std::path::Path;

use anyhow::{Context, bail};

use super::summary::{self, Row, Status};
use crate::spec::Shard;

/// A run's summary: one row per variant, in the plan's order.
#[derive(Debug, Clone)]
pub struct SummaryTable {
    pub title: String,
    pub rows: Vec<Row>,
}

impl SummaryTable {
    pub fn new(title: String, rows: Vec<Row>) -> Self {
        Self { title, rows }
    }

    /// The table a run folder's `summary.csv` holds.
    pub fn read(run: &Path, title: String) -> anyhow::Result<Self> {
        let path = run.join("summary.csv");
        let rows =
            summary::read(&path).with_context(|| format!("{}: not a run folder made by ablate run", run.display()))?;
        Ok(Self { title, rows })
    }

    /// Merges a sharded run's shard summaries (`shards/summary-I-of-N.csv`, row `i` taken from
    /// shard `i mod N`); returns the table and a note per shard that has not written its
    /// summary (its variants stay `pending`).
    pub fn merge_shards(shards_dir: &Path, title: String) -> anyhow::Result<(Self, Vec<String>)> {
        let mut found: Vec<(Shard, Vec<Row>)> = Vec::new();
        for entry in std::fs::read_dir(shards_dir)? {
            let path = entry?.path();
            let Some(shard) = path.file_name().and_then(|n| n.to_str()).and_then(Shard::from_summary_file) else {
                continue;
            };
            let rows = summary::read(&path).with_context(|| format!("reading {}", path.display()))?;
            found.push((shard, rows));
        }
        let Some(count) = found.first().map(|(s, _)| s.count) else {
            bail!("{}: no shard summaries (summary-I-of-N.csv) yet", shards_dir.display());
        };
        if let Some((s, _)) = found.iter().find(|(s, _)| s.count != count) {
            bail!("{}: shard summaries of different shard counts ({count} and {})", shards_dir.display(), s.count);
        }
        let mut rows = found[0].1.clone();
        if let Some((s, r)) = found.iter().find(|(_, r)| r.len() != rows.len()) {
            bail!("{}: shard {s} lists {} variants, another {}", shards_dir.display(), r.len(), rows.len());
        }
        let mut notes = Vec::new();
        for index in 0..count {
            match found.iter().find(|(s, _)| s.index == index) {
                Some((s, theirs)) => {
                    for (i, row) in rows.iter_mut().enumerate().filter(|(i, _)| s.owns(*i)) {
                        *row = theirs[i].clone();
                    }
                }
                None => notes.push(format!("shard {index}/{count} has not written its summary yet")),
            }
        }
        Ok((Self { title, rows }, notes))
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

    pub fn markdown(&self) -> String {
        summary::markdown(&self.title, &self.rows)
    }

    /// Writes `summary.csv`, `summary.md` and `summary.png` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        summary::write_tables(dir, &self.title, &self.rows)?;
        super::plot::write_png(&dir.join("summary.png"), &self.title, &self.rows)
    }

    /// Writes the rows alone, as a shard's `summary-I-of-N.csv` at `path`.
    pub fn write_shard(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        summary::write_csv(path, &self.rows)
    }
}
