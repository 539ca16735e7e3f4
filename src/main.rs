//! `ablate` binary: parse the command line, call the library, print any error chain, exit.

use std::process::ExitCode;

mod cli;

use ablate::{Env, Interrupted, Request, ResumeOptions, RunOptions, SlurmOptions, StopAfterSteps, StopSignal};
use clap::Parser;
use cli::{Cli, Command, Testing};

/// glibc's malloc hands large freed buffers (im2col columns, activations) back to the OS and
/// page-faults them in again every step; mimalloc keeps them, which measured faster here.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The process's environment for trainings: Ctrl-C asks the learner to stop (it finishes its
/// step, commits a resumable checkpoint and stops; a second Ctrl-C kills as usual).
fn env(stop: &StopSignal, testing: Testing) -> Env<'static> {
    let mut env = Env { stop: stop.clone(), ..Env::default() };
    if let Some(n) = testing.stop_after_steps {
        env.hooks.push(Box::new(StopAfterSteps { remaining: n }));
    }
    env
}

/// Ctrl-C, SIGTERM (`scancel`, a time limit) and SIGUSR1 (Slurm's warning before a time
/// limit, `--signal=B:USR1@<seconds>`) ask the learner to stop: it finishes its step, commits a
/// resumable checkpoint and the process exits with 130 and the resume command. A second Ctrl-C
/// kills at once, as usual.
fn catch_signals(stop: &StopSignal) {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGUSR1]) else {
        eprintln!("warning: cannot catch SIGINT/SIGTERM/SIGUSR1; an interrupted run resumes from its last epoch");
        return;
    };
    let stop = stop.clone();
    std::thread::spawn(move || {
        for signal in signals.forever() {
            let again = stop.request();
            if again && signal == SIGINT {
                std::process::exit(130);
            }
            let name = match signal {
                SIGINT => "Ctrl-C",
                SIGTERM => "SIGTERM",
                _ => "SIGUSR1",
            };
            eprintln!("\n{name}: stopping after this step with a resumable checkpoint (Ctrl-C again to kill)...");
        }
    });
}

/// A Slurm task gets `--cpus-per-task` CPUs, not the node's: size the thread pools (rayon's,
/// which the kernels, GEMM and candle use) to them unless RAYON_NUM_THREADS says otherwise.
fn threads_from_slurm() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none()
        && let Some(n) = std::env::var("SLURM_CPUS_PER_TASK").ok().filter(|n| n.parse::<usize>().is_ok_and(|n| n > 0))
    {
        // SAFETY: first thing in main, before any other thread exists to read the environment.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n) };
    }
}

fn main() -> ExitCode {
    threads_from_slurm();
    ablate::keep_freed_memory();
    let stop = StopSignal::default();
    catch_signals(&stop);
    match dispatch(Cli::parse().command, &stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            // 130: interrupted (as a shell reports SIGINT), resumable.
            if e.chain().any(|c| c.is::<Interrupted>()) { ExitCode::from(130) } else { ExitCode::FAILURE }
        }
    }
}

fn request(what: &cli::Experiments) -> anyhow::Result<Request> {
    Ok(Request {
        files: ablate::experiment_files(&what.experiments)?,
        overrides: what.set.clone(),
        sweep: what.sweep.clone(),
        repeats: what.repeats.map(|n| n as usize),
    })
}

fn dispatch(command: Command, stop: &StopSignal) -> anyhow::Result<()> {
    ablate::configure_kernel_tuning()?;
    match command {
        Command::Run { what, device, runs_dir, fail_fast, shard, run_id, testing } => {
            let (shard, run_id) =
                ablate::shard_from_env(shard, run_id, |k| std::env::var(k).ok()).map_err(anyhow::Error::msg)?;
            // Slurm runs a pre-empted (or `scontrol requeue`d) task again with a restart count.
            let requeued = std::env::var("SLURM_RESTART_COUNT").is_ok_and(|n| n.parse::<u32>().is_ok_and(|n| n > 0));
            let opts = RunOptions {
                request: request(&what)?,
                device: device.device,
                runs_dir: runs_dir.path,
                fail_fast,
                shard,
                requeued: requeued && run_id.is_some(),
                run_id,
            };
            println!("{}", ablate::run(&opts, &mut env(stop, testing))?.display());
        }
        Command::Check { what, nodes, dot, png } => {
            let (summary, init) = ablate::check(&request(&what)?, &ablate::CheckOptions { nodes, dot, png })?;
            println!("{summary}");
            init?.into_iter().for_each(|r| println!("{r}"));
        }
        Command::Resume { run, device, allow_data_change, shard, testing } => {
            let opts = ResumeOptions { device: device.device, allow_data_change, shard };
            println!("{}", ablate::resume(&run, opts, &mut env(stop, testing))?.display());
        }
        Command::Summarize { run } => {
            let summary = ablate::summarize(&run)?;
            println!("{}", summary.markdown);
            summary.complete()?;
        }
        Command::Slurm {
            what,
            resume,
            runs_dir,
            partition,
            gpus_per_task,
            cpus_per_task,
            time,
            sbatch,
            warn_before,
        } => {
            let opts = SlurmOptions { partition, gpus_per_task, cpus_per_task, time, sbatch, warn_secs: warn_before };
            if let Some(run) = resume {
                print!("{}", ablate::slurm_resume(&run, &opts)?);
                return Ok(());
            }
            let mut run_args = what.to_args();
            run_args.extend(["--runs-dir".to_string(), runs_dir.path.display().to_string()]);
            print!("{}", ablate::slurm(&request(&what)?, &run_args, &runs_dir.path, &opts)?);
        }
        Command::Evaluate { run, data, checkpoint, name, device } => {
            let done = ablate::evaluate(&run, checkpoint, &data, name.as_deref(), device.device)?;
            println!("{}", done.evaluation.headline());
            println!("{}", done.evaluation.per_class_table());
            println!("{}", done.dir.join(format!("{}_confusion.csv", done.name)).display());
        }
        Command::LrFind { what, start, end, steps, out, device } => {
            let stamp = chrono::Local::now().format("%Y-%m-%d_%H-%M-%S");
            let out = out.unwrap_or_else(|| std::path::PathBuf::from(format!("runs/{stamp}_lr-find")));
            let opts = ablate::LrFindOptions { start, end, steps, out, device: device.device };
            let found = ablate::lr_find(&request(&what)?, &opts)?;
            let last = found.points.last().map_or(0.0, |p| p.lr);
            println!("{} steps, up to lr {last:.2e}: {}", found.points.len(), found.out.join("lr_find.png").display());
            match found.suggested {
                Some(lr) => println!("suggested learning rate: {lr:.2e}  (--set optimizer.lr={lr:.2e})"),
                None => println!("no suggestion: the test stopped after too few steps (try a smaller --start)"),
            }
        }
        Command::Compare { runs, sort } => println!("{}", ablate::compare(&runs, sort)?),
        Command::Predict { run, checkpoint, data, out, probs, device } => {
            let out = ablate::predict(&run, checkpoint, data.as_deref(), out.as_deref(), probs, device.device)?;
            println!("{}", out.display());
        }
    }
    Ok(())
}
