//! The commands, one file each: what `main` calls once the command line is parsed.

mod check;
mod evaluate;
mod lr_find;
mod predict;
mod resume;
mod run;
mod slurm;
mod summarize;

pub use check::{CheckOptions, check};
pub use evaluate::{Evaluated, evaluate};
pub use lr_find::{LrFindOptions, LrFound, lr_find};
pub use predict::{Which, predict};
pub use resume::{ResumeOptions, resume};
pub use run::{RunOptions, run};
pub use slurm::{slurm, slurm_resume};
pub use summarize::{SortKey, Summarized, compare, summarize};
