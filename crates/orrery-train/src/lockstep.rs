//! `orrery bench parity --lockstep N`: the reference backend trains N steps,
//! and at every step the other backend computes that step's gradients from
//! the reference's own weights, twice. A backend whose kernels are wrong only
//! now and then (a race, one shape, one buffer reused too early) shows as
//! the steps where its gradient parts from the reference's; one that is
//! merely less precise (TF32 matmuls) shows a small, steady difference. The
//! second evaluation shows whether the backend repeats itself. Unlike
//! [`crate::parity::trace`], the two runs cannot drift apart: each step
//! starts both from the same weights.
use std::collections::BTreeMap;

use burn::tensor::backend::AutodiffBackend;
use orrery_data::Batch;
use orrery_dist::SingleProcess;
use orrery_model::named::{load_host, to_host, NamedTensors};
use orrery_model::Dit;

use crate::config::TrainConfig;
use crate::optim::{host, AdamW, Ema};
use crate::step::{apply_step, step_grads};
use crate::trainer::{param_shapes, to_device};
use crate::Result;

/// One step of [`lockstep`].
#[derive(Debug, Clone)]
pub struct LockRow {
    /// The step (0-based).
    pub step: usize,
    /// The loss on the reference and on the other backend.
    pub loss: (f64, f64),
    /// The gradient norm on each.
    pub norm: (f64, f64),
    /// ||g_other - g_ref|| / ||g_ref|| over every parameter at once (NaN if
    /// either holds a non-finite value, or a parameter is missing or of
    /// another size).
    pub grad_rel: f64,
    /// The parameter whose gradient differs most, and by how much (relative
    /// L2; a parameter whose reference gradient is about 0 can top it).
    pub worst: (String, f64),
    /// The same relative difference between the other backend's two
    /// evaluations of this step (0 for a deterministic backend).
    pub repeat_rel: f64,
}

/// Sums of squares for a relative L2 over many tensors.
#[derive(Default)]
struct Rel {
    num: f64,
    den: f64,
    finite: bool,
}

impl Rel {
    fn new() -> Self {
        Self {
            finite: true,
            ..Self::default()
        }
    }

    fn add(&mut self, reference: &[f32], other: &[f32]) {
        if reference.len() != other.len() {
            self.finite = false;
            return;
        }
        for (x, y) in reference.iter().zip(other) {
            self.finite &= x.is_finite() && y.is_finite();
            self.num += (*y as f64 - *x as f64).powi(2);
            self.den += (*x as f64).powi(2);
        }
    }

    fn value(&self) -> f64 {
        if self.finite {
            (self.num / self.den.max(1e-300)).sqrt()
        } else {
            f64::NAN
        }
    }
}

/// A step's loss and each parameter's gradient, on the host.
type HostGrads = (f64, BTreeMap<String, Vec<f32>>);

/// Another backend in [`lockstep`]: computes a step's gradients from the
/// weights it is given.
pub struct Evaluator<'a> {
    /// The backend's name, for the report.
    pub name: String,
    eval: Box<dyn FnMut(&NamedTensors, &Batch, usize) -> Result<HostGrads> + 'a>,
}

impl<'a> Evaluator<'a> {
    /// Backend `G` on `device`, for the model of `cfg`.
    pub fn new<G: AutodiffBackend>(
        name: &str,
        cfg: &'a TrainConfig,
        device: G::Device,
    ) -> Result<Self> {
        let mut model: Option<Dit<G>> = Some(cfg.model.init(&device)?);
        let eval = move |weights: &NamedTensors, batch: &Batch, k: usize| -> Result<HostGrads> {
            let m = load_host(model.take().expect("model"), weights, &device)?;
            let on = to_device::<G>(batch, &cfg.model, &device);
            let out = step_grads(cfg, &m, &on, k as u64, &SingleProcess);
            model = Some(m);
            let g = out?;
            let grads = g.grads.into_iter().map(|(n, t)| (n, host(t))).collect();
            Ok((g.loss, grads))
        };
        Ok(Self {
            name: name.into(),
            eval: Box::new(eval),
        })
    }
}

fn norm(grads: &BTreeMap<String, Vec<f32>>) -> f64 {
    grads
        .values()
        .flatten()
        .map(|v| (*v as f64).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// Train `batches.len()` steps of `cfg` from `init` on backend `R`; at each
/// step, evaluate the same step on each of `others` from `R`'s weights
/// (twice) and compare. `progress` sees each backend's name and row as it
/// is made.
pub fn lockstep<R: AutodiffBackend>(
    cfg: &TrainConfig,
    init: &NamedTensors,
    batches: &[Batch],
    rdev: &R::Device,
    others: &mut [Evaluator<'_>],
    progress: &mut dyn FnMut(&str, &LockRow),
) -> Result<Vec<(String, LockRow)>> {
    let mut model: Dit<R> = load_host(cfg.model.init(rdev)?, init, rdev)?;
    let shapes = param_shapes(&model);
    let (mut optim, mut ema) = (AdamW::default(), Ema::new(BTreeMap::new()));
    let mut rows = Vec::new();
    for (k, batch) in batches.iter().enumerate() {
        let weights = to_host(&model);
        let on_ref = to_device::<R>(batch, &cfg.model, rdev);
        let g = step_grads(cfg, &model, &on_ref, k as u64, &SingleProcess)?;
        let reference: BTreeMap<String, Vec<f32>> = g
            .grads
            .iter()
            .map(|(n, t)| (n.clone(), host(t.clone())))
            .collect();
        for other in others.iter_mut() {
            let (loss, first) = (other.eval)(&weights, batch, k)?;
            let (_, second) = (other.eval)(&weights, batch, k)?;
            let row = compare(k, (g.loss, &reference), (loss, &first), &second);
            progress(&other.name, &row);
            rows.push((other.name.clone(), row));
        }
        (model, _) = apply_step(cfg, model, g, k as u64, (&mut optim, &mut ema), &shapes)?;
    }
    Ok(rows)
}

/// Step `k`'s row: the other backend's first evaluation against the
/// reference, and its second against its first.
fn compare(
    k: usize,
    (ref_loss, reference): (f64, &BTreeMap<String, Vec<f32>>),
    (loss, first): (f64, &BTreeMap<String, Vec<f32>>),
    second: &BTreeMap<String, Vec<f32>>,
) -> LockRow {
    let (mut whole, mut repeat) = (Rel::new(), Rel::new());
    let mut worst = (String::new(), -1.0);
    for (name, r) in reference {
        let o = first.get(name).map(Vec::as_slice).unwrap_or(&[]);
        whole.add(r, o);
        let mut one = Rel::new();
        one.add(r, o);
        let v = one.value();
        if !(v <= worst.1) && !worst.1.is_nan() {
            worst = (name.clone(), v);
        }
        repeat.add(o, second.get(name).map(Vec::as_slice).unwrap_or(&[]));
    }
    LockRow {
        step: k,
        loss: (ref_loss, loss),
        norm: (norm(reference), norm(first)),
        grad_rel: whole.value(),
        worst,
        repeat_rel: repeat.value(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::step::tests::setup;
    use crate::step::train_step;

    type AB = burn::backend::Autodiff<burn::backend::Flex>;

    #[test]
    fn a_backend_in_lockstep_with_itself_agrees_and_trains_like_train_step() {
        let (cfg, model, shapes, batch) = setup();
        let init = to_host(&model);
        let device = Default::default();
        let batches = vec![batch.clone(), batch.clone(), batch];
        let mut others = vec![
            Evaluator::new::<AB>("a", &cfg, Default::default()).unwrap(),
            Evaluator::new::<AB>("b", &cfg, Default::default()).unwrap(),
        ];
        let rows = lockstep::<AB>(&cfg, &init, &batches, &device, &mut others, &mut |_, _| {})
            .unwrap();
        assert_eq!(rows.len(), 6);
        let names: Vec<&str> = rows.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b", "a", "b", "a", "b"]);
        let rows: Vec<LockRow> = rows.into_iter().step_by(2).map(|(_, r)| r).collect();
        // The reference's losses and norms are train_step's, step by step.
        let (mut optim, mut ema) = (AdamW::default(), Ema::new(BTreeMap::new()));
        let mut m = model;
        for (k, row) in rows.iter().enumerate() {
            let b = to_device::<AB>(&batches[k], &cfg.model, &device);
            let (next, out) = train_step(
                &cfg,
                m,
                &b,
                k as u64,
                (&mut optim, &mut ema),
                &shapes,
                &SingleProcess,
            )
            .unwrap();
            m = next;
            assert!((row.loss.0 - out.loss).abs() < 1e-6, "{row:?} vs {out:?}");
            assert!((row.norm.0 - out.grad_norm).abs() < 1e-5 * out.grad_norm, "{row:?}");
            // The same backend from the same weights: the same numbers.
            assert_eq!(row.loss.0, row.loss.1, "{row:?}");
            assert!(row.grad_rel < 1e-6 && row.repeat_rel < 1e-6, "{row:?}");
            assert!(row.norm.0 > 0.0);
        }
        // Later steps' gradients differ from the first's: the reference trained.
        assert_ne!(rows[0].norm.0, rows[2].norm.0);
    }

    #[test]
    fn a_non_finite_gradient_is_the_worst_and_stays_so() {
        let g = |a: f32, b: f32| -> BTreeMap<String, Vec<f32>> {
            [("a".to_string(), vec![a]), ("b".to_string(), vec![b])].into()
        };
        let reference = g(1.0, 1.0);
        let row = compare(3, (0.5, &reference), (0.5, &g(f32::NAN, 1.5)), &g(f32::NAN, 1.5));
        assert_eq!(row.step, 3);
        assert!(row.grad_rel.is_nan() && row.repeat_rel.is_nan());
        assert_eq!(row.worst.0, "a");
        assert!(row.worst.1.is_nan());
        let row = compare(0, (0.5, &reference), (0.5, &g(1.0, 1.5)), &g(1.0, 1.5));
        assert_eq!(row.worst.0, "b");
        assert!((row.worst.1 - 0.5).abs() < 1e-12 && row.repeat_rel == 0.0);
    }

    #[test]
    fn rel_flags_mismatches_and_non_finite_values() {
        let mut r = Rel::new();
        r.add(&[3.0, 4.0], &[3.0, 4.5]);
        assert!((r.value() - 0.1).abs() < 1e-12);
        r.add(&[1.0], &[f32::NAN]);
        assert!(r.value().is_nan());
        let mut r = Rel::new();
        r.add(&[1.0, 2.0], &[1.0]);
        assert!(r.value().is_nan());
    }
}
