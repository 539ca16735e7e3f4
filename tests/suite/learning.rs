//! Training works, repeats exactly under a seed, and checkpoints reload exactly.

use ablate::experiment::{self, RunOptions};
use ablate::model::Model;
use ablate::output::sink::{EpochMetrics, MemorySink};
use candle_core::{Device, Tensor};
use candle_nn::ModuleT;

use crate::common::{color_folder, experiment};

fn run(exp: &std::path::Path, runs: &std::path::Path, set: &[&str]) -> (std::path::PathBuf, Vec<EpochMetrics>) {
    let sink = MemorySink::default();
    let opts = RunOptions {
        file: exp.to_path_buf(),
        overrides: set.iter().map(|s| ablate::config::Override::parse(s).unwrap()).collect(),
        device: Some("cpu".into()),
        runs_dir: runs.to_path_buf(),
        ..Default::default()
    };
    let dir = experiment::run(&opts, &mut |_| vec![Box::new(sink.clone())]).unwrap();
    let records = sink.records.lock().unwrap().clone();
    (dir, records)
}

#[test]
fn separable_colours_reach_95_percent_validation_accuracy() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 40, 4, 21);
    let exp = experiment(tmp.path(), &data, 4);
    let (_, epochs) = run(&exp, &tmp.path().join("runs"), &[]);
    let last = epochs.last().unwrap();
    assert_eq!(epochs.len(), 4);
    assert!(last.val_acc.unwrap() >= 0.95, "val acc {:?}", epochs.iter().map(|e| e.val_acc).collect::<Vec<_>>());
    assert!(last.train_loss < epochs[0].train_loss, "loss falls");
}

#[test]
fn seeded_runs_are_bit_identical_and_checkpoints_reload_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 10, 5, 4);
    let exp = experiment(tmp.path(), &data, 2);
    // Dropout and a random crop exercise every seeded random stream.
    let set = [
        "model.layers=[{ conv = { out = 4, kernel = 3, padding = 1 } }, \"batch_norm\", \"relu\", { max_pool = { kernel = 2 } }, { dropout = 0.3 }, { linear = { out = \"$classes\" } }]",
        "transforms.train=[{ resize = [18, 18] }, { random_crop = [16, 16] }, { hflip = 0.5 }]",
    ];
    let runs = tmp.path().join("runs");
    let (a, ma) = run(&exp, &runs, &set);
    let (b, mb) = run(&exp, &runs, &set);
    assert_ne!(a, b, "a second run gets its own folder");
    let strip = |m: &[EpochMetrics]| {
        m.iter().map(|e| (e.epoch, e.train_loss, e.train_acc, e.val_loss, e.val_acc, e.lr)).collect::<Vec<_>>()
    };
    assert_eq!(strip(&ma), strip(&mb));
    for f in ["checkpoints/last.safetensors", "checkpoints/best.safetensors", "submission.csv"] {
        assert!(
            std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(),
            "{f} differs between seeded runs"
        );
    }
    // A different seed gives different weights.
    let (c, _) = run(&exp, &runs, &[set[0], set[1], "seed=8"]);
    assert_ne!(
        std::fs::read(a.join("checkpoints/last.safetensors")).unwrap(),
        std::fs::read(c.join("checkpoints/last.safetensors")).unwrap()
    );

    // Reloading: a model built with another seed, loaded from `last`, predicts exactly what
    // the saved model does (its logits, bit for bit).
    let prepared = experiment::prepare(&a.join("config.toml"), vec![]).unwrap();
    let spec = &prepared.spec;
    let x = Tensor::randn(0f32, 1.0, (4, 3, 16, 16), &Device::Cpu).unwrap();
    let saved = Model::build(&spec.layers, spec.input_hw, 1, &Device::Cpu).unwrap();
    ablate::output::checkpoint::load(&saved, &a.join("checkpoints/last.safetensors")).unwrap();
    let other = Model::build(&spec.layers, spec.input_hw, 2, &Device::Cpu).unwrap();
    let before = other.forward_t(&x, false).unwrap();
    ablate::output::checkpoint::load(&other, &a.join("checkpoints/last.safetensors")).unwrap();
    let logits = |m: &Model| m.forward_t(&x, false).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(logits(&saved), logits(&other));
    assert_ne!(before.flatten_all().unwrap().to_vec1::<f32>().unwrap(), logits(&other));
}
