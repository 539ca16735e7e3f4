//! The random augmentations of torchvision, one function each: the samplers draw what
//! torchvision's `get_params` draw (from our seeded generator), and the operations compute
//! what torchvision's tensor functions compute, in float32, on CHW floats in [0, 1] (colour)
//! or on 8-bit images (geometry). `tests/suite/augment.rs` holds each against torchvision.
//!
//! Written here rather than taken from a crate: `image`/`imageproc` have rotations and
//! blurs, but with their own sampling grids, rounding and kernels; a recipe ported from
//! torchvision should see the same pixels.

use fast_image_resize as fir;
use image::RgbImage;
use image::imageops;
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

pub use crate::spec::{Affine, EraseValue, Erasing, Jitter};

/// Bilinear resize with an antialiasing kernel when shrinking (what torchvision's `Resize`
/// does on PIL images). fast_image_resize's SIMD convolution: the `image` crate's resize was
/// over half of the data pipeline's time (perf).
pub fn resize(img: RgbImage, w: u32, h: u32) -> RgbImage {
    if img.dimensions() == (w, h) {
        return img;
    }
    let (sw, sh) = img.dimensions();
    let src = fir::images::Image::from_vec_u8(sw, sh, img.into_raw(), fir::PixelType::U8x3)
        .expect("an RgbImage buffer holds w * h * 3 bytes");
    let mut dst = fir::images::Image::new(w, h, fir::PixelType::U8x3);
    let options = fir::ResizeOptions::new().resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Bilinear));
    fir::Resizer::new().resize(&src, &mut dst, &options).expect("same pixel type, non-empty sizes");
    RgbImage::from_raw(w, h, dst.into_vec()).expect("the resized buffer holds w * h * 3 bytes")
}

pub fn crop(img: &RgbImage, top: u32, left: u32, (h, w): (usize, usize)) -> RgbImage {
    imageops::crop_imm(img, left, top, w as u32, h as u32).to_image()
}

/// A uniform draw from `[lo, hi)`.
fn uniform(rng: &mut impl Rng, [lo, hi]: [f64; 2]) -> f64 {
    lo + (hi - lo) * rng.r#gen::<f64>()
}

/// A box `(top, left, h, w)` in an image.
pub type Region = (usize, usize, usize, usize);

/// One try of both samplers: a share of the area drawn uniformly from `scale` and an aspect
/// ratio log-uniformly from `ratio`, as the two sides `(sqrt(area · aspect), sqrt(area /
/// aspect))`, rounded half to even as Python's `round`.
fn box_sides(rng: &mut impl Rng, (height, width): (usize, usize), scale: [f64; 2], ratio: [f64; 2]) -> (usize, usize) {
    let target = (height * width) as f64 * uniform(rng, scale);
    let aspect = uniform(rng, [ratio[0].ln(), ratio[1].ln()]).exp();
    ((target * aspect).sqrt().round_ties_even() as usize, (target / aspect).sqrt().round_ties_even() as usize)
}

/// `RandomResizedCrop.get_params`: up to 10 boxes of a uniform share of the area and a
/// log-uniform aspect ratio until one fits, then the largest centred box within the ratio
/// range. Python's `round` (half to even) as torchvision uses it.
pub fn resized_crop_box(
    rng: &mut impl Rng,
    (height, width): (usize, usize),
    scale: [f64; 2],
    ratio: [f64; 2],
) -> Region {
    for _ in 0..10 {
        let (w, h) = box_sides(rng, (height, width), scale, ratio);
        if 0 < w && w <= width && 0 < h && h <= height {
            let top = rng.gen_range(0..=height - h);
            let left = rng.gen_range(0..=width - w);
            return (top, left, h, w);
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (lo, hi) = (ratio[0].min(ratio[1]), ratio[0].max(ratio[1]));
    let (h, w) = if in_ratio < lo {
        ((width as f64 / lo).round_ties_even() as usize, width)
    } else if in_ratio > hi {
        (height, (height as f64 * hi).round_ties_even() as usize)
    } else {
        (height, width)
    };
    ((height - h) / 2, (width - w) / 2, h, w)
}

/// torchvision's `resized_crop`: the region, resized to `(h, w)` bilinearly with
/// antialiasing (as `Resize` does).
pub fn resized_crop(img: &RgbImage, (top, left, h, w): Region, size: (usize, usize)) -> RgbImage {
    resize(crop(img, top as u32, left as u32, (h, w)), size.1 as u32, size.0 as u32)
}

/// `RandomErasing.get_params`: up to 10 boxes smaller than the image on both sides; `None`
/// when none is (the image is left alone).
pub fn erasing_box(
    rng: &mut impl Rng,
    (height, width): (usize, usize),
    scale: [f64; 2],
    ratio: [f64; 2],
) -> Option<Region> {
    for _ in 0..10 {
        // RandomErasing names the sides the other way round from RandomResizedCrop.
        let (h, w) = box_sides(rng, (height, width), scale, ratio);
        if h < height && w < width {
            return Some((rng.gen_range(0..=height - h), rng.gen_range(0..=width - w), h, w));
        }
    }
    None
}

/// `RandomErasing.forward` on a normalised CHW image: with probability `p`, a box filled
/// with the value (or standard normal noise).
pub fn random_erasing(rng: &mut impl Rng, e: &Erasing, img: &mut [f32], (h, w): (usize, usize)) {
    if rng.r#gen::<f64>() >= e.p {
        return;
    }
    let Some((top, left, bh, bw)) = erasing_box(rng, (h, w), e.scale, e.ratio) else {
        return;
    };
    for (c, plane) in img.chunks_exact_mut(h * w).enumerate() {
        for row in plane.chunks_exact_mut(w).skip(top).take(bh) {
            for x in &mut row[left..left + bw] {
                *x = match e.value {
                    EraseValue::Constant(v) => v[c],
                    EraseValue::Random => StandardNormal.sample(rng),
                };
            }
        }
    }
}

/// One draw of `ColorJitter.get_params`: the order of the four adjustments and each factor.
#[derive(Debug, Clone, PartialEq)]
pub struct JitterDraw {
    /// 0 brightness, 1 contrast, 2 saturation, 3 hue.
    pub order: [usize; 4],
    pub factors: [Option<f64>; 4],
}

pub fn jitter_draw(rng: &mut impl Rng, j: &Jitter) -> JitterDraw {
    use rand::seq::SliceRandom;
    let mut order = [0, 1, 2, 3];
    order.shuffle(rng);
    let factors = [j.brightness, j.contrast, j.saturation, j.hue].map(|r| r.map(|r| uniform(rng, r)));
    JitterDraw { order, factors }
}

/// Applies a drawn colour jitter in its order.
pub fn color_jitter(draw: &JitterDraw, img: &mut [f32], plane: usize) {
    for &k in &draw.order {
        match (k, draw.factors[k]) {
            (0, Some(f)) => adjust_brightness(img, f),
            (1, Some(f)) => adjust_contrast(img, plane, f),
            (2, Some(f)) => adjust_saturation(img, plane, f),
            (3, Some(f)) => adjust_hue(img, plane, f),
            _ => {}
        }
    }
}

/// torchvision's `_blend` in float32: `ratio * a + (1 - ratio) * b`, clamped to [0, 1].
fn blend(ratio: f64, a: f32, b: f32) -> f32 {
    (ratio as f32 * a + (1.0 - ratio) as f32 * b).clamp(0.0, 1.0)
}

/// torchvision's luma (`rgb_to_grayscale`): 0.2989 R + 0.587 G + 0.114 B.
fn luma(r: f32, g: f32, b: f32) -> f32 {
    0.2989 * r + 0.587 * g + 0.114 * b
}

/// `adjust_brightness`: blends with black.
pub fn adjust_brightness(img: &mut [f32], factor: f64) {
    for x in img {
        *x = blend(factor, *x, 0.0);
    }
}

/// `adjust_contrast`: blends with the image's mean luma.
pub fn adjust_contrast(img: &mut [f32], plane: usize, factor: f64) {
    let (r, rest) = img.split_at(plane);
    let (g, b) = rest.split_at(plane);
    let sum: f64 = (0..plane).map(|i| luma(r[i], g[i], b[i]) as f64).sum();
    let mean = (sum / plane as f64) as f32;
    for x in img {
        *x = blend(factor, *x, mean);
    }
}

/// `adjust_saturation`: blends each pixel with its luma.
pub fn adjust_saturation(img: &mut [f32], plane: usize, factor: f64) {
    let (r, rest) = img.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for i in 0..plane {
        let l = luma(r[i], g[i], b[i]);
        r[i] = blend(factor, r[i], l);
        g[i] = blend(factor, g[i], l);
        b[i] = blend(factor, b[i], l);
    }
}

/// `rgb_to_grayscale(num_output_channels=3)`: the luma in all three channels.
pub fn grayscale(img: &mut [f32], plane: usize) {
    let (r, rest) = img.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for i in 0..plane {
        let l = luma(r[i], g[i], b[i]);
        (r[i], g[i], b[i]) = (l, l, l);
    }
}

/// `adjust_hue`: shifts the hue by `factor` turns (in [-0.5, 0.5]) through torchvision's
/// `_rgb2hsv` and `_hsv2rgb`, operation for operation.
pub fn adjust_hue(img: &mut [f32], plane: usize, factor: f64) {
    let (r, rest) = img.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    let factor = factor as f32;
    for i in 0..plane {
        let (h, s, v) = rgb_to_hsv(r[i], g[i], b[i]);
        let h = h + factor;
        (r[i], g[i], b[i]) = hsv_to_rgb(h - h.floor(), s, v);
    }
}

fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    let eqc = maxc == minc;
    let cr = maxc - minc;
    let s = cr / if eqc { 1.0 } else { maxc };
    let divisor = if eqc { 1.0 } else { cr };
    let (rc, gc, bc) = ((maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor);
    let hr = if maxc == r { bc - gc } else { 0.0 };
    let hg = if maxc == g && maxc != r { 2.0 + rc - bc } else { 0.0 };
    let hb = if maxc != g && maxc != r { 4.0 + gc - rc } else { 0.0 };
    let h = (hr + hg + hb) / 6.0 + 1.0;
    // fmod(h, 1) for h in (0, 2): exact either way.
    (if h >= 1.0 { h - 1.0 } else { h }, s, maxc)
}

fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let i = (h * 6.0).floor();
    let f = h * 6.0 - i;
    let p = (v * (1.0 - s)).clamp(0.0, 1.0);
    let q = (v * (1.0 - s * f)).clamp(0.0, 1.0);
    let t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0);
    match (i as i32).rem_euclid(6) {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

/// torchvision's `_get_gaussian_kernel1d`, in float32.
fn gaussian_kernel(size: usize, sigma: f64) -> Vec<f32> {
    let half = (size as f32 - 1.0) * 0.5;
    let step = if size > 1 { 2.0 * half / (size as f32 - 1.0) } else { 0.0 };
    let pdf: Vec<f32> = (0..size)
        .map(|i| {
            let x = (-half + step * i as f32) / sigma as f32;
            (-0.5 * x * x).exp()
        })
        .collect();
    let sum: f32 = pdf.iter().sum();
    pdf.into_iter().map(|p| p / sum).collect()
}

/// Reflect padding's index (`torch.nn.functional.pad(mode="reflect")`): -1 is 1, n is n - 2.
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    let i = if i < 0 { -i } else { i };
    (if i >= n { 2 * (n - 1) - i } else { i }) as usize
}

/// `gaussian_blur` with kernel `(kh, kw)` (odd) and one sigma, reflect-padded: torchvision
/// convolves with the outer product of the two 1-D kernels; this applies them one after the
/// other (rows, then columns), which is the same sum in another order. An image no larger
/// than half the kernel (where reflect padding is undefined) is an error.
pub fn gaussian_blur(
    img: &mut [f32],
    (h, w): (usize, usize),
    (kh, kw): (usize, usize),
    sigma: f64,
) -> Result<(), String> {
    if kh / 2 >= h || kw / 2 >= w {
        return Err(format!("a {kh}x{kw} blur kernel needs an image larger than half of it, not {h}x{w}"));
    }
    let (ky, kx) = (gaussian_kernel(kh, sigma), gaussian_kernel(kw, sigma));
    let mut rows = vec![0f32; h * w];
    for plane in img.chunks_exact_mut(h * w) {
        for (src, dst) in plane.chunks_exact(w).zip(rows.chunks_exact_mut(w)) {
            dst.fill(0.0);
            for (k, &c) in kx.iter().enumerate() {
                let off = k as isize - (kw / 2) as isize;
                // The taps inside the row in one pass over slices (vectorised), then the
                // reflected ones at the ends.
                let (lo, hi) = ((-off).max(0) as usize, (w as isize - off.max(0)) as usize);
                for (o, &v) in dst[lo..hi].iter_mut().zip(&src[(lo as isize + off) as usize..]) {
                    *o += c * v;
                }
                for x in (0..lo).chain(hi..w) {
                    dst[x] += c * src[reflect(x as isize + off, w)];
                }
            }
        }
        for y in 0..h {
            let out = &mut plane[y * w..(y + 1) * w];
            out.fill(0.0);
            for (k, &c) in ky.iter().enumerate() {
                let row = reflect(y as isize + k as isize - (kh / 2) as isize, h);
                for (o, &v) in out.iter_mut().zip(&rows[row * w..(row + 1) * w]) {
                    *o += c * v;
                }
            }
        }
    }
    Ok(())
}

/// One draw of `RandomAffine.get_params` for a `(h, w)` image: angle, whole-pixel
/// translation, scale and shears; or `RandomRotation`'s angle alone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AffineDraw {
    pub angle: f64,
    pub translate: (f64, f64),
    pub scale: f64,
    pub shear: (f64, f64),
}

pub fn affine_draw(rng: &mut impl Rng, a: &Affine, (h, w): (usize, usize)) -> AffineDraw {
    let angle = uniform(rng, a.degrees);
    let translate = a.translate.map_or((0.0, 0.0), |[tx, ty]| {
        let (dx, dy) = (tx * w as f64, ty * h as f64);
        (uniform(rng, [-dx, dx]).round_ties_even(), uniform(rng, [-dy, dy]).round_ties_even())
    });
    let scale = a.scale.map_or(1.0, |s| uniform(rng, s));
    let shear = a.shear.map_or((0.0, 0.0), |(x, y)| (uniform(rng, x), y.map_or(0.0, |y| uniform(rng, y))));
    AffineDraw { angle, translate, scale, shear }
}

/// torchvision's `_get_inverse_affine_matrix` about the image centre: where each output
/// pixel comes from, as `[a, b, c, d, e, f]` (x' = a x + b y + c, y' = d x + e y + f).
pub fn inverse_affine_matrix(d: &AffineDraw) -> [f64; 6] {
    inverse_affine_matrix_at(d, (0.0, 0.0))
}

/// [`inverse_affine_matrix`] about `center`, relative to the image centre (torchvision's
/// `center_f`: `[-w/2, -h/2]` is the top-left corner).
pub fn inverse_affine_matrix_at(d: &AffineDraw, (cx, cy): (f64, f64)) -> [f64; 6] {
    let rot = d.angle.to_radians();
    let (sx, sy) = (d.shear.0.to_radians(), d.shear.1.to_radians());
    let (tx, ty) = d.translate;
    let a = (rot - sy).cos() / sy.cos();
    let b = -(rot - sy).cos() * sx.tan() / sy.cos() - rot.sin();
    let c = (rot - sy).sin() / sy.cos();
    let dd = -(rot - sy).sin() * sx.tan() / sy.cos() + rot.cos();
    let mut m = [dd, -b, 0.0, -c, a, 0.0].map(|x| x / d.scale);
    m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty);
    m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty);
    m[2] += cx;
    m[5] += cy;
    m
}

/// torchvision's tensor `affine` with nearest-neighbour sampling (`_gen_affine_grid`, then
/// `grid_sample(align_corners=False)`), in float32 as torchvision computes it; pixels from
/// outside the image take `fill`.
pub fn warp_nearest(img: &RgbImage, m: [f64; 6], fill: [u8; 3]) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (hw, hh) = (0.5 * w as f32, 0.5 * h as f32);
    let t = m.map(|v| v as f32);
    let (tx, ty) = ([t[0] / hw, t[1] / hw, t[2] / hw], [t[3] / hh, t[4] / hh, t[5] / hh]);
    let mut out = RgbImage::new(w as u32, h as u32);
    for (oy, row) in out.rows_mut().enumerate() {
        let y = -hh + 0.5 + oy as f32;
        for (ox, px) in row.enumerate() {
            let x = -hw + 0.5 + ox as f32;
            let gx = x * tx[0] + y * tx[1] + tx[2];
            let gy = x * ty[0] + y * ty[1] + ty[2];
            // grid_sample's unnormalisation, then nearbyint (ties to even).
            let ix = (((gx + 1.0) * w as f32 - 1.0) / 2.0).round_ties_even();
            let iy = (((gy + 1.0) * h as f32 - 1.0) / 2.0).round_ties_even();
            *px = if ix >= 0.0 && iy >= 0.0 && (ix as usize) < w && (iy as usize) < h {
                *img.get_pixel(ix as u32, iy as u32)
            } else {
                image::Rgb(fill)
            };
        }
    }
    out
}

/// `RandomAffine` / `RandomRotation` on an 8-bit image.
pub fn random_affine(rng: &mut impl Rng, a: &Affine, img: &RgbImage) -> RgbImage {
    let mut draw = affine_draw(rng, a, (img.height() as usize, img.width() as usize));
    if a.rotation {
        // torchvision's `rotate` passes -angle to the same matrix.
        draw.angle = -draw.angle;
    }
    warp_nearest(img, inverse_affine_matrix(&draw), a.fill)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn hsv_round_trip_keeps_colours() {
        for rgb in [(0.2f32, 0.5f32, 0.9f32), (1.0, 0.0, 0.0), (0.3, 0.3, 0.3), (0.0, 0.7, 0.7)] {
            let (h, s, v) = rgb_to_hsv(rgb.0, rgb.1, rgb.2);
            let back = hsv_to_rgb(h, s, v);
            assert!((back.0 - rgb.0).abs() < 1e-6 && (back.1 - rgb.1).abs() < 1e-6 && (back.2 - rgb.2).abs() < 1e-6);
        }
    }

    #[test]
    fn a_crop_box_always_fits_and_falls_back_to_the_centre() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for _ in 0..1000 {
            let (t, l, h, w) = resized_crop_box(&mut rng, (30, 50), [0.08, 1.0], [0.75, 4.0 / 3.0]);
            assert!(h > 0 && w > 0 && t + h <= 30 && l + w <= 50);
        }
        // A 1x100 strip can hold no box of ratio in [3/4, 4/3] and a tenth of its area: the
        // fallback is the centred box of the widest ratio.
        assert_eq!(resized_crop_box(&mut rng, (1, 100), [0.1, 0.1], [0.75, 4.0 / 3.0]), (0, 49, 1, 1));
    }
}
