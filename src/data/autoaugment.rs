//! The automatic augmentation policies of torchvision: `TrivialAugmentWide` (one op of 14 a
//! image, at a random strength) and `RandAugment(num_ops, magnitude)`. Each op computes what
//! torchvision's `_apply_op` computes on an 8-bit image tensor (its uint8 arithmetic: blends in
//! float32 truncated back to 8 bits, integer histograms); `tests/suite/augment.rs` holds them
//! to it. (PIL images, torchvision's other input, round some ops differently.)

use image::RgbImage;
use rand::Rng;

use super::augment::{AffineDraw, inverse_affine_matrix_at, warp_nearest};

/// torchvision's op list, in its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Identity,
    ShearX,
    ShearY,
    TranslateX,
    TranslateY,
    Rotate,
    Brightness,
    Color,
    Contrast,
    Sharpness,
    Posterize,
    Solarize,
    AutoContrast,
    Equalize,
}

pub const OPS: [Op; 14] = [
    Op::Identity,
    Op::ShearX,
    Op::ShearY,
    Op::TranslateX,
    Op::TranslateY,
    Op::Rotate,
    Op::Brightness,
    Op::Color,
    Op::Contrast,
    Op::Sharpness,
    Op::Posterize,
    Op::Solarize,
    Op::AutoContrast,
    Op::Equalize,
];

/// Which policy's magnitudes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Space {
    /// `TrivialAugmentWide`'s wide ranges.
    Wide,
    /// `RandAugment`'s ranges for an `(h, w)` image.
    Rand((usize, usize)),
}

/// `torch.linspace(lo, hi, n)[i]` as torchvision gets it: computed in float32 the way
/// PyTorch's CPU kernel does (from the start for the first half, from the end for the rest).
fn linspace(lo: f64, hi: f64, n: usize, i: usize) -> f64 {
    if n == 1 {
        return lo as f32 as f64;
    }
    let (lo, hi) = (lo as f32, hi as f32);
    let step = (hi - lo) / (n - 1) as f32;
    (if i < n / 2 { lo + step * i as f32 } else { hi - step * (n - 1 - i) as f32 }) as f64
}

/// The magnitude of `op` at bin `i` of `bins` (`_augmentation_space`), and whether it is
/// signed; `None` for ops without magnitudes.
pub fn magnitude(op: Op, space: Space, bins: usize, i: usize) -> (Option<f64>, bool) {
    let wide = matches!(space, Space::Wide);
    let (shear, bright, rot) = if wide { (0.99, 0.99, 135.0) } else { (0.3, 0.9, 30.0) };
    let translate = |side: usize| if wide { 32.0 } else { 150.0 / 331.0 * side as f64 };
    let (hw, posterize_span) = match space {
        Space::Wide => ((0, 0), 6.0),
        Space::Rand(hw) => (hw, 4.0),
    };
    match op {
        Op::Identity | Op::AutoContrast | Op::Equalize => (None, false),
        Op::ShearX | Op::ShearY => (Some(linspace(0.0, shear, bins, i)), true),
        Op::TranslateX => (Some(linspace(0.0, translate(hw.1), bins, i)), true),
        Op::TranslateY => (Some(linspace(0.0, translate(hw.0), bins, i)), true),
        Op::Rotate => (Some(linspace(0.0, rot, bins, i)), true),
        Op::Brightness | Op::Color | Op::Contrast | Op::Sharpness => (Some(linspace(0.0, bright, bins, i)), true),
        // 8 - round(i / ((bins - 1) / span)), to int.
        Op::Posterize => (Some(8.0 - (i as f64 / ((bins - 1) as f64 / posterize_span)).round_ties_even()), false),
        Op::Solarize => (Some(linspace(255.0, 0.0, bins, i)), false),
    }
}

/// `TrivialAugmentWide.forward`'s draw: an op, a bin, a sign.
pub fn trivial_draw(rng: &mut impl Rng, bins: usize) -> (Op, f64) {
    let op = OPS[rng.gen_range(0..OPS.len())];
    let (m, signed) = magnitude(op, Space::Wide, bins, rng.gen_range(0..bins));
    let m = m.unwrap_or(0.0);
    (op, if signed && rng.gen_bool(0.5) { -m } else { m })
}

/// `RandAugment.forward`'s draws: `n` ops at bin `m`, each with a random sign.
pub fn rand_draws(rng: &mut impl Rng, n: usize, m: usize, bins: usize, hw: (usize, usize)) -> Vec<(Op, f64)> {
    (0..n)
        .map(|_| {
            let op = OPS[rng.gen_range(0..OPS.len())];
            let (mag, signed) = magnitude(op, Space::Rand(hw), bins, m);
            let mag = mag.unwrap_or(0.0);
            (op, if signed && rng.gen_bool(0.5) { -mag } else { mag })
        })
        .collect()
}

/// `_apply_op(img, op, magnitude, NEAREST, fill)` on an 8-bit image.
pub fn apply(img: &RgbImage, op: Op, magnitude: f64, fill: [u8; 3]) -> RgbImage {
    let (w, h) = (img.width() as f64, img.height() as f64);
    let warp = |d: AffineDraw, center: (f64, f64)| warp_nearest(img, inverse_affine_matrix_at(&d, center), fill);
    let plain = AffineDraw { angle: 0.0, translate: (0.0, 0.0), scale: 1.0, shear: (0.0, 0.0) };
    let shear = magnitude.atan().to_degrees();
    match op {
        Op::Identity => img.clone(),
        // Sheared about the top-left corner (`center=[0, 0]`).
        Op::ShearX => warp(AffineDraw { shear: (shear, 0.0), ..plain }, (-0.5 * w, -0.5 * h)),
        Op::ShearY => warp(AffineDraw { shear: (0.0, shear), ..plain }, (-0.5 * w, -0.5 * h)),
        Op::TranslateX => warp(AffineDraw { translate: (magnitude.trunc(), 0.0), ..plain }, (0.0, 0.0)),
        Op::TranslateY => warp(AffineDraw { translate: (0.0, magnitude.trunc()), ..plain }, (0.0, 0.0)),
        // `rotate` turns the other way from `affine`.
        Op::Rotate => warp(AffineDraw { angle: -magnitude, ..plain }, (0.0, 0.0)),
        Op::Brightness => map_blend(img, 1.0 + magnitude, |_, _| [0.0; 3]),
        Op::Color => map_blend(img, 1.0 + magnitude, |p, _| [gray(p) as f32; 3]),
        Op::Contrast => {
            let sum: f64 = img.pixels().map(|p| gray(p) as f64).sum();
            let mean = (sum / (img.width() * img.height()) as f64) as f32;
            map_blend(img, 1.0 + magnitude, |_, _| [mean; 3])
        }
        Op::Sharpness => sharpness(img, 1.0 + magnitude),
        Op::Posterize => {
            let mask = (256 - (1u32 << (8 - magnitude as u32))) as u8;
            map(img, |p| p.map(|v| v & mask))
        }
        Op::Solarize => map(img, |p| p.map(|v| if v as f64 >= magnitude { 255 - v } else { v })),
        Op::AutoContrast => autocontrast(img),
        Op::Equalize => equalize(img),
    }
}

fn map(img: &RgbImage, f: impl Fn([u8; 3]) -> [u8; 3]) -> RgbImage {
    RgbImage::from_fn(img.width(), img.height(), |x, y| image::Rgb(f(img.get_pixel(x, y).0)))
}

/// torchvision's uint8 `rgb_to_grayscale`: the float32 luma truncated to 8 bits.
fn gray(p: &image::Rgb<u8>) -> u8 {
    (0.2989f32 * p[0] as f32 + 0.587f32 * p[1] as f32 + 0.114f32 * p[2] as f32) as u8
}

/// torchvision's `_blend` on uint8: `ratio · a + (1 − ratio) · b` in float32, clamped to
/// [0, 255] and truncated.
fn blend(ratio: f64, a: u8, b: f32) -> u8 {
    (ratio as f32 * a as f32 + (1.0 - ratio) as f32 * b).clamp(0.0, 255.0) as u8
}

/// Blends each pixel with `other(pixel, (x, y))`.
fn map_blend(img: &RgbImage, ratio: f64, other: impl Fn(&image::Rgb<u8>, (u32, u32)) -> [f32; 3]) -> RgbImage {
    RgbImage::from_fn(img.width(), img.height(), |x, y| {
        let p = img.get_pixel(x, y);
        let o = other(p, (x, y));
        image::Rgb([blend(ratio, p[0], o[0]), blend(ratio, p[1], o[1]), blend(ratio, p[2], o[2])])
    })
}

/// `adjust_sharpness`: a blend with the image smoothed by [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13
/// (rounded to 8 bits; the border kept).
fn sharpness(img: &RgbImage, factor: f64) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    if w <= 2 || h <= 2 {
        return img.clone();
    }
    let (edge, centre) = (1.0f32 / 13.0, 5.0f32 / 13.0);
    map_blend(img, factor, |p, (x, y)| {
        if x == 0 || y == 0 || x == w - 1 || y == h - 1 {
            return p.0.map(|v| v as f32);
        }
        let mut out = [0f32; 3];
        for (c, o) in out.iter_mut().enumerate() {
            let mut sum = 0f32;
            for dy in 0..3 {
                for dx in 0..3 {
                    let k = if dx == 1 && dy == 1 { centre } else { edge };
                    sum += k * img.get_pixel(x + dx - 1, y + dy - 1)[c] as f32;
                }
            }
            *o = sum.round_ties_even().clamp(0.0, 255.0);
        }
        out
    })
}

/// `autocontrast`: each channel stretched from its minimum and maximum to [0, 255].
fn autocontrast(img: &RgbImage) -> RgbImage {
    let mut lo = [255u8; 3];
    let mut hi = [0u8; 3];
    for p in img.pixels() {
        for c in 0..3 {
            lo[c] = lo[c].min(p[c]);
            hi[c] = hi[c].max(p[c]);
        }
    }
    let scale: [f32; 3] = std::array::from_fn(|c| 255.0 / (hi[c] as f32 - lo[c] as f32));
    map(img, |p| {
        std::array::from_fn(|c| {
            let (min, s) = if scale[c].is_finite() { (lo[c] as f32, scale[c]) } else { (0.0, 1.0) };
            ((p[c] as f32 - min) * s).clamp(0.0, 255.0) as u8
        })
    })
}

/// `equalize`: each channel through torchvision's histogram lookup table (integer arithmetic).
fn equalize(img: &RgbImage) -> RgbImage {
    let luts: [Option<[u8; 256]>; 3] = std::array::from_fn(|c| {
        let mut hist = [0u64; 256];
        for p in img.pixels() {
            hist[p[c] as usize] += 1;
        }
        let nonzero: Vec<u64> = hist.iter().copied().filter(|&n| n != 0).collect();
        let step = nonzero[..nonzero.len().saturating_sub(1)].iter().sum::<u64>() / 255;
        if step == 0 {
            return None;
        }
        let mut lut = [0u8; 256];
        let mut cumulative = 0u64;
        for (v, &n) in hist.iter().enumerate().take(255) {
            cumulative += n;
            // The table shifted by one: lut[v + 1] = (cumsum[v] + step / 2) / step.
            lut[v + 1] = ((cumulative + step / 2) / step).min(255) as u8;
        }
        Some(lut)
    });
    map(img, |p| std::array::from_fn(|c| luts[c].map_or(p[c], |lut| lut[p[c] as usize])))
}
