//! A record of the forward's discontinuous decisions, for the parity tests: which side of
//! zero each ReLU input fell on, and which element each max-pool window took.
//!
//! Where an input lies within float32 rounding of a kink, any float32 implementation may
//! take the other side than float64 does, and the gradients below then differ by far more
//! than rounding. The whole-network parity test (tests/parity/nets.py) therefore measures
//! ablate against a float64 run that takes ablate's recorded side at every kink, and checks
//! separately that each side ablate took differently from float64 was a near-tie. Recording
//! is per thread (ops run on the calling thread) and costs nothing when off.

use std::cell::RefCell;

/// One decision point of a forward pass, in call order.
#[derive(Debug, Clone, PartialEq)]
pub enum Kink {
    /// A ReLU (alone, fused after a BatchNorm, or after a residual add): whether each output
    /// is positive, over `shape`.
    Relu { positive: Vec<bool>, shape: Vec<usize> },
    /// A max-pool: each output's source, as an index into its input plane, over the output's
    /// `shape`.
    MaxPool { argmax: Vec<u32>, shape: Vec<usize> },
}

thread_local! {
    static RECORD: RefCell<Option<Vec<Kink>>> = const { RefCell::new(None) };
}

/// Runs `f` and returns, with its result, every decision the forward passes in it made on
/// this thread.
pub fn record<R>(f: impl FnOnce() -> R) -> (R, Vec<Kink>) {
    let outer = RECORD.with(|r| r.borrow_mut().replace(Vec::new()));
    let out = f();
    let kinks = RECORD.with(|r| std::mem::replace(&mut *r.borrow_mut(), outer)).unwrap_or_default();
    (out, kinks)
}

/// Notes a ReLU's output `y` of `shape`, if recording.
pub(crate) fn relu(y: &[f32], shape: &[usize]) {
    RECORD.with(|r| {
        if let Some(v) = r.borrow_mut().as_mut() {
            v.push(Kink::Relu { positive: y.iter().map(|&v| v > 0.0).collect(), shape: shape.to_vec() });
        }
    });
}

/// Notes a max-pool's argmax over its output `shape`, if recording.
pub(crate) fn max_pool(argmax: &[u32], shape: &[usize]) {
    RECORD.with(|r| {
        if let Some(v) = r.borrow_mut().as_mut() {
            v.push(Kink::MaxPool { argmax: argmax.to_vec(), shape: shape.to_vec() });
        }
    });
}
