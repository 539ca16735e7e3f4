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

/// What the submission needs to know about the sweep.
pub struct Submission<'a> {
    /// The `ablate` binary to call (absolute).
    pub ablate: &'a str,
    /// Working directory of the jobs (absolute): experiment and data paths are relative to it.
    pub workdir: &'a str,
    /// `ablate run`'s arguments (experiments, `--set`, `--sweep`, `--runs-dir`).
    pub run_args: &'a [String],
    pub runs_dir: &'a str,
    /// The run folder's name after the id: `<id>_<name>`.
    pub name: &'a str,
    pub variants: usize,
}

fn quote(s: &str) -> String {
    shlex::try_quote(s).map_or_else(|_| format!("'{}'", s.replace('\'', "'\\''")), |q| q.into_owned())
}

/// A bash script that submits the sweep as a job array of `variants` tasks (one variant each)
/// and a job, run after all of them whatever their outcome, that merges their summaries.
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
    let mut directives = vec![
        format!("--job-name=ablate-{}", sub.name),
        format!("--array=0-{}", sub.variants.saturating_sub(1)),
        format!("--output={}/slurm-%A_%a.out", sub.runs_dir),
    ];
    directives.extend(common.iter().cloned());
    // A pre-empted task is queued again and continues (SLURM_RESTART_COUNT); before a time
    // limit, every step gets SIGUSR1 early enough to commit a checkpoint (not `B:`: ablate runs
    // in a job step, not in the batch shell).
    directives.push("--requeue".into());
    directives.push(format!("--signal=USR1@{}", opts.warn_secs.unwrap_or(300)));
    if let Some(g) = opts.gpus_per_task {
        directives.push("--ntasks=1".into());
        directives.push(format!("--gpus-per-task={g}"));
    }
    if let Some(c) = opts.cpus_per_task {
        directives.push(format!("--cpus-per-task={c}"));
    }
    let run_args: Vec<String> = sub.run_args.iter().map(|a| quote(a)).collect();
    let folder = format!("{}/${{array}}_{}", sub.runs_dir, sub.name);
    let mut s = String::new();
    s.push_str("#!/usr/bin/env bash\n");
    s.push_str(&format!(
        "# Submits the sweep `{}` to Slurm: {} variants as a job array (one variant per task, all\n\
         # writing into one run folder), then a job that merges their summaries once every task\n\
         # has ended. Made by `ablate slurm`; run it with bash on the login node.\n",
        sub.name, sub.variants
    ));
    s.push_str("set -euo pipefail\n");
    s.push_str(&format!("cd {}\n", quote(sub.workdir)));
    s.push_str(&format!("mkdir -p {}\n", quote(sub.runs_dir)));
    s.push_str("array=$(sbatch --parsable <<'SBATCH'\n#!/usr/bin/env bash\n");
    for d in &directives {
        s.push_str(&format!("#SBATCH {d}\n"));
    }
    s.push_str(&format!(
        // The variant count itself, not $SLURM_ARRAY_TASK_COUNT: resubmitting some indices
        // (--array=1,3) must not renumber the shards.
        "srun {} run {} --shard \"$SLURM_ARRAY_TASK_ID/{}\" --run-id \"$SLURM_ARRAY_JOB_ID\"\n",
        quote(sub.ablate),
        run_args.join(" "),
        sub.variants
    ));
    s.push_str("SBATCH\n)\n");
    s.push_str("array=${array%%;*} # --parsable prints <job id>[;<cluster>]\n");
    let extra: String = common.iter().map(|d| format!(" {}", quote(d))).collect();
    s.push_str(&format!(
        "summary=$(sbatch --parsable --dependency=afterany:\"$array\" --job-name=ablate-{}-summary --output={}/slurm-%j.out{extra} \\\n  --wrap \"{} summarize {folder}\")\n",
        sub.name,
        sub.runs_dir,
        quote(sub.ablate).replace('"', "\\\""),
    ));
    s.push_str(&format!(
        "echo \"submitted job array $array and summary job ${{summary%%;*}}; the summary will be in {folder}/summary.md\"\n"
    ));
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
        assert_eq!(Shard::from_summary_file(&s.summary_file()), Some(s));
        assert_eq!(Shard::from_summary_file("summary-3-of-2.csv"), None);
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

    #[test]
    fn the_script_submits_an_array_and_a_dependent_summary() {
        let args = vec!["experiments/resnext.toml".to_string(), "--set".into(), "train.epochs=2".into()];
        let sub = Submission {
            ablate: "/opt/ablate/bin/ablate",
            workdir: "/home/me/proj",
            run_args: &args,
            runs_dir: "runs",
            name: "resnext",
            variants: 5,
        };
        let opts = SlurmOptions {
            partition: Some("gpu".into()),
            gpus_per_task: Some(1),
            time: Some("4:00:00".into()),
            sbatch: vec!["account=abc".into()],
            ..Default::default()
        };
        let s = script(&sub, &opts);
        for needle in [
            "#SBATCH --array=0-4\n",
            "#SBATCH --partition=gpu\n",
            "#SBATCH --gpus-per-task=1\n",
            "#SBATCH --time=4:00:00\n",
            "#SBATCH --requeue\n#SBATCH --signal=USR1@300\n",
            "srun /opt/ablate/bin/ablate run experiments/resnext.toml --set 'train.epochs=2' --shard \"$SLURM_ARRAY_TASK_ID/5\" --run-id \"$SLURM_ARRAY_JOB_ID\"\n",
            // The summary job gets the same partition, time limit and extras.
            "--job-name=ablate-resnext-summary --output=runs/slurm-%j.out '--partition=gpu' '--time=4:00:00' '--account=abc' \\\n",
            "--dependency=afterany:\"$array\"",
            "/opt/ablate/bin/ablate summarize runs/${array}_resnext",
        ] {
            assert!(s.contains(needle), "missing {needle:?} in\n{s}");
        }
        // The script is valid bash.
        let out = std::process::Command::new("bash").args(["-n", "-c", &s]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}
