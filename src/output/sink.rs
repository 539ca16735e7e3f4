//! Metric sinks (the learner's [`MetricSink`]): `metrics.csv` and an in-memory one for tests;
//! TensorBoard's is in `tensorboard.rs`.

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;

use crate::train::{EpochMetrics, MetricSink};

/// `metrics.csv`, one row per epoch, flushed after each.
pub struct CsvSink {
    writer: csv::Writer<File>,
    path: std::path::PathBuf,
}

impl CsvSink {
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let file = File::create(path).map_err(|e| super::io_error("create", path, e))?;
        Ok(Self { writer: csv::Writer::from_writer(file), path: path.to_path_buf() })
    }

    /// Continues `path` (a resumed run): rows are appended, the header is not written again.
    pub fn append(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| super::io_error("open", path, e))?;
        // The header goes out with the first row: an attempt stopped before its first epoch
        // ended left an empty file.
        let empty = file.metadata()?.len() == 0;
        Ok(Self { writer: csv::WriterBuilder::new().has_headers(empty).from_writer(file), path: path.to_path_buf() })
    }

    /// Cuts `path` back to its first `epochs` rows (what the committed checkpoint covers) and
    /// returns them; a missing file is an empty history.
    pub fn truncate(path: &Path, epochs: usize) -> anyhow::Result<Vec<EpochMetrics>> {
        let mut rows = Self::read(path)?;
        rows.retain(|m| m.epoch <= epochs);
        let mut w = csv::WriterBuilder::new().has_headers(!rows.is_empty()).from_writer(Vec::new());
        for r in &rows {
            w.serialize(r)?;
        }
        super::write_atomic(path, &w.into_inner()?)?;
        Ok(rows)
    }

    /// The rows of an existing `metrics.csv`.
    pub fn read(path: &Path) -> anyhow::Result<Vec<EpochMetrics>> {
        if !path.exists() {
            return Ok(Vec::new());
        }
        let mut r = csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
        r.deserialize().collect::<Result<_, _>>().with_context(|| format!("cannot read {}", path.display()))
    }
}

impl MetricSink for CsvSink {
    fn record(&mut self, m: &EpochMetrics) -> anyhow::Result<()> {
        self.writer
            .serialize(m)
            .and_then(|()| Ok(self.writer.flush()?))
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// Keeps every record in memory; clones share the records, so a test can read what a run saw.
#[derive(Clone, Default)]
pub struct MemorySink {
    pub records: Arc<Mutex<Vec<EpochMetrics>>>,
}

impl MetricSink for MemorySink {
    fn record(&mut self, m: &EpochMetrics) -> anyhow::Result<()> {
        self.records.lock().expect("memory sink poisoned").push(m.clone());
        Ok(())
    }
}
