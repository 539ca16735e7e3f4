//! Fanning a sweep out over a cluster: shards (`--shard I/N`, defaulting to a Slurm job
//! array's task id and count), a shared run id, and the `sbatch` submission that `ablate slurm`
//! prints. The scheduler does the scheduling; ablate only decides which variants a process
//! trains and merges the shards' summaries afterwards (`ablate summarize`).

pub use crate::spec::Shard;

/// The shard and run id a process uses: the command line's, else a Slurm job array's
/// (`SLURM_ARRAY_TASK_ID` / `SLURM_ARRAY_TASK_COUNT`, `SLURM_ARRAY_JOB_ID`), read through `env`.
pub fn resolve(
    shard: Option<Shard>,
    run_id: Option<String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(Option<Shard>, Option<String>), String> {
    let shard = match shard {
        Some(s) => Some(s),
        None => match (env("SLURM_ARRAY_TASK_ID"), env("SLURM_ARRAY_TASK_COUNT")) {
            (Some(i), Some(n)) => Some(
                format!("{i}/{n}").parse().map_err(|e| format!("SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT: {e}"))?,
            ),
            _ => None,
        },
    };
    let run_id = run_id.or_else(|| env("SLURM_ARRAY_JOB_ID"));
    if let Some(id) = &run_id
        && (id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
    {
        return Err(format!("run id `{id}`: use letters, digits, `-`, `_` and `.` only"));
    }
    if shard.is_some_and(|s| s.count > 1) && run_id.is_none() {
        return Err("--shard needs --run-id (or SLURM_ARRAY_JOB_ID) so that the shards share one run folder".into());
    }
    Ok((shard, run_id))
}

/// Options of `ablate slurm`.
#[derive(Debug, Clone, Default)]
pub struct SlurmOptions {
    pub partition: Option<String>,
    pub gpus_per_task: Option<u32>,
    pub cpus_per_task: Option<u32>,
    pub time: Option<String>,
    /// Extra `#SBATCH` lines, e.g. `--account=abc`.
    pub sbatch: Vec<String>,
    /// Seconds before the time limit at which a task is told to stop (default 300).
    pub warn_secs: Option<u32>,
}

/// What the array's tasks do.
pub enum Tasks<'a> {
    /// Train a new sweep: task `i` runs `ablate run <args> --shard i/<variants> --run-id <array
    /// job id>`, into `<runs_dir>/<array job id>_<name>`.
    Run {
        /// `ablate run`'s arguments (experiments, `--set`, `--sweep`, `--runs-dir`).
        args: &'a [String],
        /// The run folder's name after the id: `<id>_<name>`.
        name: &'a str,
    },
    /// Finish an existing run: task `i` (one per unfinished variant index) runs `ablate resume
    /// <run> --shard i/<variants>`.
    Resume { run: &'a str, unfinished: &'a [usize] },
}

/// What the submission needs to know about the sweep.
pub struct Submission<'a> {
    /// The `ablate` binary to call (absolute).
    pub ablate: &'a str,
    /// Working directory of the jobs (absolute): experiment and data paths are relative to it.
    pub workdir: &'a str,
    /// Where Slurm writes the jobs' output files.
    pub runs_dir: &'a str,
    /// Job names: `ablate-<name>`, `ablate-<name>-summary`.
    pub name: &'a str,
    /// The run's variant count: task `i` trains variant `i`.
    pub variants: usize,
    pub tasks: Tasks<'a>,
}

/// `s` as one shell word: as is when every character is plain (`--time=4:00:00` stays
/// readable), else quoted by shlex.
fn quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_+=/.,:%@".contains(c)) {
        return s.to_string();
    }
    shlex::try_quote(s).map_or_else(|_| format!("'{}'", s.replace('\'', "'\\''")), |q| q.into_owned())
}

/// One `sbatch` option per line of the command, each quoted for the shell: on the command line
/// rather than as `#SBATCH` lines, whose parsing is Slurm's (a path with a space broke it).
fn options(list: &[String]) -> String {
    list.iter().map(|o| format!("  {} \\\n", quote(o))).collect()
}

/// The array's `sbatch` options: its tasks, the common ones, and those of a task.
fn task_options(sub: &Submission, opts: &SlurmOptions, common: &[String]) -> Vec<String> {
    let array = match &sub.tasks {
        Tasks::Run { .. } => format!("0-{}", sub.variants.saturating_sub(1)),
        Tasks::Resume { unfinished, .. } => unfinished.iter().map(usize::to_string).collect::<Vec<_>>().join(","),
    };
    let mut out = vec![
        format!("--job-name=ablate-{}", sub.name),
        format!("--array={array}"),
        format!("--output={}/slurm-%A_%a.out", sub.runs_dir),
    ];
    out.extend(common.iter().cloned());
    // A pre-empted task is queued again and continues (SLURM_RESTART_COUNT); before a time
    // limit, every step gets SIGUSR1 early enough to commit a checkpoint (not `B:`: ablate runs
    // in a job step, not in the batch shell).
    out.push("--requeue".into());
    out.push(format!("--signal=USR1@{}", opts.warn_secs.unwrap_or(300)));
    if let Some(g) = opts.gpus_per_task {
        out.push("--ntasks=1".into());
        out.push(format!("--gpus-per-task={g}"));
    }
    if let Some(c) = opts.cpus_per_task {
        out.push(format!("--cpus-per-task={c}"));
    }
    out
}

/// A bash script that submits the variants as a job array (one variant per task) and a job,
/// run after all of them whatever their outcome, that writes the run's summary and fails when
/// a variant did.
pub fn script(sub: &Submission, opts: &SlurmOptions) -> String {
    // What every job the script submits gets: where, how long, and the user's extras.
    let mut common = Vec::new();
    if let Some(p) = &opts.partition {
        common.push(format!("--partition={p}"));
    }
    if let Some(t) = &opts.time {
        common.push(format!("--time={t}"));
    }
    common.extend(opts.sbatch.iter().map(|s| if s.starts_with("--") { s.clone() } else { format!("--{s}") }));
    let task_options = task_options(sub, opts, &common);
    let ablate = quote(sub.ablate);
    // The variant count itself, not $SLURM_ARRAY_TASK_COUNT: an array of some indices
    // (--array=1,3) must not renumber the shards.
    let (what, task, folder) = match &sub.tasks {
        Tasks::Run { args, name } => (
            format!(
                "the sweep `{name}`: {} variants as a job array (one variant per task, all writing into one run folder)",
                sub.variants
            ),
            format!(
                "srun {ablate} run {} --shard \"$SLURM_ARRAY_TASK_ID/{}\" --run-id \"$SLURM_ARRAY_JOB_ID\"",
                args.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" "),
                sub.variants
            ),
            format!("{}/\"$array\"_{}", quote(sub.runs_dir), quote(name)),
        ),
        Tasks::Resume { run, unfinished } => (
            format!(
                "the {} unfinished of {} variants of {run} as a job array (one variant per task)",
                unfinished.len(),
                sub.variants
            ),
            format!("srun {ablate} resume {} --shard \"$SLURM_ARRAY_TASK_ID/{}\"", quote(run), sub.variants),
            quote(run),
        ),
    };
    let mut s = String::new();
    s.push_str("#!/usr/bin/env bash\n");
    s.push_str(&format!(
        "# Submits {what};\n\
         # then a job that writes the run's summary once every task has ended (and fails if a\n\
         # variant did). Made by `ablate slurm`; run it with bash on the login node.\n"
    ));
    s.push_str("set -euo pipefail\n");
    s.push_str(&format!("cd {}\n", quote(sub.workdir)));
    s.push_str(&format!("mkdir -p {}\n", quote(sub.runs_dir)));
    s.push_str(&format!(
        "array=$(sbatch --parsable \\\n{}  <<'SBATCH'\n#!/usr/bin/env bash\n{task}\nSBATCH\n)\n",
        options(&task_options)
    ));
    s.push_str("array=${array%%;*} # --parsable prints <job id>[;<cluster>]\n");
    s.push_str(&format!("folder={folder}\n"));
    let mut summary_options =
        vec![format!("--job-name=ablate-{}-summary", sub.name), format!("--output={}/slurm-%j.out", sub.runs_dir)];
    summary_options.extend(common);
    s.push_str(&format!(
        "summary=$(sbatch --parsable --dependency=afterany:\"$array\" \\\n{}  --wrap \"$(printf '%q ' {ablate} summarize \"$folder\")\")\n",
        options(&summary_options)
    ));
    s.push_str(
        "echo \"submitted job array $array and summary job ${summary%%;*}; the summary will be in $folder/summary.md\"\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_partition_the_variants() {
        let s: Shard = "1/3".parse().unwrap();
        assert_eq!(s, Shard { index: 1, count: 3 });
        assert_eq!((0..8).filter(|&v| s.owns(v)).collect::<Vec<_>>(), vec![1, 4, 7]);
        // Every variant belongs to exactly one shard.
        for v in 0..10 {
            assert_eq!((0..3).filter(|&i| Shard::new(i, 3).unwrap().owns(v)).count(), 1);
        }
        for bad in ["3/3", "1", "a/2", "0/0", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn slurm_array_variables_are_the_defaults() {
        let env = |k: &str| match k {
            "SLURM_ARRAY_TASK_ID" => Some("2".to_string()),
            "SLURM_ARRAY_TASK_COUNT" => Some("4".to_string()),
            "SLURM_ARRAY_JOB_ID" => Some("8812".to_string()),
            _ => None,
        };
        assert_eq!(resolve(None, None, env).unwrap(), (Some(Shard { index: 2, count: 4 }), Some("8812".into())));
        // The command line wins.
        let cli = resolve(Some(Shard { index: 0, count: 2 }), Some("x".into()), env).unwrap();
        assert_eq!(cli, (Some(Shard { index: 0, count: 2 }), Some("x".into())));
        // Outside Slurm: nothing, and a shard without a run id is refused.
        assert_eq!(resolve(None, None, |_| None).unwrap(), (None, None));
        let e = resolve(Some(Shard { index: 0, count: 2 }), None, |_| None).unwrap_err();
        assert!(e.contains("--run-id"), "{e}");
        assert!(resolve(None, Some("../x".into()), |_| None).unwrap_err().contains("run id"));
    }

    fn opts() -> SlurmOptions {
        SlurmOptions {
            partition: Some("gpu".into()),
            gpus_per_task: Some(1),
            time: Some("4:00:00".into()),
            sbatch: vec!["account=abc".into()],
            ..Default::default()
        }
    }

    fn assert_valid_bash(s: &str) {
        let out = std::process::Command::new("bash").args(["-n", "-c", s]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn the_script_submits_an_array_and_a_dependent_summary() {
        let args = vec!["experiments/resnext.toml".to_string(), "--set".into(), "train.epochs=2".into()];
        let sub = Submission {
            ablate: "/opt/ablate/bin/ablate",
            workdir: "/home/me/proj",
            runs_dir: "my runs",
            name: "resnext",
            variants: 5,
            tasks: Tasks::Run { args: &args, name: "resnext" },
        };
        let s = script(&sub, &opts());
        for needle in [
            "  --array=0-4 \\\n",
            "  '--output=my runs/slurm-%A_%a.out' \\\n",
            "  --partition=gpu \\\n",
            "  --gpus-per-task=1 \\\n",
            "  --time=4:00:00 \\\n",
            "  --requeue \\\n  --signal=USR1@300 \\\n",
            "srun /opt/ablate/bin/ablate run experiments/resnext.toml --set train.epochs=2 --shard \"$SLURM_ARRAY_TASK_ID/5\" --run-id \"$SLURM_ARRAY_JOB_ID\"\n",
            // The summary job gets the same partition, time limit and extras.
            "--dependency=afterany:\"$array\" \\\n  --job-name=ablate-resnext-summary \\\n  '--output=my runs/slurm-%j.out' \\\n  --partition=gpu \\\n  --time=4:00:00 \\\n  --account=abc \\\n",
            "folder='my runs'/\"$array\"_resnext\n",
            "--wrap \"$(printf '%q ' /opt/ablate/bin/ablate summarize \"$folder\")\"",
        ] {
            assert!(s.contains(needle), "missing {needle:?} in\n{s}");
        }
        assert!(!s.contains("#SBATCH --"), "options are on sbatch's command line:\n{s}");
        assert_valid_bash(&s);
    }

    #[test]
    fn a_resume_script_submits_the_unfinished_indices_into_the_same_folder() {
        let sub = Submission {
            ablate: "/opt/ablate/bin/ablate",
            workdir: "/home/me/proj",
            runs_dir: "runs",
            name: "resnext",
            variants: 5,
            tasks: Tasks::Resume { run: "runs/881_resnext", unfinished: &[1, 3] },
        };
        let s = script(&sub, &opts());
        for needle in [
            "  --array=1,3 \\\n",
            "srun /opt/ablate/bin/ablate resume runs/881_resnext --shard \"$SLURM_ARRAY_TASK_ID/5\"\n",
            "folder=runs/881_resnext\n",
            "--dependency=afterany:\"$array\" \\\n",
        ] {
            assert!(s.contains(needle), "missing {needle:?} in\n{s}");
        }
        assert_valid_bash(&s);
    }
}
