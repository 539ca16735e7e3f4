//! `ablate evaluate`: a saved checkpoint scored on any labelled folder (one sub-folder per
//! class, named as the run's classes): the confusion matrix, each class's precision, recall
//! and F1, the accuracy with its 95 % interval, and every image's prediction.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::bail;

use super::predict::{Which, saved_model, saved_run};
use crate::data::folder;
use crate::device::DeviceChoice;
use crate::executor::loader;
use crate::output::evaluation;
use crate::output::log::RunLog;
use crate::output::predictions::{self, ValPrediction};
use crate::output::run_folder;
use crate::stats::Confusion;

/// What `ablate evaluate` reports.
pub struct Evaluated {
    pub evaluation: Confusion,
    /// The folder the report files went to, and their name prefix.
    pub dir: PathBuf,
    pub name: String,
}

/// Scores the run's `which` weights on the labelled folder `data`, writing
/// `<name>_confusion.csv`, `<name>_per_class.csv`, `<name>_confusion.png` and
/// `<name>_predictions.csv` into `<run>/eval/` (`name`: default the folder's name; an existing
/// report is never overwritten).
pub fn evaluate(
    run: &Path,
    which: Which,
    data: &Path,
    name: Option<&str>,
    device: Option<DeviceChoice>,
) -> anyhow::Result<Evaluated> {
    let (variant, spec) = saved_run(run)?;
    let found = folder::class_names(data, None)?;
    if let Some(stray) = found.iter().find(|c| !spec.class_names.contains(c)) {
        bail!(
            "{}: `{stray}` is not one of the run's classes ({}); a labelled folder holds one sub-folder per class",
            data.display(),
            spec.class_names.join(", ")
        );
    }
    let present: Vec<String> = spec.class_names.iter().filter(|c| found.contains(c)).cloned().collect();
    let mut items = folder::labelled(data, &present)?;
    // Labels as the run numbers its classes (a folder may lack some).
    for item in &mut items {
        let class = &present[item.label.expect("labelled")];
        item.label = spec.class_names.iter().position(|c| c == class);
    }
    let name = name.map_or_else(
        || run_folder::safe(&data.file_name().map_or("data".into(), |n| n.to_string_lossy().into_owned())),
        str::to_string,
    );
    let dir = variant.eval_dir();
    let confusion = dir.join(format!("{name}_confusion.csv"));
    if confusion.exists() {
        bail!("{} already exists: pass another --name, nothing was overwritten", confusion.display());
    }
    let (model, device) = saved_model(&variant, &spec, which, device)?;
    let log = RunLog::terminal(RunLog::terminal_bars());
    let items = Arc::new(items);
    let all = (0..items.len()).collect();
    let preds = crate::train::predict(
        &model,
        &loader(&spec, items.clone(), &spec.eval_transforms),
        all,
        (&device, &spec.predict.tta),
        &log,
    )?;
    let rows: Vec<ValPrediction> = preds
        .into_iter()
        .map(|p| {
            let (i, predicted) = (p.index, p.class);
            let item = &items[i];
            let image = item.path.strip_prefix(data).unwrap_or(&item.path).display().to_string();
            ValPrediction { image, label: item.label.unwrap_or(0), predicted }
        })
        .collect();
    let evaluation = Confusion::from_pairs(&spec.class_names, rows.iter().map(|r| (r.label, r.predicted)));
    evaluation::write(&evaluation, &dir, &name)?;
    predictions::write(&dir.join(format!("{name}_predictions.csv")), &rows)?;
    Ok(Evaluated { evaluation, dir, name })
}
