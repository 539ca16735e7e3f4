//! torchvision's MobileNetV2, VGG11-BN and DenseNet121 and timm's SE-ResNeXt26d written as
//! experiment files (experiments/<name>.toml): each counts torchvision's (timm's) parameters
//! and multiply-adds to the digit, as its file's comment says, loads a state dict PyTorch
//! saved by name, and computes PyTorch's logits from it (within the parity suite's bound of
//! float64: at most 10 times PyTorch float32's error). tests/parity/zoo.py is the reference.

use std::path::{Path, PathBuf};

use ablate::{Model, weights};
use candle_core::{DType, Device, Tensor};
use candle_nn::ModuleT;

/// Runs zoo.py for `name` with `python` at `side` x `side`; returns its output directory.
fn reference(name: &str, python: &str, side: usize) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("zoo");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parity/zoo.py");
    let out = std::process::Command::new(python)
        .arg(&script)
        .args([name, dir.to_str().unwrap(), &side.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    assert!(out.status.success(), "zoo.py {name} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    dir
}

fn classes(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("c{i:04}")).collect()
}

/// The experiment's model for `n` classes at `side` x `side`.
fn model(name: &str, n: usize, side: usize) -> Model {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("experiments/{name}.toml"));
    let overrides: Vec<ablate::Override> = [
        format!("model.input=[{side}, {side}]"),
        format!("transforms.train=[{{ resize = [{side}, {side}] }}]"),
        format!("transforms.eval=[{{ resize = [{side}, {side}] }}]"),
    ]
    .iter()
    .map(|o| ablate::Override::parse(o).unwrap())
    .collect();
    let names = classes(n);
    let spec =
        ablate::spec_from_file(&file, &overrides, &names.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    Model::build(&spec.layers, spec.input_hw, 0, &Device::Cpu).unwrap()
}

/// The "<params> parameters and <macs> multiply-adds at 224x224 with 1000 classes" an
/// experiment file's opening comment states.
fn claimed(name: &str) -> (u64, u64) {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("experiments/{name}.toml")))
        .unwrap();
    let comment: String = text
        .lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.trim_start_matches('#').trim())
        .collect::<Vec<_>>()
        .join(" ");
    let number_before = |word: &str| -> u64 {
        let end = comment.find(word).unwrap_or_else(|| panic!("{name}.toml's comment states no {word}"));
        let digits: String =
            comment[..end].trim_end().rsplit(' ').next().unwrap().chars().filter(char::is_ascii_digit).collect();
        digits.parse().unwrap()
    };
    assert!(comment.contains("multiply-adds at 224x224 with 1000 classes"), "{name}.toml: {comment}");
    (number_before(" parameters and"), number_before(" multiply-adds at 224x224"))
}

fn check(name: &str, python: &str, side: usize) {
    let dir = reference(name, python, side);
    let counts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap()).unwrap();
    let torch = |n: &str| (counts[n]["params"].as_u64().unwrap(), counts[n]["macs"].as_u64().unwrap());

    // Counts at 224x224, for ImageNet's 1000 classes (as the file's comment says) and 10.
    for n in [1000, 10] {
        let m = model(name, n, 224);
        let ours = (m.summary().total_params() as u64, m.summary().total_macs());
        assert_eq!(ours, torch(&n.to_string()), "{name} with {n} classes: (params, multiply-adds)");
    }
    assert_eq!(claimed(name), torch("1000"), "{name}.toml's comment");

    // PyTorch's state dict loads by name, every tensor of the model filled.
    let m = model(name, 10, side);
    let file = weights::read(&dir.join(format!("{name}.pth"))).unwrap();
    let report = weights::import(&m, &file, &[], name).unwrap();
    assert_eq!(report.loaded.len(), m.state_dict().len(), "{name}: {report}");

    // The logits, in evaluation mode.
    let refs = candle_core::safetensors::load(dir.join(format!("{name}.safetensors")), &Device::Cpu).unwrap();
    let y = m.forward_t(&refs["x"], false).unwrap();
    let v = |t: &Tensor| t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let (ours, f32, truth) = (v(&y), v(&refs["f32"]), v(&refs["f64"]));
    let err = |a: &[f64]| {
        let scale = truth.iter().fold(0f64, |m, x| m.max(x.abs()));
        a.iter().zip(&truth).fold(0f64, |m, (x, t)| m.max((x - t).abs())) / scale
    };
    let (e_ours, e_torch) = (err(&ours), err(&f32));
    println!("{name}: logits' error against float64: ablate {e_ours:.2e}, PyTorch float32 {e_torch:.2e}");
    assert!(e_ours <= (10.0 * e_torch).max(1e-5), "{name}: ablate {e_ours:.2e} vs PyTorch float32 {e_torch:.2e}");
}

#[test]
fn mobilenet_v2_is_torchvisions() {
    check("mobilenet_v2", "/usr/bin/python3", 64);
}

#[test]
fn vgg11_bn_is_torchvisions() {
    check("vgg11_bn", "/usr/bin/python3", 32);
}

#[test]
fn densenet121_is_torchvisions() {
    check("densenet121", "/usr/bin/python3", 64);
}

#[test]
fn seresnext26d_32x4d_is_timms() {
    let timm = std::env::var("TIMM_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv-timm/bin/python").to_string());
    check("seresnext26d_32x4d", &timm, 64);
}
