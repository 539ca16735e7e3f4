//! Pretrained weights: a torchvision `.pth` loads by name and computes what PyTorch computes; a
//! safetensors state dict loads with the head skipped; mismatches list every offender.

use std::collections::HashMap;

use ablate::spec_from_file;
use ablate::{Model, weights};
use candle_core::{Device, Tensor};
use candle_nn::ModuleT;

const TINY: &str = r#"
layers = [
  { conv = { out = 8, kernel = 3, padding = 1, bias = false } }, "batch_norm", "relu",
  { stage = { block = "basic", out = 8 } },
  { stage = { block = "basic", out = 16, stride = 2 } },
  "global_avg_pool", { linear = { out = "$classes" } },
]"#;

fn tiny(classes: usize) -> Model {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("tiny.toml");
    std::fs::write(&file, format!("name = \"tiny\"\n[data]\nroot = \".\"\n[model]\ninput = [8, 8]\n{TINY}\n")).unwrap();
    let names: Vec<String> = (0..classes).map(|i| format!("c{i}")).collect();
    let spec = spec_from_file(&file, &[], &names.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    Model::build(&spec.layers, spec.input_hw, 0, &Device::Cpu).unwrap()
}

fn fixture() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_resnet.pth")
}

/// Logits printed by scripts/make_weight_fixture.py (torchvision's BasicBlock, eval mode) for
/// x = torch.linspace(-1, 1, 2 * 3 * 8 * 8).reshape(2, 3, 8, 8).
const TORCH_LOGITS: [f32; 20] = [
    -0.027048, -0.02511, 0.031425, -0.24324, -0.065804, 0.087191, 0.186624, 0.027774, -0.087412, -0.216219, 0.011628,
    0.020751, 0.113347, -0.219244, -0.041622, 0.059032, 0.238575, 0.015185, -0.16192, -0.211136,
];

#[test]
fn torchvision_pth_loads_by_name_and_computes_what_pytorch_computes() {
    let model = tiny(10);
    let file = weights::read(&fixture()).unwrap();
    let report = weights::import(&model, &file, &[], "tiny_resnet.pth").unwrap();
    assert_eq!(report.loaded.len(), model.state_dict().len());
    assert!(report.skipped.is_empty() && report.missing_counters.is_empty());
    let x = Tensor::arange(0f32, 384.0, &Device::Cpu).unwrap();
    let x = ((x * (2.0 / 383.0)).unwrap() - 1.0).unwrap().reshape((2, 3, 8, 8)).unwrap();
    let y = model.forward_t(&x, false).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (a, b) in y.iter().zip(TORCH_LOGITS) {
        assert!((a - b).abs() < 1e-5, "{y:?} vs PyTorch {TORCH_LOGITS:?}");
    }
}

#[test]
fn safetensors_loads_with_the_head_skipped_and_mismatches_are_listed() {
    let tmp = tempfile::tempdir().unwrap();
    // A 10-class torchvision state dict saved as safetensors ...
    let source: HashMap<String, Tensor> = weights::read(&fixture()).unwrap();
    let path = tmp.path().join("tiny.safetensors");
    candle_core::safetensors::save(&source, &path).unwrap();
    // ... into a 2-class model: everything but fc loads, fc keeps its fresh values.
    let model = tiny(2);
    let fresh_fc = model.state_dict()["fc.weight"].to_vec2::<f32>().unwrap();
    let file = weights::read(&path).unwrap();
    let report = weights::import(&model, &file, &["fc".into()], "tiny.safetensors").unwrap();
    assert_eq!(report.skipped, vec!["fc.bias".to_string(), "fc.weight".to_string()]);
    assert_eq!(report.loaded.len() + 2, model.state_dict().len());
    let state = model.state_dict();
    assert_eq!(state["fc.weight"].to_vec2::<f32>().unwrap(), fresh_fc);
    assert_eq!(
        state["layer2.0.downsample.1.running_var"].to_vec1::<f32>().unwrap(),
        source["layer2.0.downsample.1.running_var"].to_vec1::<f32>().unwrap()
    );

    // Without skip, the head's shapes do not fit: each offender is listed with both shapes.
    let err = weights::import(&tiny(2), &file, &[], "tiny.safetensors").unwrap_err().to_string();
    assert!(err.contains("`fc.weight`: file [10, 16], model [2, 16]"), "{err}");
    assert!(err.contains("`fc.bias`: file [10], model [2]"), "{err}");
    // A tensor the model lacks, and one the file lacks, are named too.
    let mut renamed = file.clone();
    let t = renamed.remove("layer1.0.conv2.weight").unwrap();
    renamed.insert("layer1.0.conv9.weight".into(), t);
    let err = weights::import(&tiny(2), &renamed, &["fc".into()], "x").unwrap_err().to_string();
    assert!(err.contains("`layer1.0.conv2.weight`: missing from the file, model [8, 8, 3, 3]"), "{err}");
    assert!(err.contains("`layer1.0.conv9.weight`: file [8, 8, 3, 3], not in the model"), "{err}");
}

#[test]
fn freeze_keeps_prefixes_out_of_training() {
    let mut model = tiny(2);
    let all = model.trainable().len();
    model.freeze(&["conv1".into(), "layer1".into()]).unwrap();
    let names: Vec<String> = model.trainable().into_iter().map(|(n, _)| n).collect();
    assert!(names.iter().all(|n| !n.starts_with("conv1.") && !n.starts_with("layer1.")));
    assert_eq!(names.len(), all - 1 - 6, "conv1.weight and layer1.0's two convs + two BNs (2 each)");
    let err = model.freeze(&["layer9".into()]).unwrap_err().to_string();
    assert!(err.contains("`layer9` names no parameter"), "{err}");
}
