//! Validation of the transform pipelines: every step's values in range, steps in the order
//! they can run (geometry, colour, `normalize`, erasing), random steps in training only.

use super::schema::{AutoAugmentSpec, EraseSpec, ErasingSpec, Fill, NormalizeSpec, Range, Shear, Size, TransformSpec};
use crate::spec::{Affine, EraseValue, Erasing, Jitter, Phase, Transform};

type Invalid = (String, String);

/// Validates one transform pipeline; `(key, message)` on error.
pub fn transforms(list: &[TransformSpec], key: &str, training: bool) -> Result<Vec<Transform>, Invalid> {
    let mut out: Vec<Transform> = Vec::with_capacity(list.len());
    for (i, spec) in list.iter().enumerate() {
        let here = format!("{key}.{i}");
        let t = step(spec).map_err(|m| (here.clone(), m))?;
        if let Some(before) = out.last().filter(|b| b.phase() > t.phase()) {
            return Err((here, order_message(before.phase(), t.phase())));
        }
        if !training && t.is_random() {
            return Err((here, "random transforms belong in transforms.train, not eval".into()));
        }
        out.push(t);
    }
    Ok(out)
}

fn order_message(before: Phase, this: Phase) -> String {
    match (before, this) {
        (Phase::Normalize, _) if this != Phase::Erasing => "normalize must be the last transform (only random_erasing may follow it)".into(),
        (_, Phase::Geometry) => {
            "geometric steps (resizes, crops, flips, rotation, affine) come before the colour steps, normalize and random_erasing".into()
        }
        (_, Phase::Colour) => "colour steps (color_jitter, grayscale, gaussian_blur) come before normalize and random_erasing".into(),
        _ => "random_erasing comes last".into(),
    }
}

fn size(s: &Size) -> (usize, usize) {
    match *s {
        Size::Side(n) => (n, n),
        Size::HeightWidth([h, w]) => (h, w),
    }
}

fn probability(p: f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(&p) { Ok(p) } else { Err(format!("expected a probability in [0, 1], got {p}")) }
}

/// A `[lo, hi]` of finite numbers with lo <= hi, within `[min, max]`.
fn range(r: [f64; 2], what: &str, min: f64, max: f64) -> Result<[f64; 2], String> {
    if r.iter().all(|v| v.is_finite() && (min..=max).contains(v)) && r[0] <= r[1] {
        Ok(r)
    } else {
        Err(format!("{what}: expected [lo, hi] with {min} <= lo <= hi <= {max}, got {r:?}"))
    }
}

/// A range written as `x` meaning `[centre - x, centre + x]` (clipped at `min`), or `[lo, hi]`.
fn around(r: Range, centre: f64, what: &str, min: f64, max: f64) -> Result<[f64; 2], String> {
    match r {
        Range::One(x) if x.is_finite() && x >= 0.0 => range([(centre - x).max(min), centre + x], what, min, max),
        Range::One(x) => Err(format!("{what}: expected a non-negative number, got {x}")),
        Range::Both(r) => range(r, what, min, max),
    }
}

fn step(spec: &TransformSpec) -> Result<Transform, String> {
    let t = match spec {
        TransformSpec::Resize(Size::Side(n)) => Transform::ResizeShorter(*n),
        TransformSpec::Resize(s) => Transform::Resize(size(s)),
        TransformSpec::CenterCrop(s) => Transform::CenterCrop(size(s)),
        TransformSpec::RandomCrop(s) => Transform::RandomCrop(size(s)),
        TransformSpec::RandomResizedCrop(c) => Transform::RandomResizedCrop {
            size: size(&c.size),
            scale: range(c.scale.unwrap_or([0.08, 1.0]), "scale", f64::MIN_POSITIVE, 1.0)?,
            ratio: range(c.ratio.unwrap_or([3.0 / 4.0, 4.0 / 3.0]), "ratio", f64::MIN_POSITIVE, f64::MAX)?,
        },
        TransformSpec::Hflip(p) => Transform::Hflip(probability(*p)?),
        TransformSpec::Vflip(p) => Transform::Vflip(probability(*p)?),
        TransformSpec::RandomRotation(d) => Transform::RandomAffine(Affine {
            degrees: around(*d, 0.0, "degrees", -360.0, 360.0)?,
            translate: None,
            scale: None,
            shear: None,
            fill: [0; 3],
            rotation: true,
        }),
        TransformSpec::RandomAffine(a) => Transform::RandomAffine(Affine {
            degrees: around(a.degrees, 0.0, "degrees", -360.0, 360.0)?,
            translate: a.translate.map(translate).transpose()?,
            scale: a.scale.map(|s| range(s, "scale", f64::MIN_POSITIVE, f64::MAX)).transpose()?,
            shear: a.shear.as_ref().map(shear).transpose()?,
            fill: fill(a.fill),
            rotation: false,
        }),
        TransformSpec::TrivialAugment(a) => {
            if a.n.is_some() || a.m.is_some() {
                return Err("trivial_augment takes bins and fill (n and m are rand_augment's)".into());
            }
            Transform::TrivialAugment { bins: bins(a)?, fill: fill(a.fill) }
        }
        TransformSpec::RandAugment(a) => {
            let (n, m, bins) = (a.n.unwrap_or(2), a.m.unwrap_or(9), bins(a)?);
            if m >= bins {
                return Err(format!("m: expected a magnitude bin below bins = {bins}, got {m}"));
            }
            Transform::RandAugment { n, m, bins, fill: fill(a.fill) }
        }
        TransformSpec::ColorJitter(j) => {
            let factor = |r: Option<Range>, what| r.map(|r| around(r, 1.0, what, 0.0, f64::MAX)).transpose();
            Transform::ColorJitter(Jitter {
                brightness: factor(j.brightness, "brightness")?,
                contrast: factor(j.contrast, "contrast")?,
                saturation: factor(j.saturation, "saturation")?,
                hue: j.hue.map(|r| around(r, 0.0, "hue", -0.5, 0.5)).transpose()?,
            })
        }
        TransformSpec::Grayscale(true) => Transform::Grayscale(1.0),
        TransformSpec::Grayscale(false) => return Err("grayscale = false does nothing: remove it".into()),
        TransformSpec::RandomGrayscale(p) => Transform::Grayscale(probability(*p)?),
        TransformSpec::GaussianBlur(b) => {
            let kernel = size(&b.kernel);
            if kernel.0.is_multiple_of(2) || kernel.1.is_multiple_of(2) {
                return Err(format!("kernel: expected odd sizes, got {}x{}", kernel.0, kernel.1));
            }
            let sigma = match b.sigma.unwrap_or(Range::Both([0.1, 2.0])) {
                Range::One(s) => [s, s],
                Range::Both(r) => r,
            };
            Transform::GaussianBlur { kernel, sigma: range(sigma, "sigma", f64::MIN_POSITIVE, f64::MAX)? }
        }
        TransformSpec::Normalize(n) => normalize(n)?,
        TransformSpec::RandomErasing(e) => Transform::RandomErasing(erasing(e)?),
    };
    if let Transform::Resize((0, _) | (_, 0))
    | Transform::ResizeShorter(0)
    | Transform::CenterCrop((0, _) | (_, 0))
    | Transform::RandomCrop((0, _) | (_, 0))
    | Transform::RandomResizedCrop { size: (0, _) | (_, 0), .. } = t
    {
        return Err("sizes must be at least 1".into());
    }
    Ok(t)
}

fn fill(f: Option<Fill>) -> [u8; 3] {
    match f {
        None => [0; 3],
        Some(Fill::Grey(v)) => [v; 3],
        Some(Fill::Rgb(v)) => v,
    }
}

fn bins(a: &AutoAugmentSpec) -> Result<usize, String> {
    match a.bins.unwrap_or(31) {
        b if b >= 2 => Ok(b),
        b => Err(format!("bins: expected at least 2, got {b}")),
    }
}

/// Largest shifts as shares of the width and height.
fn translate(t: [f64; 2]) -> Result<[f64; 2], String> {
    if t.iter().all(|v| (0.0..=1.0).contains(v)) {
        Ok(t)
    } else {
        Err(format!("translate: expected two shares in [0, 1], got {t:?}"))
    }
}

fn erasing(e: &ErasingSpec) -> Result<Erasing, String> {
    Ok(Erasing {
        p: probability(e.p.unwrap_or(0.5))?,
        scale: range(e.scale.unwrap_or([0.02, 0.33]), "scale", 0.0, 1.0)?,
        ratio: range(e.ratio.unwrap_or([0.3, 3.3]), "ratio", f64::MIN_POSITIVE, f64::MAX)?,
        value: match &e.value {
            None => EraseValue::Constant([0.0; 3]),
            Some(EraseSpec::One(v)) => EraseValue::Constant([*v; 3]),
            Some(EraseSpec::Rgb(v)) => EraseValue::Constant(*v),
            Some(EraseSpec::Named(n)) if n == "random" => EraseValue::Random,
            Some(EraseSpec::Named(n)) => {
                return Err(format!("value: expected a number, [r, g, b] or \"random\", got \"{n}\""));
            }
        },
    })
}

fn shear(s: &Shear) -> Result<([f64; 2], Option<[f64; 2]>), String> {
    let deg = |r| range(r, "shear", -90.0 + 1e-9, 90.0 - 1e-9);
    Ok(match *s {
        Shear::One(x) => (around(Range::One(x), 0.0, "shear", -90.0 + 1e-9, 90.0 - 1e-9)?, None),
        Shear::X(x) => (deg(x)?, None),
        Shear::XY([a, b, c, d]) => (deg([a, b])?, Some(deg([c, d])?)),
    })
}

fn normalize(n: &NormalizeSpec) -> Result<Transform, String> {
    match n {
        NormalizeSpec::Preset(name) if name == "imagenet" => {
            Ok(Transform::Normalize { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] })
        }
        NormalizeSpec::Preset(other) => {
            Err(format!("unknown preset \"{other}\"; expected \"imagenet\" or {{ mean = [..], std = [..] }}"))
        }
        NormalizeSpec::Explicit { std, .. } if std.iter().any(|s| *s <= 0.0) => {
            Err(format!("std must be positive, got {std:?}"))
        }
        NormalizeSpec::Explicit { mean, std } => Ok(Transform::Normalize { mean: *mean, std: *std }),
    }
}
