//! Named, seeded tensors for the layers being built: one generator drawn in layer order (so a
//! seed fixes every weight), and path-style names from nested scopes (`layer1.0.conv1.weight`),
//! in the manner of candle-nn's `VarBuilder::pp`.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Mixed precision, shared by a model's convolutions and linear layers: when on, they multiply
/// in bf16 (inputs and weights converted, results back to f32); weights, gradients,
/// BatchNorm and the loss stay f32.
#[derive(Clone, Default)]
pub struct Autocast(Arc<AtomicBool>);

impl Autocast {
    pub fn set(&self, bf16: bool) {
        self.0.store(bf16, Ordering::Relaxed);
    }

    /// The dtype to compute in, when not f32.
    pub fn dtype(&self) -> Option<DType> {
        self.0.load(Ordering::Relaxed).then_some(DType::BF16)
    }
}

/// How conv weights are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvInit {
    /// PyTorch's `Conv2d` default: kaiming-uniform with a = sqrt(5), i.e. U(+-1/sqrt(fan_in)).
    PyTorchDefault,
    /// torchvision's ResNet: kaiming-normal, fan_out, ReLU gain: N(0, 2 / fan_out).
    KaimingNormalFanOut,
}

/// Creates named tensors in a fixed order from one seeded generator and records them.
pub struct Builder<'a> {
    rng: ChaCha8Rng,
    device: &'a Device,
    /// The scopes the next names are made under.
    path: Vec<String>,
    pub conv_init: ConvInit,
    pub params: BTreeMap<String, Var>,
    pub buffers: BTreeMap<String, Var>,
    /// BatchNorm's `num_batches_tracked`, kept as i64 like PyTorch's.
    pub counters: BTreeMap<String, Arc<AtomicI64>>,
    /// Each BatchNorm's switch to evaluation mode (set while its parameters are frozen), by
    /// the layer's name.
    pub frozen_norms: BTreeMap<String, Arc<AtomicBool>>,
    pub autocast: Autocast,
}

impl<'a> Builder<'a> {
    pub fn new(seed: u64, device: &'a Device, conv_init: ConvInit) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            device,
            path: Vec::new(),
            conv_init,
            params: BTreeMap::new(),
            buffers: BTreeMap::new(),
            counters: BTreeMap::new(),
            frozen_norms: BTreeMap::new(),
            autocast: Autocast::default(),
        }
    }

    /// A scope: names made through it start with `name.` until it is dropped.
    pub fn pp(&mut self, name: impl Into<String>) -> Scope<'_, 'a> {
        self.path.push(name.into());
        Scope { builder: self }
    }

    /// The current scope's name (`layer1.0`).
    pub fn scope(&self) -> String {
        self.path.join(".")
    }

    /// `leaf` under the current scopes.
    pub fn name(&self, leaf: &str) -> String {
        self.path.iter().map(String::as_str).chain([leaf]).collect::<Vec<_>>().join(".")
    }

    pub fn device(&self) -> &Device {
        self.device
    }

    pub fn uniform(&mut self, shape: &[usize], bound: f64) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| self.rng.gen_range(-bound..bound) as f32).collect();
        Tensor::from_vec(v, shape, self.device)
    }

    pub fn normal(&mut self, shape: &[usize], std: f64) -> Result<Tensor> {
        let dist = rand_distr::Normal::new(0.0, std).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| self.rng.sample(dist) as f32).collect();
        Tensor::from_vec(v, shape, self.device)
    }

    /// Records trainable `t` as `leaf` under the current scopes.
    pub fn param(&mut self, leaf: &str, t: Tensor) -> std::result::Result<Tensor, String> {
        let name = self.name(leaf);
        let var = Var::from_tensor(&t).map_err(|e| e.to_string())?;
        let t = var.as_tensor().clone();
        if self.params.insert(name.clone(), var).is_some() {
            return Err(format!("two layers are named `{name}`: give one a different name"));
        }
        Ok(t)
    }

    /// Records non-trainable state saved in checkpoints.
    pub fn buffer(&mut self, leaf: &str, var: Var) {
        self.buffers.insert(self.name(leaf), var);
    }

    /// The switch that keeps the normalisation layer of the current scope in evaluation mode
    /// while its parameters are frozen (see `Model::freeze`).
    pub fn frozen_norm(&mut self) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        self.frozen_norms.insert(self.scope(), flag.clone());
        flag
    }

    /// An integer counter saved in checkpoints, starting at 0.
    pub fn counter(&mut self, leaf: &str) -> Arc<AtomicI64> {
        let c = Arc::new(AtomicI64::new(0));
        self.counters.insert(self.name(leaf), c.clone());
        c
    }
}

/// A [`Builder`] inside one more scope (see [`Builder::pp`]); leaving it pops the scope.
pub struct Scope<'s, 'a> {
    builder: &'s mut Builder<'a>,
}

impl<'a> Deref for Scope<'_, 'a> {
    type Target = Builder<'a>;
    fn deref(&self) -> &Builder<'a> {
        self.builder
    }
}

impl<'a> DerefMut for Scope<'_, 'a> {
    fn deref_mut(&mut self) -> &mut Builder<'a> {
        self.builder
    }
}

impl Drop for Scope<'_, '_> {
    fn drop(&mut self) {
        self.builder.path.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_make_path_names_and_pop_when_left() {
        let mut b = Builder::new(0, &Device::Cpu, ConvInit::PyTorchDefault);
        {
            let mut layer = b.pp("layer1");
            let mut block = layer.pp("0");
            assert_eq!(block.pp("conv1").name("weight"), "layer1.0.conv1.weight");
            assert_eq!(block.name("bn1"), "layer1.0.bn1");
        }
        assert_eq!(b.name("fc"), "fc");
        let t = b.uniform(&[2], 1.0).unwrap();
        b.param("w", t.clone()).unwrap();
        assert!(b.param("w", t).unwrap_err().contains("two layers are named `w`"));
    }
}
