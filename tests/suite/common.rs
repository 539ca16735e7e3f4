//! Fixtures: tiny generated image folders and experiment files.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};

/// Writes `root/train/{blue,red}/*.png` (`per_class` each) and `root/test/*.png` (`n_test`):
/// noisy squares, reddish or bluish, of slightly varying size (the transforms resize them).
/// Test images are named 0.png .. so natural order differs from lexical order past 10.
pub fn color_folder(root: &Path, per_class: usize, n_test: usize, seed: u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let make = |red: bool, rng: &mut rand_chacha::ChaCha8Rng| {
        let (w, h) = (rng.gen_range(10..14), rng.gen_range(10..14));
        RgbImage::from_fn(w, h, |_, _| {
            let hi = rng.gen_range(150..=255u8);
            let lo = rng.gen_range(0..=100u8);
            let mid = rng.gen_range(0..=255u8);
            if red { Rgb([hi, mid, lo]) } else { Rgb([lo, mid, hi]) }
        })
    };
    for (class, red) in [("blue", false), ("red", true)] {
        let dir = root.join("train").join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..per_class {
            make(red, &mut rng).save(dir.join(format!("{i}.png"))).unwrap();
        }
    }
    let dir = root.join("test");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..n_test {
        make(i % 2 == 0, &mut rng).save(dir.join(format!("{i}.png"))).unwrap();
    }
}

/// A small experiment on `data` with `extra` TOML appended at top level (before any table).
pub fn experiment(dir: &Path, data: &Path, epochs: usize) -> PathBuf {
    let path = dir.join("tiny.toml");
    std::fs::write(
        &path,
        format!(
            r#"name = "tiny"
seed = 7

[data]
root = "{}"
val_fraction = 0.25
batch_size = 8

[transforms]
train = [{{ resize = [16, 16] }}, {{ hflip = 0.5 }}, {{ normalize = "imagenet" }}]
eval = [{{ resize = [16, 16] }}, {{ normalize = "imagenet" }}]

[model]
layers = [
  {{ conv = {{ out = 4, kernel = 3, padding = 1 }} }}, "batch_norm", "relu", {{ max_pool = {{ kernel = 2 }} }},
  {{ linear = {{ out = "$classes" }} }},
]

[optimizer]
lr = 0.01

[train]
epochs = {epochs}
"#,
            data.display()
        ),
    )
    .unwrap();
    path
}

/// The `ablate` binary built by cargo for these tests.
pub fn ablate() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("ablate").unwrap();
    cmd.envs(kernel_env());
    cmd
}

/// The kernel-plan environment tests run `ablate` in: the built-in ladder, so that runs a
/// test compares use one plan whatever the timings (tests/suite/tuning.rs turns tuning on),
/// and never the user's own cache.
pub fn kernel_env() -> [(&'static str, std::ffi::OsString); 2] {
    [("ABLATE_TUNE", "off".into()), ("XDG_CACHE_HOME", std::env::temp_dir().join("ablate-tests-no-cache").into())]
}

/// The single run folder under `runs`.
pub fn only_run(runs: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(runs).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(dirs.len(), 1, "expected one run folder, found {dirs:?}");
    dirs.into_iter().next().unwrap()
}

/// `ablate run <experiment> --runs-dir <runs>`, ready for more arguments.
pub fn run_in(experiment: &Path, runs: &Path) -> assert_cmd::Command {
    let mut cmd = ablate();
    cmd.arg("run").arg(experiment).arg("--runs-dir").arg(runs);
    cmd
}

/// The spec of the repository's experiment `file` (relative to the crate) with the model at a
/// `hw` x `hw` input (the transforms resized to match), for two classes.
pub fn spec_at(file: &str, hw: usize) -> ablate::Spec {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    // The model at another input size: the transforms must make that size too.
    let overrides: Vec<ablate::Override> = ["model.input", "transforms.train", "transforms.eval"]
        .iter()
        .map(|key| {
            let value =
                if *key == "model.input" { format!("[{hw}, {hw}]") } else { format!("[{{ resize = [{hw}, {hw}] }}]") };
            ablate::Override::parse(&format!("{key}={value}")).unwrap()
        })
        .collect();
    ablate::spec_from_file(&file, &overrides, &["a", "b"]).unwrap()
}

/// The LeNet experiment's spec with its layers replaced by `layers` (a TOML list), at `hw`.
pub fn spec_at_layers(layers: &str, hw: usize) -> ablate::Spec {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/lenet.toml");
    let overrides: Vec<ablate::Override> = [
        format!("model.input=[{hw}, {hw}]"),
        format!("transforms.train=[{{ resize = [{hw}, {hw}] }}]"),
        format!("transforms.eval=[{{ resize = [{hw}, {hw}] }}]"),
        format!("model.layers={layers}"),
    ]
    .iter()
    .map(|o| ablate::Override::parse(o).unwrap())
    .collect();
    ablate::spec_from_file(&file, &overrides, &["a", "b"]).unwrap()
}

/// Runs `script` with Debian's `/usr/bin/python3` (`make test` installs python3-torch and
/// python3-scipy), `input` as JSON on its stdin; returns the JSON it prints.
pub fn python_json(script: &str, input: &serde_json::Value) -> serde_json::Value {
    python_json_with("/usr/bin/python3", script, input)
}

/// [`python_json`] with timm importable: the interpreter of `make test`'s `.venv-timm`
/// (`TIMM_PYTHON`), which sees Debian's PyTorch.
pub fn timm_json(script: &str, input: &serde_json::Value) -> serde_json::Value {
    let python = std::env::var("TIMM_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv-timm/bin/python").to_string());
    assert!(
        std::path::Path::new(&python).exists(),
        "{python} is missing: `make test` (or `make .venv-timm/.timm-installed`) installs timm"
    );
    python_json_with(&python, script, input)
}

pub fn python_json_with(python: &str, script: &str, input: &serde_json::Value) -> serde_json::Value {
    use std::io::Write;
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 (make test installs python3-torch and python3-scipy)");
    child.stdin.take().unwrap().write_all(input.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the Python reference failed (apt-get install python3-torch python3-scipy)");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A JSON list of numbers (a Python reference's output).
pub fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// The largest absolute difference of two equally long lists.
pub fn max_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}
