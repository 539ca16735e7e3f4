//! `max_pool`, `avg_pool` (windows), `global_avg_pool` (`(n, c, h, w) -> (n, c)`) and
//! `adaptive_avg_pool` (`-> (n, c, oh, ow)`).

use candle_core::{Module, Result, Tensor};

use super::{Built, Walk};
use crate::ops::pool::{PoolKind, PoolParams, pool2d};

/// Max or average pooling over windows.
pub struct Pool(pub PoolParams);

impl Module for Pool {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        pool2d(xs, self.0)
    }
}

/// The mean over height and width.
pub struct GlobalAvgPool;

impl Module for GlobalAvgPool {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        xs.mean((2, 3))
    }
}

pub(super) fn build(p: &PoolParams, walk: &mut Walk) -> std::result::Result<Built, String> {
    let (c, ih, iw) = walk.spatial()?;
    let Some((oh, ow)) = p.out_size(ih, iw) else {
        return Err(format!("window {:?} with padding {:?} does not fit the {ih}x{iw} input", p.kernel, p.padding));
    };
    Ok(walk.plain(Box::new(Pool(*p)), "pool", vec![c, oh, ow]))
}

pub(super) fn build_global(walk: &mut Walk) -> std::result::Result<Built, String> {
    let (c, _, _) = walk.spatial()?;
    Ok(walk.plain(Box::new(GlobalAvgPool), "pool", vec![c]))
}

/// PyTorch's `AdaptiveAvgPool2d`: output cell `(i, j)` is the mean of rows
/// `floor(i h / oh) .. ceil((i + 1) h / oh)` and the same in width. Where the bins tile the
/// input (`h % oh == 0`, `w % ow == 0`: every use in torchvision's models) it is an average
/// pool, our kernel; otherwise each bin is averaged with candle's ops.
pub struct AdaptiveAvgPool {
    out: (usize, usize),
}

impl Module for AdaptiveAvgPool {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = xs.dims4()?;
        let (oh, ow) = self.out;
        if (oh, ow) == (1, 1) {
            return xs.mean_keepdim(3)?.mean_keepdim(2);
        }
        if h % oh == 0 && w % ow == 0 {
            let (kh, kw) = (h / oh, w / ow);
            let p = PoolParams { kind: PoolKind::Avg, kernel: (kh, kw), stride: (kh, kw), padding: (0, 0) };
            return pool2d(xs, p);
        }
        let bins = |i: usize, n: usize, o: usize| (i * n / o, ((i + 1) * n).div_ceil(o));
        let rows = (0..oh)
            .map(|i| {
                let (r0, r1) = bins(i, h, oh);
                let cells = (0..ow)
                    .map(|j| {
                        let (c0, c1) = bins(j, w, ow);
                        xs.narrow(2, r0, r1 - r0)?.narrow(3, c0, c1 - c0)?.mean_keepdim(3)?.mean_keepdim(2)
                    })
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&cells, 3)
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&rows, 2)
    }
}

pub(super) fn build_adaptive(out: (usize, usize), walk: &mut Walk) -> std::result::Result<Built, String> {
    let (c, _, _) = walk.spatial()?;
    Ok(walk.plain(Box::new(AdaptiveAvgPool { out }), "pool", vec![c, out.0, out.1]))
}
