//! `orrery bench parity --lockstep N`: the reference backend trains N steps,
//! and at every step the other backend computes that step's gradients from
//! the reference's own weights, twice. A backend whose kernels are wrong only
//! now and then (a race, one shape, one buffer reused too early) shows as
//! the steps where its gradient parts from the reference's; one that is
//! merely less precise (TF32 matmuls) shows a small, steady difference. The
//! second evaluation shows whether the backend repeats itself. Each step
//! the other backend also applies the reference's gradients with its own
//! clipping, AdamW and EMA state, and its update is compared with the
//! reference's: a wrong optimizer kernel shows there. Unlike
//! [`crate::parity::trace`], the two runs cannot drift apart: each step
//! starts both from the same weights.
use std::collections::BTreeMap;

use orrery_data::Batch;
use orrery_dist::SingleProcess;
use orrery_model::named::{load_host, to_host, NamedTensors};
use orrery_model::Dit;
use orrery_model::TrainBackend;

use crate::config::TrainConfig;
use crate::glue::{param_shapes, to_device};
use crate::optim::{flat, host, AdamW, Ema};
#[cfg(any(feature = "cuda", feature = "wgpu"))]
use crate::parity::Cpu;
use crate::parity::{rel_l2, Rel};
use crate::step::{apply_step, step_grads, StepGrads};
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
    /// The other backend's update of the weights (clip, AdamW on its own
    /// state, fed the reference's gradients) against the reference's:
    /// ||dw_other - dw_ref|| / ||dw_ref||.
    pub update_rel: f64,
}

/// A step's loss and each parameter's gradient, on the host.
type HostGrads = (f64, BTreeMap<String, Vec<f32>>);

/// What [`lockstep`] asks of another backend.
trait Side {
    /// Step `k`'s loss and gradients from `weights`.
    fn grads(&mut self, weights: &NamedTensors, batch: &Batch, k: usize) -> Result<HostGrads>;
    /// The weights after step `k` applies `grads` to `weights` with this
    /// side's own optimizer state.
    fn update(
        &mut self,
        weights: &NamedTensors,
        grads: &HostGrads,
        k: usize,
    ) -> Result<NamedTensors>;
}

/// Backend `G`'s model and optimizer state.
struct On<'a, G: TrainBackend> {
    cfg: &'a TrainConfig,
    device: G::Device,
    model: Option<Dit<G>>,
    shapes: BTreeMap<String, Vec<usize>>,
    optim: AdamW<G::InnerBackend>,
    ema: Ema<G::InnerBackend>,
}

impl<G: TrainBackend> On<'_, G> {
    fn load(&mut self, weights: &NamedTensors) -> Result<Dit<G>> {
        Ok(load_host(
            self.model.take().expect("model"),
            weights,
            &self.device,
        )?)
    }
}

impl<G: TrainBackend> Side for On<'_, G> {
    fn grads(&mut self, weights: &NamedTensors, batch: &Batch, k: usize) -> Result<HostGrads> {
        let m = self.load(weights)?;
        let on = to_device::<G>(batch, &self.cfg.model, &self.device);
        let out = step_grads(self.cfg, &m, &on, k as u64, &SingleProcess);
        self.model = Some(m);
        let g = out?;
        let grads = g.grads.into_iter().map(|(n, t)| (n, host(t))).collect();
        Ok((g.loss, grads))
    }

    fn update(
        &mut self,
        weights: &NamedTensors,
        (loss, grads): &HostGrads,
        k: usize,
    ) -> Result<NamedTensors> {
        let m = self.load(weights)?;
        let g = StepGrads {
            loss: *loss,
            grads: grads
                .iter()
                .map(|(n, v)| (n.clone(), flat(v.clone(), &self.device)))
                .collect(),
            comm_s: 0.0,
            comm_bytes: 0,
        };
        let state = (&mut self.optim, &mut self.ema);
        let (next, _) = apply_step(self.cfg, m, g, k as u64, state, &self.shapes)?;
        let out = to_host(&next);
        self.model = Some(next);
        Ok(out)
    }
}

/// Another backend in [`lockstep`]: computes a step's gradients from the
/// weights it is given, and applies given gradients with its own optimizer.
pub struct Evaluator<'a> {
    /// The backend's name, for the report.
    pub name: String,
    side: Box<dyn Side + 'a>,
}

impl<'a> Evaluator<'a> {
    /// Backend `G` on `device`, for the model of `cfg`.
    pub fn new<G: TrainBackend>(
        name: &str,
        cfg: &'a TrainConfig,
        device: G::Device,
    ) -> Result<Self> {
        let model: Dit<G> = cfg.model.init(&device)?;
        let side = On::<G> {
            cfg,
            shapes: param_shapes(&model),
            model: Some(model),
            device,
            optim: AdamW::default(),
            ema: Ema::new(BTreeMap::new()),
        };
        Ok(Self {
            name: name.into(),
            side: Box::new(side),
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
pub fn lockstep<R: TrainBackend>(
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
        let reference: HostGrads = (
            g.loss,
            g.grads
                .iter()
                .map(|(n, t)| (n.clone(), host(t.clone())))
                .collect(),
        );
        let mut step_rows = Vec::new();
        for other in others.iter_mut() {
            let (loss, first) = other.side.grads(&weights, batch, k)?;
            let (_, second) = other.side.grads(&weights, batch, k)?;
            step_rows.push(compare(
                k,
                (reference.0, &reference.1),
                (loss, &first),
                &second,
            ));
        }
        (model, _) = apply_step(cfg, model, g, k as u64, (&mut optim, &mut ema), &shapes)?;
        let updated = to_host(&model);
        for (other, mut row) in others.iter_mut().zip(step_rows) {
            let theirs = other.side.update(&weights, &reference, k)?;
            row.update_rel = update_rel(&weights, &updated, &theirs);
            progress(&other.name, &row);
            rows.push((other.name.clone(), row));
        }
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
        let v = rel_l2(r, o);
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
        update_rel: f64::NAN,
    }
}

/// ||(theirs - before) - (reference - before)|| / ||reference - before||
/// over every weight.
fn update_rel(before: &NamedTensors, reference: &NamedTensors, theirs: &NamedTensors) -> f64 {
    let mut rel = Rel::new();
    for (name, b) in before {
        let delta = |w: Option<&orrery_model::named::HostTensor>| -> Vec<f32> {
            match w {
                Some(w) if w.data.len() == b.data.len() => {
                    w.data.iter().zip(&b.data).map(|(x, y)| x - y).collect()
                }
                _ => Vec::new(),
            }
        };
        rel.add(&delta(reference.get(name)), &delta(theirs.get(name)));
    }
    rel.value()
}

/// [`lockstep`] of each GPU backend of this binary (CUDA
/// without kernel fusion, then with) against the CPU, `steps` steps; the
/// CPU computes each step once for both. `progress` sees the backend's name
/// and each row.
#[cfg(feature = "cuda")]
pub fn gpu_lockstep(
    cfg: &TrainConfig,
    steps: usize,
    progress: &mut dyn FnMut(&str, &LockRow),
) -> Result<()> {
    use burn::backend::Autodiff;
    let gpu = crate::cuda_device("bench parity")?;
    let (init, batches) = crate::parity::inputs(cfg, steps)?;
    let mut others = [
        Evaluator::new::<Autodiff<crate::CudaPlain>>("cuda (no fusion)", cfg, gpu.clone())?,
        Evaluator::new::<Autodiff<crate::CudaFused>>("cuda (fusion)", cfg, gpu)?,
    ];
    let cpu = Default::default();
    lockstep::<Cpu>(cfg, &init, &batches, &cpu, &mut others, progress)?;
    Ok(())
}

/// [`lockstep`] of burn's WebGPU backend (fused) against the CPU.
#[cfg(feature = "wgpu")]
pub fn wgpu_lockstep(
    cfg: &TrainConfig,
    steps: usize,
    progress: &mut dyn FnMut(&str, &LockRow),
) -> Result<()> {
    type Fused = burn::backend::Autodiff<burn::backend::Wgpu<f32, i32>>;
    crate::parity::no_bf16_on_wgpu(cfg)?;
    crate::kernels::install(None);
    let (init, batches) = crate::parity::inputs(cfg, steps)?;
    let mut others = [Evaluator::new::<Fused>(
        "wgpu (fusion)",
        cfg,
        Default::default(),
    )?];
    let cpu = Default::default();
    lockstep::<Cpu>(cfg, &init, &batches, &cpu, &mut others, progress)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::step::train_step;
    use orrery_parallel::fixtures::setup;

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
        let rows =
            lockstep::<AB>(&cfg, &init, &batches, &device, &mut others, &mut |_, _| {}).unwrap();
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
            assert!(
                (row.norm.0 - out.grad_norm).abs() < 1e-5 * out.grad_norm,
                "{row:?}"
            );
            // The same backend from the same weights: the same numbers.
            assert_eq!(row.loss.0, row.loss.1, "{row:?}");
            assert!(row.grad_rel < 1e-6 && row.repeat_rel < 1e-6, "{row:?}");
            assert!(row.update_rel < 1e-6, "{row:?}");
            assert!(row.norm.0 > 0.0);
        }
        // Later steps' gradients differ from the first's: the reference trained.
        assert_ne!(rows[0].norm.0, rows[2].norm.0);
    }

    #[test]
    fn an_optimizer_that_steps_twice_as_far_shows_in_the_update_only() {
        let (cfg, model, _, batch) = setup();
        let init = to_host(&model);
        let mut doubled = cfg.clone();
        doubled.optim.lr *= 2.0;
        let device = Default::default();
        let mut others =
            vec![Evaluator::new::<AB>("lr x 2", &doubled, Default::default()).unwrap()];
        let batches = vec![batch.clone(), batch];
        let rows =
            lockstep::<AB>(&cfg, &init, &batches, &device, &mut others, &mut |_, _| {}).unwrap();
        for (_, row) in &rows {
            // The gradients do not depend on the learning rate; AdamW's
            // update is proportional to it (no weight decay here).
            assert!(row.grad_rel < 1e-6, "{row:?}");
            assert!((row.update_rel - 1.0).abs() < 1e-3, "{row:?}");
        }
    }

    #[test]
    fn a_non_finite_gradient_is_the_worst_and_stays_so() {
        let g = |a: f32, b: f32| -> BTreeMap<String, Vec<f32>> {
            [("a".to_string(), vec![a]), ("b".to_string(), vec![b])].into()
        };
        let reference = g(1.0, 1.0);
        let row = compare(
            3,
            (0.5, &reference),
            (0.5, &g(f32::NAN, 1.5)),
            &g(f32::NAN, 1.5),
        );
        assert_eq!(row.step, 3);
        assert!(row.grad_rel.is_nan() && row.repeat_rel.is_nan());
        assert_eq!(row.worst.0, "a");
        assert!(row.worst.1.is_nan());
        let row = compare(0, (0.5, &reference), (0.5, &g(1.0, 1.5)), &g(1.0, 1.5));
        assert_eq!(row.worst.0, "b");
        assert!((row.worst.1 - 0.5).abs() < 1e-12 && row.repeat_rel == 0.0);
    }

    #[test]
    fn update_rel_compares_the_changes_not_the_weights() {
        let t = |v: Vec<f32>| orrery_model::named::HostTensor {
            shape: vec![v.len()],
            data: v,
        };
        let one = |v: Vec<f32>| -> NamedTensors { [("a".to_string(), t(v))].into() };
        let before = one(vec![100.0, 100.0]);
        let reference = one(vec![101.0, 100.0]);
        assert_eq!(update_rel(&before, &reference, &reference), 0.0);
        let r = update_rel(&before, &reference, &one(vec![101.0, 100.5]));
        assert!((r - 0.5).abs() < 1e-12, "{r}");
        assert!(update_rel(&before, &reference, &one(vec![101.0])).is_nan());
        assert!(update_rel(&before, &reference, &one(vec![f32::NAN, 100.0])).is_nan());
    }
}
