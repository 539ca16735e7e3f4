//! The geometry of convolutions and pools: plain values every implementation of them (the CPU
//! kernels, the composed ops of `ops::generic`) and the model builder share.

/// Geometry of one convolution; the same struct describes forward and both gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvParams {
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    pub groups: usize,
}

impl Default for ConvParams {
    fn default() -> Self {
        Self { stride: 1, padding: 0, dilation: 1, groups: 1 }
    }
}

impl ConvParams {
    /// Output side length for an input side `i` and kernel side `k`, as PyTorch computes it.
    pub fn out_size(&self, i: usize, k: usize) -> Option<usize> {
        let span = self.dilation * (k - 1) + 1;
        let padded = i + 2 * self.padding;
        (padded >= span).then(|| (padded - span) / self.stride + 1)
    }
}

/// Which reduction a pooling window applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    Max,
    Avg,
}

/// Window geometry, square or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolParams {
    pub kind: PoolKind,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
}

impl PoolParams {
    /// Output size `(oh, ow)` for an input of `(h, w)` (floor mode, as PyTorch's default), or
    /// `None` when the window does not fit.
    pub fn out_size(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let side = |i: usize, k: usize, s: usize, p: usize| (i + 2 * p >= k && s > 0).then(|| (i + 2 * p - k) / s + 1);
        Some((
            side(h, self.kernel.0, self.stride.0, self.padding.0)?,
            side(w, self.kernel.1, self.stride.1, self.padding.1)?,
        ))
    }

    /// Input rows/cols `[lo, hi)` covered by output index `o` along one axis.
    pub(crate) fn window(o: usize, k: usize, s: usize, p: usize, len: usize) -> (usize, usize) {
        let start = (o * s) as isize - p as isize;
        let lo = start.max(0) as usize;
        let hi = ((start + k as isize).max(0) as usize).min(len);
        (lo, hi)
    }
}
