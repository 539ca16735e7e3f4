//! Image transforms: decoded RGB image in, normalised CHW f32 tensor data out. Geometric
//! steps run on the 8-bit image, the rest on the floats (see [`crate::spec::Phase`]).

use image::RgbImage;
use image::imageops;
use rand::Rng;

use super::augment::{self, crop, resize};
use super::autoaugment;
use crate::spec::Phase;
pub use crate::spec::Transform;

/// How many leading steps of `pipeline` are deterministic image operations (resize, centre
/// crop): their result can be computed once and cached.
pub fn deterministic_prefix(pipeline: &[Transform]) -> usize {
    pipeline
        .iter()
        .take_while(|t| matches!(t, Transform::Resize(_) | Transform::ResizeShorter(_) | Transform::CenterCrop(_)))
        .count()
}

/// Runs the geometric steps of `ops` (the others run on the tensor, see [`apply_tensor`]) on
/// `img`. Crops larger than the image are an error naming both sizes.
pub fn apply_image(ops: &[Transform], mut img: RgbImage, rng: &mut impl Rng) -> Result<RgbImage, String> {
    for t in ops.iter().filter(|t| t.phase() == Phase::Geometry) {
        match t {
            Transform::Resize((h, w)) => img = resize(img, *w as u32, *h as u32),
            Transform::ResizeShorter(side) => {
                let (w, h) = img.dimensions();
                let s = *side as f64 / w.min(h) as f64;
                let (nw, nh) = (((w as f64 * s).round() as u32).max(1), ((h as f64 * s).round() as u32).max(1));
                img = resize(img, nw, nh);
            }
            Transform::CenterCrop(size) | Transform::RandomCrop(size) => {
                let (w, h) = (img.width() as usize, img.height() as usize);
                if size.0 > h || size.1 > w {
                    return Err(format!("crop {}x{} is larger than the image {h}x{w}", size.0, size.1));
                }
                let (top, left) = if matches!(t, Transform::CenterCrop(_)) {
                    // torchvision rounds the centre offset the same way.
                    (((h - size.0) as f64 / 2.0).round() as u32, ((w - size.1) as f64 / 2.0).round() as u32)
                } else {
                    (rng.gen_range(0..=h - size.0) as u32, rng.gen_range(0..=w - size.1) as u32)
                };
                img = crop(&img, top, left, *size);
            }
            Transform::RandomResizedCrop { size, scale, ratio } => {
                let hw = (img.height() as usize, img.width() as usize);
                img = augment::resized_crop(&img, augment::resized_crop_box(rng, hw, *scale, *ratio), *size);
            }
            Transform::Hflip(p) => {
                if rng.gen_bool(*p) {
                    imageops::flip_horizontal_in_place(&mut img);
                }
            }
            Transform::Vflip(p) => {
                if rng.gen_bool(*p) {
                    imageops::flip_vertical_in_place(&mut img);
                }
            }
            Transform::RandomAffine(a) => img = augment::random_affine(rng, a, &img),
            Transform::TrivialAugment { bins, fill } => {
                let (op, magnitude) = autoaugment::trivial_draw(rng, *bins);
                img = autoaugment::apply(&img, op, magnitude, *fill);
            }
            Transform::RandAugment { n, m, bins, fill } => {
                let hw = (img.height() as usize, img.width() as usize);
                for (op, magnitude) in autoaugment::rand_draws(rng, *n, *m, *bins, hw) {
                    img = autoaugment::apply(&img, op, magnitude, *fill);
                }
            }
            _ => unreachable!("only geometric steps"),
        }
    }
    Ok(img)
}

/// The `normalize` that directly follows the geometric steps, which [`to_tensor`] applies
/// in the same pass (the common pipeline: no colour steps).
fn leading_normalize(pipeline: &[Transform]) -> Option<([f32; 3], [f32; 3])> {
    match pipeline.iter().find(|t| t.phase() != Phase::Geometry) {
        Some(Transform::Normalize { mean, std }) => Some((*mean, *std)),
        _ => None,
    }
}

/// CHW floats in [0, 1] (torchvision's `ToTensor`), normalised in the same pass when
/// `pipeline`'s first step after the geometric ones is `normalize`; and `(h, w)`.
pub fn to_tensor(img: &RgbImage, pipeline: &[Transform]) -> (Vec<f32>, (usize, usize)) {
    let (mean, std) = leading_normalize(pipeline).unwrap_or(([0.0; 3], [1.0; 3]));
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut out = vec![0f32; 3 * h * w];
    let (r, rest) = out.split_at_mut(h * w);
    let (g, b) = rest.split_at_mut(h * w);
    for (i, px) in img.pixels().enumerate() {
        r[i] = (px[0] as f32 / 255.0 - mean[0]) / std[0];
        g[i] = (px[1] as f32 / 255.0 - mean[1]) / std[1];
        b[i] = (px[2] as f32 / 255.0 - mean[2]) / std[2];
    }
    (out, (h, w))
}

/// Runs the colour steps, `normalize` and erasing of `ops` on CHW floats from [`to_tensor`]
/// (which made `ops`: a `normalize` it applied is not applied again).
pub fn apply_tensor(ops: &[Transform], img: &mut [f32], hw: (usize, usize), rng: &mut impl Rng) -> Result<(), String> {
    let plane = hw.0 * hw.1;
    let skip = usize::from(leading_normalize(ops).is_some());
    for t in ops.iter().filter(|t| t.phase() != Phase::Geometry).skip(skip) {
        match t {
            Transform::ColorJitter(j) => augment::color_jitter(&augment::jitter_draw(rng, j), img, plane),
            Transform::Grayscale(p) => {
                if *p >= 1.0 || rng.r#gen::<f64>() < *p {
                    augment::grayscale(img, plane);
                }
            }
            Transform::GaussianBlur { kernel, sigma } => {
                let s = if sigma[0] == sigma[1] { sigma[0] } else { rng.gen_range(sigma[0]..sigma[1]) };
                augment::gaussian_blur(img, hw, *kernel, s)?;
            }
            Transform::Normalize { mean, std } => {
                for (c, channel) in img.chunks_exact_mut(plane).enumerate() {
                    for x in channel {
                        *x = (*x - mean[c]) / std[c];
                    }
                }
            }
            Transform::RandomErasing(e) => augment::random_erasing(rng, e, img, hw),
            _ => unreachable!("no geometric steps"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `pipeline` on `img` and returns CHW floats (in [0, 1] unless normalised) and `(h, w)`.
    fn apply(pipeline: &[Transform], img: RgbImage, rng: &mut impl Rng) -> Result<(Vec<f32>, (usize, usize)), String> {
        let img = apply_image(pipeline, img, rng)?;
        let (mut data, hw) = to_tensor(&img, pipeline);
        apply_tensor(pipeline, &mut data, hw, rng)?;
        Ok((data, hw))
    }
    use rand::SeedableRng;

    #[test]
    fn resize_crop_normalize_shapes_and_values() {
        let img = RgbImage::from_pixel(40, 30, image::Rgb([255, 0, 51]));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let p = [
            Transform::ResizeShorter(20),
            Transform::CenterCrop((16, 18)),
            Transform::Normalize { mean: [0.5; 3], std: [0.5; 3] },
        ];
        let (data, hw) = apply(&p, img, &mut rng).unwrap();
        assert_eq!(hw, (16, 18));
        assert_eq!(data.len(), 3 * 16 * 18);
        // (1.0 - 0.5) / 0.5 = 1, (0 - 0.5) / 0.5 = -1, (0.2 - 0.5) / 0.5 = -0.6
        assert!((data[0] - 1.0).abs() < 1e-6);
        assert!((data[16 * 18] + 1.0).abs() < 1e-6);
        assert!((data[2 * 16 * 18] + 0.6).abs() < 1e-6);
        assert_eq!(crate::spec::output_size(&p), Some((16, 18)));
    }

    #[test]
    fn oversized_crop_is_an_error() {
        let img = RgbImage::new(8, 8);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let err = apply(&[Transform::RandomCrop((10, 10))], img, &mut rng).unwrap_err();
        assert!(err.contains("10x10") && err.contains("8x8"), "{err}");
    }
}
