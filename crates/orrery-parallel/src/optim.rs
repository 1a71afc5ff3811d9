//! AdamW over named flat tensors, its learning-rate schedule, global-norm
//! clipping, and the EMA of the weights. The state is a map from parameter
//! name to flat tensors, so it checkpoints to safetensors under stable names
//! and can later be sharded.
use std::collections::BTreeMap;

use burn::tensor::{backend::Backend, Tensor};
use orrery_model::named::{HostTensor, NamedTensors};

use orrery_config::{OptimConfig, Schedule};

/// Flat tensors by parameter name.
pub type FlatMap<B> = BTreeMap<String, Tensor<B, 1>>;

/// A flat tensor's values on the host.
pub fn host<B: Backend>(t: Tensor<B, 1>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().expect("f32 data")
}

/// A flat tensor holding `v`.
pub fn flat<B: Backend>(v: Vec<f32>, device: &B::Device) -> Tensor<B, 1> {
    let n = v.len();
    Tensor::from_data(burn::tensor::TensorData::new(v, [n]), device)
}

/// The learning rate at `step` (0-based): linear warm-up, then the schedule.
pub fn learning_rate(cfg: &OptimConfig, step: u64, total: u64) -> f64 {
    if step < cfg.warmup_steps {
        return cfg.lr * (step + 1) as f64 / cfg.warmup_steps as f64;
    }
    match cfg.schedule {
        Schedule::Constant => cfg.lr,
        Schedule::Cosine => {
            let span = total.saturating_sub(cfg.warmup_steps).max(1) as f64;
            let progress = ((step - cfg.warmup_steps) as f64 / span).min(1.0);
            let min = cfg.lr * cfg.min_lr_ratio;
            min + 0.5 * (cfg.lr - min) * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}

/// The global L2 norm of all gradients (one host sync).
pub fn global_norm<B: Backend>(grads: &FlatMap<B>) -> f64 {
    let sq: Vec<Tensor<B, 1>> = grads
        .values()
        .map(|g| (g.clone() * g.clone()).sum())
        .collect();
    if sq.is_empty() {
        return 0.0;
    }
    let total: f32 = Tensor::cat(sq, 0).sum().into_scalar().elem();
    (total as f64).sqrt()
}

use burn::tensor::ElementConversion;

/// AdamW moments and step count.
#[derive(Debug)]
pub struct AdamW<B: Backend> {
    /// First moments by name.
    pub exp_avg: FlatMap<B>,
    /// Second moments by name.
    pub exp_avg_sq: FlatMap<B>,
    /// Updates taken so far.
    pub steps: u64,
}

impl<B: Backend> Default for AdamW<B> {
    fn default() -> Self {
        Self {
            exp_avg: BTreeMap::new(),
            exp_avg_sq: BTreeMap::new(),
            steps: 0,
        }
    }
}

impl<B: Backend> AdamW<B> {
    /// Count one update; call once per step before [`AdamW::update`].
    pub fn begin_step(&mut self) {
        self.steps += 1;
    }

    /// The new value of one parameter (flat), given its gradient (already
    /// scaled for clipping). `decay` says whether weight decay applies.
    pub fn update(
        &mut self,
        cfg: &OptimConfig,
        lr: f64,
        name: &str,
        param: Tensor<B, 1>,
        grad: Tensor<B, 1>,
        decay: bool,
    ) -> Tensor<B, 1> {
        let step = self.adam_step(cfg, name, &param, grad);
        // AdamW: decoupled weight decay (Loshchilov & Hutter 2019, Algorithm 2, line 12)
        let param = if decay && cfg.weight_decay > 0.0 {
            param.clone() - param * (lr * cfg.weight_decay)
        } else {
            param
        };
        param - step * lr
    }

    /// [`AdamW::update`] with weight decay per element: `mask` is 1 where it
    /// applies and 0 elsewhere (an FSDP shard mixes matrices and biases).
    ///
    /// # Shapes
    /// param, grad, mask: [k]
    pub fn update_masked(
        &mut self,
        cfg: &OptimConfig,
        lr: f64,
        name: &str,
        param: Tensor<B, 1>,
        grad: Tensor<B, 1>,
        mask: Tensor<B, 1>,
    ) -> Tensor<B, 1> {
        let step = self.adam_step(cfg, name, &param, grad);
        let param = if cfg.weight_decay > 0.0 {
            param.clone() - param * (lr * cfg.weight_decay) * mask
        } else {
            param
        };
        param - step * lr
    }

    /// Update the moments of `name` and return Adam's step m_hat / (sqrt(v_hat) + eps).
    fn adam_step(
        &mut self,
        cfg: &OptimConfig,
        name: &str,
        param: &Tensor<B, 1>,
        grad: Tensor<B, 1>,
    ) -> Tensor<B, 1> {
        let zeros = || param.zeros_like();
        let m = self.exp_avg.remove(name).unwrap_or_else(zeros);
        let v = self.exp_avg_sq.remove(name).unwrap_or_else(zeros);
        // Adam (Kingma & Ba 2015), Algorithm 1
        let m = m * cfg.beta1 + grad.clone() * (1.0 - cfg.beta1);
        let v = v * cfg.beta2 + grad.clone() * grad * (1.0 - cfg.beta2);
        let t = self.steps as i32;
        let (bc1, bc2) = (1.0 - cfg.beta1.powi(t), 1.0 - cfg.beta2.powi(t));
        let step = (m.clone() / bc1) / ((v.clone() / bc2).sqrt() + cfg.eps);
        self.exp_avg.insert(name.to_string(), m);
        self.exp_avg_sq.insert(name.to_string(), v);
        step
    }

    /// Host copies of the moments, named `exp_avg.<param>` and `exp_avg_sq.<param>`.
    pub fn to_host(&self, shapes: &BTreeMap<String, Vec<usize>>) -> NamedTensors {
        let mut out = NamedTensors::new();
        for (prefix, map) in [("exp_avg", &self.exp_avg), ("exp_avg_sq", &self.exp_avg_sq)] {
            for (name, t) in map {
                out.insert(
                    format!("{prefix}.{name}"),
                    HostTensor::from_flat(t.clone(), shapes[name].clone()),
                );
            }
        }
        out
    }

    /// Put back one tensor named as [`AdamW::to_host`] names them
    /// (`exp_avg.<param>` or `exp_avg_sq.<param>`); other names are ignored.
    ///
    /// # Shapes
    /// t: [numel]
    pub fn insert(&mut self, key: &str, t: Tensor<B, 1>) {
        if let Some(name) = key.strip_prefix("exp_avg_sq.") {
            self.exp_avg_sq.insert(name.to_string(), t);
        } else if let Some(name) = key.strip_prefix("exp_avg.") {
            self.exp_avg.insert(name.to_string(), t);
        }
    }
}

/// Exponential moving average of the weights, by name.
#[derive(Debug)]
pub struct Ema<B: Backend> {
    /// The averaged weights.
    pub weights: FlatMap<B>,
    /// Updates so far.
    pub updates: u64,
}

impl<B: Backend> Ema<B> {
    /// Start from the current weights.
    pub fn new(weights: FlatMap<B>) -> Self {
        Self {
            weights,
            updates: 0,
        }
    }

    /// The decay used for the next update: warmed up as min(decay, (1 + n) / (10 + n)).
    pub fn decay(&self, decay: f64) -> f64 {
        decay.min((1.0 + self.updates as f64) / (10.0 + self.updates as f64))
    }

    /// ema <- d ema + (1 - d) w for one parameter.
    pub fn update(&mut self, decay: f64, name: &str, weight: Tensor<B, 1>) {
        let next = match self.weights.remove(name) {
            Some(e) => e * decay + weight * (1.0 - decay),
            None => weight,
        };
        self.weights.insert(name.to_string(), next);
    }

    /// Host copies of the averaged weights, under the parameters' names.
    pub fn to_host(&self, shapes: &BTreeMap<String, Vec<usize>>) -> NamedTensors {
        self.weights
            .iter()
            .map(|(name, t)| {
                let shape = shapes[name].clone();
                (name.clone(), HostTensor::from_flat(t.clone(), shape))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    #[test]
    fn warmup_then_cosine_reaches_the_floor() {
        let cfg = OptimConfig {
            lr: 1.0,
            warmup_steps: 10,
            min_lr_ratio: 0.1,
            ..Default::default()
        };
        assert!((learning_rate(&cfg, 0, 110) - 0.1).abs() < 1e-12);
        assert!((learning_rate(&cfg, 9, 110) - 1.0).abs() < 1e-12);
        assert!((learning_rate(&cfg, 60, 110) - 0.55).abs() < 1e-12);
        assert!((learning_rate(&cfg, 110, 110) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn one_adamw_step_matches_the_hand_computed_value() {
        let device = Default::default();
        let cfg = OptimConfig {
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
            ..Default::default()
        };
        let mut opt = AdamW::<Flex>::default();
        opt.begin_step();
        let p = Tensor::<Flex, 1>::from_data(TensorData::new(vec![1.0f32, -2.0], [2]), &device);
        let g = Tensor::<Flex, 1>::from_data(TensorData::new(vec![0.5f32, 0.0], [2]), &device);
        let out: Vec<f32> = opt
            .update(&cfg, 0.01, "w", p, g, true)
            .into_data()
            .into_vec()
            .unwrap();
        // Step 1: m_hat = g, v_hat = g^2, so the step is sign(g) (0 where g = 0);
        // decay first multiplies p by (1 - lr wd).
        assert!(
            (out[0] - (1.0 * (1.0 - 0.001) - 0.01)).abs() < 1e-6,
            "{out:?}"
        );
        assert!((out[1] - (-2.0 * (1.0 - 0.001))).abs() < 1e-6, "{out:?}");
    }

    #[test]
    fn ema_warms_up_and_averages() {
        let device = Default::default();
        let w = |v: f32| Tensor::<Flex, 1>::from_data(TensorData::new(vec![v], [1]), &device);
        let mut ema = Ema::<Flex>::new(BTreeMap::from([("w".to_string(), w(0.0))]));
        assert!((ema.decay(0.999) - 0.1).abs() < 1e-12);
        ema.update(0.5, "w", w(1.0));
        let v: Vec<f32> = ema.weights["w"].clone().into_data().into_vec().unwrap();
        assert_eq!(v, vec![0.5]);
    }
}
