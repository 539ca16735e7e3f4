//! The recipe pieces that keep state across steps and epochs, against their references:
//! `lr_schedule.kind = "plateau"` against PyTorch's `ReduceLROnPlateau`, `train.ema` against
//! timm's `ModelEmaV2` / `ModelEmaV3`, `train.accumulate` against one larger batch, early
//! stopping against Lightning's rule; and a run with all of them resumes bit-identically.

use std::collections::HashMap;

use ablate::watch::{EarlyStop, Plateau};
use candle_core::{Device, Tensor};
use serde_json::{Value, json};

use crate::common::{ablate, color_folder, experiment, only_run, run_in};

const PLATEAU: &str = r#"
import json, sys, torch
c = json.load(sys.stdin)
out = []
for case in c["cases"]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=c["lr"])
    s = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=case["mode"], factor=case["factor"],
        patience=case["patience"], threshold=case["threshold"], threshold_mode=case["threshold_mode"],
        cooldown=case["cooldown"], min_lr=case["min_lr"])
    lrs = []
    for v in c["values"][case["mode"]]:
        s.step(v)
        lrs.append(opt.param_groups[0]["lr"])
    out.append(lrs)
print(json.dumps(out))
"#;

/// The plateau schedule reduces the rate at the epochs `ReduceLROnPlateau` does, to the same
/// rates, for losses and accuracies, relative and absolute thresholds, cooldowns and floors.
#[test]
fn plateau_is_pytorchs_reduce_lr_on_plateau() {
    let n = 40;
    let loss: Vec<f64> = (0..n).map(|i| 1.0 / (1.0 + 0.1 * i as f64) + 0.06 * (i as f64 * 1.7).sin()).collect();
    let acc: Vec<f64> = loss.iter().map(|l| 1.0 - l / 2.0).collect();
    // (monitor, factor, patience, threshold, mode, cooldown, min_lr)
    let cases = [
        ("val/loss", 0.5, 2, 1e-4, "rel", 0, 0.0),
        ("val/acc", 0.1, 1, 0.01, "abs", 2, 1e-4),
        ("train/loss", 0.3, 0, 0.1, "rel", 0, 0.002),
        ("val/macro_f1", 0.7, 1, 0.02, "rel", 1, 0.0),
    ];
    let py_cases: Vec<Value> = cases
        .iter()
        .map(|&(m, f, p, t, tm, c, min)| {
            let mode = if m.ends_with("loss") { "min" } else { "max" };
            json!({"mode": mode, "factor": f, "patience": p, "threshold": t, "threshold_mode": tm, "cooldown": c, "min_lr": min})
        })
        .collect();
    let torch = crate::common::python_json(
        PLATEAU,
        &json!({"lr": 0.1, "cases": py_cases, "values": {"min": loss, "max": acc}}),
    );
    for (&(monitor, factor, patience, threshold, mode, cooldown, min_lr), theirs) in
        cases.iter().zip(torch.as_array().unwrap())
    {
        let cfg: ablate::ScheduleConfig = toml::from_str(&format!(
            "kind = \"plateau\"\nmonitor = \"{monitor}\"\ngamma = {factor}\npatience = {patience}\nthreshold = {threshold}\nthreshold_mode = \"{mode}\"\ncooldown = {cooldown}\nmin_lr = {min_lr}"
        ))
        .unwrap();
        let values = if monitor.ends_with("loss") { &loss } else { &acc };
        let mut p = Plateau::default();
        let ours: Vec<f64> = values
            .iter()
            .map(|&v| {
                p.step(&cfg, 0.1, v);
                p.lr.unwrap_or(0.1)
            })
            .collect();
        let theirs: Vec<f64> = theirs.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let reductions = theirs.windows(2).filter(|w| w[1] < w[0]).count();
        println!(
            "{monitor} ({mode}, patience {patience}, cooldown {cooldown}): {reductions} reductions, final lr {:.3e}",
            ours[n - 1]
        );
        assert!(reductions >= 1, "the case must reduce at least once to test anything");
        assert_eq!(ours, theirs, "{monitor}: the rates after each epoch differ from ReduceLROnPlateau's");
    }
}

/// Lightning's `EarlyStopping` rule (`_evaluate_stopping_criteria`): an epoch improves when it
/// beats the best by more than `min_delta` (strictly), else the wait grows; training stops when
/// the wait reaches `patience`, or at once on a non-finite value. (Lightning itself cannot be
/// imported beside Debian's PyTorch 1.13 on Python 3.11: its `torch.distributed` import
/// fails, so the rule is spelled out here.)
#[test]
fn early_stopping_follows_lightnings_rule() {
    let cfg = |monitor: &str, patience: usize, min_delta: f64| -> ablate::EarlyStoppingConfig {
        toml::from_str(&format!("monitor = \"{monitor}\"\npatience = {patience}\nmin_delta = {min_delta}")).unwrap()
    };
    let stop_epoch = |c: &ablate::EarlyStoppingConfig, values: &[f64]| {
        let mut e = EarlyStop::default();
        values.iter().position(|&v| e.step(c, v).is_some()).map(|i| i + 1)
    };
    // Loss: 0.5 is not better than 0.5 (strict), 0.495 is not better by more than 0.01.
    let c = cfg("val/loss", 2, 0.01);
    assert_eq!(stop_epoch(&c, &[1.0, 0.5, 0.5, 0.495, 0.3]), Some(4));
    assert_eq!(stop_epoch(&c, &[1.0, 0.5, 0.5, 0.48, 0.479, 0.3]), None, "0.48 improves on 0.5 by more than 0.01");
    // Accuracy goes up; patience 1 stops at the first epoch without improvement.
    let c = cfg("val/acc", 1, 0.0);
    assert_eq!(stop_epoch(&c, &[0.5, 0.6, 0.6]), Some(3));
    assert_eq!(stop_epoch(&c, &[0.5, 0.6, 0.61, 0.62]), None);
    let mut e = EarlyStop::default();
    assert!(e.step(&cfg("val/loss", 5, 0.0), f64::NAN).unwrap().contains("not finite"));
}

const EMA: &str = r#"
import json, sys, torch
from timm.utils.model_ema import ModelEmaV2, ModelEmaV3
c = json.load(sys.stdin)
out = {}
for dtype, name in [(torch.float32, "f32"), (torch.float64, "f64")]:
    def model(state):
        m = torch.nn.Module()
        m.conv1 = torch.nn.Conv2d(3, 2, 3, padding=1)
        m.bn1 = torch.nn.BatchNorm2d(2)
        m.fc = torch.nn.Linear(2 * 4 * 4, 2)
        m.to(dtype)
        m.load_state_dict({k: torch.tensor(v, dtype=torch.int64 if k.endswith("num_batches_tracked") else dtype) for k, v in state.items()})
        return m
    live = model(c["states"][0])
    v2, v3 = ModelEmaV2(live, decay=c["decay"]), ModelEmaV3(live, decay=c["decay"], use_warmup=True)
    for step, state in enumerate(c["states"][1:], start=1):
        live.load_state_dict(model(state).state_dict())
        v2.update(live)
        v3.update(live, step=step)
    floats = lambda m: {k: v.flatten().tolist() for k, v in m.module.state_dict().items() if v.is_floating_point()}
    out[name] = {"v2": floats(v2), "v3": floats(v3)}
print(json.dumps(out))
"#;

/// `train.ema` averages every float tensor of the state (parameters and BatchNorm's running
/// statistics) as timm's `ModelEmaV2`, and with `warmup` as `ModelEmaV3(use_warmup=True)`:
/// no further from a float64 average than timm's float32 one.
#[test]
fn the_weights_average_is_timms() {
    let spec = crate::common::spec_at_layers(
        "[{ conv = { out = 2, kernel = 3, padding = 1 } }, \"batch_norm\", \"relu\", { max_pool = { kernel = 2 } }, { linear = { out = 2 } }]",
        8,
    );
    let model = ablate::Model::build(&spec.layers, spec.input_hw, 1, &Device::Cpu).unwrap();
    let names: Vec<String> = model.state_dict().keys().cloned().collect();
    assert!(names.contains(&"bn1.running_mean".to_string()) && names.contains(&"fc.weight".to_string()), "{names:?}");
    // Six states of the model, as if six optimizer steps had moved it.
    let states: Vec<HashMap<String, Tensor>> = (0..7)
        .map(|s| {
            model
                .state_dict()
                .into_iter()
                .map(|(k, t)| {
                    let n = t.elem_count();
                    let t = if t.dtype().is_float() {
                        let v: Vec<f32> =
                            (0..n).map(|i| ((i * 31 + s * 17) % 23) as f32 / 7.0 - 1.5 + s as f32 * 0.1).collect();
                        Tensor::from_vec(v, t.shape(), &Device::Cpu).unwrap()
                    } else {
                        Tensor::new(s as i64, &Device::Cpu).unwrap()
                    };
                    (k, t)
                })
                .collect()
        })
        .collect();
    let as_json = |state: &HashMap<String, Tensor>| -> Value {
        state
            .iter()
            .map(|(k, t)| {
                let v = if t.dtype().is_float() {
                    json!(t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                } else {
                    json!(t.to_scalar::<i64>().unwrap())
                };
                // PyTorch's shapes: the JSON lists are reshaped by the same dims.
                (k.clone(), reshape(v, t.dims()))
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let decay = 0.8;
    let timm = crate::common::timm_json(
        EMA,
        &json!({"decay": decay, "states": states.iter().map(as_json).collect::<Vec<_>>()}),
    );
    for (kind, warmup) in [("v2", false), ("v3", true)] {
        model.load_state_dict(&states[0], "state 0").unwrap();
        let mut ema = ablate::Ema::new(ablate::EmaConfig { decay, warmup }, &model).unwrap();
        for (step, state) in states.iter().enumerate().skip(1) {
            model.load_state_dict(state, "a state").unwrap();
            ema.update(&model, step).unwrap();
        }
        let ours = ema.tensors();
        for (name, reference) in timm["f64"][kind].as_object().unwrap() {
            let ours: Vec<f64> =
                ours[name].flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|&v| v as f64).collect();
            let reference: Vec<f64> = reference.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            let theirs: Vec<f64> =
                timm["f32"][kind][name].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            let err = |a: &[f64]| a.iter().zip(&reference).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
            let (e, et) = (err(&ours), err(&theirs));
            assert!(e <= 4.0 * et.max(1e-7), "{kind} {name}: error {e:e} against float64, timm float32's {et:e}");
        }
        println!("{kind}: {} float tensors equal timm's", timm["f64"][kind].as_object().unwrap().len());
    }
}

/// A flat JSON list as nested lists of `dims`.
fn reshape(v: Value, dims: &[usize]) -> Value {
    let Some(flat) = v.as_array() else { return v };
    if dims.len() <= 1 {
        return v;
    }
    let inner: usize = dims[1..].iter().product();
    Value::Array(flat.chunks(inner).map(|c| reshape(Value::Array(c.to_vec()), &dims[1..])).collect())
}

/// Weights of a run's `last.safetensors`.
fn weights(run: &std::path::Path) -> HashMap<String, Vec<f32>> {
    let t = candle_core::safetensors::load(run.join("checkpoints/last.safetensors"), &Device::Cpu).unwrap();
    t.into_iter()
        .filter(|(_, t)| t.dtype().is_float())
        .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

/// `train.accumulate = 3` with batches of 2 trains to the weights of batches of 6 (no
/// BatchNorm, whose statistics are per batch): the same images, the same steps and learning
/// rates, the gradient summed in another order. The last group of an epoch is smaller, and
/// weighs its images the same way.
#[test]
fn accumulating_gradients_equals_one_larger_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 10, 0, 3);
    let exp = experiment(tmp.path(), &data, 2);
    let common = [
        "--set",
        "model.layers=[{ conv = { out = 4, kernel = 3, padding = 1 } }, \"relu\", { max_pool = { kernel = 2 } }, { linear = { out = \"$classes\" } }]",
        "--set",
        "train.lr_schedule={ kind = \"cosine\", warmup_epochs = 1 }",
        "--set",
        "optimizer.kind=\"sgd\"",
        "--set",
        "optimizer.momentum=0.9",
        "--set",
        "data.test_dir=\"\"",
    ];
    let (big, small, plain) = (tmp.path().join("big"), tmp.path().join("small"), tmp.path().join("plain"));
    run_in(&exp, &big).args(common).args(["--set", "data.batch_size=6"]).assert().success();
    run_in(&exp, &small)
        .args(common)
        .args(["--set", "data.batch_size=2", "--set", "train.accumulate=3"])
        .assert()
        .success();
    run_in(&exp, &plain).args(common).args(["--set", "data.batch_size=2"]).assert().success();
    let (b, s, p) = (weights(&only_run(&big)), weights(&only_run(&small)), weights(&only_run(&plain)));
    let diff = |x: &HashMap<String, Vec<f32>>| -> f32 {
        b.iter().flat_map(|(k, v)| v.iter().zip(&x[k]).map(|(a, c)| (a - c).abs())).fold(0.0, f32::max)
    };
    println!("largest difference from batches of 6: accumulated {:.2e}, batches of 2 {:.2e}", diff(&s), diff(&p));
    assert!(diff(&s) < 1e-5, "accumulated weights differ by {}", diff(&s));
    assert!(diff(&p) > 1e-3, "batches of 2 without accumulation must train differently");
}

/// Accumulation, the weights' average, the plateau schedule and early stopping (with mixing
/// and augmentation) resume to exactly the uninterrupted run: every one's state is in the
/// checkpoint. The run stops early, and says so in its log and in runs.csv and summary.md.
#[test]
fn a_run_with_every_stateful_piece_resumes_bit_identically_and_stops_early() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 12, 3, 41);
    let exp = experiment(tmp.path(), &data, 12);
    let set = [
        "--set",
        "transforms.train=[{ resize = [18, 18] }, { random_resized_crop = { size = 16, scale = [0.5, 1.0] } }, { hflip = 0.5 }, { color_jitter = { brightness = 0.3 } }, { normalize = \"imagenet\" }]",
        "--set",
        "train.mixup=0.4",
        "--set",
        "train.accumulate=2",
        "--set",
        "train.ema={ decay = 0.9, warmup = true }",
        "--set",
        "train.lr_schedule={ kind = \"plateau\", monitor = \"train/loss\", patience = 0, threshold = 0.5 }",
        "--set",
        "train.early_stopping={ monitor = \"val/acc\", patience = 2 }",
        "--set",
        "data.batch_size=4",
    ];
    let straight = tmp.path().join("straight");
    run_in(&exp, &straight).args(set).assert().success();
    let reference = only_run(&straight);
    let log = std::fs::read_to_string(reference.join("log.txt")).unwrap();
    assert!(log.contains("plateau: train/loss has not improved"), "{log}");
    let stopped = log.lines().find(|l| l.contains("early stopping after epoch")).expect("the run stops early");
    println!("{stopped}");
    let rows = ablate::read_runs(&reference.join("runs.csv")).unwrap();
    assert!(rows[0].stopped_early.as_deref().is_some_and(|r| r.contains("val/acc did not improve")), "{rows:?}");
    let summary = std::fs::read_to_string(reference.join("summary.md")).unwrap();
    assert!(summary.contains("ok (1 of 1 stopped early)"), "{summary}");
    let epochs = ablate::read_metrics(&reference.join("metrics.csv")).unwrap().len();
    assert!(epochs < 12, "early stopping left {epochs} epochs");

    // 18 training images in batches of 4: 5 batches, 3 optimizer steps an epoch. Stop in
    // epoch 2 (after its first group), then in a later epoch, then finish.
    let cut = tmp.path().join("cut");
    run_in(&exp, &cut).args(set).args(["--stop-after-steps", "6"]).assert().code(130);
    let run = only_run(&cut);
    ablate().arg("resume").arg(&run).args(["--stop-after-steps", "7"]).assert().code(130);
    ablate().arg("resume").arg(&run).assert().success();
    for f in ["checkpoints/last.safetensors", "checkpoints/best.safetensors", "submission.csv"] {
        assert!(
            std::fs::read(reference.join(f)).unwrap() == std::fs::read(run.join(f)).unwrap(),
            "{f} differs after resume"
        );
    }
    let current = std::fs::read_to_string(reference.join("checkpoints/CURRENT")).unwrap();
    let ema = reference.join("checkpoints").join(current.trim()).join("ema.safetensors");
    assert!(ema.exists(), "the average is committed with the weights");
    // best.safetensors holds the average's weights, not the live ones.
    assert!(
        std::fs::read(reference.join("checkpoints/best.safetensors")).unwrap()
            != std::fs::read(reference.join("checkpoints/last.safetensors")).unwrap()
    );
    let strip = |dir: &std::path::Path| -> Vec<(usize, f64, Option<f64>)> {
        ablate::read_metrics(&dir.join("metrics.csv"))
            .unwrap()
            .iter()
            .map(|m| (m.epoch, m.train_loss, m.val_acc))
            .collect()
    };
    assert_eq!(strip(&reference), strip(&run));
}

/// All tensors of a run's `last.safetensors` (counters as f32).
fn state(run: &std::path::Path) -> HashMap<String, Vec<f32>> {
    let t = candle_core::safetensors::load(run.join("checkpoints/last.safetensors"), &Device::Cpu).unwrap();
    t.into_iter()
        .map(|(k, t)| {
            (k, t.to_dtype(candle_core::DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap())
        })
        .collect()
}

/// `model.freeze` keeps the frozen layers exactly as they were, BatchNorm's running statistics
/// included (its layers run in evaluation mode); with `unfreeze_epoch`, they train from that
/// epoch on (fastai's `fine_tune`), and the log says when.
#[test]
fn frozen_layers_and_their_batchnorm_stay_put_until_unfrozen() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 8, 0, 9);
    let exp = experiment(tmp.path(), &data, 3);
    let layers = [
        "--set",
        "model.layers=[{ conv = { out = 4, kernel = 3, padding = 1 } }, \"batch_norm\", \"relu\", { conv = { out = 4, kernel = 3, padding = 1 } }, \"batch_norm\", \"relu\", \"global_avg_pool\", { linear = { out = \"$classes\" } }]",
        "--set",
        "data.test_dir=\"\"",
        "--set",
        "model.freeze=[\"conv1\", \"bn1\"]",
    ];
    let (frozen, thawed) = (tmp.path().join("frozen"), tmp.path().join("thawed"));
    run_in(&exp, &frozen).args(layers).args(["--set", "train.epochs=1"]).assert().success();
    run_in(&exp, &thawed).args(layers).args(["--set", "model.unfreeze_epoch=2"]).assert().success();
    // The initial state: the same seed, no training (a run stopped before its first step has
    // no checkpoint, so build the model the same way).
    let spec = ablate::spec_from_file(&exp, &[ablate::Override::parse(layers[1]).unwrap()], &["blue", "red"]).unwrap();
    let init = ablate::Model::build(&spec.layers, spec.input_hw, spec.seed, &Device::Cpu).unwrap();
    let init: HashMap<String, Vec<f32>> = init
        .state_dict()
        .into_iter()
        .map(|(k, t)| {
            (k, t.to_dtype(candle_core::DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap())
        })
        .collect();
    let after = state(&only_run(&frozen));
    for name in [
        "conv1.weight",
        "conv1.bias",
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
        "bn1.num_batches_tracked",
    ] {
        assert_eq!(after[name], init[name], "{name} changed while frozen");
    }
    for name in ["conv2.weight", "bn2.running_mean", "bn2.num_batches_tracked", "fc.weight"] {
        assert_ne!(after[name], init[name], "{name} must train");
    }
    let run = only_run(&thawed);
    let log = std::fs::read_to_string(run.join("log.txt")).unwrap();
    assert!(log.contains("epoch 2: every layer trains from now on (model.unfreeze_epoch = 2)"), "{log}");
    let after = state(&run);
    for name in ["conv1.weight", "bn1.weight", "bn1.running_mean"] {
        assert_ne!(after[name], init[name], "{name} must train once unfrozen");
    }
}

/// fastai 2.7's `valley` and the trimming of its `lr_find`, as written there (fastai itself
/// needs matplotlib and pandas, which Debian's PyTorch setup here lacks).
const FASTAI_VALLEY: &str = r#"
import json, sys
c = json.load(sys.stdin)
num_it = c["steps"]
losses = c["smoothed"][num_it // 10:-5]
n = len(losses)
max_start, max_end = 0, 0
lds = [1] * n
for i in range(1, n):
    for j in range(0, i):
        if (losses[i] < losses[j]) and (lds[i] < lds[j] + 1):
            lds[i] = lds[j] + 1
        if lds[max_end] < lds[i]:
            max_end = i
            max_start = max_end - lds[max_end]
sections = (max_end - max_start) / 3
idx = max_start + int(sections) + int(sections / 2)
print(json.dumps(idx + num_it // 10))
"#;

/// `ablate lr-find`: exponentially spaced rates from --start, the debiased smoothing of the
/// loss, a stop once it passes 4x its best, and fastai's `valley` suggestion, printed as a
/// --set.
#[test]
fn lr_find_tests_an_exponential_range_and_suggests_the_steepest_descent() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 30, 0, 5);
    let exp = experiment(tmp.path(), &data, 1);
    let out = tmp.path().join("lr");
    let (start, end, steps) = (1e-5f64, 1e3f64, 80);
    let assert = ablate()
        .args(["lr-find", exp.to_str().unwrap(), "--set", "data.test_dir=\"\"", "--out", out.to_str().unwrap()])
        .args(["--start", &start.to_string(), "--end", &end.to_string(), "--steps", &steps.to_string()])
        .assert()
        .success();
    let stdout = String::from_utf8(assert.get_output().stdout.clone()).unwrap();
    println!("{stdout}");
    let rows: Vec<Vec<f64>> = std::fs::read_to_string(out.join("lr_find.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert!(rows.len() > 20 && rows.len() < steps, "{} steps: the loss must diverge before {end}", rows.len());
    let ratio = (end / start).powf(1.0 / (steps - 1) as f64);
    assert_eq!(rows[0][1], start);
    for w in rows.windows(2) {
        assert!((w[1][1] / w[0][1] / ratio - 1.0).abs() < 1e-9, "rates must grow by {ratio} a step");
    }
    let mut average = 0.0;
    for (i, r) in rows.iter().enumerate() {
        average = 0.98 * average + 0.02 * r[2];
        assert!((r[3] - average / (1.0 - 0.98f64.powi(i as i32 + 1))).abs() < 1e-9 * r[3].abs().max(1.0));
    }
    let smoothed: Vec<f64> = rows.iter().map(|r| r[3]).collect();
    let at = crate::common::python_json(FASTAI_VALLEY, &json!({"smoothed": smoothed, "steps": steps})).as_u64().unwrap()
        as usize;
    let expected = format!("suggested learning rate: {:.2e}  (--set optimizer.lr={:.2e})", rows[at][1], rows[at][1]);
    assert!(stdout.contains(&expected), "expected {expected:?} in {stdout}");
    let png = std::fs::read(out.join("lr_find.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "lr_find.png is a PNG");
    // A second test into the same folder is refused: nothing is overwritten.
    ablate().args(["lr-find", exp.to_str().unwrap(), "--out", out.to_str().unwrap()]).assert().failure();
}
