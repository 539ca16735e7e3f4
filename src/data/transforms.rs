//! Image transforms: decoded RGB image in, normalised CHW f32 tensor data out.

use fast_image_resize as fir;
use image::RgbImage;
use image::imageops;
use rand::Rng;

pub use crate::spec::Transform;

/// Bilinear resize with an antialiasing kernel when shrinking (what torchvision's `Resize`
/// does on PIL images). fast_image_resize's SIMD convolution: the `image` crate's resize was
/// over half of the data pipeline's time (perf).
fn resize(img: RgbImage, w: u32, h: u32) -> RgbImage {
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

fn crop(img: &RgbImage, top: u32, left: u32, (h, w): (usize, usize)) -> RgbImage {
    imageops::crop_imm(img, left, top, w as u32, h as u32).to_image()
}

/// How many leading steps of `pipeline` are deterministic image operations (resize, centre
/// crop): their result can be computed once and cached.
pub fn deterministic_prefix(pipeline: &[Transform]) -> usize {
    pipeline
        .iter()
        .take_while(|t| matches!(t, Transform::Resize(_) | Transform::ResizeShorter(_) | Transform::CenterCrop(_)))
        .count()
}

/// Runs the image operations of `ops` (everything but `normalize`) on `img`. Crops larger
/// than the image are an error naming both sizes.
pub fn apply_image(ops: &[Transform], mut img: RgbImage, rng: &mut impl Rng) -> Result<RgbImage, String> {
    for t in ops {
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
            Transform::Hflip(p) => {
                if rng.gen_bool(*p) {
                    imageops::flip_horizontal_in_place(&mut img);
                }
            }
            Transform::Normalize { .. } => {}
        }
    }
    Ok(img)
}

/// CHW floats in [0, 1], normalised when `pipeline` ends in `normalize`; and `(h, w)`.
pub fn to_tensor(img: &RgbImage, pipeline: &[Transform]) -> (Vec<f32>, (usize, usize)) {
    let (mean, std) = match pipeline.last() {
        Some(Transform::Normalize { mean, std }) => (*mean, *std),
        _ => ([0.0; 3], [1.0; 3]),
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `pipeline` on `img` and returns CHW floats (in [0, 1] unless normalised) and `(h, w)`.
    fn apply(pipeline: &[Transform], img: RgbImage, rng: &mut impl Rng) -> Result<(Vec<f32>, (usize, usize)), String> {
        let img = apply_image(pipeline, img, rng)?;
        Ok(to_tensor(&img, pipeline))
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
