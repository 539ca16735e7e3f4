//! Mixup, cutmix and class weights against their references: timm 0.9's own `Mixup` and
//! `SoftTargetCrossEntropy` (`make test` installs timm next to Debian's PyTorch), and
//! PyTorch's `F.cross_entropy(weight=, label_smoothing=)`.

use ablate::mixup::{MixDraw, MixupSpec, dominant, draw, mix_images, mix_targets};
use candle_core::{Device, Tensor, Var};
use rand::SeedableRng;
use serde_json::{Value, json};

use crate::common::{floats, max_err};

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|&v| v as f64).collect()
}

const TIMM_MIX: &str = r#"
import json, sys, torch
import timm.data.mixup as M
from timm.loss import SoftTargetCrossEntropy
c = json.load(sys.stdin)
out = []
for case in c["cases"]:
    r = {}
    for dtype, name in [(torch.float32, "f32"), (torch.float64, "f64")]:
        torch.set_default_dtype(dtype)
        x = torch.tensor(case["x"], dtype=dtype)
        logits = torch.tensor(case["logits"], dtype=dtype, requires_grad=True)
        y = torch.tensor(case["labels"])
        mix = M.Mixup(mixup_alpha=1.0, cutmix_alpha=1.0, label_smoothing=case["smoothing"], num_classes=case["classes"])
        box = case["box"]
        mix._params_per_batch = lambda: (case["lam"], box is not None)
        if box is not None:
            M.rand_bbox = lambda shape, lam, margin=0., count=None: tuple(box)
        lam = mix._mix_batch(x)
        t = M.mixup_target(y, case["classes"], lam, case["smoothing"])
        loss = SoftTargetCrossEntropy()(logits, t)
        loss.backward()
        r[name] = {"x": x.flatten().tolist(), "t": t.flatten().tolist(), "lam": lam, "loss": loss.item(),
                   "grad": logits.grad.flatten().tolist()}
    out.append(r)
print(json.dumps(out))
"#;

/// Given timm's draw (the weight, and the box for cutmix), the mixed images, the mixed and
/// smoothed targets, the corrected weight, and the soft-target loss and its gradient equal
/// timm's: no further from float64 than timm in float32.
#[test]
fn mixed_batches_targets_and_loss_are_timms() {
    let (n, h, w, k) = (4usize, 6usize, 8usize, 3usize);
    let x: Vec<f32> = (0..n * 3 * h * w).map(|i| ((i * 7919 % 997) as f32 / 997.0) * 2.0 - 1.0).collect();
    let logits: Vec<f32> = (0..n * k).map(|i| 2.0 * ((i as f32) * 0.77).sin()).collect();
    let labels = [2u32, 0, 1, 1];
    // (lam, box as (top, bottom, left, right), smoothing)
    let cases = [
        (0.7, None, 0.0),
        (0.25, None, 0.1),
        (0.0, Some((1usize, 5usize, 2usize, 7usize)), 0.1),
        (0.0, Some((0, 6, 0, 3)), 0.0),
    ];
    let shape4 = |v: &[f32]| -> Vec<Vec<Vec<Vec<f32>>>> {
        v.chunks(3 * h * w)
            .map(|img| img.chunks(h * w).map(|p| p.chunks(w).map(<[f32]>::to_vec).collect()).collect())
            .collect()
    };
    let rows: Vec<Vec<f32>> = logits.chunks(k).map(<[f32]>::to_vec).collect();
    let json_cases: Vec<Value> = cases
        .iter()
        .map(|(lam, cut, eps)| {
            json!({"x": shape4(&x), "logits": rows, "labels": labels, "classes": k, "lam": lam, "smoothing": eps,
                   "box": cut.map(|(t, b, l, r)| [t, b, l, r])})
        })
        .collect();
    let timm = crate::common::timm_json(TIMM_MIX, &json!({"cases": json_cases}));
    for ((lam, cut, eps), t) in cases.iter().zip(timm.as_array().unwrap()) {
        let (f64ref, f32ref) = (&t["f64"], &t["f32"]);
        // Our draw carries the corrected weight: take it from the box as `draw` does.
        let lam = match cut {
            Some((top, bottom, left, right)) => 1.0 - ((bottom - top) * (right - left)) as f64 / (h * w) as f64,
            None => *lam,
        };
        assert!(
            (lam - f64ref["lam"].as_f64().unwrap()).abs() < 1e-12,
            "corrected lam {lam} vs timm's {}",
            f64ref["lam"]
        );
        let d = MixDraw { lam, cut: *cut };
        let images = Tensor::from_vec(x.clone(), (n, 3, h, w), &Device::Cpu).unwrap();
        let mixed = values(&mix_images(&images, &d).unwrap());
        let targets = mix_targets(&labels, k, lam, *eps, &Device::Cpu).unwrap();
        let logit_var = Var::from_vec(logits.clone(), (n, k), &Device::Cpu).unwrap();
        let loss = ablate::soft_cross_entropy(logit_var.as_tensor(), &targets).unwrap();
        let grad = values(loss.backward().unwrap().get(&logit_var).unwrap());
        let loss = loss.to_scalar::<f32>().unwrap() as f64;
        for (what, ours, key) in
            [("images", mixed, "x"), ("targets", values(&targets), "t"), ("gradient", grad, "grad")]
        {
            let (e, et) =
                (max_err(&ours, &floats(&f64ref[key])), max_err(&floats(&f32ref[key]), &floats(&f64ref[key])));
            println!("lam {lam:.3} box {cut:?} ε {eps}: {what} error {e:.2e} (timm f32 {et:.2e})");
            assert!(e <= 4.0 * et.max(1e-7), "{what}: error {e:e}, timm f32's {et:e}");
        }
        let (e, et) = (
            (loss - f64ref["loss"].as_f64().unwrap()).abs(),
            (f32ref["loss"].as_f64().unwrap() - f64ref["loss"].as_f64().unwrap()).abs(),
        );
        assert!(e <= 4.0 * et.max(1e-7), "loss error {e:e}, timm f32's {et:e}");
    }
    assert_eq!(dominant(&labels, 0.7), labels.to_vec());
    assert_eq!(dominant(&labels, 0.3), vec![1, 1, 0, 2]);
}

const TIMM_DRAWS: &str = r#"
import json, sys, numpy as np
import timm.data.mixup as M
from scipy.stats import ks_2samp
c = json.load(sys.stdin)
np.random.seed(0)
s = c["spec"]
mix = M.Mixup(mixup_alpha=s[0], cutmix_alpha=s[1], prob=s[2], switch_prob=s[3], num_classes=2)
shape = (4, 3, c["h"], c["w"])
theirs = []
for _ in range(c["n"]):
    lam, cut = mix._params_per_batch()
    if lam == 1.0 and not cut:
        theirs.append([1.0, 0, 0, 0, 0, 0])
    elif cut:
        (yl, yh, xl, xh), lam = M.cutmix_bbox_and_lam(shape, lam)
        theirs.append([lam, 1, yl, yh, xl, xh])
    else:
        theirs.append([lam, 0, 0, 0, 0, 0])
ours = c["ours"]
# Every coordinate over all draws, then the cutmix boxes alone: their height and width.
p = [ks_2samp([t[k] for t in theirs], [o[k] for o in ours]).pvalue for k in range(6)]
side = lambda rows, a, b: [r[b] - r[a] for r in rows if r[1] == 1]
p += [ks_2samp(side(theirs, a, b), side(ours, a, b)).pvalue for (a, b) in [(2, 3), (4, 5)]]
print(json.dumps(p))
"#;

/// `draw` samples what timm's `_params_per_batch` and `cutmix_bbox_and_lam` sample: whether
/// a batch mixes, mixup or cutmix, the weight, and the box, each coordinate of 20,000 draws
/// through a two-sample KS test at p > 0.001 (numpy seeded: deterministic).
#[test]
fn mixing_draws_are_timms() {
    let n = 20_000;
    let (h, w) = (24usize, 32usize);
    let spec = MixupSpec { mixup_alpha: 0.4, cutmix_alpha: 1.0, prob: 0.8, switch_prob: 0.3 };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let ours: Vec<[f64; 6]> = (0..n)
        .map(|_| match draw(&mut rng, &spec, (h, w)) {
            None => [1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            Some(MixDraw { lam, cut: None }) => [lam, 0.0, 0.0, 0.0, 0.0, 0.0],
            Some(MixDraw { lam, cut: Some((t, b, l, r)) }) => [lam, 1.0, t as f64, b as f64, l as f64, r as f64],
        })
        .collect();
    let case = json!({"spec": [0.4, 1.0, 0.8, 0.3], "h": h, "w": w, "n": n, "ours": ours});
    let p = floats(&crate::common::timm_json(TIMM_DRAWS, &case));
    println!("KS p-values (lam, cutmix, top, bottom, left, right, box height, box width): {p:.3?}");
    assert!(p.iter().all(|&p| p > 1e-3), "a coordinate's distribution differs from timm's: {p:?}");
}

const WEIGHTED: &str = r#"
import json, sys, torch
import torch.nn.functional as F
c = json.load(sys.stdin)
out = []
for eps in c["eps"]:
    r = {}
    for dtype, name in [(torch.float32, "f32"), (torch.float64, "f64")]:
        x = torch.tensor(c["logits"], dtype=dtype, requires_grad=True)
        loss = F.cross_entropy(x, torch.tensor(c["labels"]), weight=torch.tensor(c["weights"], dtype=dtype), label_smoothing=eps)
        loss.backward()
        r[name] = {"loss": loss.item(), "grad": x.grad.flatten().tolist()}
    out.append(r)
print(json.dumps(out))
"#;

/// `train.class_weights` is PyTorch's `F.cross_entropy(weight=)`, with and without label
/// smoothing, loss and gradient.
#[test]
fn class_weighted_cross_entropy_is_pytorchs() {
    let (n, k) = (12usize, 4usize);
    let logits: Vec<f32> = (0..n * k).map(|i| 2.5 * ((i as f32) * 0.613).cos()).collect();
    let labels: Vec<u32> = (0..n as u32).map(|i| (i * 3 + i / 5) % k as u32).collect();
    let weights = ablate::balanced_class_weights([0usize, 0, 0, 0, 0, 1, 1, 2, 3, 3].into_iter(), k);
    let eps = [0.0, 0.1];
    let rows: Vec<Vec<f32>> = logits.chunks(k).map(<[f32]>::to_vec).collect();
    let torch = crate::common::python_json(
        WEIGHTED,
        &json!({"logits": rows, "labels": labels, "weights": weights, "eps": eps}),
    );
    let w = Tensor::new(weights.iter().map(|&v| v as f32).collect::<Vec<f32>>(), &Device::Cpu).unwrap();
    for (&e, t) in eps.iter().zip(torch.as_array().unwrap()) {
        let x = Var::from_vec(logits.clone(), (n, k), &Device::Cpu).unwrap();
        let y = Tensor::new(labels.as_slice(), &Device::Cpu).unwrap();
        let loss = ablate::weighted_cross_entropy(x.as_tensor(), &y, &w, e).unwrap();
        let grad = values(loss.backward().unwrap().get(&x).unwrap());
        let loss = loss.to_scalar::<f32>().unwrap() as f64;
        let (r, t32) = (&t["f64"], &t["f32"]);
        let (le, lt) = (
            (loss - r["loss"].as_f64().unwrap()).abs(),
            (t32["loss"].as_f64().unwrap() - r["loss"].as_f64().unwrap()).abs(),
        );
        let (ge, gt) = (max_err(&grad, &floats(&r["grad"])), max_err(&floats(&t32["grad"]), &floats(&r["grad"])));
        println!("ε = {e}: loss error {le:.2e} (PyTorch f32 {lt:.2e}), gradient {ge:.2e} ({gt:.2e})");
        assert!(
            le <= 4.0 * lt.max(1e-7) && ge <= 4.0 * gt.max(1e-8),
            "ε = {e}: loss {le:e}/{lt:e}, gradient {ge:e}/{gt:e}"
        );
    }
}
