//! A run's summary files together: the table (`summary.csv`, `summary.md`) and its plot
//! (`summary.png`). Here rather than in `summary`, so that the plot, which reads the table's
//! rows, and the table do not import each other.

use std::path::Path;

use super::summary::{self, Row};

/// Writes `summary.csv`, `summary.md` and `summary.png` into `dir`.
pub fn write_summary(dir: &Path, title: &str, rows: &[Row]) -> anyhow::Result<()> {
    summary::write_tables(dir, title, rows)?;
    super::plot::write_png(&dir.join("summary.png"), title, rows)
}
