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

/// One variant's line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Folder name (`groups=8`), or `.` for a run without a sweep.
    pub variant: String,
    /// `key=value` per swept key, `;`-separated.
    pub values: String,
    pub params: usize,
    pub macs: u64,
    pub best_val_acc: Option<f64>,
    pub final_train_loss: Option<f64>,
    pub images_per_sec: Option<f64>,
    pub seconds: Option<f64>,
    pub status: Status,
    pub error: Option<String>,
}

impl Row {
    /// A variant that has not trained yet.
    pub fn pending(variant: &str, values: &str, (params, macs): (usize, u64)) -> Self {
        Self {
            variant: variant.into(),
            values: values.into(),
            params,
            macs,
            best_val_acc: None,
            final_train_loss: None,
            images_per_sec: None,
            seconds: None,
            status: Status::Pending,
            error: None,
        }
    }

    /// A variant that trained (`Ok` with its epochs) or failed (`Err` with the error).
    pub fn finished(variant: &str, values: &str, size: (usize, u64), result: Result<&FitOutcome, String>) -> Self {
        let (status, error, epochs) = match result {
            Ok(o) => (Status::Ok, None, o.epochs.as_slice()),
            Err(e) => (Status::Failed, Some(e), &[][..]),
        };
        let last = epochs.last();
        Self {
            best_val_acc: epochs.iter().filter_map(|e| e.val_acc).reduce(f64::max),
            final_train_loss: last.map(|e| e.train_loss),
            images_per_sec: last.map(|e| e.images_per_sec),
            seconds: (!epochs.is_empty()).then(|| epochs.iter().map(|e| e.seconds).sum()),
            status,
            error,
            ..Self::pending(variant, values, size)
        }
    }
}

/// Writes `summary.csv` and `summary.md` into `dir` (`report::write_summary` adds the plot).
pub fn write_tables(dir: &Path, title: &str, rows: &[Row]) -> anyhow::Result<()> {
    write_csv(&dir.join("summary.csv"), rows)?;
    Ok(write_atomic(&dir.join("summary.md"), markdown(title, rows).as_bytes())?)
}

/// Writes the rows as CSV to `path` (atomically).
pub fn write_csv(path: &Path, rows: &[Row]) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    Ok(write_atomic(path, &w.into_inner()?)?)
}

/// Reads a `summary.csv` (or a run's `variants.csv`: the same columns).
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

/// A markdown table of `rows`.
pub fn markdown(title: &str, rows: &[Row]) -> String {
    let mut s = format!(
        "# {title}\n\n| variant | params | MACs | best val acc | final train loss | images/s | seconds | status |\n|---|---:|---:|---:|---:|---:|---:|---|\n"
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
                variant: "groups=1".into(),
                values: "model.params.groups=1".into(),
                params: 1234,
                macs: 5678,
                best_val_acc: Some(0.9),
                final_train_loss: Some(0.1),
                images_per_sec: Some(10.0),
                seconds: Some(3.0),
                status: Status::Ok,
                error: None,
            },
            Row {
                variant: "groups=2".into(),
                values: "model.params.groups=2".into(),
                params: 1000,
                macs: 4000,
                best_val_acc: None,
                final_train_loss: None,
                images_per_sec: None,
                seconds: None,
                status: Status::Failed,
                error: Some("loss | NaN".into()),
            },
        ];
        write_tables(dir.path(), "t", &rows).unwrap();
        assert_eq!(read(&dir.path().join("summary.csv")).unwrap(), rows);
        let md = std::fs::read_to_string(dir.path().join("summary.md")).unwrap();
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
