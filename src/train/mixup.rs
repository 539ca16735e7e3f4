//! Batch-level mixup and cutmix as timm's `Mixup` (mode `batch`, `correct_lam`): each batch
//! mixes with its own reverse, by a weight drawn from Beta(α, α), either blending whole images
//! (mixup) or pasting a box (cutmix); the targets mix the same way, after label smoothing.

use candle_core::{DType, Tensor};
use rand::Rng;
use rand_distr::{Beta, Distribution};

pub use crate::spec::MixupSpec;

/// One batch's draw: the weight of the batch itself, and the pasted box `(top, bottom,
/// left, right)` for cutmix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MixDraw {
    pub lam: f64,
    pub cut: Option<(usize, usize, usize, usize)>,
}

/// timm's `_params_per_batch` and `cutmix_bbox_and_lam` for `(h, w)` images: `None` for a
/// batch left unmixed. For cutmix, the weight is corrected to the box's actual area.
pub fn draw(rng: &mut impl Rng, m: &MixupSpec, (h, w): (usize, usize)) -> Option<MixDraw> {
    if rng.r#gen::<f64>() >= m.prob {
        return None;
    }
    let beta = |a: f64, rng: &mut _| Beta::new(a, a).expect("a positive alpha (checked in the config)").sample(rng);
    let use_cutmix = match (m.mixup_alpha > 0.0, m.cutmix_alpha > 0.0) {
        (true, true) => rng.r#gen::<f64>() < m.switch_prob,
        (false, true) => true,
        _ => false,
    };
    let lam: f64 = beta(if use_cutmix { m.cutmix_alpha } else { m.mixup_alpha }, rng);
    if !use_cutmix {
        return Some(MixDraw { lam, cut: None });
    }
    let ratio = (1.0 - lam).sqrt();
    let (cut_h, cut_w) = ((h as f64 * ratio) as usize, (w as f64 * ratio) as usize);
    let (cy, cx) = (rng.gen_range(0..h) as isize, rng.gen_range(0..w) as isize);
    let clip = |v: isize, n: usize| v.clamp(0, n as isize) as usize;
    let (top, bottom) = (clip(cy - (cut_h / 2) as isize, h), clip(cy + (cut_h / 2) as isize, h));
    let (left, right) = (clip(cx - (cut_w / 2) as isize, w), clip(cx + (cut_w / 2) as isize, w));
    let lam = 1.0 - ((bottom - top) * (right - left)) as f64 / (h * w) as f64;
    Some(MixDraw { lam, cut: Some((top, bottom, left, right)) })
}

/// The batch `(n, c, h, w)` mixed with its reverse as `d` says (timm's `_mix_batch`).
pub fn mix_images(x: &Tensor, d: &MixDraw) -> candle_core::Result<Tensor> {
    let n = x.dim(0)?;
    let reverse: Vec<u32> = (0..n as u32).rev().collect();
    let flipped = x.index_select(&Tensor::new(reverse.as_slice(), x.device())?, 0)?;
    match d.cut {
        None => (x * d.lam)? + (flipped * (1.0 - d.lam))?,
        Some((top, bottom, left, right)) => {
            if top == bottom || left == right {
                return Ok(x.clone());
            }
            let (h, w) = (x.dim(2)?, x.dim(3)?);
            let rows = Tensor::arange(0u32, h as u32, x.device())?;
            let cols = Tensor::arange(0u32, w as u32, x.device())?;
            let in_rows = rows.ge(top as u32)?.mul(&rows.lt(bottom as u32)?)?.reshape((h, 1))?;
            let in_cols = cols.ge(left as u32)?.mul(&cols.lt(right as u32)?)?.reshape((1, w))?;
            let mask = in_rows.broadcast_mul(&in_cols)?.broadcast_as(x.shape())?;
            mask.where_cond(&flipped, x)
        }
    }
}

/// timm's `mixup_target`: one-hot targets smoothed (`1 − ε + ε/k` on the label, `ε/k`
/// elsewhere), mixed as `lam · t + (1 − lam) · reverse(t)`.
pub fn mix_targets(
    labels: &[u32],
    classes: usize,
    lam: f64,
    smoothing: f64,
    dev: &candle_core::Device,
) -> candle_core::Result<Tensor> {
    let off = smoothing / classes as f64;
    let on = 1.0 - smoothing + off;
    let n = labels.len();
    let mut t = vec![0f32; n * classes];
    for (i, row) in t.chunks_exact_mut(classes).enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            let a = if labels[i] as usize == c { on } else { off };
            let b = if labels[n - 1 - i] as usize == c { on } else { off };
            *v = (a as f32) * lam as f32 + (b as f32) * (1.0 - lam) as f32;
        }
    }
    Tensor::from_vec(t, (n, classes), dev)?.to_dtype(DType::F32)
}

/// The label that weighs most in each mixed image (train accuracy counts against it).
pub fn dominant(labels: &[u32], lam: f64) -> Vec<u32> {
    if lam >= 0.5 { labels.to_vec() } else { labels.iter().rev().copied().collect() }
}
