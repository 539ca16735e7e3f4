//! Interrupted runs and sweeps resume to exactly what an uninterrupted run produces.

use std::path::Path;

use predicates::prelude::*;

use crate::common::{ablate, color_folder, experiment, only_run, run_in};

/// Dropout, every kind of random augmentation, mixup and cutmix: every seeded stream matters
/// for an exact resume.
const SET: [&str; 8] = [
    "--set",
    "model.layers=[{ conv = { out = 4, kernel = 3, padding = 1 } }, \"batch_norm\", \"relu\", { max_pool = { kernel = 2 } }, { dropout = 0.3 }, { linear = { out = \"$classes\" } }]",
    "--set",
    "transforms.train=[{ resize = [18, 18] }, { random_resized_crop = { size = 16, scale = [0.5, 1.0] } }, { hflip = 0.5 }, { random_rotation = 10 }, { color_jitter = { brightness = 0.3, hue = 0.05 } }, { normalize = \"imagenet\" }, { random_erasing = { p = 0.5 } }]",
    "--set",
    "train.mixup=0.4",
    "--set",
    "train.cutmix=1.0",
];

fn same_files(a: &Path, b: &Path, files: &[&str]) {
    for f in files {
        assert!(std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(), "{f} differs after resume");
    }
}

/// metrics.csv with its timing columns zeroed.
fn metrics(dir: &Path) -> Vec<ablate::EpochMetrics> {
    let rows = ablate::read_metrics(&dir.join("metrics.csv")).unwrap();
    rows.into_iter().map(|m| ablate::EpochMetrics { images_per_sec: 0.0, seconds: 0.0, ..m }).collect()
}

#[test]
fn an_interrupted_run_resumes_to_the_same_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 12, 3, 41);
    let exp = experiment(tmp.path(), &data, 3);
    let straight = tmp.path().join("straight");
    run_in(&exp, &straight).args(SET).assert().success();

    // 18 training images, batch 8: 3 steps an epoch; stop in the middle of epoch 2.
    let cut = tmp.path().join("cut");
    run_in(&exp, &cut).args(SET).args(["--stop-after-steps", "4"]).assert().code(130).stderr(
        predicate::str::contains("interrupted after 1 batches of epoch 2")
            .and(predicate::str::contains("ablate resume")),
    );
    let run = only_run(&cut);
    assert!(!run.join("submission.csv").exists());
    // Resuming can itself be interrupted (in epoch 3 this time), then finished.
    ablate().arg("resume").arg(&run).args(["--stop-after-steps", "3"]).assert().code(130);
    ablate().arg("resume").arg(&run).assert().success();

    let reference = only_run(&straight);
    same_files(&reference, &run, &["checkpoints/last.safetensors", "checkpoints/best.safetensors", "submission.csv"]);
    assert_eq!(metrics(&reference), metrics(&run));
    let rows = ablate::read_runs(&run.join("runs.csv")).unwrap();
    assert_eq!(rows[0].status, ablate::Status::Ok);
    // Mixing acted: without it the same run trains to other numbers.
    let unmixed = tmp.path().join("unmixed");
    run_in(&exp, &unmixed).args(&SET[..4]).assert().success();
    assert_ne!(metrics(&only_run(&unmixed))[0].train_loss, metrics(&reference)[0].train_loss);
}

#[test]
fn a_sweep_resumes_the_interrupted_variant_and_reruns_failed_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 8, 2, 42);
    let exp = experiment(tmp.path(), &data, 2);
    let sweep = ["--sweep", "optimizer.lr=0.01,0.003"];
    let straight = tmp.path().join("straight");
    run_in(&exp, &straight).args(SET).args(sweep).assert().success();

    let cut = tmp.path().join("cut");
    // 12 training images, batch 8: 2 steps an epoch, 4 a variant: stop inside the second.
    run_in(&exp, &cut).args(SET).args(sweep).args(["--stop-after-steps", "5"]).assert().code(130);
    let run = only_run(&cut);
    let rows = ablate::read_runs(&run.join("runs.csv")).unwrap();
    assert_eq!(rows[0].status, ablate::Status::Ok);
    assert_eq!(rows[1].status, ablate::Status::Pending);
    ablate().arg("resume").arg(&run).assert().success();
    let reference = only_run(&straight);
    for v in ["lr=0.01", "lr=0.003"] {
        same_files(&reference.join(v), &run.join(v), &["checkpoints/last.safetensors", "submission.csv"]);
        assert_eq!(metrics(&reference.join(v)), metrics(&run.join(v)), "{v}");
    }

    // A failed variant trains again from the start on resume.
    let bad = data.join("train/red/broken.png");
    std::fs::write(&bad, b"garbage").unwrap();
    let failing = tmp.path().join("failing");
    run_in(&exp, &failing).args(["--sweep", "data.skip_bad=false,true"]).assert().failure();
    std::fs::remove_file(&bad).unwrap();
    let run = only_run(&failing);
    ablate().arg("resume").arg(&run).assert().success();
    let rows = ablate::read_runs(&run.join("runs.csv")).unwrap();
    assert!(rows.iter().all(|r| r.status == ablate::Status::Ok), "{rows:?}");
}

#[test]
fn resume_refuses_an_edited_config() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 8, 2, 43);
    let exp = experiment(tmp.path(), &data, 2);
    let runs = tmp.path().join("runs");
    run_in(&exp, &runs).args(["--stop-after-steps", "1"]).assert().code(130);
    let run = only_run(&runs);
    let config = run.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("lr = 0.01", "lr = 0.02")).unwrap();
    ablate()
        .arg("resume")
        .arg(&run)
        .assert()
        .failure()
        .stderr(predicate::str::contains("config.toml changed since this run started"));
}
