//! The executor: trains one variant plan into its folder (resolved config, log, metrics,
//! event file, checkpoints, submission). `run`, `resume`, shards and Slurm tasks all call it.

use std::sync::Arc;

use anyhow::{Context as _, bail};
use candle_core::Device;

use crate::data::folder::{self, Item};
use crate::data::loader::{ImageCache, Loader};
use crate::device::{self, DeviceChoice};
use crate::model::Model;
use crate::output::evaluation::{self, Mistake};
use crate::output::kernel_plan;
use crate::output::log::RunLog;
use crate::output::predictions::{self, ValPrediction};
use crate::output::run_folder::VariantFolder;
use crate::output::sink::CsvSink;
use crate::output::submission::{self, Submitted};
use crate::output::tensorboard::TensorBoardSink;
use crate::output::write_atomic;
use crate::plan::{VariantPlan, prepare_model};
use crate::spec::{CacheMode, Precision, Spec, Transform};
use crate::stats::Confusion;
use crate::train::{
    Checkpointer, FitOutcome, Hook, Interrupted, Learner, MetricSink, Progress, Splits, StopSignal, TrainState,
};

/// Extra metric sinks per variant (tests pass memory sinks); called with the variant's folder.
pub type SinkFactory<'a> = Box<dyn FnMut(&str) -> Vec<Box<dyn MetricSink>> + 'a>;

/// What a process hands every training it runs: the stop signal, hooks, extra sinks.
pub struct Env<'a> {
    pub stop: StopSignal,
    /// Handed to every variant in turn (a [`crate::train::StopAfterSteps`] counts over all).
    pub hooks: Vec<Box<dyn Hook>>,
    pub sinks: SinkFactory<'a>,
}

impl Default for Env<'_> {
    fn default() -> Self {
        Self { stop: StopSignal::default(), hooks: Vec::new(), sinks: Box::new(|_| Vec::new()) }
    }
}

/// The device a spec trains on (`--device` wins over `train.device`), with a notice when
/// `auto` fell back to the CPU; a precision the device cannot do is refused.
pub fn open_device(spec: &Spec, cli: Option<DeviceChoice>) -> anyhow::Result<(Device, Option<String>)> {
    let (device, notice) = device::open(cli.unwrap_or(spec.train.device))?;
    if spec.train.precision == Precision::Bf16 && device.is_cpu() {
        bail!(
            "train.precision = \"bf16\" needs a CUDA device, but this run trains on the CPU (bf16 would be slower there, not faster): use precision = \"f32\", or a CUDA build and GPU (see the README)"
        );
    }
    Ok((device, notice))
}

/// Adds how to go on to an interruption.
pub fn resume_hint(e: anyhow::Error, run: &std::path::Path) -> anyhow::Error {
    if e.is::<Interrupted>() {
        e.context(format!("stopped; continue with: ablate resume {}", run.display()))
    } else {
        e
    }
}

/// A resume that cannot go on as asked (the config or the dataset changed since the run
/// started, or its checkpoint is damaged): nothing was trained, and the variant keeps its
/// status.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct Refused(anyhow::Error);

/// A first attempt at a variant, or a later one that continues what the folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    Fresh,
    /// Train again from the start in a folder a failed attempt left (its log continues).
    Retry,
    /// Continue the committed checkpoint; `allow_data_change` accepts a dataset whose file list
    /// changed since (the split may change with it).
    Resume {
        allow_data_change: bool,
    },
}

/// Trains `plan` into `folder` on `device`, afresh or continuing the checkpoint a previous
/// attempt committed there. Every line of its log also goes to `log.txt` in the folder.
pub fn train(
    plan: &VariantPlan,
    folder: &VariantFolder,
    (device, notice): (&Device, Option<String>),
    env: &mut Env,
    attempt: Attempt,
) -> anyhow::Result<FitOutcome> {
    let again = attempt != Attempt::Fresh;
    if again {
        folder.remove_temporaries()?;
    }
    let spec = &plan.spec;
    let mut model = Model::build(&spec.layers, spec.input_hw, spec.seed, device)?;
    let import = prepare_model(&mut model, spec, plan.weights.as_deref())?;
    model.set_bf16(spec.train.precision == Precision::Bf16);
    write_atomic(&folder.config(), spec.config_toml.as_bytes())?;
    let bars = RunLog::terminal_bars();
    let log = if again { RunLog::append(&folder.log(), bars)? } else { RunLog::create(&folder.log(), bars)? };
    log.info(format!("run folder: {}", folder.path().display()));
    notice.into_iter().for_each(|n| log.info(n));
    if device.is_cpu() {
        log.info(format!("CPU threads: {}", rayon::current_num_threads()));
        log.info(kernel_plan::pin_variant(folder.path(), folder.run())?);
    }
    log.info(format!("model ({}x{} input):\n{}", spec.input_hw.0, spec.input_hw.1, model.summary()));
    import.into_iter().for_each(|r| log.info(r));
    let result = train_logged(plan, folder, &model, device, &log, env, attempt);
    // The last passes planned (the test images' last batch) are recorded too.
    let recorded = kernel_plan::save(folder.path());
    recorded.as_ref().ok().into_iter().flatten().for_each(|line| log.info(line));
    let result = recorded.and(result);
    if let Err(e) = &result {
        log.info(format!("error: {e:#}"));
    }
    result
}

fn train_logged(
    plan: &VariantPlan,
    folder: &VariantFolder,
    model: &Model,
    device: &Device,
    log: &RunLog,
    env: &mut Env,
    attempt: Attempt,
) -> anyhow::Result<FitOutcome> {
    let spec = &plan.spec;
    let splits = splits(plan, folder, log)?;
    let mut checkpointer = folder.checkpointer(matches!(attempt, Attempt::Resume { .. }))?;
    let committed = checkpointer.committed().map_err(Refused)?;
    if let Some(state) = &committed {
        check_continuation(state, spec, &splits, attempt, log)?;
    }
    // Epochs past the committed one were recorded by an attempt a kill stopped: they train again.
    let done = committed.as_ref().map_or(0, |s| s.epochs_done);
    let history = CsvSink::truncate(&folder.metrics(), done)?;
    let mut sinks: Vec<Box<dyn MetricSink>> = vec![Box::new(CsvSink::append(&folder.metrics())?)];
    if done < spec.train.epochs {
        let mut tb = TensorBoardSink::with_session(folder.path(), &plan.hparams, &plan.group, &spec.class_names);
        tb.continue_after(&history);
        sinks.push(Box::new(tb));
    }
    sinks.extend((env.sinks)(&plan.folder));
    let mut learner = Learner {
        spec,
        model,
        device,
        checkpointer: &mut checkpointer,
        sinks: &mut sinks,
        progress: log,
        hooks: &mut env.hooks,
        stop: &env.stop,
        best: Default::default(),
    };
    let outcome = learner.fit(&splits, committed, history);
    let trained = outcome.as_ref().ok().map(|o| o.best_epoch);
    if trained.is_some() && (!splits.val_idx.is_empty() || plan.test_items.is_some()) {
        checkpointer.load_weights(model, "best")?;
    }
    if let Some(best_epoch) = trained.filter(|_| !splits.val_idx.is_empty()) {
        validate_best(plan, folder, model, &splits, (device, log), &mut sinks, best_epoch)?;
    }
    // An interrupted session is not over: its resume finishes it.
    if !outcome.as_ref().is_err_and(|e| e.is::<Interrupted>()) {
        for sink in &mut sinks {
            sink.finish(outcome.is_ok())?;
        }
    }
    drop(sinks); // closes the event file
    let mut outcome = outcome?;
    crate::output::crash::point("finish: trained");
    if let Some(test) = &plan.test_items {
        outcome.test = submit(plan, folder, model, test, (device, log), outcome.best_epoch)?;
    }
    let last = outcome.epochs.last().expect("at least one epoch");
    log.info(format!(
        "done: best epoch {}, final val acc {}, final train loss {:.4}",
        outcome.best_epoch,
        last.val_acc.map_or("-".into(), |v| format!("{v:.4}")),
        last.train_loss
    ));
    Ok(outcome)
}

/// The best weights (loaded in `model`) on the test images: `submission.csv`, and with the
/// answers (`data.test_labels`) the test report (`eval/test_*`) and `(correct, images)`.
fn submit(
    plan: &VariantPlan,
    folder: &VariantFolder,
    model: &Model,
    test: &Arc<Vec<Item>>,
    (device, log): (&Device, &RunLog),
    best_epoch: usize,
) -> anyhow::Result<Option<(u64, u64)>> {
    let spec = &plan.spec;
    let rows =
        predictions(model, &loader(spec, test.clone(), &spec.eval_transforms), (device, &spec.predict.tta), log)?;
    submission::write(&folder.submission(), &rows, &spec.class_names, &spec.submission)?;
    crate::output::crash::point("finish: submission written");
    log.info(format!(
        "submission.csv: {} test images, predicted with best.safetensors (epoch {best_epoch})",
        rows.len()
    ));
    let Some(answers) = test.iter().map(|i| i.label).collect::<Option<Vec<usize>>>() else {
        return Ok(None);
    };
    let by_id: std::collections::HashMap<&str, usize> =
        test.iter().zip(&answers).map(|(i, &a)| (i.id.as_str(), a)).collect();
    let confusion = Confusion::from_pairs(&spec.class_names, rows.iter().map(|r| (by_id[r.id.as_str()], r.class)));
    evaluation::write(&confusion, &folder.eval_dir(), "test")?;
    log.info(format!("test with best.safetensors: {} (eval/test_*)", confusion.headline()));
    Ok(Some((confusion.correct(), confusion.total())))
}

/// The best weights (loaded in `model`) on the validation images: each image's class
/// (`val_predictions.csv`, what the summary's McNemar test compares between variants), the
/// confusion matrix and per-class scores (`eval/val_*`), and, for TensorBoard, the matrix and
/// the most confident mistakes as pictures at the best epoch.
fn validate_best(
    plan: &VariantPlan,
    folder: &VariantFolder,
    model: &Model,
    splits: &Splits,
    (device, log): (&Device, &RunLog),
    sinks: &mut [Box<dyn MetricSink>],
    best_epoch: usize,
) -> anyhow::Result<()> {
    let spec = &plan.spec;
    // With test-time augmentation only when validation used it: the predictions whose
    // accuracy is best_val_acc.
    let tta = spec.predict.validation_tta();
    let preds = crate::train::predict(model, &splits.val, splits.val_idx.clone(), (device, tta), log)?;
    let rows: Vec<ValPrediction> = preds
        .iter()
        .map(|p| {
            let item = &plan.items[p.index];
            let image = item.path.strip_prefix(spec.train_dir()).unwrap_or(&item.path).display().to_string();
            ValPrediction { image, label: item.label.unwrap_or(0), predicted: p.class }
        })
        .collect();
    predictions::write(&folder.val_predictions(), &rows)?;
    let confusion = Confusion::from_pairs(&spec.class_names, rows.iter().map(|r| (r.label, r.predicted)));
    evaluation::write(&confusion, &folder.eval_dir(), "val")?;
    log.info(format!("validation with best.safetensors (epoch {best_epoch}): {} (eval/val_*)", confusion.headline()));
    let mistakes: Vec<Mistake> = preds
        .iter()
        .zip(&rows)
        .filter(|(_, r)| r.label != r.predicted)
        .map(|(p, r)| Mistake {
            path: &plan.items[p.index].path,
            truth: &spec.class_names[r.label],
            predicted: &spec.class_names[r.predicted],
            confidence: p.probs[r.predicted],
        })
        .collect();
    let heatmap = evaluation::heatmap_png(&confusion, "validation, best.safetensors")?;
    let worst = evaluation::mistakes_png(mistakes, spec.data.max_pixels)?;
    if let Some(png) = &worst {
        write_atomic(&folder.eval_dir().join("val_mistakes.png"), png)?;
    }
    for sink in sinks.iter_mut() {
        sink.image("val/confusion", &heatmap, best_epoch)?;
        if let Some(png) = &worst {
            sink.image("val/mistakes", png, best_epoch)?;
        }
    }
    crate::output::crash::point("finish: validation predictions written");
    Ok(())
}

/// Whether a committed `state` may be continued: the same config, and the same image files
/// unless the resume allows a change.
fn check_continuation(
    state: &TrainState,
    spec: &Spec,
    splits: &Splits,
    attempt: Attempt,
    log: &RunLog,
) -> Result<(), Refused> {
    let expected = crate::train::fingerprint(&spec.config_toml);
    if state.fingerprint != expected {
        return Err(Refused(anyhow::anyhow!(
            "config.toml changed since this run started (fingerprint {expected} != {}): resume refuses to mix configurations",
            state.fingerprint
        )));
    }
    if state.data_fingerprint != splits.data_fingerprint {
        if attempt != (Attempt::Resume { allow_data_change: true }) {
            return Err(Refused(anyhow::anyhow!(
                "the dataset under {} changed since this run started (images added, removed or resized): the validation split would change mid-run; resume with --allow-data-change to accept that",
                spec.data.root.display()
            )));
        }
        log.info("the dataset changed since this run started; continuing as --allow-data-change asks");
    }
    Ok(())
}

/// A loader of `items` through `pipeline` with the spec's batching.
pub fn loader(spec: &Spec, items: Arc<Vec<Item>>, pipeline: &[Transform]) -> Loader {
    let mut l = Loader::new(items, pipeline.to_vec(), spec.input_hw, spec.data.batch_size);
    l.prefetch = spec.data.prefetch;
    l.skip_bad = spec.data.skip_bad;
    l.max_pixels = spec.data.max_pixels;
    l.seed = spec.seed;
    l
}

/// The seeded train / validation split with a loader each (sharing one image cache when the
/// pipelines allow).
fn splits(plan: &VariantPlan, folder: &VariantFolder, log: &RunLog) -> anyhow::Result<Splits> {
    let spec = &plan.spec;
    let items = &plan.items;
    let (train_idx, val_idx) = folder::split(items, &spec.data.split);
    let data_fingerprint = folder::fingerprint(items.iter().chain(plan.test_items.iter().flat_map(|t| t.iter())))?;
    log.info(format!(
        "data: {} ({} classes: {}), {} train / {} validation images{}",
        spec.data.root.display(),
        spec.num_classes(),
        spec.class_names.join(", "),
        train_idx.len(),
        val_idx.len(),
        plan.test_items.as_ref().map_or(String::new(), |t| format!(", {} test images", t.len()))
    ));
    let (mut train, mut val) =
        (loader(spec, items.clone(), &spec.train_transforms), loader(spec, items.clone(), &spec.eval_transforms));
    let cache = |pipeline: &[Transform]| -> anyhow::Result<Arc<ImageCache>> {
        Ok(Arc::new(match spec.data.cache {
            CacheMode::Disk => ImageCache::on_disk(items.len(), pipeline, &folder.cache())
                .with_context(|| format!("cannot create the image cache under {}", folder.cache().display()))?,
            _ => ImageCache::new(items.len(), pipeline),
        }))
    };
    if spec.data.cache != CacheMode::None {
        let train_cache = cache(&spec.train_transforms)?;
        let val_cache =
            if train_cache.fits(&spec.eval_transforms) { train_cache.clone() } else { cache(&spec.eval_transforms)? };
        (train, val) = (train.with_cache(train_cache), val.with_cache(val_cache));
    }
    Ok(Splits { train, train_idx, val, val_idx, data_fingerprint })
}

/// Every item's prediction (averaged over `tta`'s variants of the image), by submission id.
pub fn predictions(
    model: &Model,
    loader: &Loader,
    (device, tta): (&Device, &[crate::spec::Tta]),
    progress: &dyn Progress,
) -> anyhow::Result<Vec<Submitted>> {
    let all = (0..loader.items().len()).collect();
    let preds = crate::train::predict(model, loader, all, (device, tta), progress)?;
    Ok(preds
        .into_iter()
        .map(|p| Submitted { id: loader.items()[p.index].id.clone(), class: p.class, probs: p.probs })
        .collect())
}
