//! Differential tests against PyTorch: tests/parity/reference.py (run by Debian's
//! `/usr/bin/python3` with `python3-torch`) writes inputs and PyTorch's results in float64 (the
//! truth) and float32 (the yardstick); ablate computes the same and may be at most
//! [`FACTOR`] times further from float64 than PyTorch float32 is, on every tensor (floor
//! [`FLOOR`]).
//!
//! Every convolution case runs through every algorithm of the kernel plan that can take it
//! and, for ablate's own SIMD kernels, every build this CPU has; each run asserts which
//! algorithm and build actually ran, and the table must exercise every (algorithm, pass) pair
//! the plan has. The plan timing picks (`ABLATE_TUNE=on`, the default) runs too, and must
//! equal, bit for bit, the algorithms it chose run forced.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ablate::ops::conv::plan::{self, Algo, Pass};
use ablate::ops::conv::tune::{self, Mode};
use ablate::ops::conv::{ConvParams, conv2d};
use ablate::ops::isa::{self, Isa, Level};
use ablate::ops::pool::{PoolKind, PoolParams, pool2d};
use ablate::ops::trace::Kink;
use ablate::{LayerConfig, Model};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::ModuleT;
use serde_json::Value;

/// How much further from float64 than PyTorch float32 ablate may be.
const FACTOR: f64 = 10.0;
/// Errors below this (relative to the tensor's largest value) always pass.
const FLOOR: f64 = 1e-5;

/// The Python that has PyTorch: Debian's, unless `ABLATE_PARITY_PYTHON` names another.
fn python() -> String {
    std::env::var("ABLATE_PARITY_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into())
}

/// Runs `reference.py <what> <dir>` once per test process and returns the directory (and
/// turns on [`ablate::ops::poison_unwritten_outputs`]).
fn references(what: &str) -> PathBuf {
    // Every parity test comes here first: outputs a kernel claims to write whole start as NaN.
    ablate::ops::poison_unwritten_outputs();
    static DONE: OnceLock<std::sync::Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let done = DONE.get_or_init(Default::default);
    let mut done = done.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(dir) = done.get(what) {
        return dir.clone();
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("parity").join(what.replace([' ', '-'], ""));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parity/reference.py");
    let (command, extra) = what.split_once(' ').unwrap_or((what, ""));
    let out = std::process::Command::new(python())
        .arg(&script)
        .arg(command)
        .arg(&dir)
        .args(extra.split_whitespace())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} (PyTorch's reference): {e}", python()));
    assert!(
        out.status.success(),
        "{} {} {what} failed (it needs Debian's python3-torch and python3-torchvision):\n{}",
        python(),
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    done.insert(what.into(), dir.clone());
    dir
}

/// The reference file's cases and tensors.
struct Refs {
    cases: Vec<Value>,
    tensors: HashMap<String, Tensor>,
}

impl Refs {
    fn load(what: &str) -> Self {
        let dir = references(what);
        let cases: Vec<Value> =
            serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{what}.json"))).unwrap()).unwrap();
        let tensors = candle_core::safetensors::load(dir.join(format!("{what}.safetensors")), &Device::Cpu).unwrap();
        Self { cases, tensors }
    }
    fn get(&self, case: &Value, name: &str) -> Tensor {
        let key = format!("{}.{name}", case["id"]);
        self.tensors.get(&key).unwrap_or_else(|| panic!("no tensor {key} in the reference")).clone()
    }
}

fn usize_of(case: &Value, key: &str) -> usize {
    case[key].as_u64().unwrap_or_else(|| panic!("case {case}: no integer `{key}`")) as usize
}

fn vec64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

/// `max |a - b| / max |b|`: the error of `a` against the truth `b`, on the tensor's scale.
fn error(a: &[f64], truth: &[f64]) -> f64 {
    assert_eq!(a.len(), truth.len(), "tensor sizes differ");
    let scale = truth.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
    a.iter().zip(truth).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// One compared tensor.
struct Row {
    what: String,
    ours: f64,
    torch: f64,
}

impl Row {
    fn ok(&self) -> bool {
        self.ours <= (FACTOR * self.torch).max(FLOOR)
    }
}

/// Compares every named output with the case's float64 and float32 references.
fn compare(refs: &Refs, case: &Value, label: &str, outputs: &[(&str, Tensor)], rows: &mut Vec<Row>) {
    for (name, ours) in outputs {
        let truth = vec64(&refs.get(case, &format!("f64.{name}")));
        let torch = vec64(&refs.get(case, &format!("f32.{name}")));
        rows.push(Row {
            what: format!("{label} {name}"),
            ours: error(&vec64(ours), &truth),
            torch: error(&torch, &truth),
        });
    }
}

/// Fails with the whole table if any row is over its bound; prints it either way.
fn report(title: &str, rows: &[Row]) {
    let mut text = format!("{title}: ablate's error against float64 next to PyTorch float32's\n");
    for r in rows {
        let flag = if r.ok() { "" } else { "   <-- over the bound" };
        text += &format!("  {:70} ablate {:9.2e}  torch {:9.2e}{flag}\n", r.what, r.ours, r.torch);
    }
    println!("{text}");
    let bad = rows.iter().filter(|r| !r.ok()).count();
    assert_eq!(bad, 0, "{bad} tensors over {FACTOR}x PyTorch float32's error (floor {FLOOR}):\n{text}");
}

/// The ablate runs of one case: which SIMD builds to try for each algorithm. The `gemm`
/// crate picks its own build, so the GEMM algorithms run once, at this CPU's level.
fn levels_for(algo: Algo) -> Vec<Level> {
    match algo {
        Algo::Direct | Algo::Depthwise | Algo::Winograd => isa::available(),
        Algo::Implicit => isa::available().into_iter().filter(|&l| l >= Level::Avx2).collect(),
        _ => vec![Isa::detected().level()],
    }
}

/// A pass that ran, as the coverage sets name it: algorithm, pass, and route where it has one.
fn ran_name(r: &plan::Ran) -> String {
    format!("{:?} {:?}{}", r.algo, r.pass, r.route.map(|route| format!(" {route}")).unwrap_or_default())
}

#[test]
fn convolutions_match_pytorch_on_every_algorithm_and_build() {
    let refs = Refs::load("ops");
    let mut rows = Vec::new();
    let mut ladder_ran = BTreeSet::new();
    let mut forced_ran = BTreeSet::new();
    // The implicit kernels' passes and routes that ran on the AVX2 build (forced).
    let mut avx2_ran = BTreeSet::new();
    for case in refs.cases.iter().filter(|c| c["kind"] == "conv") {
        let p = ConvParams {
            stride: usize_of(case, "stride"),
            padding: usize_of(case, "padding"),
            dilation: usize_of(case, "dilation"),
            groups: usize_of(case, "groups"),
        };
        let (x, w, dy) = (refs.get(case, "in.x"), refs.get(case, "in.w"), refs.get(case, "in.dy"));
        let run = || {
            let (xv, wv) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap());
            let y = conv2d(&xv, &wv, p).unwrap();
            let grads = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
            let (dx, dw) = (grads.get(&xv).unwrap().clone(), grads.get(&wv).unwrap().clone());
            vec![("y", y), ("dx", dx), ("dw", dw)]
        };
        let passes = [Pass::Forward, Pass::InputGrad, Pass::WeightGrad];
        let geometry =
            format!("x{:?} w{:?} s{} p{} d{} g{}", x.dims(), w.dims(), p.stride, p.padding, p.dilation, p.groups);

        // The ladder's own choice: what production runs.
        let (outputs, ran) = plan::record(run);
        for (r, pass) in ran.iter().zip(passes) {
            assert_eq!(r.pass, pass, "{geometry}: passes ran as {ran:?}");
            assert_eq!(Some(r.algo), plan::ladder(pass, x.dims(), w.dims(), p), "{geometry}: {pass:?}");
            ladder_ran.insert(ran_name(r));
        }
        compare(&refs, case, &format!("{geometry} planned"), &outputs, &mut rows);

        // The plan timing makes: every pass by a measured candidate.
        let (tuned, tuned_ran) = tune::with_mode(Mode::On, || plan::record(run));
        compare(&refs, case, &format!("{geometry} tuned"), &tuned, &mut rows);
        let mut forced_outputs = HashMap::new();

        // Every other algorithm and build that can take it.
        for algo in Algo::ALL {
            for level in levels_for(algo) {
                let supported: Vec<bool> = isa::with_cap(level, || {
                    passes.iter().map(|&pass| plan::supports(algo, pass, x.dims(), w.dims(), p)).collect()
                });
                if !supported.iter().any(|&s| s) {
                    continue;
                }
                let (outputs, ran) = isa::with_cap(level, || plan::with_forced(algo, || plan::record(run)));
                for ((r, pass), ok) in ran.iter().zip(passes).zip(&supported) {
                    assert_eq!(r.level, level, "{geometry}: {pass:?} ran on {:?}, forced {level:?}", r.level);
                    if *ok {
                        assert_eq!(r.algo, algo, "{geometry}: {pass:?} ran {:?}, forced {algo:?}", r.algo);
                        forced_ran.insert(ran_name(r));
                        if level == Level::Avx2 {
                            avx2_ran.insert(ran_name(r));
                        }
                    }
                }
                compare(&refs, case, &format!("{geometry} {algo:?} {level:?}"), &outputs, &mut rows);
                if level == Isa::detected().level() {
                    forced_outputs.insert(algo, (outputs, supported));
                }
            }
        }
        for (i, (r, (name, t))) in tuned_ran.iter().zip(&tuned).enumerate() {
            let (forced, supported) = &forced_outputs[&r.algo];
            assert!(supported[i], "{geometry}: the tuned plan ran {:?} for {name}, which cannot run it", r.algo);
            let same = t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                == forced[i].1.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(same, "{geometry}: {name} of the tuned plan ({:?}) differs from {:?} forced", r.algo, r.algo);
        }
    }
    report("convolutions", &rows);

    // Coverage: the table must reach every algorithm and pass the plan has on this CPU.
    let mut expected = BTreeSet::new();
    for algo in Algo::ALL {
        if algo == Algo::Implicit && Isa::detected().avx512().is_none() {
            eprintln!(
                "WARNING: this CPU has no AVX-512: the implicit-GEMM kernels were NOT tested here \
                 (levels available: {:?})",
                isa::available()
            );
            continue;
        }
        for pass in [Pass::Forward, Pass::InputGrad, Pass::WeightGrad] {
            // The implicit kernels' border routes: masked for stride-1 "same" forwards and
            // input gradients (folded on small planes), over phases for stride-2 forwards on
            // even planes, padded for the rest.
            let routes: &[&str] = match (algo, pass) {
                (Algo::Implicit, Pass::WeightGrad) => &[" padded"],
                (Algo::Implicit, Pass::Forward) => &[" masked", " folded", " phases", " folded phases", " padded"],
                (Algo::Implicit, _) => &[" masked", " folded", " padded"],
                _ => &[""],
            };
            for route in routes {
                expected.insert(format!("{algo:?} {pass:?}{route}"));
            }
        }
    }
    let missing: Vec<_> = expected.difference(&forced_ran).collect();
    assert!(missing.is_empty(), "the table never ran {missing:?} (forced)");
    // The AVX2 build takes the same routes as AVX-512, through its own gather and tiles.
    if Isa::detected().avx2().is_some() {
        let implicit = expected.iter().filter(|e| e.starts_with("Implicit "));
        let missing: Vec<_> = implicit.filter(|e| !avx2_ran.contains(*e)).collect();
        assert!(missing.is_empty(), "the table never ran {missing:?} on the AVX2 build (forced)");
    }
    let missing: Vec<_> = expected.difference(&ladder_ran).collect();
    assert!(missing.is_empty(), "the ladder never chose {missing:?} on the table");
}

#[test]
fn pooling_matches_pytorch_on_every_build() {
    let refs = Refs::load("ops");
    let mut rows = Vec::new();
    for case in refs.cases.iter().filter(|c| c["kind"] == "pool") {
        let (k, s, pad) = (usize_of(case, "k"), usize_of(case, "stride"), usize_of(case, "padding"));
        let kind = if case["pool"] == "max" { PoolKind::Max } else { PoolKind::Avg };
        let p = PoolParams { kind, kernel: (k, k), stride: (s, s), padding: (pad, pad) };
        let (x, dy) = (refs.get(case, "in.x"), refs.get(case, "in.dy"));
        for level in isa::available() {
            let outputs = isa::with_cap(level, || {
                let xv = Var::from_tensor(&x).unwrap();
                let y = pool2d(&xv, p).unwrap();
                let dx = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap().get(&xv).unwrap().clone();
                vec![("y", y), ("dx", dx)]
            });
            compare(
                &refs,
                case,
                &format!("{kind:?} pool x{:?} k{k} s{s} p{pad} {level:?}", x.dims()),
                &outputs,
                &mut rows,
            );
        }
    }
    report("pooling", &rows);
}

#[test]
fn batch_norm_and_its_fused_relu_match_pytorch_on_every_build() {
    let refs = Refs::load("ops");
    let mut rows = Vec::new();
    for case in refs.cases.iter().filter(|c| c["kind"] == "batch_norm") {
        let (n, c, h, w) = (usize_of(case, "n"), usize_of(case, "c"), usize_of(case, "h"), usize_of(case, "w"));
        // false, true (+ ReLU) or "relu6" (+ ReLU6)
        let act = match &case["relu"] {
            Value::Bool(true) => Some(LayerConfig::Relu),
            Value::String(s) if s == "relu6" => Some(LayerConfig::Relu6),
            _ => None,
        };
        // The model's own layers, so the fusion of BatchNorm + ReLU is the production one; a
        // 2-D input is BatchNorm after a flatten (as after a linear layer).
        let (input, mut layers) = if h == 0 {
            ((c, 1, 1), vec![LayerConfig::Flatten, LayerConfig::BatchNorm])
        } else {
            ((c, h, w), vec![LayerConfig::BatchNorm])
        };
        layers.extend(act.clone());
        layers.push(LayerConfig::Flatten);
        let layers: Vec<ablate::Node> = layers.into_iter().map(Into::into).collect();
        let x = refs.get(case, "in.x").reshape((n, input.0, input.1, input.2)).unwrap();
        let dy = refs.get(case, "in.dy").reshape((n, ())).unwrap();
        for level in isa::available() {
            let model = Model::build_for(&layers, input, 0, &Device::Cpu).unwrap();
            let state = model.state_dict();
            let name = |suffix: &str| state.keys().find(|k| k.ends_with(suffix)).unwrap().clone();
            for what in ["weight", "bias", "running_mean", "running_var"] {
                model.assign(&name(&format!(".{what}")), &refs.get(case, &format!("in.{what}"))).unwrap();
            }
            let params: HashMap<String, Var> = model.params().into_iter().collect();
            let outputs = isa::with_cap(level, || {
                let xv = Var::from_tensor(&x).unwrap();
                let y = model.forward_t(&xv, true).unwrap();
                let grads = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
                let g = |v: &Var| grads.get(v).unwrap().clone();
                let after = model.state_dict();
                vec![
                    ("y", y.reshape(refs.get(case, "f64.y").shape()).unwrap()),
                    ("dx", g(&xv).reshape(refs.get(case, "in.x").shape()).unwrap()),
                    ("dweight", g(&params[&name(".weight")])),
                    ("dbias", g(&params[&name(".bias")])),
                    ("new_running_mean", after[&name(".running_mean")].clone()),
                    ("new_running_var", after[&name(".running_var")].clone()),
                ]
            });
            let fused = act.as_ref().map(|a| format!("+{}", a.kind())).unwrap_or_default();
            let label = format!("batch_norm{fused} x[{n}, {c}, {h}, {w}] {level:?}");
            compare(&refs, case, &label, &outputs, &mut rows);
        }
    }
    report("batch norm", &rows);
}

#[test]
fn add_relu_matches_pytorch() {
    let refs = Refs::load("ops");
    let mut rows = Vec::new();
    for case in refs.cases.iter().filter(|c| c["kind"] == "add_relu") {
        let (a, b, dy) = (refs.get(case, "in.a"), refs.get(case, "in.b"), refs.get(case, "in.dy"));
        let (av, bv) = (Var::from_tensor(&a).unwrap(), Var::from_tensor(&b).unwrap());
        let y = ablate::ops::norm::add_relu(&av, &bv).unwrap();
        let grads = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        let outputs = vec![("y", y), ("da", grads.get(&av).unwrap().clone()), ("db", grads.get(&bv).unwrap().clone())];
        compare(&refs, case, &format!("add_relu {:?}", a.dims()), &outputs, &mut rows);
    }
    report("add + relu", &rows);
}

/// `nodes` built for `(c, h, w)` inputs, run on `x` in training mode: its output and the
/// input's gradient for the upstream gradient `dy`.
fn through_model(nodes: &[ablate::Node], x: &Tensor, dy: &Tensor) -> (Tensor, Tensor) {
    let (_, c, h, w) = x.dims4().unwrap();
    let nodes: Vec<ablate::Node> = nodes.iter().cloned().chain([LayerConfig::Flatten.into()]).collect();
    let model = Model::build_for(&nodes, (c, h, w), 0, &Device::Cpu).unwrap();
    let xv = Var::from_tensor(x).unwrap();
    let y = model.forward_t(&xv, true).unwrap();
    let y = y.reshape(dy.dims()).unwrap();
    let grads = (&y * dy).unwrap().sum_all().unwrap().backward().unwrap();
    let dx = grads.get(&xv).unwrap().clone();
    (y, dx)
}

/// The activations, adaptive average pooling and the merges (`mul`'s broadcast gate,
/// `concat`, `add` of two paths), each as the model builds it from its layer kind.
#[test]
fn activations_pooling_and_merges_match_pytorch() {
    use ablate::Node;
    let refs = Refs::load("ops");
    let mut rows = Vec::new();
    let node = |layer: LayerConfig, name: &str, from: &[&str]| Node {
        layer,
        name: (!name.is_empty()).then(|| name.to_string()),
        from: from.iter().map(|s| s.to_string()).collect(),
        written_at: None,
    };
    let (mut acts, mut pools, mut merges) = (BTreeSet::new(), 0, 0);
    for case in &refs.cases {
        let kind = case["kind"].as_str().unwrap();
        if !["activation", "adaptive_avg_pool", "merges"].contains(&kind) {
            continue;
        }
        let (x, dy) = (refs.get(case, "in.x"), refs.get(case, "in.dy"));
        let (nodes, label) = match kind {
            "activation" => {
                let name = case["act"].as_str().unwrap();
                acts.insert(name.to_string());
                (vec![LayerConfig::plain(name).unwrap().into()], name.to_string())
            }
            "adaptive_avg_pool" => {
                pools += 1;
                let out = (usize_of(case, "oh"), usize_of(case, "ow"));
                (vec![LayerConfig::AdaptiveAvgPool(out).into()], format!("adaptive_avg_pool {:?} -> {out:?}", x.dims()))
            }
            "merges" => {
                merges += 1;
                let nodes = vec![
                    node(LayerConfig::GlobalAvgPool, "g", &[]),
                    node(LayerConfig::Mul, "m", &["input", "g"]),
                    node(LayerConfig::plain("sigmoid").unwrap(), "s", &["input"]),
                    node(LayerConfig::Concat, "ms", &["m", "s"]),
                    node(LayerConfig::Concat, "sm", &["s", "m"]),
                    node(LayerConfig::Add(None), "", &["ms", "sm"]),
                ];
                (nodes, "mul, concat, add".to_string())
            }
            other => unreachable!("{other}"),
        };
        let (y, dx) = through_model(&nodes, &x, &dy);
        compare(&refs, case, &label, &[("y", y), ("dx", dx)], &mut rows);
    }
    assert_eq!(acts.len(), 6, "every activation has a case: {acts:?}");
    assert!(pools >= 3 && merges >= 1, "adaptive pooling and merge cases are in the reference");
    report("activations, adaptive pooling, merges", &rows);
}

/// An experiment file's model at `hw x hw` for two classes.
/// One forward/backward of `case` through ablate's model built from its experiment file,
/// then one step of each optimizer from the same gradients, in the keys `nets.py` reads.
fn network_step(case: &Value, tensors: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    let spec = crate::common::spec_at(case["toml"].as_str().unwrap(), usize_of(case, "hw"));
    let model = Model::build(&spec.layers, spec.input_hw, 0, &Device::Cpu).unwrap();
    let w0: HashMap<String, Tensor> =
        tensors.iter().filter_map(|(k, v)| k.strip_prefix("w.").map(|k| (k.to_string(), v.clone()))).collect();
    model.load_state_dict(&w0, case["name"].as_str().unwrap()).unwrap();
    let (x, y) = (&tensors["x"], tensors["y"].to_dtype(DType::U32).unwrap());
    let (logits, kinks) = ablate::ops::trace::record(|| model.forward_t(x, true).unwrap());
    let grads = candle_nn::loss::cross_entropy(&logits, &y).unwrap().backward().unwrap();
    let mut out = HashMap::from([("logits".to_string(), logits)]);
    // The side ablate took at every kink, for nets.py's float64 run to take the same.
    for (i, kink) in kinks.into_iter().enumerate() {
        let (key, t) = match kink {
            Kink::Relu { positive, shape } => {
                let v: Vec<u8> = positive.into_iter().map(u8::from).collect();
                (format!("kink.{i:03}.relu"), Tensor::from_vec(v, shape, &Device::Cpu).unwrap())
            }
            Kink::MaxPool { argmax, shape } => {
                let v: Vec<i64> = argmax.into_iter().map(i64::from).collect();
                (format!("kink.{i:03}.max_pool"), Tensor::from_vec(v, shape, &Device::Cpu).unwrap())
            }
        };
        out.insert(key, t);
    }
    for (name, var) in model.params() {
        out.insert(format!("grad.{name}"), grads.get(&var).unwrap().clone());
    }
    for (name, t) in model.state_dict() {
        if name.contains("running") {
            out.insert(format!("buf.{name}"), t);
        }
    }
    for (opt_name, text) in case["optimizers"].as_object().unwrap() {
        let cfg: ablate::OptimizerConfig = toml::from_str(text.as_str().unwrap()).unwrap();
        let lr = cfg.lr;
        let mut opt = ablate::Optimizer::new(cfg, model.trainable());
        opt.step(&grads, lr).unwrap();
        for (name, var) in model.params() {
            out.insert(format!("{opt_name}.update.{name}"), (var.as_tensor() - &w0[&name]).unwrap());
        }
        for (key, t) in opt.state_dict().unwrap() {
            if key != "steps" {
                out.insert(format!("{opt_name}.state.{key}"), t);
            }
        }
        for (name, var) in model.params() {
            var.set(&w0[&name]).unwrap();
        }
    }
    out
}

/// Runs every network case of `reference.py nets <dir> [extra]` through ablate and has
/// `reference.py check` judge it; fails with every case's report.
fn networks(what: &str) {
    let dir = references(what);
    let cases: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(dir.join("nets.json")).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parity/reference.py");
    let mut failed = Vec::new();
    // ABLATE_PARITY_ONLY=<part of a case name> runs only the matching cases.
    let only = std::env::var("ABLATE_PARITY_ONLY").unwrap_or_default();
    for case in cases.iter().filter(|c| c["name"].as_str().unwrap().contains(&only)) {
        let name = case["name"].as_str().unwrap();
        let case_file = dir.join(format!("{name}.safetensors"));
        let tensors = candle_core::safetensors::load(&case_file, &Device::Cpu).unwrap();
        let ours = network_step(case, &tensors);
        let ours_file = dir.join(format!("{name}.ablate.safetensors"));
        candle_core::safetensors::save(&ours, &ours_file).unwrap();
        let out = std::process::Command::new(python())
            .arg(&script)
            .arg("check")
            .arg(&case_file)
            .arg(&ours_file)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        println!("{report}");
        if !out.status.success() {
            failed.push(report);
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} networks differ from PyTorch:\n{}",
        failed.len(),
        cases.len(),
        failed.join("\n")
    );
}

/// The CI's cases (small maps and batches); `make parity` sets `ABLATE_PARITY_NETS=full` for
/// the larger ones (ResNet18 up to 224x224, LeNet at 256x256, ResNeXt50 at 96x96).
#[test]
fn networks_match_pytorch_after_one_step_of_each_optimizer() {
    match std::env::var("ABLATE_PARITY_NETS").as_deref() {
        Ok("full") => networks("nets --full"),
        _ => networks("nets"),
    }
}
