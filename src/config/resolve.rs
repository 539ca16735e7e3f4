//! Validation: the merged raw experiment becomes a [`Spec`] that the rest of the program trusts.

use super::ConfigError;
use super::schema::{BlockKind, Experiment, Int, LayerSpec, NormalizeSpec, Size, TransformSpec};
use crate::ops::params::{ConvParams, PoolKind, PoolParams};
use crate::spec::{
    ConvConfig, DataSpec, LayerConfig, LinearConfig, MidWidth, Spec, StageConfig, TrainSpec, Transform, output_size,
};

/// Validates `exp` (loaded from `file`) for a dataset with `class_names`.
pub fn resolve(exp: Experiment, file: &str, class_names: Vec<String>) -> Result<Spec, ConfigError> {
    let invalid =
        |key: &str, message: String| ConfigError::Invalid { path: file.to_string(), key: key.into(), message };

    let d = &exp.data;
    if !(0.0..1.0).contains(&d.val_fraction) {
        return Err(invalid("data.val_fraction", format!("expected a fraction in [0, 1), got {}", d.val_fraction)));
    }
    if d.batch_size == 0 {
        return Err(invalid("data.batch_size", "expected at least 1".into()));
    }
    if class_names.len() < 2 {
        return Err(invalid("data.classes", format!("expected at least 2 classes, found {class_names:?}")));
    }
    let data_root = std::path::absolute(&d.root).map_err(|e| invalid("data.root", e.to_string()))?;

    let train_transforms =
        transforms(&exp.transforms.train, "transforms.train", true).map_err(|(k, m)| invalid(&k, m))?;
    let eval_transforms =
        transforms(&exp.transforms.eval, "transforms.eval", false).map_err(|(k, m)| invalid(&k, m))?;

    let input_hw = match exp.model.input {
        Some([h, w]) => (h, w),
        None => output_size(&eval_transforms).ok_or_else(|| {
            invalid(
                "model.input",
                "the eval transforms do not fix an image size: add a resize or crop, or set model.input = [h, w]"
                    .into(),
            )
        })?,
    };

    let o = &exp.optimizer;
    if o.lr.is_nan() || o.lr <= 0.0 {
        return Err(invalid("optimizer.lr", format!("expected a positive number, got {}", o.lr)));
    }
    if o.momentum < 0.0 || (o.nesterov && o.momentum == 0.0) {
        return Err(invalid("optimizer.momentum", "expected momentum >= 0, and > 0 with nesterov".into()));
    }
    if exp.train.epochs == 0 {
        return Err(invalid("train.epochs", "expected at least 1".into()));
    }

    let n_classes = class_names.len();
    let params = &exp.model.params;
    let int = |v: &Int, key: &str| -> Result<usize, ConfigError> {
        match v {
            Int::Value(n) => Ok(*n),
            Int::Ref(r) => {
                let name = r.strip_prefix('$').ok_or_else(|| {
                    invalid(key, format!("expected a whole number or a \"$name\" reference, got \"{r}\""))
                })?;
                if name == "classes" {
                    return Ok(n_classes);
                }
                let value = params.get(name).ok_or_else(|| {
                    let names: Vec<&str> = params.keys().map(String::as_str).chain(["classes"]).collect();
                    let hint =
                        super::suggest(name, &names).map(|s| format!(" (did you mean `${s}`?)")).unwrap_or_default();
                    invalid(key, format!("`${name}` is not in model.params{hint}"))
                })?;
                value.as_integer().and_then(|i| usize::try_from(i).ok()).ok_or_else(|| {
                    invalid(&format!("model.params.{name}"), format!("expected a whole number, got {value}"))
                })
            }
        }
    };
    let positive = |v: &Int, key: &str| -> Result<usize, ConfigError> {
        let n = int(v, key)?;
        if n == 0 {
            return Err(invalid(key, "expected at least 1".into()));
        }
        Ok(n)
    };

    let mut layers = Vec::with_capacity(exp.model.layers.len());
    for (i, layer) in exp.model.layers.iter().enumerate() {
        let key = |field: &str| format!("model.layers.{i}.{field}");
        layers.push(match layer {
            LayerSpec::Conv(c) => LayerConfig::Conv(ConvConfig {
                out: positive(&c.out, &key("conv.out"))?,
                kernel: positive(&c.kernel, &key("conv.kernel"))?,
                params: ConvParams {
                    stride: c.stride.as_ref().map(|v| positive(v, &key("conv.stride"))).transpose()?.unwrap_or(1),
                    padding: c.padding.as_ref().map(|v| int(v, &key("conv.padding"))).transpose()?.unwrap_or(0),
                    dilation: c.dilation.as_ref().map(|v| positive(v, &key("conv.dilation"))).transpose()?.unwrap_or(1),
                    groups: c.groups.as_ref().map(|v| positive(v, &key("conv.groups"))).transpose()?.unwrap_or(1),
                },
                bias: c.bias.unwrap_or(true),
                name: c.name.clone(),
            }),
            LayerSpec::MaxPool(p) | LayerSpec::AvgPool(p) => {
                let kind = if matches!(layer, LayerSpec::MaxPool(_)) { PoolKind::Max } else { PoolKind::Avg };
                let field = if kind == PoolKind::Max { "max_pool" } else { "avg_pool" };
                let k = positive(&p.kernel, &key(&format!("{field}.kernel")))?;
                let s =
                    p.stride.as_ref().map(|v| positive(v, &key(&format!("{field}.stride")))).transpose()?.unwrap_or(k);
                let pad =
                    p.padding.as_ref().map(|v| int(v, &key(&format!("{field}.padding")))).transpose()?.unwrap_or(0);
                if pad * 2 > k {
                    return Err(invalid(
                        &key(&format!("{field}.padding")),
                        format!("expected at most half the kernel ({k}), got {pad}"),
                    ));
                }
                LayerConfig::Pool(PoolParams { kind, kernel: (k, k), stride: (s, s), padding: (pad, pad) })
            }
            LayerSpec::Plain(plain) => plain.clone(),
            LayerSpec::Linear(l) => LayerConfig::Linear(LinearConfig {
                out: positive(&l.out, &key("linear.out"))?,
                bias: l.bias.unwrap_or(true),
                name: l.name.clone(),
            }),
            LayerSpec::Dropout(p) => {
                if !(0.0..1.0).contains(p) {
                    return Err(invalid(&key("dropout"), format!("expected a probability in [0, 1), got {p}")));
                }
                LayerConfig::Dropout(*p)
            }
            LayerSpec::Stage(st) => {
                let mid = match (&st.mid, &st.width) {
                    (Some(m), _) => MidWidth::Fixed(positive(m, &key("stage.mid"))?),
                    (None, Some(w)) => MidWidth::PerGroup(positive(w, &key("stage.width"))?),
                    (None, None) => MidWidth::PerGroup(64),
                };
                let stage = StageConfig {
                    block: st.block,
                    repeat: st.repeat.as_ref().map(|v| positive(v, &key("stage.repeat"))).transpose()?.unwrap_or(1),
                    out: positive(&st.out, &key("stage.out"))?,
                    stride: st.stride.as_ref().map(|v| positive(v, &key("stage.stride"))).transpose()?.unwrap_or(1),
                    groups: st.groups.as_ref().map(|v| positive(v, &key("stage.groups"))).transpose()?.unwrap_or(1),
                    mid,
                    downsample: st.downsample.unwrap_or_default(),
                    name: st.name.clone(),
                };
                if stage.block == BlockKind::Bottleneck {
                    stage.bottleneck_width().map_err(|m| invalid(&key("stage"), m))?;
                }
                LayerConfig::Stage(stage)
            }
        });
    }
    if layers.is_empty() {
        return Err(invalid("model.layers", "expected at least one layer".into()));
    }

    let device = exp.train.device.parse().map_err(|e: String| invalid("train.device", e))?;
    let config_toml = resolved_toml(&exp, &data_root, &class_names)
        .map_err(|e| invalid("(whole file)", format!("cannot write the resolved config: {e}")))?;
    Ok(Spec {
        name: exp.name.clone(),
        seed: exp.seed,
        data: DataSpec {
            root: data_root,
            train_dir: exp.data.train_dir.clone(),
            test_dir: (!exp.data.test_dir.is_empty()).then(|| exp.data.test_dir.clone()),
            val_fraction: exp.data.val_fraction,
            batch_size: exp.data.batch_size,
            prefetch: exp.data.prefetch,
            skip_bad: exp.data.skip_bad,
            cache: exp.data.cache,
        },
        class_names,
        train_transforms,
        eval_transforms,
        input_hw,
        layers,
        init: exp.model.init.clone(),
        freeze: exp.model.freeze.clone(),
        hparams: standard_hparams(&exp),
        optimizer: exp.optimizer,
        train: TrainSpec {
            epochs: exp.train.epochs,
            lr_schedule: exp.train.lr_schedule,
            device,
            precision: exp.train.precision,
        },
        submission: exp.submission,
        config_toml,
    })
}

/// Validates one transform pipeline; `(key, message)` on error.
fn transforms(list: &[TransformSpec], key: &str, training: bool) -> Result<Vec<Transform>, (String, String)> {
    let size = |s: &Size| match *s {
        Size::Side(n) => (n, n),
        Size::HeightWidth([h, w]) => (h, w),
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let here = format!("{key}.{i}");
        if matches!(out.last(), Some(Transform::Normalize { .. })) {
            return Err((here, "normalize must be the last transform".into()));
        }
        let t = match t {
            TransformSpec::Resize(Size::Side(n)) => Transform::ResizeShorter(*n),
            TransformSpec::Resize(s) => Transform::Resize(size(s)),
            TransformSpec::CenterCrop(s) => Transform::CenterCrop(size(s)),
            TransformSpec::RandomCrop(s) => Transform::RandomCrop(size(s)),
            TransformSpec::Hflip(p) => {
                if !(0.0..=1.0).contains(p) {
                    return Err((here, format!("expected a probability in [0, 1], got {p}")));
                }
                Transform::Hflip(*p)
            }
            TransformSpec::Normalize(NormalizeSpec::Preset(name)) => match name.as_str() {
                "imagenet" => Transform::Normalize { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] },
                other => {
                    return Err((
                        here,
                        format!("unknown preset \"{other}\"; expected \"imagenet\" or {{ mean = [..], std = [..] }}"),
                    ));
                }
            },
            TransformSpec::Normalize(NormalizeSpec::Explicit { mean, std }) => {
                if std.iter().any(|s| *s <= 0.0) {
                    return Err((here, format!("std must be positive, got {std:?}")));
                }
                Transform::Normalize { mean: *mean, std: *std }
            }
        };
        if let Transform::Resize((0, _) | (_, 0))
        | Transform::ResizeShorter(0)
        | Transform::CenterCrop((0, _) | (_, 0))
        | Transform::RandomCrop((0, _) | (_, 0)) = t
        {
            return Err((here, "sizes must be at least 1".into()));
        }
        if !training && matches!(t, Transform::RandomCrop(_) | Transform::Hflip(_)) {
            return Err((here, "random transforms belong in transforms.train, not eval".into()));
        }
        out.push(t);
    }
    Ok(out)
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
    data_root: &std::path::Path,
    classes: &[String],
) -> Result<String, toml::ser::Error> {
    let mut exp = exp.clone();
    exp.extends = None;
    exp.sweep.clear(); // a variant's config holds its own values, not the sweep
    exp.data.root = data_root.display().to_string();
    exp.data.classes = Some(classes.to_vec());
    toml::to_string_pretty(&exp)
}
