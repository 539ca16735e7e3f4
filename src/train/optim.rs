//! Optimizers (Adam, AdamW, SGD with momentum / Nesterov) and learning-rate schedules, with
//! PyTorch's update rules, over parameters sorted by name.

use std::sync::Mutex;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Result, Tensor, Var};
use rayon::prelude::*;

use crate::spec::{OptimizerConfig, OptimizerKind, ScheduleConfig, ScheduleKind};

/// Per-parameter state: Adam's two moments (as tensors, or as plain vectors for the fused CPU
/// update), or SGD's momentum buffer.
enum State {
    None,
    Adam { m: Tensor, v: Tensor },
    AdamCpu { m: Vec<f32>, v: Vec<f32> },
    Momentum(Tensor),
}

/// Adam's constants for one step.
#[derive(Clone, Copy)]
struct AdamStep {
    lr: f32,
    b1: f32,
    b2: f32,
    /// 1 - b1 and 1 - b2, from the f64 betas (1 - 0.999f32 is off by 5e-5 relative).
    d1: f32,
    d2: f32,
    eps: f32,
    /// 1 - b1^t and 1 - b2^t.
    c1: f32,
    c2: f32,
    /// L2 added to the gradient (Adam) ...
    l2: f32,
    /// ... or the decoupled shrink factor 1 - lr * wd (AdamW).
    shrink: f32,
}

/// The fused CPU update: one pass over parameter, gradient and both moments, the parameter
/// changed in place (candle's tensor ops would take ~10 passes and as many allocations).
struct FusedAdam {
    k: AdamStep,
    moments: Mutex<(Vec<f32>, Vec<f32>)>,
}

impl InplaceOp2 for FusedAdam {
    fn name(&self) -> &'static str {
        "ablate-fused-adam"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let (Some((p0, p1)), Some((g0, g1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("fused adam: parameter and gradient must be contiguous");
        };
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (s1, s2) else {
            candle_core::bail!("fused adam: f32 only");
        };
        let (p, g) = (&mut p[p0..p1], &g[g0..g1]);
        let mut guard = self.moments.lock().unwrap_or_else(|e| e.into_inner());
        let (m, v) = &mut *guard;
        if g.len() != p.len() || m.len() != p.len() || v.len() != p.len() {
            candle_core::bail!(
                "fused adam: parameter of {}, gradient of {}, moments of {} and {}",
                p.len(),
                g.len(),
                m.len(),
                v.len()
            );
        }
        let k = self.k;
        const CHUNK: usize = 1 << 14;
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| {
                for i in 0..p.len() {
                    let gi = g[i] + k.l2 * p[i];
                    m[i] = k.b1 * m[i] + k.d1 * gi;
                    v[i] = k.b2 * v[i] + k.d2 * gi * gi;
                    let update = (m[i] / k.c1) / ((v[i] / k.c2).sqrt() + k.eps);
                    p[i] = p[i] * k.shrink - k.lr * update;
                }
            });
        Ok(())
    }
}

/// Whether `var` can take the fused CPU update.
fn fusable(var: &Var) -> bool {
    var.device().is_cpu() && var.dtype() == DType::F32 && var.layout().is_contiguous()
}

/// An optimizer over a fixed, name-sorted parameter list.
pub struct Optimizer {
    cfg: OptimizerConfig,
    params: Vec<(String, Var)>,
    /// Each parameter's weight decay and learning-rate multiplier (its group).
    groups: Vec<(f64, f64)>,
    state: Vec<State>,
    steps: u64,
    /// Use the fused CPU update where it applies (tests turn it off to compare).
    fused: bool,
}

impl Optimizer {
    pub fn new(cfg: OptimizerConfig, mut params: Vec<(String, Var)>) -> Self {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let state = params.iter().map(|_| State::None).collect();
        let groups = params.iter().map(|(name, var)| cfg.group_of(name, var.rank())).collect();
        Self { cfg, params, groups, state, steps: 0, fused: true }
    }

    /// Scales the gradients of the parameters in `grads` so that their joint L2 norm is at most
    /// `max_norm`, as PyTorch's `torch.nn.utils.clip_grad_norm_`: the norm of the per-tensor
    /// norms (in float32), then every gradient times `min(1, max_norm / (norm + 1e-6))`.
    /// Returns the norm before clipping.
    pub fn clip_grad_norm(&self, grads: &mut GradStore, max_norm: f64) -> Result<f64> {
        let mut norms = Vec::with_capacity(self.params.len());
        for (_, var) in &self.params {
            if let Some(g) = grads.get(var) {
                norms.push(g.to_dtype(DType::F32)?.sqr()?.sum_all()?.sqrt()?);
            }
        }
        if norms.is_empty() {
            return Ok(0.0);
        }
        let total = Tensor::stack(&norms, 0)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
        let coef = (max_norm as f32 / (total + 1e-6)).min(1.0);
        if coef < 1.0 {
            for (_, var) in &self.params {
                if let Some(g) = grads.remove(var) {
                    grads.insert(var, (g * coef as f64)?);
                }
            }
        }
        Ok(total as f64)
    }

    /// The optimizer's state by name (`<param>.m`, `<param>.v`, `<param>.momentum`, and
    /// `steps`), for checkpoints that resume exactly.
    pub fn state_dict(&self) -> Result<std::collections::HashMap<String, Tensor>> {
        let mut out = std::collections::HashMap::new();
        for ((name, var), state) in self.params.iter().zip(&self.state) {
            match state {
                State::None => {}
                State::Adam { m, v } => {
                    out.insert(format!("{name}.m"), m.clone());
                    out.insert(format!("{name}.v"), v.clone());
                }
                State::AdamCpu { m, v } => {
                    let shape = var.shape();
                    out.insert(format!("{name}.m"), Tensor::from_slice(m, shape, var.device())?);
                    out.insert(format!("{name}.v"), Tensor::from_slice(v, shape, var.device())?);
                }
                State::Momentum(b) => {
                    out.insert(format!("{name}.momentum"), b.clone());
                }
            }
        }
        out.insert("steps".into(), Tensor::new(self.steps as i64, &candle_core::Device::Cpu)?);
        Ok(out)
    }

    /// Restores what [`Optimizer::state_dict`] saved.
    pub fn load_state_dict(&mut self, state: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        self.steps = match state.get("steps") {
            Some(t) => t.to_scalar::<i64>()? as u64,
            None => candle_core::bail!("optimizer state without `steps`"),
        };
        for ((name, var), slot) in self.params.iter().zip(self.state.iter_mut()) {
            // Every saved tensor must have its parameter's shape: a moment of another length
            // would update part of the parameter (the fused step zips them) or fail later.
            for k in ["m", "v", "momentum"] {
                if let Some(t) = state.get(&format!("{name}.{k}"))
                    && t.dims() != var.dims()
                {
                    candle_core::bail!(
                        "optimizer state `{name}.{k}` has shape {:?}, its parameter {:?}",
                        t.dims(),
                        var.dims()
                    );
                }
            }
            let get = |k: &str| state.get(&format!("{name}.{k}")).map(|t| t.to_device(var.device()));
            *slot = match (get("m"), get("v"), get("momentum")) {
                (Some(m), Some(v), _) if self.fused && fusable(var) => State::AdamCpu {
                    m: m?.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?,
                    v: v?.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?,
                },
                (Some(m), Some(v), _) => State::Adam { m: m?, v: v? },
                (_, _, Some(b)) => State::Momentum(b?),
                _ => State::None,
            };
        }
        Ok(())
    }

    /// One update with learning rate `lr`; parameters without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.steps += 1;
        let t = self.steps as i32;
        let c = &self.cfg;
        for (((_, var), state), &(weight_decay, mult)) in
            self.params.iter().zip(self.state.iter_mut()).zip(&self.groups)
        {
            let Some(g) = grads.get(var) else { continue };
            let p = var.as_tensor();
            let lr = lr * mult;
            match c.kind {
                OptimizerKind::Adam | OptimizerKind::Adamw if self.fused && fusable(var) => {
                    let [b1, b2] = c.betas;
                    let adamw = c.kind == OptimizerKind::Adamw;
                    let k = AdamStep {
                        lr: lr as f32,
                        b1: b1 as f32,
                        b2: b2 as f32,
                        d1: (1.0 - b1) as f32,
                        d2: (1.0 - b2) as f32,
                        eps: c.eps as f32,
                        c1: (1.0 - b1.powi(t)) as f32,
                        c2: (1.0 - b2.powi(t)) as f32,
                        l2: if adamw { 0.0 } else { weight_decay as f32 },
                        shrink: if adamw { (1.0 - lr * weight_decay) as f32 } else { 1.0 },
                    };
                    let n = var.elem_count();
                    let moments = match std::mem::replace(state, State::None) {
                        State::AdamCpu { m, v } => (m, v),
                        _ => (vec![0f32; n], vec![0f32; n]),
                    };
                    let op = FusedAdam { k, moments: Mutex::new(moments) };
                    p.inplace_op2(&g.contiguous()?, &op)?;
                    let (m, v) = op.moments.into_inner().unwrap_or_else(|e| e.into_inner());
                    *state = State::AdamCpu { m, v };
                }
                OptimizerKind::Adam | OptimizerKind::Adamw => {
                    let [b1, b2] = c.betas;
                    let mut g = g.clone();
                    let mut p_new = p.clone();
                    if weight_decay != 0.0 {
                        if c.kind == OptimizerKind::Adam {
                            g = (g + (p * weight_decay)?)?; // L2, coupled
                        } else {
                            p_new = (p * (1.0 - lr * weight_decay))?; // decoupled
                        }
                    }
                    let (m, v) = match state {
                        State::Adam { m, v } => (
                            (m.affine(b1, 0.0)? + (&g * (1.0 - b1))?)?,
                            (v.affine(b2, 0.0)? + (g.sqr()? * (1.0 - b2))?)?,
                        ),
                        _ => ((&g * (1.0 - b1))?, (g.sqr()? * (1.0 - b2))?),
                    };
                    let m_hat = (&m / (1.0 - b1.powi(t)))?;
                    let v_hat = (&v / (1.0 - b2.powi(t)))?;
                    let update = (m_hat / (v_hat.sqrt()? + c.eps)?)?;
                    var.set(&(p_new - (update * lr)?)?)?;
                    *state = State::Adam { m, v };
                }
                OptimizerKind::Sgd => {
                    let mut g = g.clone();
                    if weight_decay != 0.0 {
                        g = (g + (p * weight_decay)?)?;
                    }
                    if c.momentum != 0.0 {
                        let buf = match state {
                            State::Momentum(b) => (b.affine(c.momentum, 0.0)? + &g)?,
                            _ => g.clone(),
                        };
                        g = if c.nesterov { (g + (&buf * c.momentum)?)? } else { buf.clone() };
                        *state = State::Momentum(buf);
                    }
                    var.set(&(p - (g * lr)?)?)?;
                }
            }
        }
        Ok(())
    }
}

/// The learning rate at `step` (0-based) of a run with `steps_per_epoch` x `epochs` steps.
pub fn lr_at(base: f64, s: &ScheduleConfig, step: usize, steps_per_epoch: usize, epochs: usize) -> f64 {
    let spe = steps_per_epoch.max(1);
    let total = (spe * epochs).max(1);
    let warmup = (s.warmup_epochs * spe as f64).round() as usize;
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    match s.kind {
        ScheduleKind::Constant => base,
        ScheduleKind::Step => base * s.gamma.powi((step / spe / s.step_epochs.max(1)) as i32),
        ScheduleKind::Cosine => {
            let span = total.saturating_sub(warmup).max(1);
            let progress = (step - warmup) as f64 / span as f64;
            s.min_lr + (base - s.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }
        ScheduleKind::Exponential => base * s.gamma.powi((step / spe) as i32),
        ScheduleKind::Multistep => {
            let epoch = step / spe;
            base * s.gamma.powi(s.milestones.iter().filter(|&&m| m <= epoch).count() as i32)
        }
        ScheduleKind::OneCycle => one_cycle(base, s, step - warmup, total.saturating_sub(warmup).max(1)),
        // The learner multiplies in the reductions, which depend on the metrics.
        ScheduleKind::Plateau => base,
    }
}

/// PyTorch's `OneCycleLR` (`anneal_strategy="cos"`, two phases) at `step` of `total`: from
/// `max_lr / div_factor` up to `max_lr` by step `pct_start * total - 1`, then down to the start
/// `/ final_div_factor` at step `total - 1`.
fn one_cycle(max_lr: f64, s: &ScheduleConfig, step: usize, total: usize) -> f64 {
    let anneal = |from: f64, to: f64, pct: f64| to + (from - to) / 2.0 * ((std::f64::consts::PI * pct).cos() + 1.0);
    let initial = max_lr / s.div_factor;
    let end_rise = s.pct_start * total as f64 - 1.0;
    let end = total as f64 - 1.0;
    let step = step as f64;
    if step <= end_rise && end_rise > 0.0 {
        anneal(initial, max_lr, step / end_rise)
    } else {
        anneal(max_lr, initial / s.final_div_factor, (step - end_rise) / (end - end_rise))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn quadratic_grads(var: &Var) -> GradStore {
        // loss = sum(p^2) / 2, so grad = p
        (var.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap().backward().unwrap()
    }

    /// Two steps on p = [1, -2] with grad = p, against PyTorch 1.13 (Debian python3-torch):
    /// ```python
    /// for name, mk in [("adam", lambda p: torch.optim.Adam([p], lr=0.1)),
    ///                  ("sgd", lambda p: torch.optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True)),
    ///                  ("adamw", lambda p: torch.optim.AdamW([p], lr=0.1, weight_decay=0.5))]:
    ///     p = torch.tensor([1., -2.], requires_grad=True); opt = mk(p)
    ///     for _ in range(2):
    ///         opt.zero_grad(); (p.pow(2).sum() / 2).backward(); opt.step()
    ///     print(name, p.tolist())
    /// # adam [0.8004122376441956, -1.8001664876937866]
    /// # sgd [0.5751000046730042, -1.1502000093460083]
    /// # adamw [0.7082484364509583, -1.6104121208190918]
    /// ```
    #[test]
    fn matches_pytorch_updates() {
        // Both Adam paths: the fused CPU update and candle's tensor ops (the GPU's).
        for fused in [true, false] {
            let run = |cfg: OptimizerConfig| {
                let var = Var::new(&[1f32, -2.0], &Device::Cpu).unwrap();
                let mut opt = Optimizer::new(cfg, vec![("p".into(), var.clone())]);
                opt.fused = fused;
                for _ in 0..2 {
                    let g = quadratic_grads(&var);
                    opt.step(&g, 0.1).unwrap();
                }
                var.as_tensor().to_vec1::<f32>().unwrap()
            };
            let close = |got: Vec<f32>, want: [f32; 2]| {
                assert!(
                    got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5),
                    "fused {fused}: {got:?} vs PyTorch {want:?}"
                );
            };
            close(run(OptimizerConfig::default()), [0.800_412_2, -1.800_166_5]);
            let sgd = OptimizerConfig { kind: OptimizerKind::Sgd, momentum: 0.9, nesterov: true, ..Default::default() };
            close(run(sgd), [0.5751, -1.1502]);
            let adamw = OptimizerConfig { kind: OptimizerKind::Adamw, weight_decay: 0.5, ..Default::default() };
            close(run(adamw), [0.708_248_4, -1.610_412_1]);
        }
    }

    /// The fused update equals the tensor-op one on a parameter spanning several chunks, with
    /// L2 weight decay, and its state survives a save / load in the middle.
    #[test]
    fn fused_adam_equals_the_tensor_ops_and_resumes() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let init: Vec<f32> = (0..40_000).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let cfg = OptimizerConfig { weight_decay: 0.01, ..Default::default() };
        let run = |fused: bool, reload: bool| {
            let var = Var::from_vec(init.clone(), (200, 200), &Device::Cpu).unwrap();
            let mut opt = Optimizer::new(cfg.clone(), vec![("w".into(), var.clone())]);
            opt.fused = fused;
            for step in 0..4 {
                if reload && step == 2 {
                    let saved = opt.state_dict().unwrap();
                    opt = Optimizer::new(cfg.clone(), vec![("w".into(), var.clone())]);
                    opt.load_state_dict(&saved).unwrap();
                }
                // loss = sum(w^3) / 3: grad w^2, different per element and step.
                let g = (var.as_tensor().powf(3.0).unwrap().sum_all().unwrap() / 3.0).unwrap().backward().unwrap();
                opt.step(&g, 0.01).unwrap();
            }
            var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        // PyTorch's Adam with L2, in f64.
        let reference: Vec<f64> = init
            .iter()
            .map(|&w0| {
                let (mut w, mut m, mut v) = (w0 as f64, 0.0, 0.0);
                for t in 1..=4 {
                    let g = w * w + 0.01 * w;
                    m = 0.9 * m + 0.1 * g;
                    v = 0.999 * v + 0.001 * g * g;
                    let (mh, vh) = (m / (1.0 - 0.9f64.powi(t)), v / (1.0 - 0.999f64.powi(t)));
                    w -= 0.01 * mh / (vh.sqrt() + 1e-8);
                }
                w
            })
            .collect();
        let off = |got: &[f32]| got.iter().zip(&reference).fold(0f64, |m, (a, b)| m.max((*a as f64 - b).abs()));
        let (fused, ops) = (run(true, false), run(false, false));
        // Both ~5e-7 off (f32 rounding; where a gradient is ~0, m / sqrt(v) amplifies it).
        assert!(
            off(&fused) < 2e-6 && off(&ops) < 2e-6,
            "off the f64 reference: fused {}, tensor ops {}",
            off(&fused),
            off(&ops)
        );
        assert_ne!(fused, init, "the parameters moved");
        assert_eq!(run(true, true), fused, "a save / load in the middle changes nothing");
    }

    /// A saved moment of another shape than its parameter is refused, by name.
    #[test]
    fn optimizer_state_of_the_wrong_shape_is_refused() {
        let var = Var::from_vec(vec![1f32; 6], (2, 3), &Device::Cpu).unwrap();
        let mut opt = Optimizer::new(OptimizerConfig::default(), vec![("w".into(), var.clone())]);
        opt.step(&quadratic_grads(&var), 0.1).unwrap();
        let mut state = opt.state_dict().unwrap();
        opt.load_state_dict(&state).unwrap();
        state.insert("w.v".into(), Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap());
        let err = opt.load_state_dict(&state).unwrap_err().to_string();
        assert!(err.contains("`w.v`") && err.contains("[5]") && err.contains("[2, 3]"), "{err}");
    }

    #[test]
    fn schedules() {
        let s = ScheduleConfig { kind: ScheduleKind::Cosine, warmup_epochs: 1.0, ..Default::default() };
        // 10 steps per epoch, 3 epochs: warm-up over 10 steps, then cosine over 20.
        assert!((lr_at(1.0, &s, 0, 10, 3) - 0.1).abs() < 1e-12);
        assert!((lr_at(1.0, &s, 9, 10, 3) - 1.0).abs() < 1e-12);
        assert!((lr_at(1.0, &s, 10, 10, 3) - 1.0).abs() < 1e-12);
        assert!((lr_at(1.0, &s, 20, 10, 3) - 0.5).abs() < 1e-12);
        let step = ScheduleConfig { kind: ScheduleKind::Step, step_epochs: 2, gamma: 0.5, ..Default::default() };
        assert_eq!(lr_at(1.0, &step, 19, 10, 6), 1.0);
        assert_eq!(lr_at(1.0, &step, 20, 10, 6), 0.5);
        assert_eq!(lr_at(1.0, &step, 45, 10, 6), 0.25);
    }
}
