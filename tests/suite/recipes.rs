//! Training recipes against PyTorch (Debian's `python3-torch` for `/usr/bin/python3`): each
//! piece computed by ablate in float32 is compared with PyTorch in float32 and float64 on the
//! same numbers, and may be at most a small factor further from float64 than PyTorch float32.

use candle_core::{Device, Tensor, Var};
use serde_json::Value;

const TORCH: &str = r#"
import json, sys, torch
import torch.nn.functional as F
c = json.load(sys.stdin)
out = []
for eps in c["eps"]:
    r = {}
    for dtype, name in [(torch.float32, "f32"), (torch.float64, "f64")]:
        x = torch.tensor(c["logits"], dtype=dtype, requires_grad=True)
        loss = F.cross_entropy(x, torch.tensor(c["labels"]), label_smoothing=eps)
        loss.backward()
        r[name] = {"loss": loss.item(), "grad": x.grad.flatten().tolist()}
    out.append(r)
print(json.dumps(out))
"#;

/// Largest absolute difference.
fn err(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

#[test]
fn label_smoothing_is_pytorchs() {
    let (n, k) = (16usize, 7usize);
    let logits: Vec<f32> =
        (0..n * k).map(|i| 3.0 * ((i as f32) * 0.731).sin() + 0.5 * ((i * i) as f32 * 0.017).cos()).collect();
    let labels: Vec<u32> = (0..n as u32).map(|i| (i * 5 + 3) % k as u32).collect();
    let eps = [0.0, 0.1, 0.3];
    let rows: Vec<Vec<f32>> = logits.chunks(k).map(<[f32]>::to_vec).collect();
    let case = serde_json::json!({"logits": rows, "labels": labels, "eps": eps});
    let torch: Vec<Value> = serde_json::from_value(crate::common::python_json(TORCH, &case)).unwrap();
    let nums = |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect::<Vec<f64>>();

    for (&e, t) in eps.iter().zip(&torch) {
        let x = Var::from_vec(logits.clone(), (n, k), &Device::Cpu).unwrap();
        let y = Tensor::new(labels.as_slice(), &Device::Cpu).unwrap();
        let loss = ablate::cross_entropy(x.as_tensor(), &y, e).unwrap();
        let grads = loss.backward().unwrap();
        let grad: Vec<f64> =
            grads.get(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|&g| g as f64).collect();
        let ours = loss.to_scalar::<f32>().unwrap() as f64;
        let (reference, torch32) = (&t["f64"], &t["f32"]);
        let loss_err = (ours - reference["loss"].as_f64().unwrap()).abs();
        let loss_torch = (torch32["loss"].as_f64().unwrap() - reference["loss"].as_f64().unwrap()).abs();
        let grad_err = err(&grad, &nums(&reference["grad"]));
        let grad_torch = err(&nums(&torch32["grad"]), &nums(&reference["grad"]));
        println!(
            "ε = {e}: loss error {loss_err:.2e} (PyTorch f32 {loss_torch:.2e}), gradient {grad_err:.2e} ({grad_torch:.2e})"
        );
        assert!(loss_err <= 4.0 * loss_torch.max(1e-7), "ε = {e}: loss {ours} vs {}", reference["loss"]);
        assert!(
            grad_err <= 4.0 * grad_torch.max(1e-8),
            "ε = {e}: gradient error {grad_err:e}, PyTorch's {grad_torch:e}"
        );
    }
}

const CLIP: &str = r#"
import json, sys, torch
c = json.load(sys.stdin)
out = []
for max_norm in c["max_norm"]:
    r = {}
    for dtype, name in [(torch.float32, "f32"), (torch.float64, "f64")]:
        ps = []
        for g in c["grads"]:
            p = torch.zeros(len(g), dtype=dtype, requires_grad=True)
            p.grad = torch.tensor(g, dtype=dtype)
            ps.append(p)
        total = torch.nn.utils.clip_grad_norm_(ps, max_norm)
        r[name] = {"total": total.item(), "grads": [x for p in ps for x in p.grad.tolist()]}
    out.append(r)
print(json.dumps(out))
"#;

#[test]
fn clip_grad_norm_is_pytorchs() {
    let sizes = [12usize, 5, 12];
    let grads: Vec<Vec<f32>> = sizes
        .iter()
        .enumerate()
        .map(|(t, &n)| (0..n).map(|i| 0.37 * ((i * 7 + t * 13) as f32 * 0.61).sin() * (t + 1) as f32).collect())
        .collect();
    let max_norm = [0.5, 2.0, 1e9];
    let case = serde_json::json!({"grads": grads, "max_norm": max_norm});
    let torch: Vec<Value> = serde_json::from_value(crate::common::python_json(CLIP, &case)).unwrap();
    let nums = |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect::<Vec<f64>>();

    for (&max, t) in max_norm.iter().zip(&torch) {
        // Parameters whose gradients are the given numbers: d/dx sum(x * c) = c.
        let vars: Vec<(String, Var)> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (format!("p{i}"), Var::zeros(n, candle_core::DType::F32, &Device::Cpu).unwrap()))
            .collect();
        let mut loss = Tensor::zeros((), candle_core::DType::F32, &Device::Cpu).unwrap();
        for ((_, v), g) in vars.iter().zip(&grads) {
            let c = Tensor::new(g.as_slice(), &Device::Cpu).unwrap();
            loss = (loss + (v.as_tensor() * c).unwrap().sum_all().unwrap()).unwrap();
        }
        let mut store = loss.backward().unwrap();
        let opt = ablate::Optimizer::new(toml::from_str("kind = \"sgd\"").unwrap(), vars.clone());
        let total = opt.clip_grad_norm(&mut store, max).unwrap();
        let ours: Vec<f64> =
            vars.iter().flat_map(|(_, v)| store.get(v).unwrap().to_vec1::<f32>().unwrap()).map(|g| g as f64).collect();
        let (reference, torch32) = (&t["f64"], &t["f32"]);
        let total_err = (total - reference["total"].as_f64().unwrap()).abs();
        let total_torch = (torch32["total"].as_f64().unwrap() - reference["total"].as_f64().unwrap()).abs();
        let grad_err = err(&ours, &nums(&reference["grads"]));
        let grad_torch = err(&nums(&torch32["grads"]), &nums(&reference["grads"]));
        println!(
            "max_norm {max}: norm error {total_err:.2e} (PyTorch f32 {total_torch:.2e}), gradients {grad_err:.2e} ({grad_torch:.2e})"
        );
        assert!(total_err <= 4.0 * total_torch.max(1e-6), "max_norm {max}: norm {total} vs {}", reference["total"]);
        assert!(
            grad_err <= 4.0 * grad_torch.max(1e-7),
            "max_norm {max}: gradient error {grad_err:e}, PyTorch's {grad_torch:e}"
        );
    }
}

/// `train.clip_grad_norm` acts on every step: a norm no gradient reaches changes nothing (bit
/// for bit), a tiny one changes the weights; a norm that is not positive is refused.
#[test]
fn clip_grad_norm_is_applied_in_training() {
    use crate::common::{color_folder, experiment, only_run, run_in};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 6, 1, 3);
    let exp = experiment(tmp.path(), &data, 1);
    let weights = |name: &str, set: &[&str]| {
        let runs = tmp.path().join(name);
        let mut c = run_in(&exp, &runs);
        for s in set {
            c.args(["--set", s]);
        }
        c.assert().success();
        std::fs::read(only_run(&runs).join("checkpoints/last.safetensors")).unwrap()
    };
    let plain = weights("plain", &[]);
    assert_eq!(weights("loose", &["train.clip_grad_norm=1e9"]), plain);
    assert_ne!(weights("tight", &["train.clip_grad_norm=1e-6"]), plain);
    run_in(&exp, &tmp.path().join("bad"))
        .args(["--set", "train.clip_grad_norm=0"])
        .assert()
        .failure()
        .stderr(predicates::str::contains("`train.clip_grad_norm`: expected a positive norm, got 0"));
}

const SCHEDULES: &str = r#"
import json, sys, torch
c = json.load(sys.stdin)
spe, epochs, base = c["steps_per_epoch"], c["epochs"], c["lr"]
out = {}
def run(name, make, per_step):
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=base)
    sched = make(opt)
    lrs = []
    for step in range(spe * epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if per_step or (step + 1) % spe == 0:
            sched.step()
    out[name] = lrs
run("exponential", lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.8), False)
run("multistep", lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[1, 3], gamma=0.5), False)
run("one_cycle", lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=base, total_steps=spe * epochs, cycle_momentum=False), True)
run("one_cycle_custom", lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=base, total_steps=spe * epochs, pct_start=0.5, div_factor=10.0, final_div_factor=100.0, cycle_momentum=False), True)
print(json.dumps(out))
"#;

/// `exponential`, `multistep` and `one_cycle` give PyTorch's schedulers' rate at every step
/// (the epoch schedulers stepped once an epoch, OneCycleLR every step).
#[test]
fn schedules_are_pytorchs_step_by_step() {
    let (spe, epochs, lr) = (3usize, 5usize, 0.1f64);
    let case = serde_json::json!({"steps_per_epoch": spe, "epochs": epochs, "lr": lr});
    let torch = crate::common::python_json(SCHEDULES, &case);
    for (name, toml_text) in [
        ("exponential", "kind = \"exponential\"\ngamma = 0.8"),
        ("multistep", "kind = \"multistep\"\nmilestones = [1, 3]\ngamma = 0.5"),
        ("one_cycle", "kind = \"one_cycle\""),
        ("one_cycle_custom", "kind = \"one_cycle\"\npct_start = 0.5\ndiv_factor = 10.0\nfinal_div_factor = 100.0"),
    ] {
        let schedule: ablate::ScheduleConfig = toml::from_str(toml_text).unwrap();
        let ours: Vec<f64> = (0..spe * epochs).map(|step| ablate::lr_at(lr, &schedule, step, spe, epochs)).collect();
        let theirs: Vec<f64> = torch[name].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        for (step, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert!(
                (a - b).abs() <= 1e-12 * b.abs().max(1e-12),
                "{name} step {step}: ablate {a}, PyTorch {b}\n{ours:?}\n{theirs:?}"
            );
        }
    }
}

const GROUPS: &str = r#"
import json, sys, torch
c = json.load(sys.stdin)
out = {}
for kind in ["adamw", "adam", "sgd"]:
    r = {}
    for dtype, name in [(torch.float32, "f32"), (torch.float64, "f64")]:
        params = {k: torch.tensor(v["value"], dtype=dtype, requires_grad=True) for k, v in c["params"].items()}
        groups = []
        for k, p in params.items():
            rank = len(c["params"][k]["shape"])
            exempt = k.endswith(".bias") or rank <= 1
            mult = 0.1 if k.startswith("features") else 1.0
            groups.append({"params": [p], "weight_decay": 0.0 if exempt else 0.5, "lr": 0.1 * mult})
        if kind == "adamw":
            opt = torch.optim.AdamW(groups, lr=0.1)
        elif kind == "adam":
            opt = torch.optim.Adam(groups, lr=0.1)
        else:
            opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
        for _ in range(3):
            opt.zero_grad()
            sum((p.reshape(-1) ** 2).sum() / 2 for p in params.values()).backward()
            opt.step()
        r[name] = {k: p.detach().reshape(-1).tolist() for k, p in params.items()}
    out[kind] = r
print(json.dumps(out))
"#;

/// `optimizer.no_decay = ["bias", "norm"]` and `optimizer.lr_mult` make PyTorch's parameter
/// groups: three steps of AdamW, Adam and SGD with momentum equal PyTorch's with one group
/// per parameter, within PyTorch float32's distance to float64.
#[test]
fn parameter_groups_are_pytorchs() {
    let shapes: [(&str, Vec<usize>); 5] = [
        ("features.0.weight", vec![3, 4]),
        ("features.0.bias", vec![3]),
        ("bn.weight", vec![3]),
        ("fc.weight", vec![2, 3]),
        ("fc.bias", vec![2]),
    ];
    let values: Vec<Vec<f32>> = shapes
        .iter()
        .enumerate()
        .map(|(t, (_, s))| (0..s.iter().product::<usize>()).map(|i| ((i * 3 + t * 7) as f32 * 0.77).sin()).collect())
        .collect();
    let params: serde_json::Map<String, Value> = shapes
        .iter()
        .zip(&values)
        .map(|((n, s), v)| (n.to_string(), serde_json::json!({"shape": s, "value": v})))
        .collect();
    let case = serde_json::json!({ "params": params });
    let torch = crate::common::python_json(GROUPS, &case);
    let nums = |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect::<Vec<f64>>();
    for kind in ["adamw", "adam", "sgd"] {
        let cfg: ablate::OptimizerConfig = toml::from_str(&format!(
            "kind = \"{kind}\"\nlr = 0.1\nweight_decay = 0.5\nmomentum = {}\nno_decay = [\"bias\", \"norm\"]\nlr_mult = {{ features = 0.1 }}",
            if kind == "sgd" { 0.9 } else { 0.0 }
        ))
        .unwrap();
        let vars: Vec<(String, Var)> = shapes
            .iter()
            .zip(&values)
            .map(|((n, s), v)| (n.to_string(), Var::from_vec(v.clone(), s.as_slice(), &Device::Cpu).unwrap()))
            .collect();
        let mut opt = ablate::Optimizer::new(cfg, vars.clone());
        for _ in 0..3 {
            let mut loss = Tensor::zeros((), candle_core::DType::F32, &Device::Cpu).unwrap();
            for (_, v) in &vars {
                loss = (loss + (v.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap()).unwrap();
            }
            opt.step(&loss.backward().unwrap(), 0.1).unwrap();
        }
        for (name, v) in &vars {
            let ours: Vec<f64> =
                v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|&x| x as f64).collect();
            let reference = nums(&torch[kind]["f64"][name.as_str()]);
            let (e, t) = (err(&ours, &reference), err(&nums(&torch[kind]["f32"][name.as_str()]), &reference));
            assert!(
                e <= 4.0 * t.max(1e-7),
                "{kind} {name}: error {e:e}, PyTorch f32's {t:e}\nours {ours:?}\nf64 {reference:?}"
            );
        }
    }
}

/// `predict.tta = ["hflip"]`: the submission's probabilities are the mean of the model's on
/// each test image and on the image mirrored (here mirrored on disk with the image crate, and
/// predicted by a run that trained the same weights without TTA).
#[test]
fn hflip_tta_averages_the_image_and_its_mirror() {
    use crate::common::{ablate, color_folder, experiment, only_run, run_in};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 6, 5, 3);
    let exp = experiment(tmp.path(), &data, 2);
    let probs = ["--set", "submission.probs=true"];
    let plain = tmp.path().join("plain");
    run_in(&exp, &plain).args(probs).assert().success();
    let tta = tmp.path().join("tta");
    run_in(&exp, &tta).args(probs).args(["--set", "predict.tta=[\"hflip\"]"]).assert().success();
    let (plain, tta) = (only_run(&plain), only_run(&tta));
    assert_eq!(
        std::fs::read(plain.join("checkpoints/best.safetensors")).unwrap(),
        std::fs::read(tta.join("checkpoints/best.safetensors")).unwrap(),
        "TTA does not change training"
    );
    let mirrored = tmp.path().join("mirrored");
    std::fs::create_dir_all(&mirrored).unwrap();
    for i in 0..5 {
        let img = image::open(data.join(format!("test/{i}.png"))).unwrap().to_rgb8();
        image::imageops::flip_horizontal(&img).save(mirrored.join(format!("{i}.png"))).unwrap();
    }
    let out = tmp.path().join("mirrored.csv");
    ablate().arg("predict").arg(&plain).arg("--data").arg(&mirrored).arg("--out").arg(&out).assert().success();
    let rows = |path: &std::path::Path| -> Vec<(usize, Vec<f64>)> {
        let text = std::fs::read_to_string(path).unwrap();
        text.lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f[1].parse().unwrap(), f[2..].iter().map(|p| p.parse().unwrap()).collect())
            })
            .collect()
    };
    let (a, b, t) = (rows(&plain.join("submission.csv")), rows(&out), rows(&tta.join("submission.csv")));
    for ((a, b), (class, mean)) in a.iter().zip(&b).zip(&t) {
        let expected: Vec<f64> = a.1.iter().zip(&b.1).map(|(x, y)| (x + y) / 2.0).collect();
        assert!(mean.iter().zip(&expected).all(|(m, e)| (m - e).abs() < 1e-6), "{mean:?} vs {expected:?}");
        assert_eq!(*class, usize::from(mean[1] > mean[0]));
    }
    assert!(a.iter().zip(&b).any(|(x, y)| (x.1[0] - y.1[0]).abs() > 1e-4), "the mirror changes the outputs");
}

/// `predict.validate = true` validates with the test-time augmentation: each epoch's val
/// metrics, the best epoch and `val_predictions.csv` (whose accuracy is the best epoch's); the
/// weights trained are the same as without it.
#[test]
fn validation_with_tta_scores_the_averaged_predictions() {
    use crate::common::{color_folder, experiment, only_run, run_in};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 12, 0, 8);
    let exp = experiment(tmp.path(), &data, 3);
    let common = ["--set", "predict.tta=[\"hflip\"]", "--set", "data.test_dir=\"\""];
    let (plain, tta) = (tmp.path().join("plain"), tmp.path().join("tta"));
    run_in(&exp, &plain).args(common).assert().success();
    run_in(&exp, &tta).args(common).args(["--set", "predict.validate=true"]).assert().success();
    let (plain, tta) = (only_run(&plain), only_run(&tta));
    assert_eq!(
        std::fs::read(plain.join("checkpoints/last.safetensors")).unwrap(),
        std::fs::read(tta.join("checkpoints/last.safetensors")).unwrap(),
        "validating with TTA does not change training"
    );
    let (a, b) = (
        ablate::read_metrics(&plain.join("metrics.csv")).unwrap(),
        ablate::read_metrics(&tta.join("metrics.csv")).unwrap(),
    );
    assert!(a.iter().zip(&b).all(|(x, y)| x.val_loss != y.val_loss), "TTA changes every epoch's validation loss");
    let best = b.iter().filter_map(|m| m.val_acc).fold(0.0, f64::max);
    let text = std::fs::read_to_string(tta.join("val_predictions.csv")).unwrap();
    let rows: Vec<(usize, usize)> = text
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[1].parse().unwrap(), f[2].parse().unwrap())
        })
        .collect();
    let acc = rows.iter().filter(|(l, p)| l == p).count() as f64 / rows.len() as f64;
    assert!((acc - best).abs() < 1e-12, "val_predictions.csv scores {acc}, the best epoch {best}");
}

/// `predict.tta` with an eval pipeline: each image's probabilities are the mean of the model's
/// through the eval transforms and through the listed pipeline (here a 20x20 resize cropped to
/// 16x16). Without a hold-out every run keeps the same weights, so the runs that evaluate
/// through either pipeline alone give the two terms.
#[test]
fn pipeline_tta_averages_the_eval_pipeline_and_the_listed_one() {
    use crate::common::{color_folder, experiment, only_run, run_in};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 6, 5, 11);
    let exp = experiment(tmp.path(), &data, 2);
    let other = "[{ resize = [20, 20] }, { center_crop = [16, 16] }, { normalize = \"imagenet\" }]";
    let common = ["--set", "submission.probs=true", "--set", "data.val_fraction=0.0"];
    let (plain, through, tta) = (tmp.path().join("plain"), tmp.path().join("through"), tmp.path().join("tta"));
    run_in(&exp, &plain).args(common).assert().success();
    run_in(&exp, &through).args(common).args(["--set", &format!("transforms.eval={other}")]).assert().success();
    run_in(&exp, &tta).args(common).args(["--set", &format!("predict.tta=[{other}]")]).assert().success();
    let probs = |run: &std::path::Path| -> Vec<Vec<f64>> {
        let text = std::fs::read_to_string(only_run(run).join("submission.csv")).unwrap();
        text.lines().skip(1).map(|l| l.split(',').skip(2).map(|p| p.parse().unwrap()).collect()).collect()
    };
    let (a, b, t) = (probs(&plain), probs(&through), probs(&tta));
    assert!(a.iter().zip(&b).any(|(x, y)| (x[0] - y[0]).abs() > 1e-4), "the other pipeline changes the outputs");
    for ((a, b), t) in a.iter().zip(&b).zip(&t) {
        for ((x, y), m) in a.iter().zip(b).zip(t) {
            assert!((m - (x + y) / 2.0).abs() < 1e-6, "{m} is not the mean of {x} and {y}");
        }
    }
    // A pipeline that does not make the model's input is refused before training.
    let bad = tmp.path().join("bad");
    run_in(&exp, &bad).args(["--set", "predict.tta=[[{ resize = [20, 20] }]]"]).assert().failure().stderr(
        predicates::prelude::PredicateBooleanExt::and(
            predicates::str::contains("predict.tta.0"),
            predicates::str::contains("must end at the model's input, 16x16"),
        ),
    );
}
