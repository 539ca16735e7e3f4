//! Scale-out: shards of one sweep in parallel processes, one shared run folder, one summary
//! made from every variant's own status; the Slurm submission scripts.

use std::process::Command;

use ablate::Status;
use predicates::prelude::*;

use crate::common::{ablate, color_folder, experiment};

/// A three-variant sweep (width 2, 4, 6) on tiny data.
fn sweep3(dir: &std::path::Path) -> std::path::PathBuf {
    let data = dir.join("data");
    color_folder(&data, 6, 3, 5);
    let exp = experiment(dir, &data, 1);
    let text = std::fs::read_to_string(&exp).unwrap();
    let text = text.replace("[model]\n", "[model]\nparams = { width = 4 }\n").replace(
        "{ conv = { out = 4, kernel = 3, padding = 1 } }",
        "{ conv = { out = \"$width\", kernel = 3, padding = 1 } }",
    );
    std::fs::write(&exp, format!("{text}\n[sweep]\n\"model.params.width\" = [2, 4, 6]\n")).unwrap();
    exp
}

#[test]
fn two_shards_in_parallel_fill_one_run_folder_and_one_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = sweep3(tmp.path());
    let runs = tmp.path().join("runs");
    let bin = assert_cmd::cargo::cargo_bin("ablate");
    // Two processes at once, as two tasks of a Slurm job array would run; shard 1 gets its
    // shard from the Slurm variables, shard 0 from the command line.
    let spawn = |shard: Option<&str>| {
        let mut c = Command::new(&bin);
        c.arg("run").arg(&exp).arg("--runs-dir").arg(&runs).envs(crate::common::kernel_env());
        for k in ["SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_JOB_ID"] {
            c.env_remove(k);
        }
        match shard {
            Some(s) => c.args(["--shard", s, "--run-id", "job42"]),
            None => {
                c.env("SLURM_ARRAY_TASK_ID", "1").env("SLURM_ARRAY_TASK_COUNT", "2").env("SLURM_ARRAY_JOB_ID", "job42")
            }
        };
        c.spawn().unwrap()
    };
    let (mut a, mut b) = (spawn(Some("0/2")), spawn(None));
    assert!(a.wait().unwrap().success() && b.wait().unwrap().success());

    let run = runs.join("job42_tiny");
    let names: Vec<String> =
        std::fs::read_dir(&runs).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names, ["job42_tiny"], "one shared folder");
    // Shard 0 trained variants 0 and 2, shard 1 variant 1; each wrote its own log and summary.
    for (v, log) in [("width=2", 0), ("width=4", 1), ("width=6", 0)] {
        assert!(run.join(v).join("checkpoints/best.safetensors").is_file(), "{v}");
        let text = std::fs::read_to_string(run.join(format!("log.shard-{log}-of-2.txt"))).unwrap();
        assert!(text.contains(&format!(": {v}\n")), "{v} not in shard {log}'s log:\n{text}");
    }
    // Each variant records its own status; each shard rewrites the summary from all of them
    // under the summary lock, so whichever finished last wrote every variant.
    for v in ["width=2", "width=4", "width=6"] {
        let status = std::fs::read_to_string(run.join(v).join("status.toml")).unwrap();
        assert!(status.contains("status = \"ok\""), "{v}: {status}");
    }
    let rows = ablate::read_runs(&run.join("runs.csv")).unwrap();
    assert!(rows.iter().all(|r| r.status == Status::Ok), "{rows:?}");

    ablate().arg("summarize").arg(&run).assert().success().stdout(predicate::str::contains("| width=4 |"));
    let rows = ablate::read_runs(&run.join("runs.csv")).unwrap();
    assert_eq!(rows.iter().map(|r| r.variant.as_str()).collect::<Vec<_>>(), ["width=2", "width=4", "width=6"]);
    assert!(rows.iter().all(|r| r.status == Status::Ok && r.best_val_acc.is_some()), "{rows:?}");
    assert!(run.join("summary.md").is_file());
    let png = image::open(run.join("summary.png")).unwrap();
    assert!(png.width() > 100 && png.height() > 100);

    // The run id is used once: a shard run again into it is refused, nothing overwritten.
    let before = std::fs::read(run.join("width=2/checkpoints/best.safetensors")).unwrap();
    ablate()
        .arg("run")
        .arg(&exp)
        .arg("--runs-dir")
        .arg(&runs)
        .args(["--shard", "0/2", "--run-id", "job42"])
        .env_remove("SLURM_ARRAY_JOB_ID")
        .assert()
        .failure()
        .stderr(predicate::str::contains("run id job42 was used before"));
    assert_eq!(std::fs::read(run.join("width=2/checkpoints/best.safetensors")).unwrap(), before);
}

#[test]
fn summarize_reports_the_variants_not_finished_and_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = sweep3(tmp.path());
    let runs = tmp.path().join("runs");
    ablate()
        .arg("run")
        .arg(&exp)
        .arg("--runs-dir")
        .arg(&runs)
        .args(["--shard", "2/3", "--run-id", "j7"])
        .assert()
        .success();
    let run = runs.join("j7_tiny");
    // The summary is written, and its exit status says the run is not complete.
    ablate()
        .arg("summarize")
        .arg(&run)
        .assert()
        .failure()
        .stdout(predicate::str::contains("| width=6 |"))
        .stderr(predicate::str::contains("2 not finished (width=2, width=4) of the run's variants"))
        .stderr(predicate::str::contains("ablate slurm --resume"));
    let rows = ablate::read_runs(&run.join("runs.csv")).unwrap();
    assert_eq!(rows.iter().map(|r| r.status).collect::<Vec<_>>(), [Status::Pending, Status::Pending, Status::Ok]);
    // Every variant's config is there, so `ablate resume` can finish the missing ones.
    for v in ["width=2", "width=4", "width=6"] {
        assert!(run.join(v).join("config.toml").is_file(), "{v}");
    }
    ablate().arg("resume").arg(&run).assert().success();
    let rows = ablate::read_runs(&run.join("runs.csv")).unwrap();
    assert!(rows.iter().all(|r| r.status == Status::Ok), "{rows:?}");
    ablate().arg("summarize").arg(&run).assert().success();
}

/// Stand-ins for Slurm's commands: `sbatch` runs a job array's tasks at once (each with the
/// array variables set) and returns when all have ended, so a dependent job runs after them,
/// as `afterany` would; `srun` runs its command.
const FAKE_SBATCH: &str = r#"#!/usr/bin/env bash
set -e
wrap=; array=
while [ $# -gt 0 ]; do
  case "$1" in
    --wrap) wrap="$2"; shift 2;;
    --array=*) array="${1#--array=}"; shift;;
    *) shift;;
  esac
done
if [ -n "$wrap" ]; then
  status=0; sh -c "$wrap" > summary.out 2>&1 || status=$?
  echo "$status" > summary.status; echo 4243; exit 0
fi
case "$array" in *-*) ids=$(seq "${array%-*}" "${array#*-}");; *) ids=${array//,/ };; esac
script=$(cat)
pids=()
for i in $ids; do
  SLURM_ARRAY_JOB_ID=4242 SLURM_ARRAY_TASK_ID=$i SLURM_ARRAY_TASK_COUNT=$(wc -w <<<"$ids") \
    bash -c "$script" > "task$i.out" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || true; done
echo "4242;cluster"
"#;

/// Puts the stand-in `sbatch` and `srun` (with the body `srun`) in `dir/fake-slurm`; returns
/// the PATH to run with.
fn fake_slurm(dir: &std::path::Path, srun: &str) -> String {
    let bin = dir.join("fake-slurm");
    std::fs::create_dir_all(&bin).unwrap();
    for (name, body) in [("sbatch", FAKE_SBATCH), ("srun", srun)] {
        std::fs::write(bin.join(name), body).unwrap();
        std::process::Command::new("chmod").arg("+x").arg(bin.join(name)).status().unwrap();
    }
    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap())
}

/// What the stand-in Slurm's tasks printed.
fn task_logs(dir: &std::path::Path) -> String {
    (0..3)
        .map(|i| std::fs::read_to_string(dir.join(format!("task{i}.out"))).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_slurm_script_runs_one_task_per_variant_then_the_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = sweep3(tmp.path());
    // A runs folder with a space in its name: the script quotes every path.
    let script = ablate()
        .current_dir(tmp.path())
        .arg("slurm")
        .arg("tiny.toml")
        .args(["--runs-dir", "my runs", "--partition", "gpu", "--gpus-per-task", "1", "--time", "1:00:00"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let script = String::from_utf8(script).unwrap();
    assert!(exp.is_file());
    for needle in ["  --array=0-2 \\\n", "  --partition=gpu \\\n", "folder='my runs'/\"$array\"_tiny\n"] {
        assert!(script.contains(needle), "missing {needle:?} in\n{script}");
    }
    // Submit it to the stand-in Slurm and check the result.
    let path = fake_slurm(tmp.path(), "#!/bin/sh\nexec \"$@\"\n");
    let out = Command::new("bash").arg("-c").arg(&script).env("PATH", path).current_dir(tmp.path()).output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), task_logs(tmp.path()));
    assert!(String::from_utf8_lossy(&out.stdout).contains("my runs/4242_tiny/summary.md"));
    let rows = ablate::read_runs(&tmp.path().join("my runs/4242_tiny/runs.csv")).unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.status == Status::Ok), "{rows:?}\n{}", task_logs(tmp.path()));
    assert_eq!(std::fs::read_to_string(tmp.path().join("summary.status")).unwrap().trim(), "0");
}

/// `ablate slurm --resume` resubmits just the unfinished variants, by their indices, into the
/// same folder; the summary job fails while a variant is unfinished and succeeds after.
#[test]
fn a_resume_script_finishes_the_unfinished_variants_in_the_same_folder() {
    let tmp = tempfile::tempdir().unwrap();
    sweep3(tmp.path());
    let submit = |args: &[&str], srun: &str| {
        let script = ablate().current_dir(tmp.path()).arg("slurm").args(args).assert().success();
        let script = String::from_utf8(script.get_output().stdout.clone()).unwrap();
        let path = fake_slurm(tmp.path(), srun);
        let out = Command::new("bash").arg("-c").arg(&script).env("PATH", &path).current_dir(tmp.path()).output();
        let out = out.unwrap();
        assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), task_logs(tmp.path()));
        let summary = std::fs::read_to_string(tmp.path().join("summary.out")).unwrap();
        (script, std::fs::read_to_string(tmp.path().join("summary.status")).unwrap().trim().to_string(), summary)
    };
    // Tasks 0 and 2 are cancelled before they start: only the middle variant trains, and the
    // summary job fails, naming the others.
    let cancelled = "#!/bin/sh\n[ \"$SLURM_ARRAY_TASK_ID\" = 1 ] || exit 143\nexec \"$@\"\n";
    let (_, status, summary) = submit(&["tiny.toml"], cancelled);
    assert_ne!(status, "0", "{summary}");
    assert!(summary.contains("2 not finished (width=2, width=6)"), "{summary}");
    let run = tmp.path().join("runs/4242_tiny");
    let trained = std::fs::read(run.join("width=4/checkpoints/best.safetensors")).unwrap();

    let (script, status, summary) = submit(&["--resume", "runs/4242_tiny"], "#!/bin/sh\nexec \"$@\"\n");
    assert!(script.contains("  --array=0,2 \\\n"), "{script}");
    assert!(script.contains(&format!(" resume {} --shard \"$SLURM_ARRAY_TASK_ID/3\"\n", run.display())), "{script}");
    assert_eq!(status, "0", "{summary}");
    let rows = ablate::read_runs(&run.join("runs.csv")).unwrap();
    assert!(rows.iter().all(|r| r.status == Status::Ok), "{rows:?}\n{}", task_logs(tmp.path()));
    assert_eq!(std::fs::read(run.join("width=4/checkpoints/best.safetensors")).unwrap(), trained, "kept");
    // Nothing left: no script.
    ablate()
        .current_dir(tmp.path())
        .args(["slurm", "--resume", "runs/4242_tiny"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("every variant finished"));
}

/// A Slurm task sizes ablate's thread pools to its `--cpus-per-task`.
#[test]
fn a_slurm_task_uses_its_cpus_per_task() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    crate::common::color_folder(&data, 4, 1, 5);
    let exp = crate::common::experiment(tmp.path(), &data, 1);
    let runs = tmp.path().join("runs");
    crate::common::run_in(&exp, &runs)
        .env("SLURM_CPUS_PER_TASK", "1")
        .env_remove("RAYON_NUM_THREADS")
        .assert()
        .success();
    let log = std::fs::read_to_string(crate::common::only_run(&runs).join("log.txt")).unwrap();
    assert!(log.contains("CPU threads: 1\n"), "{log}");
}

/// Slurm runs a pre-empted or requeued task again (`SLURM_RESTART_COUNT` > 0): it continues
/// into the same folder, keeping what it finished and resuming what it did not; the same
/// shard run again without a restart is refused.
#[test]
fn a_requeued_task_continues_where_it_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = sweep3(tmp.path());
    let runs = tmp.path().join("runs");
    let task = |restarts: Option<&str>| {
        let mut c = ablate();
        c.arg("run").arg(&exp).arg("--runs-dir").arg(&runs).args(["--shard", "0/2", "--run-id", "77"]);
        c.env_remove("SLURM_RESTART_COUNT");
        if let Some(n) = restarts {
            c.env("SLURM_RESTART_COUNT", n);
        }
        c
    };
    // One step a variant (one epoch of 8 training images): stop at shard 0's second, width=6.
    task(None).args(["--stop-after-steps", "2"]).assert().code(130);
    let run = runs.join("77_tiny");
    task(None).assert().failure().stderr(predicate::str::contains("run id 77 was used before"));
    task(Some("1")).assert().success();
    let rows = ablate::read_runs(&run.join("runs.csv")).unwrap();
    assert_eq!(rows.iter().map(|r| r.status).collect::<Vec<_>>(), [Status::Ok, Status::Pending, Status::Ok]);
    let log = std::fs::read_to_string(run.join("log.shard-0-of-2.txt")).unwrap();
    assert_eq!(log.matches("variant 1/3: width=2").count(), 1, "the finished variant is kept:\n{log}");
    let resumed = std::fs::read_to_string(run.join("width=6/log.txt")).unwrap();
    assert!(resumed.contains("resuming after 0 epochs and 1 batches"), "{resumed}");
}

/// `ablate summarize` after `ablate resume` keeps what the resume finished.
#[test]
fn summarize_after_resume_keeps_the_resumed_variants() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = sweep3(tmp.path());
    let runs = tmp.path().join("runs");
    let task = |shard: &str| {
        let mut c = ablate();
        c.arg("run").arg(&exp).arg("--runs-dir").arg(&runs).args(["--shard", shard, "--run-id", "88"]);
        c
    };
    task("0/2").assert().success();
    task("1/2").args(["--stop-after-steps", "1"]).assert().code(130);
    let run = runs.join("88_tiny");
    ablate().arg("summarize").arg(&run).assert().failure().stderr(predicate::str::contains("1 not finished (width=4)"));
    ablate().arg("resume").arg(&run).assert().success();
    ablate().arg("summarize").arg(&run).assert().success().stderr(predicate::str::contains("not finished").not());
    let rows = ablate::read_runs(&run.join("runs.csv")).unwrap();
    assert!(rows.iter().all(|r| r.status == Status::Ok), "{rows:?}");
}

/// One experiment under a run id (a one-task Slurm array): its files at the folder's root, as
/// without an id; one log, one event file; a requeued task continues it.
#[test]
fn a_single_experiment_with_a_run_id_writes_one_log_and_continues_when_requeued() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    color_folder(&data, 20, 3, 5);
    let exp = experiment(tmp.path(), &data, 2);
    let runs = tmp.path().join("runs");
    let task = || {
        let mut c = ablate();
        c.arg("run").arg(&exp).arg("--runs-dir").arg(&runs).args(["--run-id", "5"]).env_remove("SLURM_RESTART_COUNT");
        c
    };
    task().args(["--stop-after-steps", "3"]).assert().code(130);
    let run = runs.join("5_tiny");
    let events = || ablate::event_files(&run).unwrap().len();
    assert_eq!(events(), 1, "one TensorBoard writer in the folder");
    let log = std::fs::read_to_string(run.join("log.txt")).unwrap();
    assert!(log.contains("model (") && log.contains("interrupted"), "{log}");
    task().env("SLURM_RESTART_COUNT", "1").assert().success();
    let log = std::fs::read_to_string(run.join("log.txt")).unwrap();
    assert!(log.contains("resuming after 0 epochs and 3 batches"), "{log}");
    let rows = ablate::read_runs(&run.join("runs.csv")).unwrap();
    assert_eq!(rows.iter().map(|r| r.status).collect::<Vec<_>>(), [Status::Ok]);
    // Requeued again after it finished: nothing to do, nothing changed.
    let best = std::fs::read(run.join("checkpoints/best.safetensors")).unwrap();
    task().env("SLURM_RESTART_COUNT", "2").assert().success();
    assert_eq!(std::fs::read(run.join("checkpoints/best.safetensors")).unwrap(), best);
}
