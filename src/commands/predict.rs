//! `ablate predict`: a submission from a run's saved checkpoint and its own resolved config.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use candle_core::Device;

use crate::data::folder;
use crate::device::DeviceChoice;
use crate::executor::{self, loader, predictions};
use crate::model::Model;
use crate::output::log::RunLog;
use crate::output::run_folder::{RunFolder, VariantFolder};
use crate::output::submission;
use crate::plan;
use crate::spec::{Spec, SubmissionConfig};

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

/// A finished run's (or variant's) folder and the spec its `config.toml` holds.
pub(super) fn saved_run(run: &Path) -> anyhow::Result<(VariantFolder, Spec)> {
    let variant = RunFolder::existing(run).existing_variant(".");
    let config = variant.config();
    if !config.is_file() {
        bail!(
            "{} has no config.toml: expected a run (or a sweep's variant) folder made by `ablate run`",
            run.display()
        );
    }
    let spec = plan::spec_of_run(&config)?;
    Ok((variant, spec))
}

/// The run's model with its `which` weights, on the device asked for (or the spec's), its
/// convolutions planned as the run planned them (its `kernels.json`), so that the same images
/// give the run's own numbers.
pub(super) fn saved_model(
    variant: &VariantFolder,
    spec: &Spec,
    which: Which,
    device: Option<DeviceChoice>,
) -> anyhow::Result<(Model, Device)> {
    let (device, _) = executor::open_device(spec, device)?;
    crate::output::kernel_plan::pin_variant(variant.path(), variant.run())?;
    let model = Model::build(&spec.layers, spec.input_hw, spec.seed, &device)?;
    variant.saved().load_weights(&model, which.name())?;
    Ok((model, device))
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
    let (variant, spec) = saved_run(run)?;
    let test_dir = match (data, &spec.data.test_dir) {
        (Some(d), Some(t)) if d.join(t).is_dir() => d.join(t),
        (Some(d), _) => d.to_path_buf(),
        (None, _) => spec.test_dir().context("the run has no data.test_dir: pass --data DIR")?,
    };
    let items = Arc::new(folder::unlabelled(&test_dir, spec.submission.id)?);
    let (model, device) = saved_model(&variant, &spec, which, device)?;
    let out = out.map(Path::to_path_buf).unwrap_or_else(|| run.join(format!("submission-{}.csv", which.name())));
    let log = RunLog::terminal(RunLog::terminal_bars());
    let rows = predictions(&model, &loader(&spec, items, &spec.eval_transforms), (&device, &spec.predict.tta), &log)?;
    let format = SubmissionConfig { probs: probs || spec.submission.probs, ..spec.submission.clone() };
    submission::write_new(&out, &rows, &spec.class_names, &format)?;
    Ok(out)
}
