//! End to end through the binary: a run leaves every file; `predict` reproduces the submission.

use predicates::prelude::*;

use crate::common::{ablate, color_folder, experiment, only_run, run_in};

#[test]
fn run_leaves_the_whole_tree_and_predict_reproduces_the_submission() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 12, 12, 1);
    let exp = experiment(tmp.path(), &data, 2);
    let runs = tmp.path().join("runs");
    run_in(&exp, &runs).arg("--set").arg("seed=3").assert().success();

    let run = only_run(&runs);
    let name = run.file_name().unwrap().to_str().unwrap();
    // <YYYY-MM-DD_HH-MM-SS>_tiny
    assert_eq!(name.len(), "2026-11-29_07-30-12_tiny".len(), "{name}");
    assert!(name.ends_with("_tiny") && name.as_bytes()[10] == b'_', "{name}");
    for f in [
        "experiment.toml",
        "config.toml",
        "metrics.csv",
        "submission.csv",
        "log.txt",
        "checkpoints/last.safetensors",
        "checkpoints/best.safetensors",
    ] {
        assert!(run.join(f).is_file(), "missing {f}");
    }
    assert_eq!(ablate::event_files(&run).unwrap().len(), 1);
    let written = std::fs::read_to_string(run.join("experiment.toml")).unwrap();
    assert!(written.starts_with(&std::fs::read_to_string(&exp).unwrap()) && written.contains("# --set seed=3"));
    assert!(std::fs::read_to_string(run.join("config.toml")).unwrap().contains("seed = 3"));

    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let lines: Vec<&str> = metrics.lines().collect();
    assert_eq!(
        lines[0],
        "epoch,train_loss,train_acc,val_loss,val_acc,lr,images_per_sec,seconds,val_macro_f1,val_top5_acc"
    );
    assert_eq!(lines.len(), 1 + 2, "one row per epoch");

    let submission = std::fs::read_to_string(run.join("submission.csv")).unwrap();
    let ids: Vec<&str> = submission.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
    let expected: Vec<String> = (0..12).map(|i| i.to_string()).collect();
    assert_eq!(submission.lines().next(), Some("id,label"));
    assert_eq!(ids, expected, "one row per test image, natural order (2 before 10)");
    assert!(submission.lines().skip(1).all(|l| l.ends_with(",0") || l.ends_with(",1")));

    // predict from the saved best checkpoint writes the same submission without retraining.
    let out = tmp.path().join("again.csv");
    ablate().arg("predict").arg(&run).arg("--out").arg(&out).assert().success();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), submission);
    // ... and never overwrites a file.
    ablate()
        .arg("predict")
        .arg(&run)
        .arg("--out")
        .arg(&out)
        .assert()
        .failure()
        .stderr(predicates::str::contains("already exists"));
}

#[test]
fn check_prints_shapes_params_and_macs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 2, 1, 2);
    let exp = experiment(tmp.path(), &data, 1);
    // conv 3->4 k3 p1 on 16x16: 4*3*9 + 4 = 112 params, 4*16*16*27 = 27,648 MACs;
    // bn: 8 params; linear 4*8*8 = 256 -> 2: 514 params, 512 MACs. Total 634 params.
    ablate()
        .arg("check")
        .arg(&exp)
        .assert()
        .success()
        .stdout(predicates::str::contains("(4, 16, 16)"))
        .stdout(predicates::str::contains("27,648"))
        .stdout(predicates::str::contains("total: 634 parameters"));
    assert!(!tmp.path().join("runs").exists(), "check writes nothing");
}

#[test]
fn an_unreadable_image_is_named_or_skipped_with_skip_bad() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 6, 2, 5);
    let bad = data.join("train/red/broken.jpg");
    std::fs::write(&bad, b"not a jpeg at all").unwrap();
    let exp = experiment(tmp.path(), &data, 1);
    let runs = tmp.path().join("runs");
    run_in(&exp, &runs)
        .assert()
        .failure()
        .stderr(predicates::str::contains("cannot read image").and(predicates::str::contains("broken.jpg")));
    run_in(&exp, &tmp.path().join("runs2"))
        .args(["--set", "data.skip_bad=true"])
        .assert()
        .success()
        .stderr(predicates::str::contains("warning: skipping").and(predicates::str::contains("broken.jpg")));
}

#[test]
fn grey_alpha_and_16_bit_images_are_read_as_rgb() {
    let tmp = tempfile::tempdir().unwrap();
    let grey = tmp.path().join("grey16.png");
    image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_pixel(3, 2, image::Luma([65535])).save(&grey).unwrap();
    let rgba = tmp.path().join("rgba.png");
    image::RgbaImage::from_pixel(2, 2, image::Rgba([10, 20, 30, 0])).save(&rgba).unwrap();
    let g = ablate::decode(&grey, u64::MAX).unwrap();
    assert_eq!((g.width(), g.height(), g.get_pixel(0, 0).0), (3, 2, [255, 255, 255]));
    assert_eq!(ablate::decode(&rgba, u64::MAX).unwrap().get_pixel(1, 1).0, [10, 20, 30]);
}

/// Device choices a CPU-only build must answer clearly, before any run folder exists.
#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_requests_and_bf16_on_the_cpu_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 4, 2, 3);
    let exp = experiment(tmp.path(), &data, 1);
    let runs = tmp.path().join("runs");
    for (args, needle) in [
        (vec!["--device", "cuda:1"], "device cuda:1 requested, but this ablate was built without CUDA"),
        (vec!["--set", "train.device=\"cuda\""], "rebuild with `cargo build --release --features cuda`"),
        (vec!["--device", "tpu"], "for '--device <DEVICE>': unknown device \"tpu\""),
        (vec!["--set", "train.precision=\"bf16\""], "train.precision = \"bf16\" needs a CUDA device"),
        (vec!["--set", "train.precision=\"fp8\""], "train.precision"),
    ] {
        run_in(&exp, &runs).args(&args).assert().failure().stderr(predicate::str::contains(needle));
        assert!(!runs.exists() || std::fs::read_dir(&runs).unwrap().next().is_none(), "{args:?} left a run folder");
    }
    // auto falls back to the CPU, saying so once in the log.
    run_in(&exp, &runs).assert().success();
    let log = std::fs::read_to_string(only_run(&runs).join("log.txt")).unwrap();
    assert_eq!(log.matches("no CUDA GPU available to this build, training on the CPU").count(), 1, "{log}");
}

/// A JPEG cut short decodes without complaint in the image crate (its missing rows grey);
/// ablate refuses it as PIL does, naming it, and `skip_bad` skips it.
#[test]
fn a_truncated_jpeg_is_an_error_and_skip_bad_skips_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 6, 2, 5);
    let whole = tmp.path().join("whole.jpg");
    let img = image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, ((x ^ y) * 4) as u8]));
    img.save(&whole).unwrap();
    let bytes = std::fs::read(&whole).unwrap();
    let cut = data.join("train/red/cut.jpg");
    std::fs::write(&cut, &bytes[..bytes.len() * 6 / 10]).unwrap();
    assert!(image::open(&cut).is_ok(), "the image crate alone accepts the truncated file");
    assert!(ablate::decode(&whole, u64::MAX).is_ok());
    let err = ablate::decode(&cut, u64::MAX).unwrap_err().to_string();
    assert!(err.contains("cut.jpg") && err.contains("the JPEG is truncated"), "{err}");

    let exp = experiment(tmp.path(), &data, 1);
    run_in(&exp, &tmp.path().join("runs"))
        .assert()
        .failure()
        .stderr(predicates::str::contains("cut.jpg: the JPEG is truncated"));
    run_in(&exp, &tmp.path().join("runs2"))
        .args(["--set", "data.skip_bad=true"])
        .assert()
        .success()
        .stderr(predicates::str::contains("warning: skipping").and(predicates::str::contains("cut.jpg")));
}

/// An image over `data.max_pixels` is refused from its header, before it is decoded.
#[test]
fn an_image_over_the_pixel_limit_is_refused_by_its_header() {
    let tmp = tempfile::tempdir().unwrap();
    // 20000 x 20000 pixels of one bit: a 50 KB file that decodes into 1.2 GB of RGB; the
    // header alone says so.
    let huge = tmp.path().join("huge.png");
    let mut header = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut header, 20000, 20000);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::One);
        let mut writer = enc.write_header().unwrap();
        writer.write_image_data(&vec![0u8; 20000 * 2500]).unwrap();
    }
    assert!(header.len() < 1 << 20, "{} bytes", header.len());
    std::fs::write(&huge, &header).unwrap();
    let err = ablate::decode(&huge, 1 << 26).unwrap_err().to_string();
    assert!(
        err.contains("huge.png")
            && err.contains("20000x20000 = 400000000 pixels, more than data.max_pixels = 67108864"),
        "{err}"
    );

    let data = tmp.path().join("data");
    color_folder(&data, 6, 2, 5);
    let exp = experiment(tmp.path(), &data, 1);
    run_in(&exp, &tmp.path().join("runs"))
        .args(["--set", "data.max_pixels=100"])
        .assert()
        .failure()
        .stderr(predicates::str::contains("more than data.max_pixels = 100"));
}
