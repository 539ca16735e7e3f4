//! Named crash points for the crash test: with `ABLATE_CRASH_AT=<k>`, the process kills itself
//! with SIGKILL at the k-th point it reaches (counting every point, 1-based); with
//! `ABLATE_CRASH_TRACE=1` it names each point on stderr as it passes. Unset (always, outside
//! the test), a point costs one relaxed atomic load.
//!
//! The points sit between the durable steps of an epoch commit and of a variant's finishing
//! steps, so that a test can kill a run at each of them in turn, deterministically, and check
//! that `ablate resume` still ends with the same bytes.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Config {
    at: Option<usize>,
    trace: bool,
}

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| Config {
        at: std::env::var("ABLATE_CRASH_AT").ok().and_then(|v| v.parse().ok()),
        trace: std::env::var_os("ABLATE_CRASH_TRACE").is_some(),
    })
}

/// A crash point named `name`.
pub fn point(name: &str) {
    static REACHED: AtomicUsize = AtomicUsize::new(0);
    let c = config();
    if c.at.is_none() && !c.trace {
        return;
    }
    let n = REACHED.fetch_add(1, Ordering::Relaxed) + 1;
    if c.trace {
        eprintln!("ABLATE_CRASH_POINT {n} {name}");
    }
    if c.at == Some(n) {
        // SAFETY: raise() has no preconditions; SIGKILL ends the process here, as `kill -9`.
        unsafe {
            libc::raise(libc::SIGKILL);
        }
    }
}
