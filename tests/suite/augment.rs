//! The augmentations against torchvision 0.14 (Debian's `python3-torchvision`): each
//! deterministic operation on the same pixels as torchvision's functional op, in float32 and
//! float64; each sampler's draws against torchvision's `get_params` draws by two-sample
//! Kolmogorov-Smirnov tests (SciPy).

use ablate::augment;
use rand::SeedableRng;
use serde_json::{Value, json};

use crate::common::{floats, max_err};

fn rng(seed: u64) -> rand_chacha::ChaCha8Rng {
    rand_chacha::ChaCha8Rng::seed_from_u64(seed)
}

/// A noisy 8-bit RGB image with smooth regions, saturated and grey pixels.
fn test_image(h: u32, w: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        let v = |k: u32| ((x * 37 + y * 91 + k * 53) % 256) as u8 / 2 + ((x * y + k) % 7 * 18) as u8;
        if (x + y) % 11 == 0 { image::Rgb([v(0); 3]) } else { image::Rgb([v(0), v(1), v(2)]) }
    })
}

const COLOUR: &str = r#"
import json, sys, torch
import torchvision.transforms.functional as F
c = json.load(sys.stdin)
out = []
for op in c["ops"]:
    r = {}
    for dtype, name in [(torch.float32, "f32"), (torch.float64, "f64")]:
        img = torch.tensor(c["image"], dtype=torch.uint8).to(dtype) / 255
        kind, arg = op
        if kind == "brightness": y = F.adjust_brightness(img, arg)
        elif kind == "contrast": y = F.adjust_contrast(img, arg)
        elif kind == "saturation": y = F.adjust_saturation(img, arg)
        elif kind == "hue": y = F.adjust_hue(img, arg)
        elif kind == "grayscale": y = F.rgb_to_grayscale(img, 3)
        elif kind == "blur": y = F.gaussian_blur(img, [arg[1], arg[0]], [arg[2], arg[2]])
        r[name] = y.flatten().tolist()
    out.append(r)
print(json.dumps(out))
"#;

/// Colour jitter's four adjustments, grayscale and Gaussian blur equal torchvision's tensor
/// functions: no further from float64 than torchvision's float32 (plus one rounding step).
#[test]
fn colour_operations_are_torchvisions() {
    let (h, w) = (24usize, 32usize);
    let img = test_image(h as u32, w as u32);
    let chw: Vec<Vec<Vec<u8>>> = (0..3)
        .map(|c| (0..h).map(|y| (0..w).map(|x| img.get_pixel(x as u32, y as u32)[c]).collect()).collect())
        .collect();
    let ops = json!([
        ["brightness", 1.3],
        ["brightness", 0.6],
        ["contrast", 0.5],
        ["contrast", 1.7],
        ["saturation", 0.0],
        ["saturation", 1.8],
        ["hue", -0.3],
        ["hue", 0.1],
        ["hue", 0.45],
        ["grayscale", 0],
        ["blur", [5, 3, 1.3]],
        ["blur", [7, 7, 0.4]]
    ]);
    let torch = crate::common::python_json(COLOUR, &json!({"image": chw, "ops": ops}));
    let plane = h * w;
    for (op, t) in ops.as_array().unwrap().iter().zip(torch.as_array().unwrap()) {
        let (mut data, _) = augment_input(&img);
        let (kind, arg) = (op[0].as_str().unwrap(), &op[1]);
        match kind {
            "brightness" => augment::adjust_brightness(&mut data, arg.as_f64().unwrap()),
            "contrast" => augment::adjust_contrast(&mut data, plane, arg.as_f64().unwrap()),
            "saturation" => augment::adjust_saturation(&mut data, plane, arg.as_f64().unwrap()),
            "hue" => augment::adjust_hue(&mut data, plane, arg.as_f64().unwrap()),
            "grayscale" => augment::grayscale(&mut data, plane),
            "blur" => {
                let k = floats(arg);
                augment::gaussian_blur(&mut data, (h, w), (k[0] as usize, k[1] as usize), k[2]).unwrap()
            }
            _ => unreachable!(),
        }
        let ours: Vec<f64> = data.iter().map(|&v| v as f64).collect();
        let (reference, torch32) = (floats(&t["f64"]), floats(&t["f32"]));
        let (e, et) = (max_err(&ours, &reference), max_err(&torch32, &reference));
        println!("{kind} {arg}: error {e:.2e}, torchvision f32 {et:.2e}");
        assert!(e <= 4.0 * et.max(1e-7), "{kind} {arg}: error {e:e} against float64, torchvision's {et:e}");
    }
}

fn augment_input(img: &image::RgbImage) -> (Vec<f32>, (usize, usize)) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut out = vec![0f32; 3 * h * w];
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * h * w + i] = px[c] as f32 / 255.0;
        }
    }
    (out, (h, w))
}

const GEOMETRY: &str = r#"
import json, sys, torch
import numpy as np
from PIL import Image
import torchvision.transforms.functional as F
from torchvision.transforms import InterpolationMode as I
c = json.load(sys.stdin)
hwc = np.array(c["image"], dtype=np.uint8)
chw = torch.from_numpy(hwc).permute(2, 0, 1).contiguous()
out = {"affine": [], "rotate": [], "resized_crop": []}
for a in c["affine"]:
    y = F.affine(chw, angle=a["angle"], translate=a["translate"], scale=a["scale"], shear=a["shear"],
                 interpolation=I.NEAREST, fill=a["fill"])
    out["affine"].append(y.permute(1, 2, 0).flatten().tolist())
for angle in c["rotate"]:
    out["rotate"].append(F.rotate(chw, angle, interpolation=I.NEAREST, fill=[0, 0, 0]).permute(1, 2, 0).flatten().tolist())
pil = Image.fromarray(hwc)
for (top, left, h, w, oh, ow) in c["resized_crop"]:
    y = F.resized_crop(pil, top, left, h, w, [oh, ow], interpolation=I.BILINEAR)
    out["resized_crop"].append(np.asarray(y).flatten().tolist())
print(json.dumps(out))
"#;

/// Share of equal bytes, and the largest difference.
fn compare_u8(ours: &[u8], theirs: &Value) -> (f64, u8) {
    let theirs: Vec<u8> = theirs.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u8).collect();
    assert_eq!(ours.len(), theirs.len());
    let same = ours.iter().zip(&theirs).filter(|(a, b)| a == b).count();
    (same as f64 / ours.len() as f64, ours.iter().zip(&theirs).map(|(a, b)| a.abs_diff(*b)).max().unwrap())
}

/// Affine warps and rotations (nearest neighbour) pick torchvision's source pixel for every
/// output pixel, barring a coordinate that float32 rounds to the other side of a half; a
/// resized crop is Pillow's bilinear resize of the same box, to within one level.
#[test]
fn geometric_operations_are_torchvisions() {
    let (h, w) = (30u32, 44u32);
    let img = test_image(h, w);
    let hwc: Vec<Vec<[u8; 3]>> = (0..h).map(|y| (0..w).map(|x| img.get_pixel(x, y).0).collect()).collect();
    let draws = [
        augment::AffineDraw { angle: 17.0, translate: (0.0, 0.0), scale: 1.0, shear: (0.0, 0.0) },
        augment::AffineDraw { angle: -33.5, translate: (3.0, -2.0), scale: 0.8, shear: (0.0, 0.0) },
        augment::AffineDraw { angle: 5.0, translate: (-4.0, 1.0), scale: 1.25, shear: (12.0, -7.0) },
        augment::AffineDraw { angle: 90.0, translate: (0.0, 0.0), scale: 1.0, shear: (20.0, 0.0) },
    ];
    let fills = [[0u8, 0, 0], [255, 128, 3], [7, 7, 7], [0, 0, 0]];
    let affine: Vec<Value> = draws
        .iter()
        .zip(fills)
        .map(|(d, f)| {
            json!({"angle": d.angle, "translate": [d.translate.0 as i64, d.translate.1 as i64], "scale": d.scale,
                   "shear": [d.shear.0, d.shear.1], "fill": f})
        })
        .collect();
    let rotations = [10.0, -45.0, 123.0];
    let crops = [(3usize, 5usize, 20usize, 31usize, 16usize, 16usize), (0, 0, 30, 44, 12, 20), (10, 2, 7, 9, 21, 25)];
    let case = json!({"image": hwc, "affine": affine, "rotate": rotations, "resized_crop": crops});
    let torch = crate::common::python_json(GEOMETRY, &case);
    for ((d, fill), t) in draws.iter().zip(fills).zip(torch["affine"].as_array().unwrap()) {
        let ours = augment::warp_nearest(&img, augment::inverse_affine_matrix(d), fill);
        let (same, _) = compare_u8(ours.as_raw(), t);
        println!("affine {d:?}: {:.4} of the bytes equal", same);
        assert!(same >= 0.999, "affine {d:?}: only {same} of the bytes equal torchvision's");
    }
    for (angle, t) in rotations.iter().zip(torch["rotate"].as_array().unwrap()) {
        // RandomRotation's angle turns counter-clockwise: the affine matrix of -angle.
        let d = augment::AffineDraw { angle: -angle, translate: (0.0, 0.0), scale: 1.0, shear: (0.0, 0.0) };
        let (same, _) = compare_u8(augment::warp_nearest(&img, augment::inverse_affine_matrix(&d), [0; 3]).as_raw(), t);
        println!("rotate {angle}: {same:.4} of the bytes equal");
        assert!(same >= 0.999, "rotate {angle}: only {same} of the bytes equal torchvision's");
    }
    for (&(top, left, bh, bw, oh, ow), t) in crops.iter().zip(torch["resized_crop"].as_array().unwrap()) {
        let ours = augment::resized_crop(&img, (top, left, bh, bw), (oh, ow));
        let (same, most) = compare_u8(ours.as_raw(), t);
        println!(
            "resized_crop {:?}: {same:.4} of the bytes equal, largest difference {most}",
            (top, left, bh, bw, oh, ow)
        );
        assert!(most <= 1, "resized_crop differs from Pillow's by {most} levels");
    }
}

const SAMPLERS: &str = r#"
import json, sys, torch
from scipy.stats import ks_2samp
import torchvision.transforms as T
c = json.load(sys.stdin)
torch.manual_seed(0)
n = c["n"]
ref = {}
for key, (h, w, scale, ratio) in c["rrc"].items():
    img = torch.empty(3, h, w)
    ref[key] = [T.RandomResizedCrop.get_params(img, scale, ratio) for _ in range(n)]
for key, (h, w, scale, ratio) in c["erasing"].items():
    img = torch.empty(3, h, w)
    ref[key] = [T.RandomErasing.get_params(img, scale, ratio, [0])[:4] for _ in range(n)]
j = c["jitter"]
draws = [T.ColorJitter.get_params(j["b"], j["c"], j["s"], j["h"]) for _ in range(n)]
ref["jitter"] = [[int(p.tolist().index(0))] + [b, cc, s, hh] for (p, b, cc, s, hh) in draws]
a = c["affine"]
ref["affine"] = [[ang, t[0], t[1], sc, sh[0], sh[1]] for (ang, t, sc, sh) in
                 [T.RandomAffine.get_params(a["degrees"], a["translate"], a["scale"], a["shear"], [a["w"], a["h"]]) for _ in range(n)]]
out = {}
for key, theirs in ref.items():
    ours = c["ours"][key]
    cols = len(theirs[0])
    out[key] = [ks_2samp([float(t[k]) for t in theirs], [float(o[k]) for o in ours]).pvalue for k in range(cols)]
print(json.dumps(out))
"#;

/// Each sampler draws from torchvision's distribution: the crop boxes of RandomResizedCrop
/// (also where most draws fall back to the centre), RandomErasing's boxes, ColorJitter's
/// factors and order, RandomAffine's angle, translation, scale and shears. Every coordinate
/// of 20,000 draws passes a two-sample KS test at p > 0.001 (torchvision's generator is
/// seeded, so the test is deterministic).
#[test]
fn samplers_draw_torchvisions_distributions() {
    let n = 20_000;
    let mut r = rng(7);
    let rrc = json!({
        "rrc_default": [60, 90, [0.08, 1.0], [0.75, 1.3333333333333333]],
        "rrc_tall": [200, 20, [0.5, 1.0], [0.75, 1.3333333333333333]],
        "rrc_wide_ratio": [50, 50, [0.3, 0.9], [0.2, 5.0]],
    });
    let erasing = json!({"erasing": [32, 48, [0.02, 0.33], [0.3, 3.3]]});
    let mut ours = serde_json::Map::new();
    for (key, v) in rrc.as_object().unwrap() {
        let (hw, scale, ratio) = params(v);
        let draws: Vec<[usize; 4]> = (0..n)
            .map(|_| {
                let (t, l, h, w) = augment::resized_crop_box(&mut r, hw, scale, ratio);
                [t, l, h, w]
            })
            .collect();
        ours.insert(key.clone(), json!(draws));
    }
    for (key, v) in erasing.as_object().unwrap() {
        let (hw, scale, ratio) = params(v);
        // torchvision returns the whole image (0, 0, h, w) when no box fits.
        let draws: Vec<[usize; 4]> = (0..n)
            .map(|_| {
                augment::erasing_box(&mut r, hw, scale, ratio).map_or([0, 0, hw.0, hw.1], |(t, l, h, w)| [t, l, h, w])
            })
            .collect();
        ours.insert(key.clone(), json!(draws));
    }
    let jitter = ablate::augment::Jitter {
        brightness: Some([0.6, 1.4]),
        contrast: Some([0.0, 1.5]),
        saturation: Some([0.8, 1.2]),
        hue: Some([-0.1, 0.1]),
    };
    let draws: Vec<Vec<f64>> = (0..n)
        .map(|_| {
            let d = augment::jitter_draw(&mut r, &jitter);
            let first = d.order.iter().position(|&k| k == 0).unwrap() as f64;
            std::iter::once(first).chain(d.factors.iter().map(|f| f.unwrap())).collect()
        })
        .collect();
    ours.insert("jitter".into(), json!(draws));
    let affine = ablate::augment::Affine {
        degrees: [-30.0, 30.0],
        translate: Some([0.1, 0.2]),
        scale: Some([0.8, 1.2]),
        shear: Some(([-10.0, 10.0], Some([-5.0, 15.0]))),
        fill: [0; 3],
        rotation: false,
    };
    let draws: Vec<[f64; 6]> = (0..n)
        .map(|_| {
            let d = augment::affine_draw(&mut r, &affine, (40, 64));
            [d.angle, d.translate.0, d.translate.1, d.scale, d.shear.0, d.shear.1]
        })
        .collect();
    ours.insert("affine".into(), json!(draws));
    let case = json!({
        "n": n, "rrc": rrc, "erasing": erasing, "ours": ours,
        "jitter": {"b": [0.6, 1.4], "c": [0.0, 1.5], "s": [0.8, 1.2], "h": [-0.1, 0.1]},
        "affine": {"degrees": [-30.0, 30.0], "translate": [0.1, 0.2], "scale": [0.8, 1.2], "shear": [-10.0, 10.0, -5.0, 15.0], "h": 40, "w": 64},
    });
    let p = crate::common::python_json(SAMPLERS, &case);
    for (key, ps) in p.as_object().unwrap() {
        let ps = floats(ps);
        println!("{key}: KS p-values {ps:.3?}");
        assert!(ps.iter().all(|&p| p > 1e-3), "{key}: a coordinate's distribution differs from torchvision's: {ps:?}");
    }
}

fn params(v: &Value) -> ((usize, usize), [f64; 2], [f64; 2]) {
    let a = v.as_array().unwrap();
    let pair = |v: &Value| {
        let f = floats(v);
        [f[0], f[1]]
    };
    ((a[0].as_u64().unwrap() as usize, a[1].as_u64().unwrap() as usize), pair(&a[2]), pair(&a[3]))
}

/// Every random step after the cached prefix: the heaviest pipeline ablate has.
pub fn heaviest_steps() -> Vec<ablate::Transform> {
    use ablate::Transform;
    use ablate::augment::{Affine, EraseValue, Erasing, Jitter};
    vec![
        Transform::TrivialAugment { bins: 31, fill: [0; 3] },
        Transform::RandAugment { n: 2, m: 9, bins: 31, fill: [0; 3] },
        Transform::Vflip(0.3),
        Transform::RandomAffine(Affine {
            degrees: [-15.0, 15.0],
            translate: Some([0.1, 0.1]),
            scale: Some([0.9, 1.1]),
            shear: Some(([-5.0, 5.0], None)),
            fill: [0; 3],
            rotation: false,
        }),
        Transform::ColorJitter(Jitter {
            brightness: Some([0.6, 1.4]),
            contrast: Some([0.6, 1.4]),
            saturation: Some([0.6, 1.4]),
            hue: Some([-0.1, 0.1]),
        }),
        Transform::Grayscale(0.2),
        Transform::GaussianBlur { kernel: (3, 3), sigma: [0.1, 2.0] },
        Transform::Normalize { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] },
        Transform::RandomErasing(Erasing { p: 0.5, scale: [0.02, 0.33], ratio: [0.3, 3.3], value: EraseValue::Random }),
    ]
}

/// The augmented batches depend on the seed and the epoch only: the same on 1 and 3 threads
/// (each image draws from its own stream), different in the next epoch and with another seed.
#[test]
fn augmented_batches_depend_on_seed_and_epoch_not_threads() {
    use std::sync::Arc;
    let tmp = tempfile::tempdir().unwrap();
    crate::common::color_folder(tmp.path(), 6, 0, 5);
    let classes = vec!["blue".to_string(), "red".to_string()];
    let items = Arc::new(ablate::labelled_images(&tmp.path().join("train"), &classes).unwrap());
    let mut pipeline =
        vec![ablate::Transform::RandomResizedCrop { size: (16, 16), scale: [0.08, 1.0], ratio: [0.75, 4.0 / 3.0] }];
    pipeline.extend(heaviest_steps());
    let batches = |threads: usize, seed: u64, epoch: u64| -> Vec<u32> {
        let mut loader = ablate::Loader::new(items.clone(), pipeline.clone(), (16, 16), 5);
        loader.seed = seed;
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            loader
                .batches((0..items.len()).collect(), epoch)
                .flat_map(|b| b.unwrap().images.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                .map(f32::to_bits)
                .collect()
        })
    };
    let one = batches(1, 3, 1);
    assert_eq!(one, batches(3, 3, 1), "the thread count changed the augmented images");
    assert_ne!(one, batches(1, 3, 2), "the next epoch must draw anew");
    assert_ne!(one, batches(1, 4, 1), "another seed must draw anew");
}

const AUTO_OPS: &str = r#"
import json, sys, torch
import numpy as np
import torchvision.transforms.autoaugment as A
from torchvision.transforms import InterpolationMode as I
c = json.load(sys.stdin)
chw = torch.from_numpy(np.array(c["image"], dtype=np.uint8)).permute(2, 0, 1).contiguous()
out = [A._apply_op(chw, name, float(m), interpolation=I.NEAREST, fill=None).permute(1, 2, 0).flatten().tolist()
       for name, m in c["cases"]]
print(json.dumps(out))
"#;

/// Each op of TrivialAugmentWide and RandAugment computes what torchvision's `_apply_op`
/// computes on an 8-bit tensor: the same bytes, barring a float32 sum torchvision orders
/// otherwise landing on the other side of a rounding (then one level apart).
#[test]
fn autoaugment_ops_are_torchvisions() {
    use ablate::autoaugment::{Op, apply};
    let (h, w) = (30u32, 44u32);
    let img = test_image(h, w);
    let hwc: Vec<Vec<[u8; 3]>> = (0..h).map(|y| (0..w).map(|x| img.get_pixel(x, y).0).collect()).collect();
    let cases: Vec<(Op, &str, f64)> = vec![
        (Op::Identity, "Identity", 0.0),
        (Op::ShearX, "ShearX", 0.5),
        (Op::ShearX, "ShearX", -0.3),
        (Op::ShearY, "ShearY", 0.7),
        (Op::TranslateX, "TranslateX", 12.7),
        (Op::TranslateX, "TranslateX", -5.2),
        (Op::TranslateY, "TranslateY", 8.0),
        (Op::Rotate, "Rotate", 40.0),
        (Op::Rotate, "Rotate", -100.0),
        (Op::Brightness, "Brightness", 0.5),
        (Op::Brightness, "Brightness", -0.7),
        (Op::Color, "Color", 0.9),
        (Op::Color, "Color", -0.5),
        (Op::Contrast, "Contrast", 0.6),
        (Op::Contrast, "Contrast", -0.4),
        (Op::Sharpness, "Sharpness", 0.9),
        (Op::Sharpness, "Sharpness", -0.8),
        (Op::Posterize, "Posterize", 4.0),
        (Op::Posterize, "Posterize", 2.0),
        (Op::Posterize, "Posterize", 8.0),
        (Op::Solarize, "Solarize", 128.0),
        (Op::Solarize, "Solarize", 246.5),
        (Op::AutoContrast, "AutoContrast", 0.0),
        (Op::Equalize, "Equalize", 0.0),
    ];
    let names: Vec<(&str, f64)> = cases.iter().map(|&(_, n, m)| (n, m)).collect();
    let torch = crate::common::python_json(AUTO_OPS, &json!({"image": hwc, "cases": names}));
    for ((op, name, m), t) in cases.iter().zip(torch.as_array().unwrap()) {
        let ours = apply(&img, *op, *m, [0; 3]);
        let (same, most) = compare_u8(ours.as_raw(), t);
        println!("{name} {m}: {same:.4} of the bytes equal, largest difference {most}");
        assert!(same >= 0.999 && most <= 1, "{name} {m}: {same} equal, largest difference {most}");
    }
}

const AUTO_DRAWS: &str = r#"
import json, sys, torch
from scipy.stats import ks_2samp
import torchvision.transforms as T
import torchvision.transforms.autoaugment as A
c = json.load(sys.stdin)
torch.manual_seed(0)
names = ["Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
         "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize"]
seen = []
A._apply_op = lambda img, op, m, interpolation, fill: seen.append([names.index(op), m]) or img
img = torch.zeros(3, c["h"], c["w"], dtype=torch.uint8)
out = {}
for key, policy in [("trivial", T.TrivialAugmentWide()), ("rand", T.RandAugment(num_ops=2, magnitude=9))]:
    seen.clear()
    for _ in range(c["n"]):
        policy(img)
    ours = c[key]
    out[key] = [ks_2samp([s[k] for s in seen], [o[k] for o in ours]).pvalue for k in range(2)]
    # The magnitudes of one signed op (Rotate) on their own.
    rot = lambda rows: [r[1] for r in rows if r[0] == 5]
    out[key].append(ks_2samp(rot(seen), rot(ours)).pvalue)
print(json.dumps(out))
"#;

/// TrivialAugmentWide's and RandAugment's draws (which op, which magnitude, which sign) follow
/// torchvision's: 20,000 images each, KS p > 0.001 on the op, the magnitude, and Rotate's
/// magnitudes alone (torchvision seeded: deterministic).
#[test]
fn autoaugment_draws_are_torchvisions() {
    use ablate::autoaugment::{OPS, rand_draws, trivial_draw};
    let (n, h, w) = (20_000, 30, 44);
    let mut r = rng(3);
    let index = |op| OPS.iter().position(|o| *o == op).unwrap() as f64;
    let trivial: Vec<[f64; 2]> = (0..n)
        .map(|_| {
            let (op, m) = trivial_draw(&mut r, 31);
            [index(op), m]
        })
        .collect();
    let rand: Vec<[f64; 2]> =
        (0..n).flat_map(|_| rand_draws(&mut r, 2, 9, 31, (h, w))).map(|(op, m)| [index(op), m]).collect();
    let p = crate::common::python_json(AUTO_DRAWS, &json!({"n": n, "h": h, "w": w, "trivial": trivial, "rand": rand}));
    for (key, ps) in p.as_object().unwrap() {
        let ps = floats(ps);
        println!("{key}: KS p-values (op, magnitude, Rotate's magnitude) {ps:.3?}");
        assert!(ps.iter().all(|&p| p > 1e-3), "{key}: draws differ from torchvision's: {ps:?}");
    }
}
