//! Config errors: non-zero exit, a message naming the file, key or path, and no run folder.

use std::path::Path;

use predicates::prelude::*;

use crate::common::{ablate, color_folder, experiment};

/// Runs `ablate run file`, expects failure with every `needles` in stderr and no run folder.
fn fails_with(dir: &Path, file: &Path, extra: &[&str], needles: &[&str]) {
    let runs = dir.join("runs");
    let mut cmd = ablate();
    cmd.arg("run").arg(file).arg("--runs-dir").arg(&runs).args(extra);
    let mut assert = cmd.assert().failure();
    for n in needles {
        assert = assert.stderr(predicate::str::contains(*n));
    }
    let left = runs.exists() && std::fs::read_dir(&runs).unwrap().next().is_some();
    assert!(!left, "a failed config must leave no run folder");
}

fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 2, 1, 3);
    let exp = experiment(tmp.path(), &data, 1);
    (tmp, exp)
}

fn edit(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains(from), "fixture lacks {from:?}");
    std::fs::write(file, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn unknown_key_names_it_and_suggests_the_nearest() {
    let (tmp, exp) = setup();
    edit(&exp, "lr = 0.01", "lrr = 0.01");
    fails_with(tmp.path(), &exp, &[], &["tiny.toml", "unknown key `optimizer.lrr`", "did you mean `lr`?"]);
}

#[test]
fn unknown_layer_kind_suggests_the_nearest() {
    let (tmp, exp) = setup();
    edit(&exp, "\"relu\"", "\"rellu\"");
    fails_with(tmp.path(), &exp, &[], &["model.layers.2", "rellu", "did you mean `relu`?"]);
}

#[test]
fn wrong_type_names_key_and_expected_type() {
    let (tmp, exp) = setup();
    edit(&exp, "epochs = 1", "epochs = \"three\"");
    fails_with(tmp.path(), &exp, &[], &["tiny.toml", "train.epochs", "expected"]);
}

#[test]
fn bad_override_names_the_override() {
    let (tmp, exp) = setup();
    fails_with(tmp.path(), &exp, &["--set", "train.epochs=many"], &["--set train.epochs=many", "train.epochs"]);
    fails_with(tmp.path(), &exp, &["--set", "optimizer.lrr=1"], &["unknown key `optimizer.lrr`", "did you mean `lr`?"]);
}

#[test]
fn missing_data_folder_is_named() {
    let (tmp, exp) = setup();
    let missing = tmp.path().join("nowhere");
    edit(&exp, &tmp.path().join("data").display().to_string(), &missing.display().to_string());
    fails_with(tmp.path(), &exp, &[], &["missing training folder", "nowhere"]);
}

#[test]
fn extends_cycle_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.toml");
    std::fs::write(&a, "extends = \"b.toml\"\nname = \"a\"\n").unwrap();
    std::fs::write(tmp.path().join("b.toml"), "extends = \"a.toml\"\n").unwrap();
    fails_with(tmp.path(), &a, &[], &["`extends` forms a cycle", "a.toml -> ", "b.toml"]);
}

#[test]
fn unknown_param_reference_and_bad_shapes_name_the_layer() {
    let (tmp, exp) = setup();
    edit(&exp, "out = 4, kernel = 3", "out = \"$width\", kernel = 3");
    fails_with(tmp.path(), &exp, &[], &["model.layers.0.conv.out", "`$width` is not in model.params"]);
    let (tmp, exp) = setup();
    edit(&exp, "kernel = 3, padding = 1", "kernel = 30, padding = 1");
    fails_with(tmp.path(), &exp, &[], &["model.layers.0 (conv)", "does not fit the 16x16 input"]);
    let (tmp, exp) = setup();
    edit(&exp, "out = 4, kernel = 3", "out = 4, kernel = 3, groups = 2");
    fails_with(tmp.path(), &exp, &[], &["model.layers.0 (conv)", "groups = 2 must divide"]);
}

#[test]
fn extends_merges_deeply_and_the_file_wins() {
    let (tmp, exp) = setup();
    let base = tmp.path().join("_base.toml");
    std::fs::write(&base, "[optimizer]\nkind = \"sgd\"\nmomentum = 0.9\nlr = 0.5\n").unwrap();
    let text = std::fs::read_to_string(&exp).unwrap();
    std::fs::write(&exp, format!("extends = \"_base.toml\"\n{text}")).unwrap();
    let out = ablate().arg("check").arg(&exp).assert().success();
    drop(out);
    let merged = ablate::spec_from_file(&exp, &[], &["a", "b"]).unwrap();
    assert_eq!(merged.optimizer.kind, ablate::OptimizerKind::Sgd);
    assert_eq!(merged.optimizer.momentum, 0.9);
    assert_eq!(merged.optimizer.lr, 0.01, "the experiment file wins over its base");
}

#[test]
fn a_head_of_the_wrong_width_is_refused_naming_both_numbers() {
    let (tmp, exp) = setup();
    edit(&exp, "{ linear = { out = \"$classes\" } }", "{ linear = { out = 3 } }");
    fails_with(tmp.path(), &exp, &[], &["ends in 3 outputs, but the dataset has 2 classes (blue, red)"]);
}

#[test]
fn transforms_that_cannot_make_the_model_input_are_refused() {
    let (tmp, exp) = setup();
    edit(
        &exp,
        "train = [{ resize = [16, 16] }, { hflip = 0.5 }",
        "train = [{ resize = [16, 16] }, { random_crop = 20 }",
    );
    fails_with(tmp.path(), &exp, &[], &["transforms.train.1", "a 20x20 crop does not fit the 16x16 image"]);
    let (tmp, exp) = setup();
    edit(&exp, "train = [{ resize = [16, 16] }", "train = [{ resize = [20, 20] }");
    fails_with(tmp.path(), &exp, &[], &["transforms.train", "makes 20x20 images, but the model takes 16x16"]);
    let (tmp, exp) = setup();
    edit(&exp, "eval = [{ resize = [16, 16] }", "eval = [{ resize = 20 }, { center_crop = 24 }");
    fails_with(tmp.path(), &exp, &[], &["transforms.eval.1", "a 24x24 crop does not fit the at least 20x20 image"]);
}

#[test]
fn a_split_that_leaves_a_class_no_training_image_is_refused() {
    let (tmp, exp) = setup();
    // Two images a class: 0.9 of them rounds to both.
    edit(&exp, "val_fraction = 0.25", "val_fraction = 0.9");
    fails_with(tmp.path(), &exp, &[], &["data.val_fraction = 0.9 holds out all 2 image(s) of class blue"]);
}

#[test]
fn numbers_that_are_not_finite_are_refused_naming_the_key() {
    for (set, needle) in [
        ("optimizer.lr=inf", "`optimizer.lr`: expected a positive number, got inf"),
        ("optimizer.lr=nan", "`optimizer.lr`: expected a positive number, got NaN"),
        ("optimizer.weight_decay=-inf", "optimizer.weight_decay"),
        ("optimizer.betas=[0.9, 1.0]", "`optimizer.betas.1`: expected a number in [0, 1)"),
        ("train.lr_schedule.gamma=nan", "train.lr_schedule.gamma"),
        ("train.lr_schedule.warmup_epochs=inf", "train.lr_schedule.warmup_epochs"),
        ("train.label_smoothing=1.0", "`train.label_smoothing`: expected a share in [0, 1), got 1"),
    ] {
        let (tmp, exp) = setup();
        fails_with(tmp.path(), &exp, &["--set", set], &[needle]);
    }
}

#[test]
fn test_images_without_an_id_or_sharing_one_are_refused_naming_them() {
    let (tmp, exp) = setup();
    let test = tmp.path().join("data/test");
    std::fs::copy(test.join("0.png"), test.join("00.png")).unwrap();
    fails_with(tmp.path(), &exp, &[], &["test images 0.png and 00.png share the submission id 0", "submission.id"]);
    std::fs::remove_file(test.join("00.png")).unwrap();
    std::fs::copy(test.join("0.png"), test.join("cover.png")).unwrap();
    fails_with(tmp.path(), &exp, &[], &["1 test image(s) without a number in their name (cover.png)"]);
    // File names as ids: every name is its own id.
    let runs = tmp.path().join("runs");
    crate::common::run_in(&exp, &runs).args(["--set", "submission.id=\"stem\""]).assert().success();
    let submission = std::fs::read_to_string(crate::common::only_run(&runs).join("submission.csv")).unwrap();
    assert!(submission.contains("\ncover,") && submission.contains("\n0,"), "{submission}");
}

#[test]
fn parameter_groups_name_parameters_of_the_model() {
    let (tmp, exp) = setup();
    fails_with(
        tmp.path(),
        &exp,
        &["--set", "optimizer.lr_mult={ layer9 = 0.1 }"],
        &["optimizer.lr_mult: `layer9` is the start of no parameter's name (the model's start with bn1, conv1, fc)"],
    );
    let (tmp, exp) = setup();
    fails_with(
        tmp.path(),
        &exp,
        &["--set", "optimizer.lr_mult={ conv1 = -1.0 }"],
        &["`conv1` = -1: expected a finite multiplier >= 0"],
    );
    let (tmp, exp) = setup();
    fails_with(tmp.path(), &exp, &["--set", "optimizer.no_decay=[\"conv9\"]"], &["optimizer.no_decay: `conv9`"]);
}

/// Augmentation steps out of the order they can run in, random steps in eval, and values out
/// of torchvision's ranges are refused naming the step.
#[test]
fn augmentations_out_of_order_or_range_are_refused() {
    let cases: [(&str, &[&str]); 8] = [
        (
            "{ rand_augment = { m = 31 } }, { normalize = \"imagenet\" }",
            &["transforms.train.2", "m: expected a magnitude bin below bins = 31, got 31"],
        ),
        (
            "{ trivial_augment = { n = 2 } }, { normalize = \"imagenet\" }",
            &["transforms.train.2", "n and m are rand_augment's"],
        ),
        (
            "{ normalize = \"imagenet\" }, { color_jitter = { brightness = 0.4 } }",
            &["transforms.train.3", "normalize must be the last transform (only random_erasing may follow it)"],
        ),
        (
            "{ color_jitter = { hue = 0.4 } }, { vflip = 0.5 }, { normalize = \"imagenet\" }",
            &["transforms.train.3", "geometric steps"],
        ),
        ("{ random_erasing = {} }, { normalize = \"imagenet\" }", &["transforms.train.3", "random_erasing comes last"]),
        (
            "{ color_jitter = { hue = 0.7 } }, { normalize = \"imagenet\" }",
            &["transforms.train.2", "hue: expected [lo, hi] with -0.5 <= lo <= hi <= 0.5"],
        ),
        (
            "{ gaussian_blur = { kernel = 4 } }, { normalize = \"imagenet\" }",
            &["transforms.train.2", "kernel: expected odd sizes, got 4x4"],
        ),
        (
            "{ random_resized_crop = { size = 16, scale = [0.9, 0.1] } }, { normalize = \"imagenet\" }",
            &["transforms.train.2", "scale: expected [lo, hi]"],
        ),
    ];
    for (steps, needles) in cases {
        let (tmp, exp) = setup();
        edit(&exp, "{ hflip = 0.5 }, { normalize = \"imagenet\" }", &format!("{{ hflip = 0.5 }}, {steps}"));
        fails_with(tmp.path(), &exp, &[], needles);
    }
    let (tmp, exp) = setup();
    edit(&exp, "eval = [{ resize = [16, 16] }", "eval = [{ resize = [16, 16] }, { random_rotation = 10 }");
    fails_with(tmp.path(), &exp, &[], &["transforms.eval.1", "random transforms belong in transforms.train"]);
}

#[test]
fn class_weights_and_mixing_are_checked() {
    let cases: [(&str, &[&str]); 4] = [
        ("train.class_weights=[1.0]", &["train.class_weights", "expected 2 weights (one per class), got 1"]),
        ("train.class_weights=\"even\"", &["expected \"balanced\" or one weight per class"]),
        ("train.mixup=-1", &["train.mixup", "Beta's alpha"]),
        ("train.mixup_prob=2", &["train.mixup_prob", "a probability in [0, 1]"]),
    ];
    for (set, needles) in cases {
        let (tmp, exp) = setup();
        fails_with(tmp.path(), &exp, &["--set", set], needles);
    }
    let (tmp, exp) = setup();
    let both = ["--set", "train.class_weights=\"balanced\"", "--set", "train.cutmix=1.0"];
    fails_with(tmp.path(), &exp, &both, &["class weights do not combine with mixup or cutmix"]);
}

#[test]
fn stateful_recipe_settings_are_checked() {
    let cases: [(&[&str], &[&str]); 4] = [
        (&["train.accumulate=0"], &["train.accumulate", "expected at least 1 batch"]),
        (&["train.ema={ decay = 1.0 }"], &["train.ema.decay", "expected a number in [0, 1), got 1"]),
        (
            &["data.val_fraction=0.0", "train.early_stopping={ monitor = \"val/acc\" }"],
            &["train.early_stopping.monitor", "val/acc needs validation images"],
        ),
        (&["train.lr_schedule={ kind = \"plateau\", monitor = \"val/loss2\" }"], &["lr_schedule", "val/loss2"]),
    ];
    for (sets, needles) in cases {
        let (tmp, exp) = setup();
        let args: Vec<&str> = sets.iter().flat_map(|s| ["--set", s]).collect();
        fails_with(tmp.path(), &exp, &args, needles);
    }
}
