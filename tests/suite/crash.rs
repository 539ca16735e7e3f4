//! A run killed with SIGKILL at any point resumes to the bytes of an uninterrupted run: the
//! final checkpoints and submission are identical and metrics.csv has each epoch once.
//!
//! Kill points: every named crash point of a run in turn (`ABLATE_CRASH_AT=k` makes the process
//! raise SIGKILL at its k-th point: between the durable steps of each epoch's commit and of the
//! finishing steps), a second one in the resume that follows, and `kill -9` from outside at
//! seeded random instants of a run.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::common::{color_folder, experiment, only_run};

const EPOCHS: usize = 3;
/// What must come out byte for byte.
const FILES: [&str; 3] = ["checkpoints/last.safetensors", "checkpoints/best.safetensors", "submission.csv"];
/// Dropout, augmentation and mixup (every seeded stream must continue exactly), and the
/// recipe pieces with state of their own: the weights' average (a fourth file in each
/// commit), gradient accumulation and the plateau schedule.
const SET: [&str; 12] = [
    "--set",
    "model.layers=[{ conv = { out = 4, kernel = 3, padding = 1 } }, \"batch_norm\", \"relu\", { max_pool = { kernel = 2 } }, { dropout = 0.3 }, { linear = { out = \"$classes\" } }]",
    "--set",
    "transforms.train=[{ resize = [18, 18] }, { random_crop = [16, 16] }, { hflip = 0.5 }, { color_jitter = { brightness = 0.2 } }, { normalize = \"imagenet\" }]",
    "--set",
    "train.mixup=0.4",
    "--set",
    "train.ema={ decay = 0.9 }",
    "--set",
    "train.accumulate=2",
    "--set",
    "train.lr_schedule={ kind = \"plateau\", monitor = \"train/loss\", patience = 0, threshold = 0.3 }",
];

/// `ablate` with kernels planned by timing, as users run it, and a cache of this test's own:
/// the reference run times each pass once, every later run reuses its choices (so all runs
/// use one plan), and each resume must take the plan its run recorded.
fn bin() -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("ablate"));
    c.env("ABLATE_TUNE", "on")
        .env("XDG_CACHE_HOME", std::env::temp_dir().join(format!("ablate-crash-cache-{}", std::process::id())));
    c
}

fn run_cmd(exp: &Path, runs: &Path) -> Command {
    let mut c = bin();
    c.arg("run").arg(exp).arg("--runs-dir").arg(runs).args(SET).stdout(Stdio::null()).stderr(Stdio::null());
    c
}

fn resume_cmd(run: &Path) -> Command {
    let mut c = bin();
    c.arg("resume").arg(run).stdout(Stdio::null()).stderr(Stdio::null());
    c
}

/// Runs `cmd` with a crash at its `k`-th point; true when it was killed there.
fn crash_at(mut cmd: Command, k: usize) -> bool {
    let status = cmd.env("ABLATE_CRASH_AT", k.to_string()).status().unwrap();
    status.signal() == Some(libc::SIGKILL) || {
        assert!(status.success(), "exit {status:?} instead of a kill at point {k}");
        false
    }
}

/// Resumes until the run finishes (a resume killed again is resumed again).
fn finish(run: &Path) {
    let status = resume_cmd(run).status().unwrap();
    assert!(status.success(), "resume of {} failed: {status:?}\n{}", run.display(), log(run));
}

fn log(run: &Path) -> String {
    std::fs::read_to_string(run.join("log.txt")).unwrap_or_default()
}

/// The run's outputs and its epochs as metrics.csv lists them.
fn outcome(run: &Path) -> (Vec<Vec<u8>>, Vec<usize>) {
    let files = FILES.iter().map(|f| std::fs::read(run.join(f)).unwrap()).collect();
    let epochs = ablate::read_metrics(&run.join("metrics.csv")).unwrap().iter().map(|m| m.epoch).collect();
    (files, epochs)
}

fn check(run: &Path, reference: &(Vec<Vec<u8>>, Vec<usize>), what: &str) {
    let (files, epochs) = outcome(run);
    assert_eq!(epochs, (1..=EPOCHS).collect::<Vec<_>>(), "{what}: metrics.csv epochs");
    for (f, (a, b)) in FILES.iter().zip(files.iter().zip(&reference.0)) {
        assert!(a == b, "{what}: {f} differs from the uninterrupted run's");
    }
    let rows = ablate::read_runs(&run.join("runs.csv")).unwrap();
    assert_eq!(rows[0].status, ablate::Status::Ok, "{what}: summary status");
    let leftovers: Vec<PathBuf> = walk(run)
        .into_iter()
        .filter(|p| {
            p.file_name().unwrap().to_string_lossy().starts_with(".tmp") || p.to_string_lossy().contains(".partial")
        })
        .collect();
    assert!(leftovers.is_empty(), "{what}: temporary files left: {leftovers:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

/// The crash points a run passes, counted from its trace.
fn points(exp: &Path, runs: &Path) -> Vec<String> {
    let out = run_cmd(exp, runs).env("ABLATE_CRASH_TRACE", "1").stderr(Stdio::piped()).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| l.strip_prefix("ABLATE_CRASH_POINT "))
        .map(|l| l.split_once(' ').unwrap().1.to_string())
        .collect()
}

#[test]
fn a_kill_at_any_point_resumes_to_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 12, 3, 41);
    let exp = experiment(tmp.path(), &data, EPOCHS);
    let reference = tmp.path().join("reference");
    assert!(run_cmd(&exp, &reference).status().unwrap().success());
    let reference = outcome(&only_run(&reference));

    let names = points(&exp, &tmp.path().join("trace"));
    assert!(names.iter().filter(|n| n.starts_with("commit")).count() >= 6 * EPOCHS, "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("finish")), "{names:?}");
    let (mut kills, mut early) = (0, 0);
    for k in 1..=names.len() {
        let runs = tmp.path().join(format!("k{k}"));
        assert!(crash_at(run_cmd(&exp, &runs), k), "no kill at point {k} ({})", names[k - 1]);
        kills += 1;
        let run = only_run(&runs);
        // A second kill, in the resume, at another point.
        if crash_at(resume_cmd(&run), (k * 7) % names.len() + 1) {
            kills += 1;
        }
        finish(&run);
        check(&run, &reference, &format!("killed at point {k} ({})", names[k - 1]));
    }

    // kill -9 from outside at seeded random instants while it trains.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
    let straight = Instant::now();
    assert!(run_cmd(&exp, &tmp.path().join("timing")).status().unwrap().success());
    let span = straight.elapsed();
    for i in 0..40 {
        let runs = tmp.path().join(format!("r{i}"));
        let mut child = run_cmd(&exp, &runs).spawn().unwrap();
        // Once the run folder exists, wait a random part of a run's length.
        while !runs.read_dir().is_ok_and(|mut d| d.next().is_some()) {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(span.mul_f64(rng.gen_range(0.0..0.8)));
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        kills += usize::from(status.signal() == Some(libc::SIGKILL));
        let run = only_run(&runs);
        if !run.join("variants.csv").exists() {
            // Killed before anything trained: resume says so, and a new run is the way on.
            let out = resume_cmd(&run).stderr(Stdio::piped()).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success() && err.contains("nothing to resume"), "{err}");
            assert!(!run.join("metrics.csv").exists());
            early += 1;
            continue;
        }
        if !status.success() {
            finish(&run);
        }
        check(&run, &reference, &format!("kill -9 {i}"));
    }
    assert!(kills >= 50, "only {kills} kills");
    eprintln!(
        "{kills} kills ({} named points, {early} before training started), every resume byte-identical",
        names.len()
    );
}

/// Flips bytes in the middle of `path` (inside the tensor data).
fn damage(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 8] {
        *b ^= 0x5a;
    }
    // Through a new file: the views are hard links of the commit's files and stay as they were.
    std::fs::remove_file(path).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// A run stopped in its second epoch (Ctrl-C's path), with its folder, data and experiment.
fn stopped_run() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 12, 3, 41);
    let exp = experiment(tmp.path(), &data, EPOCHS);
    let runs = tmp.path().join("runs");
    let status = run_cmd(&exp, &runs).args(["--stop-after-steps", "4"]).status().unwrap();
    assert_eq!(status.code(), Some(130));
    let run = only_run(&runs);
    (tmp, data, exp, run)
}

fn commit_dir(run: &Path) -> PathBuf {
    let name = std::fs::read_to_string(run.join("checkpoints/CURRENT")).unwrap();
    run.join("checkpoints").join(name.trim())
}

#[test]
fn damaged_or_non_finite_checkpoints_are_refused_naming_the_file() {
    let (tmp, _data, exp, run) = stopped_run();
    let last = commit_dir(&run).join("last.safetensors");
    damage(&last);
    let out = resume_cmd(&run).stderr(Stdio::piped()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(&format!("{} is damaged", last.display())), "{err}");

    // A finished run whose best weights hold a NaN, hash and all: predict refuses them.
    let runs = tmp.path().join("runs2");
    assert!(run_cmd(&exp, &runs).status().unwrap().success());
    let run = only_run(&runs);
    let dir = commit_dir(&run);
    let best = dir.join("best.safetensors");
    let mut tensors = candle_core::safetensors::load(&best, &candle_core::Device::Cpu).unwrap();
    let w = tensors.get("fc.weight").unwrap();
    let nan = candle_core::Tensor::full(f32::NAN, w.shape(), &candle_core::Device::Cpu).unwrap();
    tensors.insert("fc.weight".into(), nan);
    std::fs::remove_file(&best).unwrap();
    candle_core::safetensors::save(&tensors, &best).unwrap();
    let state = std::fs::read_to_string(dir.join("state.toml")).unwrap();
    let old = state.lines().find(|l| l.starts_with("\"best.safetensors\"")).unwrap().to_string();
    use sha2::Digest;
    let hash: String = sha2::Sha256::digest(std::fs::read(&best).unwrap()).iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(dir.join("state.toml"), state.replace(&old, &format!("\"best.safetensors\" = \"{hash}\""))).unwrap();
    let out = bin().arg("predict").arg(&run).stderr(Stdio::piped()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("fc.weight` holds NaN"), "{err}");
    assert!(err.contains(&best.display().to_string()), "{err}");
}

#[test]
fn a_run_folder_has_one_writer_at_a_time() {
    let (_tmp, _data, _exp, run) = stopped_run();

    // Another process holds the folder (this test, with the lock ablate takes): resume and
    // summarize are refused, naming its pid.
    let held = std::fs::OpenOptions::new().write(true).open(run.join(".lock")).unwrap();
    held.try_lock().unwrap();
    std::fs::write(run.join(".lock"), "4242").unwrap();
    for command in ["resume", "summarize"] {
        let out = bin().arg(command).arg(&run).stderr(Stdio::piped()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("in use by another ablate process (pid 4242)"),
            "{command}: {err}"
        );
    }
    drop(held);
    finish(&run);
}

/// Waits until the run under `runs` has recorded `epochs` epochs.
fn wait_for_epochs(runs: &Path, epochs: usize, child: &mut std::process::Child) {
    let start = Instant::now();
    loop {
        let recorded = runs
            .read_dir()
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| ablate::read_metrics(&e.unwrap().path().join("metrics.csv")).ok())
            .map_or(0, |m| m.len());
        if recorded >= epochs {
            return;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended before epoch {epochs}");
        assert!(start.elapsed() < Duration::from_secs(120), "no epoch {epochs} after two minutes");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGTERM (scancel, a time limit) and SIGUSR1 (Slurm's warning before one) stop a run as
/// Ctrl-C does: a resumable checkpoint mid-epoch, exit status 130, the resume command.
#[test]
fn sigterm_and_sigusr1_stop_with_a_resumable_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 12, 3, 41);
    let exp = experiment(tmp.path(), &data, 30);
    let reference = tmp.path().join("reference");
    assert!(run_cmd(&exp, &reference).status().unwrap().success());
    let runs = tmp.path().join("runs");
    let mut child = run_cmd(&exp, &runs).stderr(Stdio::piped()).spawn().unwrap();
    wait_for_epochs(&runs, 2, &mut child);
    // SAFETY: kill() with a child's pid and a signal number has no memory preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("SIGTERM: stopping after this step") && err.contains("ablate resume"), "{err}");
    let run = only_run(&runs);
    let done = ablate::read_metrics(&run.join("metrics.csv")).unwrap().len();
    assert!(done < 30, "stopped at epoch {done} of 30");

    let mut child = resume_cmd(&run).stderr(Stdio::piped()).spawn().unwrap();
    wait_for_epochs(&runs, done + 2, &mut child);
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    finish(&run);
    let (ours, theirs) = (outcome(&run), outcome(&only_run(&reference)));
    assert_eq!(ours.1, (1..=30).collect::<Vec<_>>());
    assert!(ours.0 == theirs.0, "the stopped and resumed run differs from the uninterrupted one");
}

#[test]
fn resume_refuses_a_changed_dataset_unless_allowed() {
    let (_tmp, data, _exp, run) = stopped_run();
    let red = data.join("train/red");
    let first = std::fs::read_dir(&red).unwrap().next().unwrap().unwrap().path();
    std::fs::copy(&first, red.join("added.png")).unwrap();
    let out = resume_cmd(&run).stderr(Stdio::piped()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("changed since this run started") && err.contains("--allow-data-change"),
        "{err}"
    );
    let status = resume_cmd(&run).arg("--allow-data-change").status().unwrap();
    assert!(status.success());
    assert!(log(&run).contains("the dataset changed since this run started"));
}
