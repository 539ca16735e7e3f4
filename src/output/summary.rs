//! The run summary: one row per variant (swept values, size, results, status) as
//! `summary.csv` and `summary.md` (the `report` module adds the plot, `summary.png`),
//! rewritten after every variant.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::write_atomic;
use crate::train::FitOutcome;
use crate::units::thousands;

/// How a variant ended (or that it has not run yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Ok,
    Failed,
}

/// One run's line (a variant, or one repeat of it): `runs.csv`, `variants.csv`, and each
/// folder's `status.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Folder name (`groups=8`, `groups=8/r2` for a repeat), or `.` for a run without a sweep.
    pub variant: String,
    /// `key=value` per swept key, `;`-separated.
    pub values: String,
    /// The repeat's index when the variant is trained several times (`[sweep] repeats`).
    #[serde(default)]
    pub repeat: Option<usize>,
    /// A run of the variant the others are compared with (`[sweep] baseline`).
    #[serde(default)]
    pub baseline: bool,
    pub params: usize,
    pub macs: u64,
    pub best_val_acc: Option<f64>,
    #[serde(default)]
    pub final_val_acc: Option<f64>,
    /// The lowest validation loss of any epoch.
    #[serde(default)]
    pub best_val_loss: Option<f64>,
    #[serde(default)]
    pub final_val_loss: Option<f64>,
    /// Accuracy of the best weights on the labelled test images (`data.test_labels`), and
    /// how many there were.
    #[serde(default)]
    pub test_acc: Option<f64>,
    #[serde(default)]
    pub test_images: Option<u64>,
    pub final_train_loss: Option<f64>,
    pub images_per_sec: Option<f64>,
    pub seconds: Option<f64>,
    pub status: Status,
    pub error: Option<String>,
    /// When and why early stopping ended the training (`train.early_stopping`).
    #[serde(default)]
    pub stopped_early: Option<String>,
}

impl Row {
    /// A run that has not trained yet.
    pub fn pending(variant: &str, values: &str, repeat: Option<usize>, (params, macs): (usize, u64)) -> Self {
        Self {
            variant: variant.into(),
            values: values.into(),
            repeat,
            baseline: false,
            params,
            macs,
            best_val_acc: None,
            final_val_acc: None,
            best_val_loss: None,
            final_val_loss: None,
            test_acc: None,
            test_images: None,
            final_train_loss: None,
            images_per_sec: None,
            seconds: None,
            status: Status::Pending,
            error: None,
            stopped_early: None,
        }
    }

    /// The run of `pending` after it trained (`Ok` with its epochs) or failed (`Err`).
    pub fn finished(pending: &Row, result: Result<&FitOutcome, String>) -> Self {
        let (status, error, epochs, test, stopped_early) = match result {
            Ok(o) => (Status::Ok, None, o.epochs.as_slice(), o.test, o.stopped_early.clone()),
            Err(e) => (Status::Failed, Some(e), &[][..], None, None),
        };
        let last = epochs.last();
        Self {
            best_val_acc: epochs.iter().filter_map(|e| e.val_acc).reduce(f64::max),
            final_val_acc: last.and_then(|e| e.val_acc),
            best_val_loss: epochs.iter().filter_map(|e| e.val_loss).reduce(f64::min),
            final_val_loss: last.and_then(|e| e.val_loss),
            test_acc: test.filter(|(_, n)| *n > 0).map(|(k, n)| k as f64 / n as f64),
            test_images: test.map(|(_, n)| n),
            final_train_loss: last.map(|e| e.train_loss),
            images_per_sec: last.map(|e| e.images_per_sec),
            seconds: (!epochs.is_empty()).then(|| epochs.iter().map(|e| e.seconds).sum()),
            status,
            error,
            stopped_early,
            ..pending.clone()
        }
    }

    /// The variant this run is a repeat of (its folder without `/r<k>`); the run's own folder
    /// when it is not a repeat.
    pub fn group(&self) -> &str {
        let Some(k) = self.repeat else { return &self.variant };
        let leaf = format!("r{k}");
        match self.variant.strip_suffix(&leaf) {
            Some("") => ".",
            Some(rest) => rest.strip_suffix('/').unwrap_or(rest),
            None => &self.variant,
        }
    }
}

/// Writes the rows as CSV to `path` (atomically).
pub fn write_csv(path: &Path, rows: &[Row]) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    Ok(write_atomic(path, &w.into_inner()?)?)
}

/// Reads a `runs.csv` (or a run's `variants.csv`: the same columns).
pub fn read(path: &Path) -> anyhow::Result<Vec<Row>> {
    let mut r = csv::Reader::from_path(path)?;
    Ok(r.deserialize().collect::<Result<_, _>>()?)
}

/// Writes a variant's own record of how it ended (`status.toml` in its folder), atomically:
/// the one place its status lives; summaries are made from these.
pub fn write_status(path: &Path, row: &Row) -> anyhow::Result<()> {
    let text = toml::to_string(row)?;
    Ok(write_atomic(path, text.as_bytes())?)
}

/// Reads a variant's `status.toml`; `None` when it has none (it has not ended yet).
pub fn read_status(path: &Path) -> anyhow::Result<Option<Row>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// A markdown table of `rows`, one line per run.
pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "| run | params | MACs | best val acc | final train loss | images/s | seconds | status |\n|---|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in rows {
        let status = match (&r.status, &r.error) {
            (Status::Failed, Some(e)) => format!("failed: {}", e.replace('|', "\\|").replace('\n', " ")),
            (st, _) => format!("{st:?}").to_lowercase(),
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.variant,
            thousands(r.params as u64),
            thousands(r.macs),
            opt(r.best_val_acc, 4),
            opt(r.final_train_loss, 4),
            opt(r.images_per_sec, 1),
            opt(r.seconds, 1),
            status
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_round_trips_and_markdown_escapes_errors() {
        let dir = tempfile::tempdir().unwrap();
        let rows = vec![
            Row {
                best_val_acc: Some(0.9),
                final_val_acc: Some(0.85),
                best_val_loss: Some(0.3),
                final_val_loss: Some(0.35),
                final_train_loss: Some(0.1),
                images_per_sec: Some(10.0),
                seconds: Some(3.0),
                status: Status::Ok,
                ..Row::pending("groups=1", "model.params.groups=1", None, (1234, 5678))
            },
            Row {
                status: Status::Failed,
                error: Some("loss | NaN".into()),
                ..Row::pending("groups=2/r1", "model.params.groups=2", Some(1), (1000, 4000))
            },
        ];
        write_csv(&dir.path().join("runs.csv"), &rows).unwrap();
        assert_eq!(read(&dir.path().join("runs.csv")).unwrap(), rows);
        let md = markdown(&rows);
        assert_eq!(rows[0].group(), "groups=1");
        assert_eq!(rows[1].group(), "groups=2");
        assert_eq!(Row::pending("r3", "", Some(3), (0, 0)).group(), ".");
        assert!(md.contains("| groups=1 | 1,234 | 5,678 | 0.9000 |"), "{md}");
        assert!(md.contains("failed: loss \\| NaN"), "{md}");
        for row in &rows {
            let path = dir.path().join("status.toml");
            write_status(&path, row).unwrap();
            assert_eq!(read_status(&path).unwrap().as_ref(), Some(row));
        }
        assert_eq!(read_status(&dir.path().join("none.toml")).unwrap(), None);
    }
}
