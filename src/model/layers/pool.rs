//! `max_pool`, `avg_pool` (windows) and `global_avg_pool` (`(n, c, h, w) -> (n, c)`).

use candle_core::{Module, Result, Tensor};

use super::{Built, Walk};
use crate::ops::pool::{PoolParams, pool2d};

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
