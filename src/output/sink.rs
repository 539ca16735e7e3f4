//! Metric sinks: one epoch's numbers go to every sink (CSV, TensorBoard, memory).

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// One epoch's metrics; `metrics.csv` has exactly these columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch number.
    pub epoch: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    /// Empty when the experiment holds out no validation images.
    pub val_loss: Option<f64>,
    pub val_acc: Option<f64>,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    /// Training images per second (forward, backward, update).
    pub images_per_sec: f64,
    /// Wall time of the epoch, training and validation.
    pub seconds: f64,
}

/// Receives each epoch's metrics as the run goes.
pub trait MetricSink {
    fn record(&mut self, m: &EpochMetrics) -> anyhow::Result<()>;
    /// The run ended (`ok` = trained to the end).
    fn finish(&mut self, _ok: bool) -> anyhow::Result<()> {
        Ok(())
    }
}

/// `metrics.csv`, one row per epoch, flushed after each.
pub struct CsvSink {
    writer: csv::Writer<File>,
}

impl CsvSink {
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        Ok(Self { writer: csv::Writer::from_path(path)? })
    }

    /// Continues `path` (a resumed run): rows are appended, the header is not written again.
    pub fn append(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        // The header goes out with the first row: an attempt stopped before its first epoch
        // ended left an empty file.
        let empty = file.metadata()?.len() == 0;
        Ok(Self { writer: csv::WriterBuilder::new().has_headers(empty).from_writer(file) })
    }

    /// The rows of an existing `metrics.csv`.
    pub fn read(path: &Path) -> anyhow::Result<Vec<EpochMetrics>> {
        if !path.exists() {
            return Ok(Vec::new());
        }
        let mut r = csv::Reader::from_path(path)?;
        Ok(r.deserialize().collect::<Result<_, _>>()?)
    }
}

impl MetricSink for CsvSink {
    fn record(&mut self, m: &EpochMetrics) -> anyhow::Result<()> {
        self.writer.serialize(m)?;
        self.writer.flush()?;
        Ok(())
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
