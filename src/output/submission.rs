//! `submission.csv`: `id,label` per test image, in natural order of the file names.

use std::path::Path;

use crate::spec::{LabelFormat, SubmissionConfig};

/// Renders the submission for `(id, class index)` pairs.
pub fn render(rows: &[(String, usize)], classes: &[String], cfg: &SubmissionConfig) -> anyhow::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    if cfg.header {
        w.write_record(["id", "label"])?;
    }
    for (id, class) in rows {
        let label = match cfg.label {
            LabelFormat::Index => class.to_string(),
            LabelFormat::Name => classes[*class].clone(),
        };
        w.write_record([id.as_str(), label.as_str()])?;
    }
    Ok(w.into_inner()?)
}

/// Writes the submission atomically; refuses to replace a file that is already there (a
/// user's `--out`).
pub fn write_new(
    path: &Path,
    rows: &[(String, usize)],
    classes: &[String],
    cfg: &SubmissionConfig,
) -> anyhow::Result<()> {
    if path.exists() {
        anyhow::bail!("{} already exists: choose another --out, nothing was overwritten", path.display());
    }
    write(path, rows, classes, cfg)
}

/// Writes the submission atomically, replacing what a previous attempt of the same run wrote
/// (the run's own `submission.csv`: the same weights give the same file).
pub fn write(path: &Path, rows: &[(String, usize)], classes: &[String], cfg: &SubmissionConfig) -> anyhow::Result<()> {
    Ok(super::write_atomic(path, &render(rows, classes, cfg)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_label_formats() {
        let rows = vec![("1".to_string(), 1), ("2".to_string(), 0)];
        let classes = vec!["cats".to_string(), "dogs".to_string()];
        let out = render(&rows, &classes, &SubmissionConfig::default()).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "id,label\n1,1\n2,0\n");
        let cfg = SubmissionConfig { header: false, label: LabelFormat::Name, ..Default::default() };
        let out = render(&rows, &classes, &cfg).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "1,dogs\n2,cats\n");
    }
}
