//! TensorBoard event files: framing and CRCs valid, scalars at the right steps with the values
//! of metrics.csv; and (with `make test`) read by the real TensorBoard.

use crate::common::{color_folder, experiment, only_run, run_in};

fn one_run() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 6, 2, 8);
    let exp = experiment(tmp.path(), &data, 3);
    let runs = tmp.path().join("runs");
    run_in(&exp, &runs).assert().success();
    let run = only_run(&runs);
    (tmp, run)
}

/// A run killed after it recorded epoch 2 but before it committed it, then resumed: its first
/// event file holds epoch 2 from the killed attempt, its second epochs 2 and 3 again.
fn resumed_run() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 6, 2, 8);
    let exp = experiment(tmp.path(), &data, 3);
    let runs = tmp.path().join("runs");
    // Crash points: six per epoch commit; the 9th is inside epoch 2's, after its state file.
    let killed = run_in(&exp, &runs).env("ABLATE_CRASH_AT", "9").assert().failure();
    drop(killed);
    let run = only_run(&runs);
    assert_eq!(ablate::read_metrics(&run.join("metrics.csv")).unwrap().len(), 2, "epoch 2 recorded before the kill");
    crate::common::ablate().arg("resume").arg(&run).assert().success();
    assert_eq!(ablate::event_files(&run).unwrap().len(), 2);
    (tmp, run)
}

/// metrics.csv as (column name -> value per epoch).
fn metrics(run: &std::path::Path) -> Vec<std::collections::HashMap<String, String>> {
    let mut r = csv::Reader::from_path(run.join("metrics.csv")).unwrap();
    r.deserialize().map(|row| row.unwrap()).collect()
}

const TAGS: [(&str, &str); 7] = [
    ("train/loss", "train_loss"),
    ("train/acc", "train_acc"),
    ("val/loss", "val_loss"),
    ("val/acc", "val_acc"),
    ("val/macro_f1", "val_macro_f1"),
    ("lr", "lr"),
    ("images_per_sec", "images_per_sec"),
];

#[test]
fn event_file_holds_every_scalar_of_every_epoch() {
    let (_tmp, run) = one_run();
    let files = ablate::event_files(&run).unwrap();
    let scalars = ablate::read_scalars(&files[0]).unwrap();
    let rows = metrics(&run);
    for (tag, column) in TAGS {
        let got: Vec<(i64, f32)> = scalars.iter().filter(|s| s.tag == tag).map(|s| (s.step, s.value)).collect();
        let want: Vec<(i64, f32)> =
            rows.iter().map(|r| (r["epoch"].parse().unwrap(), r[column].parse::<f64>().unwrap() as f32)).collect();
        assert_eq!(got, want, "{tag}");
    }
    // Each class's precision, recall and F1, every epoch (a class predicted nowhere has no
    // precision, hence no F1).
    for kind in ["precision", "f1"] {
        assert!(scalars.iter().any(|s| s.tag.starts_with(&format!("val/{kind}/"))), "no val/{kind}/<class>");
    }
    for class in ["blue", "red"] {
        let tag = format!("val/recall/{class}");
        let got: Vec<&ablate::Scalar> = scalars.iter().filter(|s| s.tag == tag).collect();
        assert_eq!(got.len(), rows.len(), "{tag}");
        assert!(got.iter().all(|s| (0.0..=1.0).contains(&s.value)), "{tag}");
    }
}

#[test]
fn a_corrupted_event_file_is_rejected() {
    let (_tmp, run) = one_run();
    let file = &ablate::event_files(&run).unwrap()[0];
    let mut bytes = std::fs::read(file).unwrap();
    let n = bytes.len();
    bytes[n - 6] ^= 0xff;
    std::fs::write(file, bytes).unwrap();
    assert!(ablate::read_scalars(file).unwrap_err().to_string().contains("CRC"));
}

/// The real TensorBoard (`EventAccumulator`) reads a run, and a resumed one, with each epoch
/// once and the values of metrics.csv. Needs Python with the
/// `tensorboard` package: `make test` installs it into .venv and sets TB_PYTHON.
#[test]
#[ignore = "needs Python's tensorboard package: run through `make test`"]
fn real_tensorboard_reads_the_scalars() {
    let python = std::env::var("TB_PYTHON")
        .expect("TB_PYTHON must name a Python with tensorboard installed (make test sets it)");
    // A resumed run too: TensorBoard must drop the killed attempt's points past the commit.
    for (_tmp, run) in [one_run(), resumed_run()] {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/tensorboard_scalars.py");
        let out = std::process::Command::new(&python).arg(script).arg(&run).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        // One line per scalar: tag step value
        let text = String::from_utf8(out.stdout).unwrap();
        let rows = metrics(&run);
        for (tag, column) in TAGS {
            let got: Vec<(i64, f32)> = text
                .lines()
                .filter_map(|l| {
                    let mut parts = l.split(' ');
                    (parts.next() == Some(tag))
                        .then(|| (parts.next().unwrap().parse().unwrap(), parts.next().unwrap().parse().unwrap()))
                })
                .collect();
            let want: Vec<(i64, f32)> =
                rows.iter().map(|r| (r["epoch"].parse().unwrap(), r[column].parse::<f64>().unwrap() as f32)).collect();
            assert_eq!(got, want, "{tag} as TensorBoard reads it ({})", run.display());
        }
        // The validation confusion matrix of the best weights, as a picture at the best epoch
        // (the first of the highest validation accuracy).
        let accs: Vec<f64> = rows.iter().map(|r| r["val_acc"].parse().unwrap()).collect();
        let best = 1 + accs.iter().position(|a| *a == accs.iter().cloned().fold(f64::MIN, f64::max)).unwrap();
        assert!(text.contains(&format!("image val/confusion {best} 660 ")), "{text}");
    }
}

/// TensorBoard's own HParams plugin backend serves a sweep: the swept key with its domain,
/// one session group per variant with its value, metrics and status. Needs Python's
/// `tensorboard` package (`make test` sets TB_PYTHON).
#[test]
#[ignore = "needs Python's tensorboard package: run through `make test`"]
fn real_tensorboard_serves_the_hparams_of_a_sweep() {
    let python = std::env::var("TB_PYTHON")
        .expect("TB_PYTHON must name a Python with tensorboard installed (make test sets it)");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 6, 2, 15);
    std::fs::write(data.join("train/red/broken.png"), b"garbage").unwrap();
    let exp = experiment(tmp.path(), &data, 2);
    let runs = tmp.path().join("runs");
    run_in(&exp, &runs).args(["--sweep", "data.skip_bad=false,true"]).assert().failure();
    let run = only_run(&runs);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/tensorboard_hparams.py");
    let out = std::process::Command::new(python).arg(script).arg(&run).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let served: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let infos = served["experiment"]["hparamInfos"].as_array().unwrap();
    let swept = infos.iter().find(|i| i["name"] == "data.skip_bad").expect("the swept key is a hyper-parameter");
    assert_eq!(swept["domainDiscrete"], serde_json::json!([false, true]));
    assert!(infos.iter().any(|i| i["name"] == "optimizer.lr"));
    let metrics: Vec<&str> = served["experiment"]["metricInfos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"]["tag"].as_str().unwrap())
        .collect();
    assert!(metrics.contains(&"val/acc") && metrics.contains(&"best/val_acc"));

    let groups = served["session_groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2);
    let group =
        |name: &str| groups.iter().find(|g| g["name"] == name).unwrap_or_else(|| panic!("no session group {name}"));
    let ok = group("skip_bad=true");
    assert_eq!(ok["hparams"]["data.skip_bad"], true);
    assert_eq!(ok["sessions"][0]["status"], "STATUS_SUCCESS");
    let rows = ablate::read_runs(&run.join("runs.csv")).unwrap();
    let best = ok["metricValues"].as_array().unwrap().iter().find(|m| m["name"]["tag"] == "best/val_acc").unwrap();
    assert!((best["value"].as_f64().unwrap() - rows[1].best_val_acc.unwrap()).abs() < 1e-6);
    let failed = group("skip_bad=false");
    assert_eq!(failed["sessions"][0]["status"], "STATUS_FAILURE");
}
