//! Sweeps: variant folders, summaries, failing variants, and validation before training.

use predicates::prelude::*;

use crate::common::{ablate, color_folder, experiment, only_run, run_in};

fn with_params(exp: &std::path::Path) {
    let text = std::fs::read_to_string(exp).unwrap();
    let text = text.replace("[model]\n", "[model]\nparams = { width = 4 }\n").replace(
        "{ conv = { out = 4, kernel = 3, padding = 1 } }",
        "{ conv = { out = \"$width\", kernel = 3, padding = 1 } }",
    );
    std::fs::write(exp, format!("{text}\n[sweep]\n\"model.params.width\" = [2, 6]\n")).unwrap();
}

#[test]
fn grid_sweep_trains_every_variant_into_its_folder_with_a_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 6, 3, 11);
    let exp = experiment(tmp.path(), &data, 1);
    with_params(&exp);
    let runs = tmp.path().join("runs");
    run_in(&exp, &runs).args(["--sweep", "optimizer.lr=0.01,0.001"]).assert().success();
    let run = only_run(&runs);
    // Axes sorted by key, the last varying fastest.
    let variants = ["width=2,lr=0.01", "width=2,lr=0.001", "width=6,lr=0.01", "width=6,lr=0.001"];
    for v in variants {
        for f in ["config.toml", "metrics.csv", "log.txt", "submission.csv", "checkpoints/best.safetensors"] {
            assert!(run.join(v).join(f).is_file(), "{v}/{f}");
        }
    }
    assert!(run.join("experiment.toml").is_file() && run.join("summary.md").is_file());
    let rows = ablate::read_runs(&run.join("runs.csv")).unwrap();
    assert_eq!(rows.iter().map(|r| r.variant.as_str()).collect::<Vec<_>>(), variants);
    assert!(rows.iter().all(|r| r.status == ablate::Status::Ok && r.best_val_acc.is_some()));
    // conv 3 -> w (k3): 27w + w, bn 2w, linear w*8*8 -> 2: 128w + 2; total 158w + 2  =>  318, 950
    assert_eq!(rows.iter().map(|r| r.params).collect::<Vec<_>>(), [318, 318, 950, 950]);
    assert_eq!(rows[1].values, "model.params.width=2;optimizer.lr=0.001");
    // Each variant's resolved config holds its own values and no sweep.
    let cfg = std::fs::read_to_string(run.join("width=6,lr=0.001/config.toml")).unwrap();
    assert!(cfg.contains("lr = 0.001") && cfg.contains("width = 6") && !cfg.contains("[sweep]"), "{cfg}");
}

#[test]
fn a_failing_variant_is_marked_and_the_sweep_goes_on_unless_fail_fast() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 6, 2, 12);
    std::fs::write(data.join("train/red/broken.png"), b"garbage").unwrap();
    let exp = experiment(tmp.path(), &data, 1);
    let runs = tmp.path().join("runs");
    run_in(&exp, &runs)
        .args(["--sweep", "data.skip_bad=false,true"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("1 of 2 variants failed (skip_bad=false)"));
    let run = only_run(&runs);
    let rows = ablate::read_runs(&run.join("runs.csv")).unwrap();
    assert_eq!(rows[0].status, ablate::Status::Failed);
    assert!(rows[0].error.as_deref().unwrap().contains("broken.png"));
    assert_eq!(rows[1].status, ablate::Status::Ok);
    assert!(std::fs::read_to_string(run.join("skip_bad=false/log.txt")).unwrap().contains("broken.png"));

    let runs = tmp.path().join("runs-ff");
    run_in(&exp, &runs).args(["--sweep", "data.skip_bad=false,true", "--fail-fast"]).assert().failure();
    let rows = ablate::read_runs(&only_run(&runs).join("runs.csv")).unwrap();
    assert_eq!(rows[1].status, ablate::Status::Pending, "fail-fast stops before the second");
}

#[test]
fn bad_sweeps_fail_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 2, 1, 13);
    let exp = experiment(tmp.path(), &data, 1);
    with_params(&exp);
    let runs = tmp.path().join("runs");
    let fails = |args: &[&str], needle: &str| {
        run_in(&exp, &runs).args(args).assert().failure().stderr(predicate::str::contains(needle.to_string()));
        assert!(!runs.exists(), "nothing written for {args:?}");
    };
    fails(&["--sweep", "optimizer.lrr=1,2"], "unknown key `optimizer.lrr`");
    fails(&["--sweep", "model.params.depth=1,2"], "`depth` is not in model.params");
    // 4 groups do not divide the 3 input channels: caught before the first variant trains.
    fails(&["--sweep", "model.layers.0.conv.groups=1,4"], "tiny.toml: variant groups=4");
}

#[test]
fn check_shows_every_variant_and_compare_tables_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 4, 2, 14);
    let exp = experiment(tmp.path(), &data, 1);
    with_params(&exp);
    ablate()
        .arg("check")
        .arg(&exp)
        .assert()
        .success()
        .stdout(predicate::str::contains("variant width=2:").and(predicate::str::contains("variant width=6:")))
        .stdout(
            predicate::str::contains("total: 318 parameters").and(predicate::str::contains("total: 950 parameters")),
        );

    let runs = tmp.path().join("runs");
    run_in(&exp, &runs).assert().success();
    let run = only_run(&runs);
    let out = ablate().arg("compare").arg(&run).args(["--sort", "params"]).assert().success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let name = run.file_name().unwrap().to_str().unwrap();
    // Smallest first when sorting by size.
    let (a, b) = (text.find(&format!("{name}/width=2")).unwrap(), text.find(&format!("{name}/width=6")).unwrap());
    assert!(a < b, "{text}");
    ablate()
        .arg("compare")
        .arg(&run)
        .args(["--sort", "colour"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("invalid value 'colour' for '--sort <SORT>'"));
}

#[test]
fn several_experiments_share_one_run_folder_and_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 4, 2, 16);
    let dir = tmp.path().join("experiments");
    std::fs::create_dir(&dir).unwrap();
    let a = experiment(&dir, &data, 1);
    let text = std::fs::read_to_string(&a).unwrap();
    std::fs::write(dir.join("b.toml"), text.replace("name = \"tiny\"", "name = \"other\"")).unwrap();
    // A shared base (leading underscore) is not an experiment of its own.
    std::fs::write(dir.join("_base.toml"), "seed = 1\n").unwrap();
    with_params(&a);
    let runs = tmp.path().join("runs");
    run_in(&dir, &runs).assert().success();
    let run = only_run(&runs);
    assert!(run.file_name().unwrap().to_str().unwrap().ends_with("_other+tiny"));
    let rows = ablate::read_runs(&run.join("runs.csv")).unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r.variant.as_str()).collect();
    assert_eq!(names, ["other", "tiny/width=2", "tiny/width=6"]);
    for f in ["other/metrics.csv", "other/experiment.toml", "tiny/experiment.toml", "tiny/width=6/metrics.csv"] {
        assert!(run.join(f).is_file(), "{f}");
    }
}
