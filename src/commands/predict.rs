//! `ablate predict`: a submission from a run's saved checkpoint and its own resolved config.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};

use crate::data::folder;
use crate::device::DeviceChoice;
use crate::executor::{self, loader, predictions};
use crate::model::Model;
use crate::output::log::RunLog;
use crate::output::run_folder::RunFolder;
use crate::output::submission;
use crate::plan;
use crate::spec::SubmissionConfig;

/// Which saved weights `predict` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    Best,
    Last,
}

impl Which {
    pub(super) fn name(self) -> &'static str {
        match self {
            Which::Best => "best",
            Which::Last => "last",
        }
    }
}

/// Writes a submission (with `probs`, each class's probability too) for `data` (a folder of test images, or a dataset root holding the
/// config's test folder; default: the run's own test folder) to `out` (default:
/// `<run>/submission-<which>.csv`, never overwritten) and returns its path.
pub fn predict(
    run: &Path,
    which: Which,
    data: Option<&Path>,
    out: Option<&Path>,
    probs: bool,
    device: Option<DeviceChoice>,
) -> anyhow::Result<PathBuf> {
    let variant = RunFolder::existing(run).existing_variant(".");
    let config = variant.config();
    if !config.is_file() {
        bail!("{} has no config.toml: expected a run folder made by `ablate run`", run.display());
    }
    let spec = plan::spec_of_run(&config)?;
    let test_dir = match (data, &spec.data.test_dir) {
        (Some(d), Some(t)) if d.join(t).is_dir() => d.join(t),
        (Some(d), _) => d.to_path_buf(),
        (None, _) => spec.test_dir().context("the run has no data.test_dir: pass --data DIR")?,
    };
    let items = Arc::new(folder::unlabelled(&test_dir, spec.submission.id)?);
    let (device, _) = executor::open_device(&spec, device)?;
    let model = Model::build(&spec.layers, spec.input_hw, spec.seed, &device)?;
    variant.saved().load_weights(&model, which.name())?;
    let out = out.map(Path::to_path_buf).unwrap_or_else(|| run.join(format!("submission-{}.csv", which.name())));
    let log = RunLog::terminal(RunLog::terminal_bars());
    let rows = predictions(&model, &loader(&spec, items, &spec.eval_transforms), (&device, &spec.predict.tta), &log)?;
    let format = SubmissionConfig { probs: probs || spec.submission.probs, ..spec.submission.clone() };
    submission::write_new(&out, &rows, &spec.class_names, &format)?;
    Ok(out)
}
