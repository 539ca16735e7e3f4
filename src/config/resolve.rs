//! Validation: the merged raw experiment becomes a [`Spec`] that the rest of the program trusts.

use std::path::Path;

use super::ConfigError;
use super::at::At;
use super::schema::{ClassWeights, Experiment, PredictSpec, TtaSpec};
use super::transforms::transforms;
use crate::spec::{
    DataSpec, MixupSpec, PredictConfig, ScheduleKind, Spec, SplitSpec, TrainSpec, Transform, Tta, output_size,
};

/// The test answers' file a dataset root may hold (`data.test_labels` unless set).
const DEFAULT_TEST_LABELS: &str = "test_labels.csv";

/// Validates `exp` (loaded from `file`) for a dataset with `class_names`.
pub fn resolve(exp: Experiment, file: &str, class_names: Vec<String>) -> Result<Spec, ConfigError> {
    let blocks = super::graph::library(&exp.model.blocks).map_err(|m| ConfigError::Invalid {
        path: file.into(),
        key: "model.blocks".into(),
        message: m,
    })?;
    let at = At { file, classes: class_names.len(), params: &exp.model.params, blocks: &blocks };
    let data = data(&exp, &at, &class_names)?;
    let train_transforms =
        transforms(&exp.transforms.train, "transforms.train", true).map_err(|(k, m)| at.invalid(&k, m))?;
    let eval_transforms =
        transforms(&exp.transforms.eval, "transforms.eval", false).map_err(|(k, m)| at.invalid(&k, m))?;
    let input_hw = match exp.model.input {
        Some([h, w]) => (h, w),
        None => output_size(&eval_transforms).ok_or_else(|| {
            at.invalid(
                "model.input",
                "the eval transforms do not fix an image size: add a resize or crop, or set model.input = [h, w]"
                    .into(),
            )
        })?,
    };
    pipeline_sizes(&train_transforms, &eval_transforms, input_hw, &at)?;
    training(&exp, &at)?;
    let layers = exp
        .model
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| super::graph::node(l, &format!("model.layers.{i}"), &at))
        .filter_map(Result::transpose)
        .collect::<Result<Vec<_>, _>>()?;
    if layers.is_empty() {
        return Err(at.invalid("model.layers", "expected at least one layer".into()));
    }
    let device = exp.train.device.parse().map_err(|e: String| at.invalid("train.device", e))?;
    let config_toml = resolved_toml(&exp, &blocks, &data.root, &class_names)
        .map_err(|e| at.invalid("(whole file)", format!("cannot write the resolved config: {e}")))?;
    Ok(Spec {
        name: exp.name.clone(),
        seed: exp.seed,
        data,
        class_names,
        train_transforms,
        eval_transforms,
        input_hw,
        layers,
        init: exp.model.init.clone(),
        freeze: exp.model.freeze.clone(),
        unfreeze_epoch: exp.model.unfreeze_epoch,
        hparams: standard_hparams(&exp),
        train: TrainSpec {
            mixup: mixup(&exp),
            epochs: exp.train.epochs,
            lr_schedule: exp.train.lr_schedule,
            device,
            precision: exp.train.precision,
            label_smoothing: exp.train.label_smoothing,
            clip_grad_norm: exp.train.clip_grad_norm,
            class_weights: exp.train.class_weights.clone(),
            accumulate: exp.train.accumulate,
            ema: exp.train.ema,
            early_stopping: exp.train.early_stopping.clone(),
        },
        // After `train`, which borrows `exp` whole.
        optimizer: exp.optimizer,
        submission: exp.submission,
        predict: predict(&exp.predict, input_hw).map_err(|(k, m): (String, String)| at.invalid(&k, m))?,
        config_toml,
    })
}

fn data(exp: &Experiment, at: &At, class_names: &[String]) -> Result<DataSpec, ConfigError> {
    let d = &exp.data;
    if !(0.0..1.0).contains(&d.val_fraction) {
        return Err(at.invalid("data.val_fraction", format!("expected a fraction in [0, 1), got {}", d.val_fraction)));
    }
    if d.batch_size == 0 {
        return Err(at.invalid("data.batch_size", "expected at least 1".into()));
    }
    if d.folds == 0 {
        return Err(at.invalid("data.folds", "expected at least 1 (1: one hold-out split)".into()));
    }
    if d.fold >= d.folds {
        return Err(at.invalid("data.fold", format!("expected a part in 0..{} (data.folds = {})", d.folds, d.folds)));
    }
    if d.max_pixels == 0 {
        return Err(at.invalid("data.max_pixels", "expected at least 1".into()));
    }
    if class_names.len() < 2 {
        return Err(at.invalid("data.classes", format!("expected at least 2 classes, found {class_names:?}")));
    }
    Ok(DataSpec {
        root: std::path::absolute(&d.root).map_err(|e| at.invalid("data.root", e.to_string()))?,
        train_dir: d.train_dir.clone(),
        test_dir: (!d.test_dir.is_empty()).then(|| d.test_dir.clone()),
        test_labels: match d.test_labels.as_deref() {
            Some("") => None,
            Some(path) => Some(path.to_string()),
            None => Path::new(&d.root).join(DEFAULT_TEST_LABELS).is_file().then(|| DEFAULT_TEST_LABELS.to_string()),
        },
        split: SplitSpec { val_fraction: d.val_fraction, seed: d.split_seed, folds: d.folds, fold: d.fold },
        batch_size: d.batch_size,
        prefetch: d.prefetch,
        skip_bad: d.skip_bad,
        cache: d.cache,
        max_pixels: d.max_pixels,
    })
}

fn training(exp: &Experiment, at: &At) -> Result<(), ConfigError> {
    let o = &exp.optimizer;
    // Every number must be finite (TOML writes `inf` and `nan`) and in its range.
    let check = |key: &str, v: f64, ok: bool, expected: &str| {
        if v.is_finite() && ok { Ok(()) } else { Err(at.invalid(key, format!("expected {expected}, got {v}"))) }
    };
    check("optimizer.lr", o.lr, o.lr > 0.0, "a positive number")?;
    check("optimizer.weight_decay", o.weight_decay, o.weight_decay >= 0.0, "a number >= 0")?;
    check("optimizer.eps", o.eps, o.eps > 0.0, "a positive number")?;
    for (i, b) in o.betas.iter().enumerate() {
        check(&format!("optimizer.betas.{i}"), *b, (0.0..1.0).contains(b), "a number in [0, 1)")?;
    }
    check("optimizer.momentum", o.momentum, o.momentum >= 0.0, "a number >= 0")?;
    if o.nesterov && o.momentum == 0.0 {
        return Err(at.invalid("optimizer.momentum", "expected momentum > 0 with nesterov".into()));
    }
    let s = &exp.train.lr_schedule;
    let w = s.warmup_epochs;
    check("train.lr_schedule.warmup_epochs", w, w >= 0.0, "a number of epochs >= 0")?;
    check("train.lr_schedule.gamma", s.gamma, s.gamma > 0.0, "a positive factor")?;
    check("train.lr_schedule.min_lr", s.min_lr, s.min_lr >= 0.0, "a number >= 0")?;
    check("train.lr_schedule.pct_start", s.pct_start, s.pct_start > 0.0 && s.pct_start < 1.0, "a share in (0, 1)")?;
    check("train.lr_schedule.div_factor", s.div_factor, s.div_factor > 0.0, "a positive factor")?;
    check("train.lr_schedule.final_div_factor", s.final_div_factor, s.final_div_factor > 0.0, "a positive factor")?;
    let ls = exp.train.label_smoothing;
    check("train.label_smoothing", ls, (0.0..1.0).contains(&ls), "a share in [0, 1)")?;
    if let Some(c) = exp.train.clip_grad_norm {
        check("train.clip_grad_norm", c, c > 0.0, "a positive norm")?;
    }
    let t = &exp.train;
    check("train.mixup", t.mixup, t.mixup >= 0.0, "Beta's alpha, >= 0 (0: off)")?;
    check("train.cutmix", t.cutmix, t.cutmix >= 0.0, "Beta's alpha, >= 0 (0: off)")?;
    check("train.mixup_prob", t.mixup_prob, (0.0..=1.0).contains(&t.mixup_prob), "a probability in [0, 1]")?;
    let sp = t.mixup_switch_prob;
    check("train.mixup_switch_prob", sp, (0.0..=1.0).contains(&sp), "a probability in [0, 1]")?;
    class_weights(exp, at)?;
    stateful(exp, at)?;
    if s.step_epochs == 0 {
        return Err(at.invalid("train.lr_schedule.step_epochs", "expected at least 1".into()));
    }
    if exp.train.epochs == 0 {
        return Err(at.invalid("train.epochs", "expected at least 1".into()));
    }
    Ok(())
}

/// `[predict]`: each test-time pipeline valid for evaluation and making the model's input.
fn predict(p: &PredictSpec, input_hw: (usize, usize)) -> Result<PredictConfig, (String, String)> {
    let mut tta = Vec::with_capacity(p.tta.len());
    for (i, t) in p.tta.iter().enumerate() {
        let key = format!("predict.tta.{i}");
        tta.push(match t {
            TtaSpec::Named(n) if n == "hflip" => Tta::Hflip,
            TtaSpec::Named(n) => {
                return Err((
                    key,
                    format!("unknown test-time augmentation \"{n}\": expected \"hflip\" or a list of eval transforms"),
                ));
            }
            TtaSpec::Pipeline(steps) => {
                let pipeline = transforms(steps, &key, false)?;
                if output_size(&pipeline) != Some(input_hw) {
                    return Err((
                        key,
                        format!(
                            "must end at the model's input, {}x{} (a resize or crop to it)",
                            input_hw.0, input_hw.1
                        ),
                    ));
                }
                Tta::Pipeline(pipeline)
            }
        });
    }
    Ok(PredictConfig { tta, validate: p.validate })
}

/// Accumulation, the weights' average, early stopping and the plateau schedule.
fn stateful(exp: &Experiment, at: &At) -> Result<(), ConfigError> {
    let t = &exp.train;
    match exp.model.unfreeze_epoch {
        Some(_) if exp.model.freeze.is_empty() => {
            return Err(at.invalid("model.unfreeze_epoch", "nothing is frozen: set model.freeze too".into()));
        }
        Some(e) if e == 0 || e > t.epochs => {
            return Err(at.invalid(
                "model.unfreeze_epoch",
                format!("expected an epoch from 1 to train.epochs = {}, got {e}", t.epochs),
            ));
        }
        _ => {}
    }
    if t.accumulate == 0 {
        return Err(at.invalid("train.accumulate", "expected at least 1 batch".into()));
    }
    if let Some(e) = &t.ema
        && !(0.0..1.0).contains(&e.decay)
    {
        return Err(at.invalid("train.ema.decay", format!("expected a number in [0, 1), got {}", e.decay)));
    }
    let d = &exp.data;
    let validates = d.val_fraction > 0.0 || d.folds > 1;
    let mut watched = Vec::new();
    if let Some(es) = &t.early_stopping {
        if !(es.min_delta.is_finite() && es.min_delta >= 0.0) {
            return Err(
                at.invalid("train.early_stopping.min_delta", format!("expected a number >= 0, got {}", es.min_delta))
            );
        }
        watched.push(("train.early_stopping.monitor", es.monitor));
    }
    let s = &t.lr_schedule;
    if s.kind == ScheduleKind::Plateau {
        if !(s.threshold.is_finite() && s.threshold >= 0.0) {
            return Err(
                at.invalid("train.lr_schedule.threshold", format!("expected a number >= 0, got {}", s.threshold))
            );
        }
        watched.push(("train.lr_schedule.monitor", s.monitor));
    }
    if let Some((key, m)) = watched.into_iter().find(|(_, m)| m.validates() && !validates) {
        return Err(at.invalid(
            key,
            format!(
                "{} needs validation images, but data.val_fraction is 0: watch train/loss or hold images out",
                m.tag()
            ),
        ));
    }
    Ok(())
}

/// `train.mixup` and `train.cutmix`, when either is on.
fn mixup(exp: &Experiment) -> Option<MixupSpec> {
    let t = &exp.train;
    (t.mixup > 0.0 || t.cutmix > 0.0).then_some(MixupSpec {
        mixup_alpha: t.mixup,
        cutmix_alpha: t.cutmix,
        prob: t.mixup_prob,
        switch_prob: t.mixup_switch_prob,
    })
}

/// `"balanced"`, or one positive weight per class; not with mixed (soft) targets.
fn class_weights(exp: &Experiment, at: &At) -> Result<(), ConfigError> {
    let key = "train.class_weights";
    match &exp.train.class_weights {
        None => return Ok(()),
        Some(ClassWeights::Named(n)) if n == "balanced" => {}
        Some(ClassWeights::Named(n)) => {
            return Err(at.invalid(key, format!("expected \"balanced\" or one weight per class, got \"{n}\"")));
        }
        Some(ClassWeights::Given(w)) => {
            if w.len() != at.classes {
                return Err(
                    at.invalid(key, format!("expected {} weights (one per class), got {}", at.classes, w.len()))
                );
            }
            if let Some(bad) = w.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
                return Err(at.invalid(key, format!("expected positive weights, got {bad}")));
            }
        }
    }
    if exp.train.mixup > 0.0 || exp.train.cutmix > 0.0 {
        return Err(
            at.invalid(key, "class weights do not combine with mixup or cutmix (soft targets): drop one".into())
        );
    }
    Ok(())
}

/// The two pipelines agree with each other and with the model's input: a crop fits the size
/// before it (when a resize fixed it) and both end at the model's input size.
fn pipeline_sizes(
    train: &[Transform],
    eval: &[Transform],
    input_hw: (usize, usize),
    at: &At,
) -> Result<(), ConfigError> {
    for (pipeline, key) in [(eval, "transforms.eval"), (train, "transforms.train")] {
        // What is known of the image size: exact (resize, crop) or a lower bound on both sides
        // (resize of the shorter side); nothing before the first resize.
        let mut exact = None;
        let mut at_least = None;
        for (i, t) in pipeline.iter().enumerate() {
            match *t {
                Transform::Resize(s) => (exact, at_least) = (Some(s), None),
                Transform::ResizeShorter(n) => (exact, at_least) = (None, Some(n)),
                Transform::CenterCrop((h, w)) | Transform::RandomCrop((h, w)) => {
                    let fits = match (exact, at_least) {
                        (Some((eh, ew)), _) => h <= eh && w <= ew,
                        (None, Some(n)) => h.min(w) <= n,
                        (None, None) => true,
                    };
                    if !fits {
                        let before = exact.map_or_else(
                            || format!("at least {0}x{0}", at_least.unwrap_or(0)),
                            |(eh, ew)| format!("{eh}x{ew}"),
                        );
                        return Err(at.invalid(
                            &format!("{key}.{i}"),
                            format!("a {h}x{w} crop does not fit the {before} image the transforms before it make"),
                        ));
                    }
                    (exact, at_least) = (Some((h, w)), None);
                }
                // Any image can be cropped and resized to its size.
                Transform::RandomResizedCrop { size, .. } => (exact, at_least) = (Some(size), None),
                _ => {}
            }
        }
        if let Some((h, w)) = exact.filter(|&s| s != input_hw) {
            return Err(at.invalid(
                key,
                format!("makes {h}x{w} images, but the model takes {}x{} (the eval transforms' size, or model.input): make them agree", input_hw.0, input_hw.1),
            ));
        }
    }
    Ok(())
}

/// The hyper-parameters every run reports to HParams, besides the swept ones.
fn standard_hparams(exp: &Experiment) -> Vec<(String, toml::Value)> {
    vec![
        ("optimizer.kind".into(), toml::Value::String(format!("{:?}", exp.optimizer.kind).to_lowercase())),
        ("optimizer.lr".into(), toml::Value::Float(exp.optimizer.lr)),
        ("data.batch_size".into(), toml::Value::Integer(exp.data.batch_size as i64)),
        ("train.epochs".into(), toml::Value::Integer(exp.train.epochs as i64)),
        ("seed".into(), toml::Value::Integer(exp.seed as i64)),
    ]
}

/// Serialises the merged experiment as the run's `config.toml` (absolute data root, classes
/// listed, `extends` dropped: the file stands alone).
fn resolved_toml(
    exp: &Experiment,
    blocks: &std::collections::BTreeMap<String, super::schema::BlockTemplate>,
    data_root: &std::path::Path,
    classes: &[String],
) -> Result<String, toml::ser::Error> {
    let mut exp = exp.clone();
    exp.extends = None;
    // The templates its stages use, shipped ones included: the file builds the same model
    // whatever a later ablate ships.
    exp.model.blocks = super::graph::used(&exp.model.layers, blocks);
    exp.sweep.clear(); // a variant's config holds its own values, not the sweep
    exp.data.root = data_root.display().to_string();
    exp.data.classes = Some(classes.to_vec());
    toml::to_string_pretty(&exp)
}
