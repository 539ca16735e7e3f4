//! `ablate lr-find`: the learning-rate range test on an experiment (its first variant),
//! written as `lr_find.csv` and `lr_find.png` with the suggested rate.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::data::folder;
use crate::executor::{loader, open_device};
use crate::output::log::RunLog;
use crate::plan::{self, Request, prepare_model};
use crate::spec::DeviceChoice;
use crate::train::Splits;
use crate::train::lr_find::{LrPoint, range_test, suggest};

/// The range to test and where the results go.
#[derive(Debug, Clone)]
pub struct LrFindOptions {
    /// First and last learning rate.
    pub start: f64,
    pub end: f64,
    /// Most steps (the test stops earlier when the loss diverges).
    pub steps: usize,
    /// The folder for `lr_find.csv` and `lr_find.png` (created; must not exist).
    pub out: PathBuf,
    pub device: Option<DeviceChoice>,
}

/// What the test found.
#[derive(Debug, Clone)]
pub struct LrFound {
    pub out: PathBuf,
    pub points: Vec<LrPoint>,
    /// The suggested rate, when the curve allows one.
    pub suggested: Option<f64>,
}

pub fn lr_find(request: &Request, opts: &LrFindOptions) -> anyhow::Result<LrFound> {
    if !(opts.start > 0.0 && opts.end > opts.start && opts.start.is_finite() && opts.end.is_finite()) {
        bail!("--start and --end: expected 0 < start < end, got {} and {}", opts.start, opts.end);
    }
    if opts.steps < 2 {
        bail!("--steps: expected at least 2, got {}", opts.steps);
    }
    let mut plan = plan::plan(request)?;
    let count = plan.variants.len();
    let v = plan.variants.remove(0);
    if opts.out.exists() {
        bail!("{} exists: lr-find writes a new folder", opts.out.display());
    }
    std::fs::create_dir_all(&opts.out).with_context(|| format!("cannot create {}", opts.out.display()))?;
    let log = RunLog::create(&opts.out.join("log.txt"), RunLog::terminal_bars())?;
    if count > 1 {
        log.info(format!("testing the first of the {count} variants, {} (pick another with --set)", v.folder));
    }
    let spec = &v.spec;
    let (device, notice) = open_device(spec, opts.device)?;
    notice.into_iter().for_each(|n| log.info(n));
    let mut model = crate::model::Model::build(&spec.layers, spec.input_hw, spec.seed, &device)?;
    prepare_model(&mut model, spec, v.weights.as_deref())?.into_iter().for_each(|r| log.info(r));
    let (train_idx, val_idx) = folder::split(&v.items, &spec.data.split);
    let data = Splits {
        train: loader(spec, v.items.clone(), &spec.train_transforms),
        train_idx,
        val: loader(spec, v.items.clone(), &spec.eval_transforms),
        val_idx,
        data_fingerprint: String::new(),
    };
    log.info(format!(
        "testing learning rates from {:e} to {:e} over at most {} steps",
        opts.start, opts.end, opts.steps
    ));
    let points = range_test(spec, &model, &data, &device, (opts.start, opts.end, opts.steps), &log)?;
    let suggested = suggest(&points, opts.steps).map(|i| points[i].lr);
    write_csv(&opts.out.join("lr_find.csv"), &points)?;
    crate::output::plot::lr_find_png(&opts.out.join("lr_find.png"), spec.name.as_str(), &points, suggested)?;
    Ok(LrFound { out: opts.out.clone(), points, suggested })
}

fn write_csv(path: &Path, points: &[LrPoint]) -> anyhow::Result<()> {
    let mut text = String::from("step,lr,loss,smoothed_loss\n");
    for (i, p) in points.iter().enumerate() {
        text.push_str(&format!("{i},{:e},{},{}\n", p.lr, p.loss, p.smoothed));
    }
    crate::output::write_atomic(path, text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}
