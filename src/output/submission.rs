//! `submission.csv`: `id,label` per test image, in natural order of the file names.

use std::path::Path;

use crate::spec::{LabelFormat, SubmissionConfig};

/// One test image's line.
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    pub id: String,
    pub class: usize,
    /// Each class's probability (written with `submission.probs` / `predict --probs`).
    pub probs: Vec<f32>,
}

/// Renders the submission: `id,label`, then with `cfg.probs` one `p_<class>` column per class
/// (the softmax of the logits, for ensembling).
pub fn render(rows: &[Submitted], classes: &[String], cfg: &SubmissionConfig) -> anyhow::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    if cfg.header {
        let mut header = vec!["id".to_string(), "label".to_string()];
        if cfg.probs {
            header.extend(classes.iter().map(|c| format!("p_{c}")));
        }
        w.write_record(&header)?;
    }
    for r in rows {
        let label = match cfg.label {
            LabelFormat::Index => r.class.to_string(),
            LabelFormat::Name => classes[r.class].clone(),
        };
        let mut rec = vec![r.id.clone(), label];
        if cfg.probs {
            rec.extend(r.probs.iter().map(|p| p.to_string()));
        }
        w.write_record(&rec)?;
    }
    Ok(w.into_inner()?)
}

/// Writes the submission atomically; refuses to replace a file that is already there (a
/// user's `--out`).
pub fn write_new(path: &Path, rows: &[Submitted], classes: &[String], cfg: &SubmissionConfig) -> anyhow::Result<()> {
    if path.exists() {
        anyhow::bail!("{} already exists: choose another --out, nothing was overwritten", path.display());
    }
    write(path, rows, classes, cfg)
}

/// Writes the submission atomically, replacing what a previous attempt of the same run wrote
/// (the run's own `submission.csv`: the same weights give the same file).
pub fn write(path: &Path, rows: &[Submitted], classes: &[String], cfg: &SubmissionConfig) -> anyhow::Result<()> {
    Ok(super::write_atomic(path, &render(rows, classes, cfg)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_label_formats() {
        let row = |id: &str, class, p: f32| Submitted { id: id.into(), class, probs: vec![1.0 - p, p] };
        let rows = vec![row("1", 1, 0.75), row("2", 0, 0.125)];
        let classes = vec!["cats".to_string(), "dogs".to_string()];
        let out = render(&rows, &classes, &SubmissionConfig::default()).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "id,label\n1,1\n2,0\n");
        let cfg = SubmissionConfig { header: false, label: LabelFormat::Name, ..Default::default() };
        let out = render(&rows, &classes, &cfg).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "1,dogs\n2,cats\n");
        let cfg = SubmissionConfig { probs: true, ..Default::default() };
        let out = render(&rows, &classes, &cfg).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "id,label,p_cats,p_dogs\n1,1,0.25,0.75\n2,0,0.875,0.125\n");
    }
}
