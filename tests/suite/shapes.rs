//! Shape inference and parameter counts of the bundled experiments.

use ablate::config::load::{self, Sources};
use ablate::config::{Override, resolve};
use ablate::model::Model;
use candle_core::Device;

fn lenet(overrides: Vec<Override>) -> ablate::config::Spec {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/lenet.toml");
    let sources = Sources { files: vec![file.clone()], overrides, env: false };
    let exp = load::load(&sources).unwrap();
    resolve(exp, &file.display().to_string(), vec!["cats".into(), "dogs".into()]).unwrap()
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
    assert_eq!(spec.raw.data.batch_size, 16);
    assert_eq!(spec.layers.len(), 11, "the rest of the list is kept");
}
