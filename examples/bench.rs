//! Training-step and data-pipeline benchmark, one workload per invocation; `make bench` runs
//! it beside bench/torch_ref.py (PyTorch on the same work) and prints the comparison.
//!
//! `cargo run --release --example bench -- <workload> [steps]` prints one JSON line:
//! `{"framework": "ablate", "workload": ..., "img_per_s": ..., "ms_per_step": ..., "peak_rss_mb": ...}`.
//! Workloads: `lenet` (256x256, batch 64), `resnet18` (224x224, batch 16), `resnext_g<G>` (a
//! 3-block bottleneck stage, 256 channels at 32x32, 3x3 width 128 in G groups, batch 32), and
//! `data` (decode + resize to 256x256 + normalise 2,000 JPEGs of 500x375).
//!
//! Options (the GPU check, bench/gpu-check.sh): `--device cuda:0`, `--batch N`, `--bf16`, and
//! the workload `agree`: ResNet18's forward pass on the CPU and on `--device` with the same
//! weights and batch, printing the largest difference (exit status 1 above 1e-3).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ablate::config::load::{self, Sources};
use ablate::config::resolve;
use ablate::data::folder;
use ablate::data::loader::Loader;
use ablate::data::transforms::Transform;
use ablate::model::Model;
use ablate::train::optim::Optimizer;
use anyhow::{Context, bail};
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

/// Command-line options after the workload and step count.
struct Opts {
    device: Device,
    batch: Option<usize>,
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
    let exp = load::load(&Sources { files: vec![file.to_path_buf()], overrides: vec![], env: false })?;
    let spec = resolve(exp, &file.display().to_string(), vec!["a".into(), "b".into()])?;
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

fn data_pipeline() -> anyhow::Result<(f64, usize)> {
    let dir = jpeg_folder()?;
    let classes = vec!["a".to_string(), "b".to_string()];
    let items = Arc::new(folder::labelled(&dir.join("train"), &classes)?);
    let transforms = vec![
        Transform::Resize((256, 256)),
        Transform::Normalize { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] },
    ];
    let loader = Loader::new(items.clone(), transforms, (256, 256), 64);
    let order: Vec<usize> = (0..items.len()).collect();
    let t0 = Instant::now();
    let mut seen = 0;
    for b in loader.batches(order, 0) {
        seen += b?.labels.len();
    }
    Ok((t0.elapsed().as_secs_f64(), seen))
}

fn main() -> anyhow::Result<()> {
    ablate::alloc::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: bench <lenet|resnet18|resnext_g<G>|data|agree> [steps] [--device D] [--batch N] [--bf16]";
    let workload = args.get(1).context(usage)?.as_str();
    let steps: usize = match args.get(2) {
        Some(s) if !s.starts_with("--") => s.parse()?,
        _ => 5,
    };
    let mut opts = Opts { device: Device::Cpu, batch: None, bf16: false };
    let mut rest = args.iter().skip(2).skip_while(|a| !a.starts_with("--"));
    while let Some(flag) = rest.next() {
        match flag.as_str() {
            "--device" => {
                let choice = rest.next().context(usage)?.parse().map_err(anyhow::Error::msg)?;
                opts.device = ablate::device::open(choice)?.0;
            }
            "--batch" => opts.batch = Some(rest.next().context(usage)?.parse()?),
            "--bf16" => opts.bf16 = true,
            other => bail!("unknown option {other}; {usage}"),
        }
    }
    if opts.bf16 && opts.device.is_cpu() {
        bail!("--bf16 is for CUDA devices (candle's CPU matmul has no bf16)");
    }
    let dev = opts.device.clone();
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
        "lenet" => {
            let m = prepare(model_from(&root().join("experiments/lenet.toml"), (3, 256, 256), &dev)?);
            let n = opts.batch.unwrap_or(64);
            let s = train_steps(&m, (n, 3, 256, 256), 2, steps)?;
            (n as f64 / s, s * 1e3)
        }
        "resnet18" => {
            let m = prepare(model_from(&root().join("experiments/resnet18.toml"), (3, 224, 224), &dev)?);
            let n = opts.batch.unwrap_or(16);
            let s = train_steps(&m, (n, 3, 224, 224), 2, steps)?;
            (n as f64 / s, s * 1e3)
        }
        "data" => {
            let (secs, n) = data_pipeline()?;
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
    println!(
        "{{\"framework\": \"ablate\", \"workload\": \"{workload}\", \"img_per_s\": {img_per_s:.2}, \"ms_per_step\": {ms:.1}, \"peak_rss_mb\": {:.0}}}",
        peak_rss_mb()
    );
    Ok(())
}
