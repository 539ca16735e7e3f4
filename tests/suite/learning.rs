//! Training works, repeats exactly under a seed, and checkpoints reload exactly.

use ablate::Env;
use ablate::EpochMetrics;
use ablate::MemorySink;
use ablate::Model;
use ablate::Request;
use ablate::RunOptions;
use candle_core::{Device, Tensor};
use candle_nn::ModuleT;

use crate::common::{color_folder, experiment};

fn run(exp: &std::path::Path, runs: &std::path::Path, set: &[&str]) -> (std::path::PathBuf, Vec<EpochMetrics>) {
    let sink = MemorySink::default();
    let opts = RunOptions {
        request: Request {
            files: vec![exp.to_path_buf()],
            overrides: set.iter().map(|s| ablate::Override::parse(s).unwrap()).collect(),
            sweep: vec![],
            repeats: None,
        },
        device: Some(ablate::DeviceChoice::Cpu),
        runs_dir: runs.to_path_buf(),
        ..Default::default()
    };
    let recorder = sink.clone();
    let mut env = Env { sinks: Box::new(move |_| vec![Box::new(recorder.clone())]), ..Env::default() };
    let dir = ablate::run(&opts, &mut env).unwrap();
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
    // Colours are separable by the linear head alone, so the accuracy says little about the
    // convolution: the same run with the convolution frozen must end at a clearly higher
    // training loss (a zero or wrong weight gradient would not beat it).
    let (_, frozen) = run(&exp, &tmp.path().join("runs"), &["model.freeze=[\"conv1\"]"]);
    let frozen_loss = frozen.last().unwrap().train_loss;
    assert!(
        last.train_loss < 0.8 * frozen_loss,
        "training the conv: final loss {}, conv frozen: {frozen_loss}",
        last.train_loss
    );
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
    // The memory cache changes nothing the model sees.
    let (cached, _) = run(&exp, &runs, &[set[0], set[1], "data.cache=\"memory\""]);
    assert_eq!(
        std::fs::read(a.join("checkpoints/last.safetensors")).unwrap(),
        std::fs::read(cached.join("checkpoints/last.safetensors")).unwrap()
    );
    // A different seed gives different weights.
    let (c, _) = run(&exp, &runs, &[set[0], set[1], "seed=8"]);
    assert_ne!(
        std::fs::read(a.join("checkpoints/last.safetensors")).unwrap(),
        std::fs::read(c.join("checkpoints/last.safetensors")).unwrap()
    );

    // Reloading: a model built with another seed, loaded from `last`, predicts exactly what
    // the saved model does (its logits, bit for bit).
    let spec = &ablate::spec_from_file(&a.join("config.toml"), &[], &["blue", "red"]).unwrap();
    let x = Tensor::randn(0f32, 1.0, (4, 3, 16, 16), &Device::Cpu).unwrap();
    let saved = Model::build(&spec.layers, spec.input_hw, 1, &Device::Cpu).unwrap();
    ablate::load_checkpoint(&saved, &a.join("checkpoints/last.safetensors")).unwrap();
    let other = Model::build(&spec.layers, spec.input_hw, 2, &Device::Cpu).unwrap();
    let before = other.forward_t(&x, false).unwrap();
    ablate::load_checkpoint(&other, &a.join("checkpoints/last.safetensors")).unwrap();
    let logits = |m: &Model| m.forward_t(&x, false).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(logits(&saved), logits(&other));
    assert_ne!(before.flatten_all().unwrap().to_vec1::<f32>().unwrap(), logits(&other));
}

#[test]
fn caches_decode_each_image_once_and_change_nothing() {
    use ablate::Transform;
    use ablate::{ImageCache, Loader};
    use std::sync::Arc;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 5, 1, 31);
    let classes = vec!["blue".to_string(), "red".to_string()];
    let items = Arc::new(ablate::labelled_images(&data.join("train"), &classes).unwrap());
    let mut pipeline = vec![Transform::Resize((18, 18)), Transform::RandomCrop((16, 16)), Transform::Hflip(0.5)];
    pipeline.extend(crate::augment::heaviest_steps());
    let plain = Loader::new(items.clone(), pipeline.clone(), (16, 16), 4);
    let order: Vec<usize> = (0..items.len()).collect();
    let cache_dir = tmp.path().join("run/cache");
    let on_disk = Arc::new(ImageCache::on_disk(items.len(), &pipeline, &cache_dir).unwrap());
    for (cache, disk) in [(Arc::new(ImageCache::new(items.len(), &pipeline)), false), (on_disk, true)] {
        let cached = Loader::new(items.clone(), pipeline.clone(), (16, 16), 4).with_cache(cache.clone());
        for epoch in 0..3 {
            let a: Vec<Vec<f32>> = cached
                .batches(order.clone(), epoch)
                .map(|b| b.unwrap().images.flatten_all().unwrap().to_vec1().unwrap())
                .collect();
            let b: Vec<Vec<f32>> = plain
                .batches(order.clone(), epoch)
                .map(|b| b.unwrap().images.flatten_all().unwrap().to_vec1().unwrap())
                .collect();
            assert_eq!(a, b, "epoch {epoch}: the cache must not change what the model sees");
        }
        assert_eq!(
            cache.decodes.load(std::sync::atomic::Ordering::Relaxed),
            items.len(),
            "each image decoded once in 3 epochs"
        );
        if disk {
            let file = std::fs::read_dir(&cache_dir).unwrap().next().unwrap().unwrap().path();
            assert_eq!(std::fs::metadata(file).unwrap().len() as usize, items.len() * 18 * 18 * 3);
        }
        drop(cached);
    }
    // The disk cache held 18x18x3 bytes per image while it lived, and is gone with it.
    assert_eq!(std::fs::read_dir(&cache_dir).unwrap().count(), 0, "the cache file is removed");
}
