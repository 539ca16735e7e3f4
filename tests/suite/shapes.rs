//! Shape inference and parameter counts of the bundled experiments.

use ablate::Model;
use ablate::{Override, spec_from_file};
use candle_core::Device;

fn lenet(overrides: Vec<Override>) -> ablate::Spec {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/lenet.toml");
    spec_from_file(&file, &overrides, &["cats", "dogs"]).unwrap()
}

#[test]
fn lenet_at_256_infers_the_fc_input_and_counts_parameters() {
    let spec = lenet(vec![]);
    assert_eq!(spec.input_hw, (256, 256));
    let model = Model::build(&spec.layers, spec.input_hw, 0, &Device::Cpu).unwrap();
    let rows = &model.summary().rows;
    let fc1 = rows.iter().position(|r| r.name == "fc1").unwrap();
    // 256 -> conv k5 -> 252 -> pool 2 -> 126 -> conv k5 -> 122 -> pool 2 -> 61: 16 * 61 * 61 = 59,536
    assert_eq!(rows[fc1 - 1].out_shape, vec![16, 61, 61]);
    assert_eq!(rows[fc1].params, 59_536 * 120 + 120);
    // conv1 3*6*25+6 = 456, conv2 6*16*25+16 = 2,416, fc1 59,536*120+120 = 7,144,440,
    // fc2 120*84+84 = 10,164, fc3 84*2+2 = 170: 7,157,646 in all.
    assert_eq!(model.summary().total_params(), 7_157_646);
    assert_eq!(model.params().iter().map(|(_, v)| v.elem_count()).sum::<usize>(), 7_157_646);
}

#[test]
fn set_can_change_one_layer_inside_the_list() {
    let spec = lenet(vec![
        Override::parse("model.layers.0.conv.out=8").unwrap(),
        Override::parse("data.batch_size=16").unwrap(),
    ]);
    let model = Model::build(&spec.layers, spec.input_hw, 0, &Device::Cpu).unwrap();
    assert_eq!(model.summary().rows[0].out_shape, vec![8, 252, 252]);
    assert_eq!(spec.data.batch_size, 16);
    assert_eq!(spec.layers.len(), 11, "the rest of the list is kept");
}

/// Params and multiply-adds of a TOML model at 224x224 with 1000 classes.
fn totals(layers_toml: &str, classes: usize) -> (usize, u64, Model) {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("net.toml");
    std::fs::write(
        &file,
        format!("name = \"net\"\n[data]\nroot = \".\"\n[model]\ninput = [224, 224]\n{layers_toml}\n"),
    )
    .unwrap();
    let names: Vec<String> = (0..classes).map(|i| format!("c{i}")).collect();
    let spec = spec_from_file(&file, &[], &names.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    let model = Model::build(&spec.layers, spec.input_hw, 0, &Device::Cpu).unwrap();
    (model.summary().total_params(), model.summary().total_macs(), model)
}

const STEM: &str = r#"{ conv = { out = 64, kernel = 7, stride = 2, padding = 3, bias = false } }, "batch_norm", "relu",
  { max_pool = { kernel = 3, stride = 2, padding = 1 } },"#;

fn bottleneck_net(groups: usize, width: usize) -> String {
    format!(
        r#"layers = [ {STEM}
  {{ stage = {{ block = "bottleneck", repeat = 3, out = 256, groups = {groups}, width = {width} }} }},
  {{ stage = {{ block = "bottleneck", repeat = 4, out = 512, stride = 2, groups = {groups}, width = {width} }} }},
  {{ stage = {{ block = "bottleneck", repeat = 6, out = 1024, stride = 2, groups = {groups}, width = {width} }} }},
  {{ stage = {{ block = "bottleneck", repeat = 3, out = 2048, stride = 2, groups = {groups}, width = {width} }} }},
  "global_avg_pool", {{ linear = {{ out = "$classes" }} }} ]"#
    )
}

/// torchvision 0.14, weights=None: sum(p.numel() for p in m.parameters()), and multiply-adds
/// of conv and linear layers from forward hooks at 1x3x224x224 (per conv: output elements x
/// in_channels/groups x kh x kw; per linear: in x out).
#[test]
fn resnets_match_torchvision_parameters_and_macs() {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/resnet18.toml");
    let text = std::fs::read_to_string(file).unwrap();
    let layers = &text[text.find("layers = [").unwrap()..text.find("\n]\n").unwrap() + 2];
    let (params, macs, model) = totals(layers, 1000);
    assert_eq!((params, macs), (11_689_512, 1_814_073_344), "resnet18");
    assert_eq!(totals(layers, 2).0, 11_177_538, "resnet18, 2 classes");
    // torchvision's state-dict names, buffers included (102 tensors, 20 BatchNorms).
    let state = model.state_dict();
    for name in [
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv2.weight",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.num_batches_tracked",
        "layer4.1.bn2.bias",
        "fc.weight",
    ] {
        assert!(state.contains_key(name), "{name}");
    }
    assert_eq!(state.len(), 62 + 20 * 2 + 20, "params + running stats + counters");

    let (p50, m50, _) = totals(&bottleneck_net(1, 64), 1000);
    assert_eq!((p50, m50), (25_557_032, 4_089_184_256), "resnet50");
    let (px, mx, _) = totals(&bottleneck_net(32, 4), 1000);
    assert_eq!((px, mx), (25_028_904, 4_230_479_872), "resnext50_32x4d");
}

/// `relu6` is written by name like `relu`, and a network ending in it computes
/// `min(max(x, 0), 6)` of what comes before it (PyTorch's `nn.ReLU6`).
#[test]
fn relu6_is_a_layer_kind() {
    use candle_nn::ModuleT;
    let linear = r#"layers = [ "global_avg_pool", { linear = { out = "$classes" } } ]"#;
    let clamped = r#"layers = [ "global_avg_pool", { linear = { out = "$classes" } }, "relu6" ]"#;
    let (_, _, plain) = totals(linear, 8);
    let (params, _, model) = totals(clamped, 8);
    assert_eq!(params, 3 * 8 + 8, "relu6 has no parameters");
    let x = (candle_core::Tensor::randn(0f32, 1.0, (2, 3, 224, 224), &Device::Cpu).unwrap() * 20.0).unwrap();
    let expected = plain.forward_t(&x, false).unwrap().clamp(0f32, 6f32).unwrap();
    let got = model.forward_t(&x, false).unwrap();
    assert_eq!(got.to_vec2::<f32>().unwrap(), expected.to_vec2::<f32>().unwrap());
    assert!(got.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().any(|v| *v == 6.0 || *v == 0.0));
}
