//! `ablate` binary: parse the command line, call the library, print any error chain, exit.

use std::process::ExitCode;

use ablate::cli::{Cli, Command, Experiments};
use ablate::config::Override;
use ablate::experiment::{self, RunOptions};
use ablate::scaleout;
use std::sync::atomic::Ordering;

use clap::Parser;

/// glibc's malloc hands large freed buffers (im2col columns, activations) back to the OS and
/// page-faults them in again every step; mimalloc keeps them, which measured faster here.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn overrides(set: &[String]) -> anyhow::Result<Vec<Override>> {
    Ok(set.iter().map(|s| Override::parse(s)).collect::<Result<_, _>>()?)
}

fn stop_after(steps: Option<usize>) {
    if let Some(n) = steps {
        ablate::train::STOP_AFTER_STEPS.store(n, Ordering::Relaxed);
    }
}

fn main() -> ExitCode {
    ablate::alloc::keep_freed_memory();
    // Ctrl-C: the trainer finishes its step, writes a resumable checkpoint and stops; a second
    // Ctrl-C kills as usual.
    let _ = ctrlc::set_handler(|| {
        if ablate::train::STOP.swap(true, Ordering::Relaxed) {
            std::process::exit(130);
        }
        eprintln!("\nstopping after this step (Ctrl-C again to kill)...");
    });
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            what: Experiments { experiments, set, sweep },
            device,
            runs_dir,
            fail_fast,
            shard,
            run_id,
            stop_after_steps,
        } => {
            stop_after(stop_after_steps);
            overrides(&set).and_then(|overrides| {
                let files = experiment::experiment_files(&experiments)?;
                let (shard, run_id) =
                    scaleout::resolve(shard, run_id, |k| std::env::var(k).ok()).map_err(anyhow::Error::msg)?;
                let opts = RunOptions { files, overrides, sweep, device, runs_dir, fail_fast, shard, run_id };
                let dir = experiment::run(&opts, &mut |_| Vec::new())?;
                println!("{}", dir.display());
                Ok(())
            })
        }
        Command::Check { experiment: file, set, sweep } => {
            overrides(&set).and_then(|o| experiment::check(&file, o, &sweep)).and_then(|(summary, weights)| {
                println!("{summary}");
                weights.map(|report| report.into_iter().for_each(|r| println!("{r}")))
            })
        }
        Command::Resume { run, device, stop_after_steps } => {
            stop_after(stop_after_steps);
            experiment::resume(&run, device.as_deref(), &mut |_| Vec::new()).map(|dir| println!("{}", dir.display()))
        }
        Command::Summarize { run } => experiment::summarize(&run).map(|(table, notes)| {
            println!("{table}");
            notes.iter().for_each(|n| eprintln!("note: {n}"));
        }),
        Command::Slurm {
            what: Experiments { experiments, set, sweep },
            runs_dir,
            partition,
            gpus_per_task,
            cpus_per_task,
            time,
            sbatch,
        } => overrides(&set).and_then(|o| {
            let files = experiment::experiment_files(&experiments)?;
            let (name, variants) = experiment::plan(&files, &o, &sweep)?;
            let exe = std::env::current_exe()?;
            let cwd = std::env::current_dir()?;
            let mut run_args: Vec<String> = experiments.iter().map(|p| p.display().to_string()).collect();
            run_args.extend(set.iter().flat_map(|s| ["--set".to_string(), s.clone()]));
            run_args.extend(sweep.iter().flat_map(|s| ["--sweep".to_string(), s.clone()]));
            run_args.extend(["--runs-dir".to_string(), runs_dir.display().to_string()]);
            let sub = scaleout::Submission {
                ablate: &exe.display().to_string(),
                workdir: &cwd.display().to_string(),
                run_args: &run_args,
                runs_dir: &runs_dir.display().to_string(),
                name: &ablate::output::run_dir::safe(&name),
                variants,
            };
            let opts = scaleout::SlurmOptions { partition, gpus_per_task, cpus_per_task, time, sbatch };
            print!("{}", scaleout::script(&sub, &opts));
            Ok(())
        }),
        Command::Compare { runs, sort } => experiment::compare(&runs, sort.as_deref()).map(|table| println!("{table}")),
        Command::Predict { run, checkpoint, data, out, device } => {
            experiment::predict(&run, checkpoint, data.as_deref(), out.as_deref(), device.as_deref())
                .map(|out| println!("{}", out.display()))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            // 130: interrupted (as a shell reports SIGINT), resumable.
            if e.chain().any(|c| c.is::<ablate::train::Interrupted>()) {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
