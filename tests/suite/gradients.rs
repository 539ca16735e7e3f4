//! Gradients of every layer kind against central finite differences, and BatchNorm against
//! PyTorch, so a wrong backward (like candle 0.11's max-pool, 1/4 of the truth) cannot pass.

use ablate::ops::conv::ConvParams;
use ablate::ops::pool::{PoolKind, PoolParams};
use ablate::{ConvConfig, LayerConfig, LinearConfig, Model, Node};
use candle_core::{Device, Tensor, Var};
use candle_nn::ModuleT;
use rand::{Rng, SeedableRng};

fn random(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    Tensor::from_vec((0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect::<Vec<_>>(), shape, &Device::Cpu).unwrap()
}

/// `sum(model(x) * probe)`, accumulated in f64 on the host.
fn loss(model: &Model, x: &Tensor, probe: &[f32], train: bool) -> f64 {
    let y = model.forward_t(x, train).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    y.iter().zip(probe).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// Checks d loss / d (every parameter and the input) against central differences at up to
/// 64 elements of each tensor, within 1 % of the tensor's largest gradient plus 1e-3 (the
/// f32 noise of a step of 1e-4, measured at up to 4e-4 here; a larger step would cross ReLU
/// and max-pool kinks). A coarse check: the tight one, against PyTorch and float64, is
/// tests/suite/parity.rs; this one also covers dropout and evaluation mode.
fn check(layers: Vec<LayerConfig>, hw: (usize, usize), train: bool) {
    check_graph(layers.into_iter().map(Node::from).collect(), hw, train)
}

/// [`check`] for a model graph.
fn check_graph(nodes: Vec<Node>, hw: (usize, usize), train: bool) {
    let model = Model::build(&nodes, hw, 11, &Device::Cpu).unwrap();
    let x = Var::from_tensor(&random(&[3, 3, hw.0, hw.1], 5)).unwrap();
    let out = model.forward_t(&x, train).unwrap();
    let probe = random(out.dims(), 9);
    let probe_v = probe.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let grads = (out * &probe).unwrap().sum_all().unwrap().backward().unwrap();

    let mut tensors = model.params();
    tensors.push(("input".into(), x.clone()));
    let eps = 1e-4f32;
    for (name, var) in tensors {
        let analytic = grads.get(&var).unwrap_or_else(|| panic!("no gradient for {name}"));
        let analytic = analytic.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let scale = analytic.iter().fold(0f64, |m, &v| m.max(v.abs() as f64));
        let base = var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let step = (base.len() / 64).max(1);
        for i in (0..base.len()).step_by(step) {
            let at = |delta: f32| {
                let mut v = base.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap()).unwrap();
                loss(&model, &x, &probe_v, train)
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps as f64);
            let a = analytic[i] as f64;
            assert!(
                (numeric - a).abs() <= 1e-2 * scale + 1e-3,
                "{name}[{i}]: finite difference {numeric}, backward {a} (largest gradient {scale})"
            );
        }
        var.set(&Tensor::from_vec(base, var.shape(), &Device::Cpu).unwrap()).unwrap();
    }
}

fn conv(out: usize, kernel: usize, stride: usize, padding: usize, groups: usize) -> LayerConfig {
    LayerConfig::Conv(ConvConfig {
        out,
        kernel,
        params: ConvParams { stride, padding, dilation: 1, groups },
        bias: true,
    })
}

fn pool(kind: PoolKind, k: usize, s: usize, p: usize) -> LayerConfig {
    LayerConfig::Pool(PoolParams { kind, kernel: (k, k), stride: (s, s), padding: (p, p) })
}

fn linear(out: usize) -> LayerConfig {
    LayerConfig::Linear(LinearConfig { out, bias: true })
}

#[test]
fn conv_batchnorm_relu_pools_linear_in_training() {
    check(
        vec![
            conv(6, 3, 1, 1, 1),
            LayerConfig::BatchNorm,
            LayerConfig::Relu,
            pool(PoolKind::Max, 3, 2, 1),
            conv(6, 3, 1, 1, 3),
            pool(PoolKind::Avg, 2, 2, 0),
            LayerConfig::Flatten,
            linear(5),
            LayerConfig::Relu,
            linear(2),
        ],
        (8, 8),
        true,
    );
}

#[test]
fn lenet_style_max_pool_2x2_and_global_pool_in_eval() {
    check(
        vec![
            conv(4, 5, 1, 0, 1),
            pool(PoolKind::Max, 2, 2, 0),
            LayerConfig::Relu,
            conv(4, 3, 2, 1, 2),
            LayerConfig::BatchNorm,
            LayerConfig::Dropout(0.5),
            LayerConfig::GlobalAvgPool,
            linear(3),
        ],
        (12, 10),
        false,
    );
}

#[test]
fn batchnorm_after_linear_trains() {
    check(vec![LayerConfig::Flatten, linear(6), LayerConfig::BatchNorm, LayerConfig::Relu, linear(2)], (3, 3), true);
}

/// Training-mode output and running statistics equal PyTorch's BatchNorm2d:
/// ```python
/// x = (torch.arange(24.).reshape(2,3,2,2) ** 1.5) / 10 - 0.5
/// bn = torch.nn.BatchNorm2d(3); bn.train(); y = bn(x)
/// y.flatten()[:6] -> [-1.075261, -1.033894, -0.958257, -0.860310, -1.149065, -1.045275]
/// bn.running_mean -> [0.209930, 0.382096, 0.596129]; bn.running_var -> [1.567845, 1.973062, 2.364199]
/// bn.eval(); bn(x).flatten()[:3] -> [-0.566973, -0.487110, -0.341086]
/// ```
#[test]
fn batchnorm_matches_pytorch() {
    let x = ((Tensor::arange(0f32, 24.0, &Device::Cpu).unwrap().reshape((2, 3, 2, 2)).unwrap().powf(1.5).unwrap()
        / 10.0)
        .unwrap()
        - 0.5)
        .unwrap();
    let single =
        Model::build(&[LayerConfig::BatchNorm.into(), LayerConfig::Flatten.into()], (2, 2), 0, &Device::Cpu).unwrap();
    let y = single.forward_t(&x, true).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let close = |got: &[f32], want: &[f32]| {
        assert!(got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5), "{got:?} vs PyTorch {want:?}");
    };
    close(&y[..6], &[-1.075261, -1.033894, -0.958257, -0.860310, -1.149065, -1.045275]);
    let state = single.state_dict();
    close(&state["bn1.running_mean"].to_vec1::<f32>().unwrap(), &[0.209930, 0.382096, 0.596129]);
    close(&state["bn1.running_var"].to_vec1::<f32>().unwrap(), &[1.567845, 1.973062, 2.364199]);
    assert_eq!(state["bn1.num_batches_tracked"].to_scalar::<i64>().unwrap(), 1);
    let y_eval = single.forward_t(&x, false).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    close(&y_eval[..3], &[-0.566973, -0.487110, -0.341086]);
}

/// One ResNeXt bottleneck block (grouped 3x3, strided, projected shortcut) and one basic block,
/// both made from the shipped templates, in training mode.
#[test]
fn bottleneck_block_matches_finite_differences() {
    let head = r#""global_avg_pool", { linear = { out = 2 } }"#;
    let stage = r#"{ stage = { block = "bottleneck", out = 8, stride = 2, groups = 2, mid = 4 } }"#;
    check_graph(crate::common::spec_at_layers(&format!("[{stage}, {head}]"), 6).layers, (6, 6), true);
    let stage = r#"{ stage = { block = "basic", out = 8 } }"#;
    check_graph(crate::common::spec_at_layers(&format!("[{stage}, {head}]"), 5).layers, (5, 5), true);
}

/// A graph written in the file: a squeeze-excite gate (`mul`), a dense concatenation and a
/// projected `add`, whose every gradient (the gate's path, both concat inputs, the
/// projection) matches finite differences.
#[test]
fn graph_merges_match_finite_differences() {
    let layers = r#"[
        { conv = { out = 4, kernel = 3, padding = 1 }, name = "stem" },
        "global_avg_pool",
        { linear = { out = 4 }, name = "squeeze" }, "relu",
        { linear = { out = 4 }, name = "excite" },
        { mul = ["stem", "excite"], name = "gated" },
        { conv = { out = 2, kernel = 1 }, name = "branch" },
        { concat = ["gated", "branch"], name = "dense" },
        { conv = { out = 8, kernel = 3, stride = 2, padding = 1 }, name = "body" },
        { add = ["body", "dense"], project = true },
        "relu", "global_avg_pool", { linear = { out = 2 } }
    ]"#;
    check_graph(crate::common::spec_at_layers(layers, 6).layers, (6, 6), true);
}

/// candle's backward as vendored (vendor/README.md) stores a node's first gradient as it is
/// and adds the later ones: a tensor with several consumers, multiplied by itself, and
/// broadcast, must still get every contribution.
#[test]
fn backward_sums_every_contribution() {
    let x = Var::new(&[1.0f32, -2.0, 3.0], &Device::Cpu).unwrap();
    let b = Var::new(&[[0.5f32], [2.0]], &Device::Cpu).unwrap();
    let xb = x.broadcast_as((2, 3)).unwrap().broadcast_mul(&b).unwrap();
    let y = ((x.mul(&x).unwrap() + x.affine(3.0, 0.0).unwrap()).unwrap().sum_all().unwrap() + xb.sum_all().unwrap())
        .unwrap();
    let grads = y.backward().unwrap();
    // d/dx = 2x + 3 + (0.5 + 2.0); d/db = sum(x) for each row.
    let dx = grads.get(&x).unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(dx, vec![7.5, 1.5, 11.5]);
    let db = grads.get(&b).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(db, vec![vec![2.0], vec![2.0]]);
    assert!(grads.get(&x).unwrap().is_contiguous());
}
