//! Ablations with repeats: seeds `seed + r` on one validation split, k-fold parts, the
//! aggregated summary and its comparisons, and repeats through shards and resume.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ablate::Status;
use predicates::prelude::*;

use crate::common::{ablate, color_folder, experiment, only_run, run_in};

/// A sweep of width 2 and 4 on 20 images (10 a class), with `sweep` appended to `[sweep]`.
fn widths(dir: &Path, sweep: &str) -> PathBuf {
    let data = dir.join("data");
    color_folder(&data, 10, 2, 5);
    let exp = experiment(dir, &data, 1);
    let text = std::fs::read_to_string(&exp).unwrap();
    let text = text.replace("[model]\n", "[model]\nparams = { width = 4 }\n").replace(
        "{ conv = { out = 4, kernel = 3, padding = 1 } }",
        "{ conv = { out = \"$width\", kernel = 3, padding = 1 } }",
    );
    std::fs::write(&exp, format!("{text}\n[sweep]\n\"model.params.width\" = [2, 4]\n{sweep}")).unwrap();
    exp
}

/// The validation images of a run folder, from its `val_predictions.csv`.
fn val_images(dir: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(dir.join("val_predictions.csv")).unwrap();
    text.lines().skip(1).map(|l| l.split(',').next().unwrap().to_string()).collect()
}

fn summary_lines(run: &Path) -> Vec<csv::StringRecord> {
    csv::Reader::from_path(run.join("summary.csv")).unwrap().records().map(Result::unwrap).collect()
}

#[test]
fn repeats_share_the_split_take_seeds_seed_plus_r_and_are_aggregated() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = widths(tmp.path(), "repeats = 3\n");
    let runs = tmp.path().join("runs");
    run_in(&exp, &runs).assert().success();
    let run = only_run(&runs);
    let rows = ablate::read_runs(&run.join("runs.csv")).unwrap();
    let folders: Vec<&str> = rows.iter().map(|r| r.variant.as_str()).collect();
    assert_eq!(folders, ["width=2/r0", "width=2/r1", "width=2/r2", "width=4/r0", "width=4/r1", "width=4/r2"]);
    assert!(rows.iter().all(|r| r.status == Status::Ok));
    let split = val_images(&run.join("width=2/r0"));
    assert_eq!(split.len(), 6, "round(10 * 0.25) of each class");
    for (i, r) in rows.iter().enumerate() {
        let config = std::fs::read_to_string(run.join(&r.variant).join("config.toml")).unwrap();
        assert!(config.contains(&format!("seed = {}\n", 7 + i % 3)), "{}: {config}", r.variant);
        assert_eq!(
            val_images(&run.join(&r.variant)),
            split,
            "{}: repeats and variants validate on one split",
            r.variant
        );
    }
    // One summary line per variant, over its 3 runs, the second compared with the first.
    let lines = summary_lines(&run);
    assert_eq!(lines.len(), 2);
    assert_eq!((&lines[0][0], &lines[0][4], &lines[0][5]), ("width=2", "3", "3"));
    assert!(!lines[0][10].is_empty() && !lines[0][11].is_empty(), "an interval: {:?}", lines[0]);
    let md = std::fs::read_to_string(run.join("summary.md")).unwrap();
    assert!(md.contains("- width=4 vs width=2: ") && md.contains("(paired t-test over 3 repeats)"), "{md}");
    assert!(md.contains("## Runs") && md.contains("| width=4/r2 |"), "{md}");

    // Repeat 1 is the run of seed 8: bit for bit.
    let single = tmp.path().join("single");
    run_in(&exp, &single)
        .args(["--repeats", "1", "--set", "seed=8", "--sweep", "model.params.width=2"])
        .assert()
        .success();
    let a = std::fs::read(only_run(&single).join("width=2/checkpoints/best.safetensors")).unwrap();
    let b = std::fs::read(run.join("width=2/r1/checkpoints/best.safetensors")).unwrap();
    assert_eq!(a, b, "repeat 1 equals a run with seed + 1");
    // Single runs are compared image by image.
    let pair = tmp.path().join("pair");
    run_in(&exp, &pair).args(["--repeats", "1"]).assert().success();
    let md = std::fs::read_to_string(only_run(&pair).join("summary.md")).unwrap();
    assert!(md.contains("(exact McNemar test on 6 validation images)"), "{md}");
}

#[test]
fn folds_validate_on_disjoint_stratified_parts_covering_every_image() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = widths(tmp.path(), "");
    let runs = tmp.path().join("runs");
    run_in(&exp, &runs).args(["--set", "data.folds=3", "--sweep", "model.params.width=2"]).assert().success();
    let run = only_run(&runs);
    let parts: Vec<BTreeSet<String>> = (0..3).map(|k| val_images(&run.join(format!("width=2/r{k}")))).collect();
    let all: BTreeSet<String> = parts.iter().flatten().cloned().collect();
    assert_eq!(all.len(), 20, "every image validates once");
    assert_eq!(parts.iter().map(BTreeSet::len).sum::<usize>(), 20, "the parts are disjoint");
    for p in &parts {
        let blue = p.iter().filter(|i| i.starts_with("blue/")).count();
        assert!((3..=4).contains(&blue) && (3..=4).contains(&(p.len() - blue)), "stratified: {p:?}");
    }
    let config = std::fs::read_to_string(run.join("width=2/r2/config.toml")).unwrap();
    assert!(config.contains("folds = 3\n") && config.contains("fold = 2\n"), "{config}");
    // Folds set the repeats.
    run_in(&exp, &tmp.path().join("bad"))
        .args(["--set", "data.folds=3", "--repeats", "2"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("data.folds = 3 trains each variant once per fold"));
}

#[test]
fn the_baseline_is_named_in_the_sweep_and_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = widths(tmp.path(), "baseline = \"width=4\"\n");
    let runs = tmp.path().join("runs");
    run_in(&exp, &runs).assert().success();
    let md = std::fs::read_to_string(only_run(&runs).join("summary.md")).unwrap();
    assert!(md.contains("## Against the baseline, `width=4`") && md.contains("- width=2 vs width=4: "), "{md}");
    let text = std::fs::read_to_string(&exp).unwrap();
    std::fs::write(&exp, text.replace("baseline = \"width=4\"", "baseline = \"width=8\"")).unwrap();
    run_in(&exp, &tmp.path().join("bad"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("sweep.baseline = \"width=8\" is not one of the variants (width=2, width=4)"));
}

#[test]
fn repeats_shard_and_resume_like_variants() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = widths(tmp.path(), "repeats = 2\n");
    let runs = tmp.path().join("runs");
    let task = |shard: &str| {
        let mut c = ablate();
        c.arg("run").arg(&exp).arg("--runs-dir").arg(&runs).args(["--shard", shard, "--run-id", "5"]);
        c
    };
    // Four runs; shard 1 of 2 takes width=2/r1 and width=4/r1, and is stopped in its first.
    task("0/2").assert().success();
    task("1/2").args(["--stop-after-steps", "1"]).assert().code(130);
    let run = runs.join("5_tiny");
    let rows = ablate::read_runs(&run.join("runs.csv")).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.status).collect::<Vec<_>>(),
        [Status::Ok, Status::Pending, Status::Ok, Status::Pending]
    );
    let md = std::fs::read_to_string(run.join("summary.md")).unwrap();
    assert!(md.contains("pending (1 of 2 done)"), "{md}");
    ablate().arg("resume").arg(&run).assert().success();
    let lines = summary_lines(&run);
    assert!(lines.iter().all(|l| &l[4] == "2" && &l[6] == "ok"), "{lines:?}");
    let log = std::fs::read_to_string(run.join("width=2/r1/log.txt")).unwrap();
    assert!(log.contains("resuming after 0 epochs and 1 batches"), "{log}");
}

/// `ablate evaluate` on a labelled folder gives the confusion matrix that the run's own
/// predictions (`ablate predict` on the same images, unlabelled) give; `--probs` adds each
/// class's probability; a run writes its validation report.
#[test]
fn evaluate_scores_a_labelled_folder_as_predict_sees_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 8, 2, 3);
    let exp = experiment(tmp.path(), &data, 2);
    let runs = tmp.path().join("runs");
    run_in(&exp, &runs).assert().success();
    let run = only_run(&runs);
    let val = std::fs::read_to_string(run.join("eval/val_confusion.csv")).unwrap();
    assert!(val.starts_with("true \\ predicted,blue,red\n"), "{val}");
    assert!(run.join("eval/val_per_class.csv").is_file() && run.join("eval/val_confusion.png").is_file());
    let log = std::fs::read_to_string(run.join("log.txt")).unwrap();
    assert!(log.contains("validation with best.safetensors (epoch ") && log.contains("): accuracy "), "{log}");
    let metrics = ablate::read_metrics(&run.join("metrics.csv")).unwrap();
    assert!(metrics.iter().all(|m| m.val_top5_acc.is_none() && m.val_macro_f1.is_some()), "two classes: no top-5");

    // Another labelled set (other images), and the same images flat, numbered 1..
    let other = tmp.path().join("other");
    color_folder(&other, 7, 0, 99);
    let labelled = other.join("train");
    let flat = tmp.path().join("flat");
    std::fs::create_dir_all(&flat).unwrap();
    let mut labels = Vec::new();
    for (label, class) in ["blue", "red"].iter().enumerate() {
        let mut files: Vec<_> = std::fs::read_dir(labelled.join(class)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files {
            labels.push(label);
            std::fs::copy(&f, flat.join(format!("{}.png", labels.len()))).unwrap();
        }
    }
    ablate()
        .arg("evaluate")
        .arg(&run)
        .arg("--data")
        .arg(&labelled)
        .assert()
        .success()
        .stdout(predicate::str::contains("accuracy ").and(predicate::str::contains("| blue |")));
    let out = tmp.path().join("flat.csv");
    ablate().arg("predict").arg(&run).arg("--data").arg(&flat).arg("--out").arg(&out).arg("--probs").assert().success();
    let mut confusion = [[0u64; 2]; 2];
    let text = std::fs::read_to_string(&out).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("id,label,p_blue,p_red"));
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let (id, predicted): (usize, usize) = (f[0].parse().unwrap(), f[1].parse().unwrap());
        let (pb, pr): (f64, f64) = (f[2].parse().unwrap(), f[3].parse().unwrap());
        assert!((pb + pr - 1.0).abs() < 1e-5 && usize::from(pr > pb) == predicted, "{line}");
        confusion[labels[id - 1]][predicted] += 1;
    }
    let expected = format!(
        "true \\ predicted,blue,red\nblue,{},{}\nred,{},{}\n",
        confusion[0][0], confusion[0][1], confusion[1][0], confusion[1][1]
    );
    assert_eq!(std::fs::read_to_string(run.join("eval/train_confusion.csv")).unwrap(), expected);
    assert!(run.join("eval/train_predictions.csv").is_file());
    // A report is never overwritten; a folder of other classes is refused, naming it.
    ablate()
        .arg("evaluate")
        .arg(&run)
        .arg("--data")
        .arg(&labelled)
        .assert()
        .failure()
        .stderr(predicate::str::contains("already exists"));
    std::fs::create_dir_all(flat.join("green")).unwrap();
    ablate()
        .arg("evaluate")
        .arg(&run)
        .arg("--data")
        .arg(&flat)
        .assert()
        .failure()
        .stderr(predicate::str::contains("`green` is not one of the run's classes (blue, red)"));
}

/// A dataset root's `test_labels.csv` (or `data.test_labels`) answers the test images: the run
/// reports the test accuracy of best.safetensors, the accuracy its submission.csv scores.
#[test]
fn test_labels_give_the_test_accuracy_of_the_submission() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 8, 9, 3);
    // color_folder makes test image i red (class 1) when i is even.
    let answers: Vec<usize> = (0..9).map(|i| usize::from(i % 2 == 0)).collect();
    let labels: String = answers.iter().enumerate().map(|(i, a)| format!("{i},{}\n", ["blue", "red"][*a])).collect();
    std::fs::write(data.join("test_labels.csv"), format!("id,label\n{labels}")).unwrap();
    let exp = experiment(tmp.path(), &data, 2);
    let runs = tmp.path().join("runs");
    run_in(&exp, &runs).assert().success();
    let run = only_run(&runs);
    let submission = std::fs::read_to_string(run.join("submission.csv")).unwrap();
    let right = submission
        .lines()
        .skip(1)
        .filter(|l| {
            let (id, label) = l.split_once(',').unwrap();
            answers[id.parse::<usize>().unwrap()] == label.parse::<usize>().unwrap()
        })
        .count();
    let rows = ablate::read_runs(&run.join("runs.csv")).unwrap();
    assert_eq!(rows[0].test_images, Some(9));
    assert_eq!(rows[0].test_acc, Some(right as f64 / 9.0));
    assert!(run.join("eval/test_confusion.csv").is_file());
    let md = std::fs::read_to_string(run.join("summary.md")).unwrap();
    assert!(md.contains("| test acc |") && md.contains(&format!("{:.4} ± ", right as f64 / 9.0)), "{md}");

    // An image without an answer: refused before anything is written, naming it.
    std::fs::write(data.join("test_labels.csv"), "id,label\n0,red\n1,blue\n").unwrap();
    let refused = tmp.path().join("refused");
    run_in(&exp, &refused)
        .assert()
        .failure()
        .stderr(predicate::str::contains("test_labels.csv: no label for 7 test image id(s): 2, 3, 4, 5, 6, ..."));
    assert!(!refused.exists());
    // "" turns the answers off.
    run_in(&exp, &tmp.path().join("off")).args(["--set", "data.test_labels=\"\""]).assert().success();
}

/// With more than 5 classes, validation also reports top-5 accuracy (at least the accuracy);
/// with fewer it has none. The macro F1 is every epoch's too.
#[test]
fn top5_accuracy_with_more_than_five_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 6, 1, 3);
    // Six classes: each colour folder copied into three.
    for (class, from) in [("a", "blue"), ("b", "blue"), ("c", "blue"), ("d", "red"), ("e", "red"), ("f", "red")] {
        let dir = data.join("train").join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(data.join("train").join(from)).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::remove_dir_all(data.join("train/blue")).unwrap();
    std::fs::remove_dir_all(data.join("train/red")).unwrap();
    let exp = experiment(tmp.path(), &data, 2);
    let text = std::fs::read_to_string(&exp).unwrap().replace("val_fraction = 0.25", "val_fraction = 0.34");
    std::fs::write(&exp, text).unwrap();
    let runs = tmp.path().join("runs");
    run_in(&exp, &runs).assert().success();
    let metrics = ablate::read_metrics(&only_run(&runs).join("metrics.csv")).unwrap();
    for m in &metrics {
        let (acc, top5) = (m.val_acc.unwrap(), m.val_top5_acc.unwrap());
        assert!(acc <= top5 && top5 <= 1.0, "{m:?}");
        assert!(m.val_macro_f1.is_some());
    }
}

/// A test folder laid out as a training folder (`test/<class>/...`) answers itself.
#[test]
fn a_test_folder_of_class_folders_gives_the_test_accuracy() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 8, 0, 3);
    let source = tmp.path().join("source");
    color_folder(&source, 4, 0, 11);
    let mut answers = std::collections::HashMap::new();
    for (label, class) in ["blue", "red"].iter().enumerate() {
        std::fs::create_dir_all(data.join("test").join(class)).unwrap();
        for i in 0..4 {
            let id = 10 * label + i; // unique across the class folders
            std::fs::copy(source.join(format!("train/{class}/{i}.png")), data.join(format!("test/{class}/{id}.png")))
                .unwrap();
            answers.insert(id.to_string(), label.to_string());
        }
    }
    let exp = experiment(tmp.path(), &data, 2);
    let runs = tmp.path().join("runs");
    run_in(&exp, &runs).assert().success();
    let run = only_run(&runs);
    let submission = std::fs::read_to_string(run.join("submission.csv")).unwrap();
    let right =
        submission.lines().skip(1).filter(|l| l.split_once(',').is_some_and(|(id, c)| answers[id] == c)).count();
    let rows = ablate::read_runs(&run.join("runs.csv")).unwrap();
    assert_eq!((rows[0].test_images, rows[0].test_acc), (Some(8), Some(right as f64 / 8.0)));
}
