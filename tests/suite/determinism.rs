//! Results independent of the thread count: a training step's gradients are bit-identical
//! on 1, 2 and 3 threads, through every convolution algorithm, BatchNorm, pooling and the
//! optimizers (as the kernels' comments claim: fixed reduction slices, no per-thread sums).

use ablate::Model;
use ablate::ops::conv::plan::{self, Algo};
use candle_core::{Device, Tensor};
use candle_nn::ModuleT;

/// Every gradient and the weights after one AdamW step, as raw bits, on `threads` threads.
fn step_bits(file: &str, hw: usize, batch: usize, threads: usize) -> (Vec<Vec<u32>>, Vec<Algo>) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        let spec = crate::common::spec_at(file, hw);
        let model = Model::build(&spec.layers, spec.input_hw, 3, &Device::Cpu).unwrap();
        let x = input(&[batch, 3, hw, hw]);
        let y = Tensor::from_vec((0..batch as u32).map(|i| i % 2).collect::<Vec<_>>(), batch, &Device::Cpu).unwrap();
        let ((grads, logits), ran) = plan::record(|| {
            let logits = model.forward_t(&x, true).unwrap();
            (candle_nn::loss::cross_entropy(&logits, &y).unwrap().backward().unwrap(), logits)
        });
        let cfg = toml::from_str("kind = \"adamw\"\nlr = 1e-3\nweight_decay = 0.05").unwrap();
        let mut opt = ablate::Optimizer::new(cfg, model.trainable());
        opt.step(&grads, 1e-3).unwrap();
        let bits =
            |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect();
        let mut out = vec![bits(&logits)];
        for (_, var) in model.params() {
            out.push(bits(grads.get(&var).unwrap()));
            out.push(bits(var.as_tensor()));
        }
        for (name, t) in model.state_dict() {
            if name.contains("running") {
                out.push(bits(&t));
            }
        }
        (out, ran.iter().map(|r| r.algo).collect())
    })
}

/// A fixed input of `shape`, values in [-1.5, 1.5).
fn input(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 1.5).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

#[test]
fn a_training_step_is_bit_identical_on_1_2_and_3_threads() {
    // ResNet18 at 64x64, batch 4: Winograd (16x16 forwards and input gradients, in two chunks
    // of tile rows; layer2's 8x8 weight gradients), implicit (16x16), batched (8x8 and smaller) and per-sample (the 32x32
    // stem) convolutions; LeNet at 72: the direct kernels; resnext.toml: grouped.
    let mut algos = std::collections::BTreeSet::new();
    for (file, hw, batch) in
        [("experiments/resnet18.toml", 64, 4), ("experiments/lenet.toml", 72, 4), ("experiments/resnext.toml", 32, 4)]
    {
        let (one, ran) = step_bits(file, hw, batch, 1);
        algos.extend(ran.iter().map(|a| format!("{a:?}")));
        for threads in [2, 3] {
            let (many, _) = step_bits(file, hw, batch, threads);
            assert_eq!(one.len(), many.len());
            for (i, (a, b)) in one.iter().zip(&many).enumerate() {
                assert!(a == b, "{file}: tensor {i} differs between 1 and {threads} threads");
            }
        }
    }
    let expected: Vec<String> = if ablate::ops::isa::Isa::detected().avx512().is_some() {
        vec!["Batched", "Direct", "Implicit", "PerSample", "Winograd"].into_iter().map(String::from).collect()
    } else {
        vec!["Batched", "Direct", "PerSample", "Winograd"].into_iter().map(String::from).collect()
    };
    assert_eq!(algos.into_iter().collect::<Vec<_>>(), expected, "the networks ran every algorithm");
}
