//! `ablate` binary: parse the command line, call the library, print any error chain, exit.

use std::process::ExitCode;

use ablate::cli::{Cli, Command};
use ablate::config::Override;
use ablate::experiment::{self, RunOptions};
use clap::Parser;

/// glibc's malloc hands large freed buffers (im2col columns, activations) back to the OS and
/// page-faults them in again every step; mimalloc keeps them, which measured faster here.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn overrides(set: &[String]) -> anyhow::Result<Vec<Override>> {
    Ok(set.iter().map(|s| Override::parse(s)).collect::<Result<_, _>>()?)
}

fn main() -> ExitCode {
    ablate::alloc::keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { experiments, set, sweep, device, runs_dir, fail_fast } => {
            overrides(&set).and_then(|overrides| {
                let files = experiment::experiment_files(&experiments)?;
                let opts = RunOptions { files, overrides, sweep, device, runs_dir, fail_fast };
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
            ExitCode::FAILURE
        }
    }
}
