//! Training-step and data-pipeline benchmark, one workload per invocation; `make bench` runs
//! it beside bench/torch_ref.py (PyTorch on the same work) and prints the comparison.
//!
//! `cargo run --release --example bench -- <workload> [steps]` prints one JSON line:
//! `{"framework": "ablate", "workload": ..., "img_per_s": ..., "ms_per_step": ..., "peak_rss_mb": ...}`.
//! Workloads: `lenet` (256x256, batch 64), `resnet18` and `mobilenet_v2` (224x224, batch 16,
//! the experiment files of those names), `resnext_g<G>` (a
//! 3-block bottleneck stage, 256 channels at 32x32, 3x3 width 128 in G groups, batch 32), and
//! `data` (decode + resize to 256x256 + normalise 2,000 JPEGs of 500x375).
//!
//! `gemm_shapes`: the `gemm` crate alone on the products ResNet18's 3x3 convolutions are (see
//! [`gemm_shapes`]).
//! `peak`: the `gemm` crate's f32 matrix product (2048 x 2048 x 2048) on all threads, in
//! GFLOP/s: the ceiling ablate's convolutions are measured against.
//!
//! Convolutions are planned as in `ablate run` (`ABLATE_TUNE`, on by default: timed in the
//! warm-up steps the first time, then from the machine's cache).
//!
//! Options (the GPU check, bench/gpu-check.sh): `--device cuda:0`, `--batch N`, `--bf16`, and
//! the workload `agree`: ResNet18's forward pass on the CPU and on `--device` with the same
//! weights and batch, printing the largest difference (exit status 1 above 1e-3).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ablate::Loader;
use ablate::Model;
use ablate::Optimizer;
use ablate::Transform;
use anyhow::bail;
use candle_core::{Device, Tensor};
use candle_nn::ModuleT;
use rand::{Rng, SeedableRng};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The project folder: where this was built, or (a binary carried to another machine) the
/// current folder.
fn root() -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR"));
    if built.join("experiments").is_dir() { built.to_path_buf() } else { PathBuf::from(".") }
}

/// One benchmark run.
#[derive(Debug, clap::Parser)]
struct Opts {
    /// lenet | resnet18 | mobilenet_v2 | resnext_g<G> | data | data_aug | peak | agree | convs[:<filter>]
    workload: String,
    /// Timed steps (after two warm-up steps).
    #[arg(default_value_t = 5)]
    steps: usize,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: ablate::DeviceChoice,
    /// Images per step (default: the workload's).
    #[arg(long)]
    batch: Option<usize>,
    /// Convolutions and linear layers in bf16 (CUDA only).
    #[arg(long)]
    bf16: bool,
}

/// Peak resident set size of this process, from the kernel's high-water mark.
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Builds a model from an experiment file's layers (its `init` is not loaded).
fn model_from(file: &Path, input: (usize, usize, usize), device: &Device) -> anyhow::Result<Model> {
    let spec = ablate::spec_from_file(file, &[], &["a", "b"])?;
    Ok(Model::build_for(&spec.layers, input, 0, device)?)
}

fn resnext_stage(groups: usize, device: &Device) -> anyhow::Result<Model> {
    let tmp = std::env::temp_dir().join(format!("ablate-bench-resnext-{}.toml", std::process::id()));
    std::fs::write(
        &tmp,
        format!(
            "name = \"stage\"\n[data]\nroot = \".\"\n[model]\ninput = [32, 32]\nlayers = [\n  {{ stage = {{ block = \"bottleneck\", repeat = 3, out = 256, mid = 128, groups = {groups} }} }},\n  \"global_avg_pool\", {{ linear = {{ out = 10 }} }},\n]\n"
        ),
    )?;
    let m = model_from(&tmp, (256, 32, 32), device);
    std::fs::remove_file(&tmp)?;
    m
}

/// Median seconds per training step (forward, cross-entropy, backward, Adam) after warm-up.
fn train_steps(model: &Model, input: (usize, usize, usize, usize), classes: u32, steps: usize) -> anyhow::Result<f64> {
    let (x, y) = batch(input, classes, model.device())?;
    let mut opt = Optimizer::new(Default::default(), model.trainable());
    let mut times = Vec::new();
    for i in 0..steps + 2 {
        let t0 = Instant::now();
        let loss = candle_nn::loss::cross_entropy(&model.forward_t(&x, true)?, &y)?;
        opt.step(&loss.backward()?, 1e-3)?;
        loss.to_scalar::<f32>()?;
        if i >= 2 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// A seeded random batch and labels on `device`.
fn batch(input: (usize, usize, usize, usize), classes: u32, device: &Device) -> anyhow::Result<(Tensor, Tensor)> {
    let (n, c, h, w) = input;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let x: Vec<f32> = (0..n * c * h * w).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let x = Tensor::from_vec(x, (n, c, h, w), device)?;
    let y: Vec<u32> = (0..n).map(|_| rng.gen_range(0..classes)).collect();
    Ok((x, Tensor::new(y.as_slice(), device)?))
}

/// ResNet18's outputs on the CPU and on `device` for the same weights (same seed) and batch,
/// in evaluation and in training mode: the largest absolute difference relative to the
/// largest output.
fn agree(device: &Device, n: usize) -> anyhow::Result<f64> {
    let file = root().join("experiments/resnet18.toml");
    let cpu = model_from(&file, (3, 224, 224), &Device::Cpu)?;
    let dev = model_from(&file, (3, 224, 224), device)?;
    let (x, _) = batch((n, 3, 224, 224), 2, &Device::Cpu)?;
    let mut worst: f64 = 0.0;
    for train in [false, true] {
        let a = cpu.forward_t(&x, train)?;
        let b = dev.forward_t(&x.to_device(device)?, train)?.to_device(&Device::Cpu)?;
        let diff = (&a - &b)?.abs()?.max_all()?.to_scalar::<f32>()? as f64;
        let scale = a.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-6) as f64;
        println!(
            "resnet18 forward ({}): max |cpu - device| = {diff:.3e}, relative {:.3e}",
            if train { "train" } else { "eval" },
            diff / scale
        );
        worst = worst.max(diff / scale);
    }
    Ok(worst)
}

/// One convolution of a network, for `convs`: name, input channels, outputs, kernel side,
/// stride, padding, input side, how many times the network has it, and whether the network
/// needs its input gradient (not the first layer's).
type ConvShape = (&'static str, usize, usize, usize, usize, usize, usize, usize, bool);

/// ResNet18's convolution shapes (224x224 input).
const RESNET18_CONVS: [ConvShape; 11] = [
    ("stem 7x7/2", 3, 64, 7, 2, 3, 224, 1, false),
    ("l1 3x3", 64, 64, 3, 1, 1, 56, 4, true),
    ("l2 3x3/2", 64, 128, 3, 2, 1, 56, 1, true),
    ("l2 3x3", 128, 128, 3, 1, 1, 28, 3, true),
    ("l2 1x1/2", 64, 128, 1, 2, 0, 56, 1, true),
    ("l3 3x3/2", 128, 256, 3, 2, 1, 28, 1, true),
    ("l3 3x3", 256, 256, 3, 1, 1, 14, 3, true),
    ("l3 1x1/2", 128, 256, 1, 2, 0, 28, 1, true),
    ("l4 3x3/2", 256, 512, 3, 2, 1, 14, 1, true),
    ("l4 3x3", 512, 512, 3, 1, 1, 7, 3, true),
    ("l4 1x1/2", 256, 512, 1, 2, 0, 14, 1, true),
];

/// Floating-point operations of one ResNet18 training image at 224x224 in its convolutions
/// (forward, weight gradient, and input gradient but for the stem): the numerator of its
/// share of the GEMM peak.
fn resnet18_train_gflop_per_img() -> f64 {
    let flops: usize = RESNET18_CONVS
        .iter()
        .map(|&(_, c, o, k, s, p, hw, count, dgrad)| {
            let oh = (hw + 2 * p - k) / s + 1;
            2 * count * o * oh * oh * c * k * k * if dgrad { 3 } else { 2 }
        })
        .sum();
    flops as f64 / 1e9
}

/// GFLOP/s of the `gemm` crate's best of `runs` square f32 products of side `n` on all
/// threads.
fn gemm_peak(n: usize, runs: usize) -> f64 {
    let secs = gemm_best(n, n, n, runs);
    2.0 * (n as f64).powi(3) / secs / 1e9
}

/// Seconds of the `gemm` crate's best of `runs` f32 products `(m x k) (k x n)`, row-major,
/// on all threads.
fn gemm_best(m: usize, k: usize, n: usize, runs: usize) -> f64 {
    let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut c = vec![0f32; m * n];
    let mut best = f64::INFINITY;
    for _ in 0..runs + 1 {
        let t0 = Instant::now();
        // SAFETY: a is m x k, b k x n, c m x n, all row-major; c is borrowed uniquely.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                k as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            );
        }
        best = best.min(t0.elapsed().as_secs_f64());
    }
    std::hint::black_box(&c);
    best
}

/// The `gemm` crate alone on the product each of ResNet18's 3x3 stride-1 convolutions is
/// (batch 16, im2col's shapes: out channels x 9 in channels x batch pixels), to set next to
/// `convs`' and `bench/torch_ref.py convs`' forward times: what the convolutions would take
/// with no im2col, packing aside.
fn gemm_shapes(runs: usize) {
    for (name, c, hw) in [("l1", 64, 56), ("l2", 128, 28), ("l3", 256, 14), ("l4", 512, 7)] {
        let (m, k, n) = (c, 9 * c, 16 * hw * hw);
        let secs = gemm_best(m, k, n, runs);
        let gflop = 2.0 * (m * k * n) as f64 / 1e9;
        println!("{name:>4} 3x3 as {m} x {k} x {n}: {:6.2} ms ({:3.0} GFLOP/s)", secs * 1e3, gflop / secs);
    }
}

/// The SIMD builds this binary runs: ablate's own kernels and the `gemm` crate's.
fn isa_fields() -> String {
    let ours = format!("{:?}", ablate::ops::isa::Isa::detected().level()).to_lowercase();
    #[cfg(target_arch = "x86_64")]
    let gemm = if cfg!(feature = "avx512") && std::arch::is_x86_feature_detected!("avx512f") {
        "avx512"
    } else if std::arch::is_x86_feature_detected!("avx2") {
        "avx2"
    } else {
        "baseline"
    };
    #[cfg(not(target_arch = "x86_64"))]
    let gemm = "baseline";
    format!("\"isa\": \"{ours}\", \"gemm_isa\": \"{gemm}\"")
}

/// Per-layer timing of ResNet18's convolutions (forward, and backward through candle's
/// autograd: weight gradient, plus the input gradient where the network needs one), median
/// of `steps`; prints one line per shape and the network's total. `convs:<prefix>` times the
/// shapes whose name starts with the prefix.
fn convs(n: usize, steps: usize, only: &str) -> anyhow::Result<()> {
    use ablate::ops::conv::{ConvParams, conv2d};
    let mut total = (0.0, 0.0);
    for (name, c, o, k, s, p, hw, count, dgrad) in RESNET18_CONVS {
        if !name.starts_with(only) {
            continue;
        }
        let (x, _) = batch((n, c, hw, hw), 2, &Device::Cpu)?;
        let w = candle_core::Var::from_tensor(&(Tensor::randn(0f32, 0.1, (o, c, k, k), &Device::Cpu)?))?;
        let xv = candle_core::Var::from_tensor(&x)?;
        let x = if dgrad { xv.as_tensor().clone() } else { x };
        let params = ConvParams { padding: p, stride: s, dilation: 1, groups: 1 };
        let (mut f, mut b, mut bw) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..steps + 1 {
            let t0 = Instant::now();
            let y = conv2d(&x, w.as_tensor(), params)?;
            let t1 = Instant::now();
            let g = y.sum_all()?.backward()?;
            let t2 = Instant::now();
            drop(g);
            // The weight gradient alone: the same conv on an input that needs no gradient.
            let t3 = Instant::now();
            let g = conv2d(&x.detach(), w.as_tensor(), params)?.sum_all()?.backward()?;
            let t4 = Instant::now() - (t1 - t0);
            drop(g);
            if i > 0 {
                f.push((t1 - t0).as_secs_f64());
                b.push((t2 - t1).as_secs_f64());
                bw.push((t4 - t3).as_secs_f64());
            }
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2] * 1e3
        };
        let (f, b, bw) = (med(&mut f), med(&mut b), med(&mut bw));
        let oh = (hw + 2 * p - k) / s + 1;
        let gflop = 2.0 * (n * o * oh * oh * c * k * k) as f64 / 1e9;
        let passes = if dgrad { 2.0 } else { 1.0 };
        println!(
            "{name:>10} x{count}: forward {f:6.1} ms ({:3.0} GFLOP/s), backward {b:6.1} ms ({:3.0} GFLOP/s), of which weight gradient ~{bw:5.1} ms",
            gflop / f * 1e3,
            passes * gflop / b * 1e3
        );
        total = (total.0 + f * count as f64, total.1 + b * count as f64);
    }
    println!("total: forward {:.0} ms, backward {:.0} ms", total.0, total.1);
    println!("plan (microseconds per candidate where timed):");
    for (key, e) in ablate::ops::conv::tune::used_plan() {
        let us: Vec<String> = e.us.iter().map(|(a, t)| format!("{} {t:.0}", a.name())).collect();
        println!("  {key}: {} [{}]", e.algo.name(), us.join(", "));
    }
    Ok(())
}

/// 2,000 JPEGs of 500x375 in two class folders (made once, shared with the PyTorch side).
pub fn jpeg_folder() -> anyhow::Result<PathBuf> {
    let dir = root().join("target/bench-data/jpegs");
    let done = dir.join(".complete");
    if done.exists() {
        return Ok(dir);
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    for class in ["a", "b"] {
        let d = dir.join("train").join(class);
        std::fs::create_dir_all(&d)?;
        for i in 0..1000 {
            // Smooth gradients plus noise: compresses like a photo, not like flat colour.
            let (r0, g0, b0): (f32, f32, f32) = (rng.r#gen(), rng.r#gen(), rng.r#gen());
            let img = image::RgbImage::from_fn(500, 375, |x, y| {
                let n: f32 = rng.gen_range(-20.0..20.0);
                let f = |base: f32, s: f32| (base * 255.0 * s + n).clamp(0.0, 255.0) as u8;
                image::Rgb([f(r0, x as f32 / 500.0), f(g0, y as f32 / 375.0), f(b0, 0.5)])
            });
            img.save(d.join(format!("{i}.jpg")))?;
        }
    }
    std::fs::write(&done, b"")?;
    Ok(dir)
}

/// The decoding, resizing and normalising pipeline over the JPEG folder (`data`), or the
/// heaviest augmentation recipe ablate has (`data_aug`: torchvision's RandomResizedCrop(224),
/// flip, TrivialAugmentWide, rotation, ColorJitter(0.4, 0.4, 0.4, 0.1), RandomGrayscale, GaussianBlur, Normalize,
/// RandomErasing), as `bench/torch_ref.py` runs them through torchvision.
fn data_pipeline(augment: bool) -> anyhow::Result<(f64, usize)> {
    use ablate::augment::{Affine, EraseValue, Erasing, Jitter};
    let dir = jpeg_folder()?;
    let classes = vec!["a".to_string(), "b".to_string()];
    let items = Arc::new(ablate::labelled_images(&dir.join("train"), &classes)?);
    let normalize = Transform::Normalize { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };
    let (transforms, hw) = if augment {
        let steps = vec![
            Transform::RandomResizedCrop { size: (224, 224), scale: [0.08, 1.0], ratio: [0.75, 4.0 / 3.0] },
            Transform::Hflip(0.5),
            Transform::TrivialAugment { bins: 31, fill: [0; 3] },
            Transform::RandomAffine(Affine {
                degrees: [-15.0, 15.0],
                translate: None,
                scale: None,
                shear: None,
                fill: [0; 3],
                rotation: true,
            }),
            Transform::ColorJitter(Jitter {
                brightness: Some([0.6, 1.4]),
                contrast: Some([0.6, 1.4]),
                saturation: Some([0.6, 1.4]),
                hue: Some([-0.1, 0.1]),
            }),
            Transform::Grayscale(0.1),
            Transform::GaussianBlur { kernel: (5, 5), sigma: [0.1, 2.0] },
            normalize,
            Transform::RandomErasing(Erasing {
                p: 0.25,
                scale: [0.02, 0.33],
                ratio: [0.3, 3.3],
                value: EraseValue::Random,
            }),
        ];
        (steps, (224, 224))
    } else {
        (vec![Transform::Resize((256, 256)), normalize], (256, 256))
    };
    let loader = Loader::new(items.clone(), transforms, hw, 64);
    let order: Vec<usize> = (0..items.len()).collect();
    let t0 = Instant::now();
    let mut seen = 0;
    for b in loader.batches(order, 0) {
        seen += b?.labels.len();
    }
    Ok((t0.elapsed().as_secs_f64(), seen))
}

fn main() -> anyhow::Result<()> {
    ablate::keep_freed_memory();
    ablate::configure_kernel_tuning()?;
    let opts = <Opts as clap::Parser>::parse();
    let (workload, steps) = (opts.workload.as_str(), opts.steps);
    let dev = ablate::open_device(opts.device)?.0;
    if opts.bf16 && dev.is_cpu() {
        bail!("--bf16 is for CUDA devices (candle's CPU matmul has no bf16)");
    }
    let prepare = |m: Model| {
        m.set_bf16(opts.bf16);
        m
    };
    let (img_per_s, ms) = match workload {
        "agree" => {
            let worst = agree(&dev, opts.batch.unwrap_or(8))?;
            if worst > 1e-3 {
                bail!("CPU and {:?} disagree: relative difference {worst:.3e} > 1e-3", dev.location());
            }
            return Ok(());
        }
        "peak" => {
            let gflops = gemm_peak(2048, steps);
            println!(
                "{{\"framework\": \"ablate\", \"workload\": \"peak\", \"gflops\": {gflops:.1}, {}}}",
                isa_fields()
            );
            return Ok(());
        }
        "gemm_shapes" => {
            gemm_shapes(steps);
            return Ok(());
        }
        w if w.starts_with("convs") => {
            return convs(opts.batch.unwrap_or(16), steps, w["convs".len()..].trim_start_matches(':'));
        }
        "lenet" => {
            let m = prepare(model_from(&root().join("experiments/lenet.toml"), (3, 256, 256), &dev)?);
            let n = opts.batch.unwrap_or(64);
            let s = train_steps(&m, (n, 3, 256, 256), 2, steps)?;
            (n as f64 / s, s * 1e3)
        }
        "resnet18" | "mobilenet_v2" => {
            let file = root().join(format!("experiments/{workload}.toml"));
            let m = prepare(model_from(&file, (3, 224, 224), &dev)?);
            let n = opts.batch.unwrap_or(16);
            let s = train_steps(&m, (n, 3, 224, 224), 2, steps)?;
            (n as f64 / s, s * 1e3)
        }
        "data" | "data_aug" => {
            let (secs, n) = data_pipeline(workload == "data_aug")?;
            (n as f64 / secs, secs * 1e3)
        }
        w if w.starts_with("resnext_g") => {
            let g: usize = w["resnext_g".len()..].parse()?;
            let m = prepare(resnext_stage(g, &dev)?);
            let n = opts.batch.unwrap_or(32);
            let s = train_steps(&m, (n, 256, 32, 32), 10, steps)?;
            (n as f64 / s, s * 1e3)
        }
        other => bail!("unknown workload {other}"),
    };
    // The convolution plan and what timing it cost, on stderr (`bench/run.py` reads stdout's
    // last line).
    let timed = ablate::ops::conv::tune::take_timed();
    let mut per_geometry = std::collections::BTreeMap::<String, f64>::new();
    for t in &timed {
        let geometry = t.key.split_once(' ').map_or(t.key.as_str(), |(_, g)| g).to_string();
        *per_geometry.entry(geometry).or_default() += t.spent.as_secs_f64();
    }
    let slowest = per_geometry.iter().max_by(|a, b| a.1.total_cmp(b.1));
    eprintln!(
        "tuning: {} passes of {} geometries timed in {:.2} s; slowest geometry {}",
        timed.len(),
        per_geometry.len(),
        timed.iter().map(|t| t.spent.as_secs_f64()).sum::<f64>(),
        slowest.map_or("-".into(), |(g, s)| format!("{g}: {s:.2} s"))
    );
    for (key, e) in ablate::ops::conv::tune::used_plan() {
        let us: Vec<String> = e.us.iter().map(|(a, t)| format!("{} {t:.0}", a.name())).collect();
        eprintln!("plan: {key}: {} [{}]", e.algo.name(), us.join(", "));
    }
    let gflop = if workload == "resnet18" { resnet18_train_gflop_per_img() } else { 0.0 };
    println!(
        "{{\"framework\": \"ablate\", \"workload\": \"{workload}\", \"img_per_s\": {img_per_s:.2}, \"ms_per_step\": {ms:.1}, \"peak_rss_mb\": {:.0}, \"conv_gflop_per_img\": {gflop:.3}, {}}}",
        peak_rss_mb(),
        isa_fields()
    );
    Ok(())
}
