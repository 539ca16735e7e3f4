//! Optimizers (Adam, AdamW, SGD with momentum / Nesterov) and learning-rate schedules, with
//! PyTorch's update rules, over parameters sorted by name.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

use crate::config::schema::{OptimizerConfig, OptimizerKind, ScheduleConfig, ScheduleKind};

/// Per-parameter state: Adam's two moments, or SGD's momentum buffer.
enum State {
    None,
    Adam { m: Tensor, v: Tensor },
    Momentum(Tensor),
}

/// An optimizer over a fixed, name-sorted parameter list.
pub struct Optimizer {
    cfg: OptimizerConfig,
    params: Vec<(String, Var)>,
    state: Vec<State>,
    steps: u64,
}

impl Optimizer {
    pub fn new(cfg: OptimizerConfig, mut params: Vec<(String, Var)>) -> Self {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let state = params.iter().map(|_| State::None).collect();
        Self { cfg, params, state, steps: 0 }
    }

    /// The optimizer's state by name (`<param>.m`, `<param>.v`, `<param>.momentum`, and
    /// `steps`), for checkpoints that resume exactly.
    pub fn state_dict(&self) -> Result<std::collections::HashMap<String, Tensor>> {
        let mut out = std::collections::HashMap::new();
        for ((name, _), state) in self.params.iter().zip(&self.state) {
            match state {
                State::None => {}
                State::Adam { m, v } => {
                    out.insert(format!("{name}.m"), m.clone());
                    out.insert(format!("{name}.v"), v.clone());
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
            let get = |k: &str| state.get(&format!("{name}.{k}")).map(|t| t.to_device(var.device()));
            *slot = match (get("m"), get("v"), get("momentum")) {
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
        for ((_, var), state) in self.params.iter().zip(self.state.iter_mut()) {
            let Some(g) = grads.get(var) else { continue };
            let p = var.as_tensor();
            match c.kind {
                OptimizerKind::Adam | OptimizerKind::Adamw => {
                    let [b1, b2] = c.betas;
                    let mut g = g.clone();
                    let mut p_new = p.clone();
                    if c.weight_decay != 0.0 {
                        if c.kind == OptimizerKind::Adam {
                            g = (g + (p * c.weight_decay)?)?; // L2, coupled
                        } else {
                            p_new = (p * (1.0 - lr * c.weight_decay))?; // decoupled
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
                    if c.weight_decay != 0.0 {
                        g = (g + (p * c.weight_decay)?)?;
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
        let run = |cfg: OptimizerConfig| {
            let var = Var::new(&[1f32, -2.0], &Device::Cpu).unwrap();
            let mut opt = Optimizer::new(cfg, vec![("p".into(), var.clone())]);
            for _ in 0..2 {
                let g = quadratic_grads(&var);
                opt.step(&g, 0.1).unwrap();
            }
            var.as_tensor().to_vec1::<f32>().unwrap()
        };
        let close = |got: Vec<f32>, want: [f32; 2]| {
            assert!(got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5), "{got:?} vs PyTorch {want:?}");
        };
        close(run(OptimizerConfig::default()), [0.800_412_2, -1.800_166_5]);
        let sgd = OptimizerConfig { kind: OptimizerKind::Sgd, momentum: 0.9, nesterov: true, ..Default::default() };
        close(run(sgd), [0.5751, -1.1502]);
        let adamw = OptimizerConfig { kind: OptimizerKind::Adamw, weight_decay: 0.5, ..Default::default() };
        close(run(adamw), [0.708_248_4, -1.610_412_1]);
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
