//! Small fixtures for tests, here and in the crates above: a small world
//! model, its batch of 8 synthetic clips (whole or one rank's share), and
//! whole-model steps on it. Not used by training itself.
use std::collections::BTreeMap;

use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use orrery_config::{Schedule, TrainConfig};
use orrery_data::synth::{render_clips, SynthConfig};
use orrery_data::{Batch, Cursor, Loader};
use orrery_diffusion::TrainBatch;
use orrery_model::{Dit, DitConfig};

use crate::glue::param_shapes;
use crate::optim::{AdamW, Ema};
use crate::step::train_step;

/// The CPU autodiff backend of the tests.
pub type AB = Autodiff<Flex>;

/// Whole-model steps on `batch` with fresh AdamW and EMA, step i with
/// step key `keys[i]` (one key throughout: the same noise, so a fixed
/// batch can be fit). Returns the model, each step's (loss, gradient
/// norm), and the AdamW and EMA state.
pub fn run_steps(
    cfg: &TrainConfig,
    mut model: Dit<AB>,
    shapes: &BTreeMap<String, Vec<usize>>,
    batch: &TrainBatch<AB>,
    keys: impl IntoIterator<Item = u64>,
) -> (Dit<AB>, Vec<(f64, f64)>, AdamW<Flex>, Ema<Flex>) {
    let (mut optim, mut ema) = (AdamW::default(), Ema::new(BTreeMap::new()));
    let mut outs = Vec::new();
    for key in keys {
        let (next, out) = train_step(
            cfg,
            model,
            batch,
            key,
            (&mut optim, &mut ema),
            shapes,
            &orrery_dist::SingleProcess,
        )
        .unwrap();
        model = next;
        outs.push((out.loss, out.grad_norm));
    }
    (model, outs, optim, ema)
}

/// A small world model with the default config, and one batch of 8 clips.
pub fn setup() -> (TrainConfig, Dit<AB>, BTreeMap<String, Vec<usize>>, Batch) {
    setup_with(|_| {})
}

/// Held from seeding the backend's RNG (one per process) until the
/// draws it is meant for are done, so parallel tests do not interleave.
pub fn seeded() -> std::sync::MutexGuard<'static, ()> {
    static SEEDED: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SEEDED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Rank `rank` of `n`'s share of the global batch of 8 clips that
/// [`setup_with`] trains on (the whole batch for rank 0 of 1).
pub fn rank_batch(rank: usize, n: usize) -> Batch {
    let clips = render_clips(&SynthConfig {
        clips: 8,
        frames: 4,
        height: 16,
        width: 16,
        seed: 1,
        continuous_actions: false,
    });
    Loader::new(&clips, 0, 8, 4, (rank, n), Cursor::default())
        .unwrap()
        .next_batch()
}

/// A small world model, its config changed by `edit`, and one batch of 8 clips.
pub fn setup_with(
    edit: impl FnOnce(&mut TrainConfig),
) -> (TrainConfig, Dit<AB>, BTreeMap<String, Vec<usize>>, Batch) {
    let mut cfg = TrainConfig::default();
    cfg.model = DitConfig {
        frames: 4,
        height: 16,
        width: 16,
        hidden: 64,
        depth: 2,
        heads: 2,
        ..Default::default()
    };
    cfg.optim.warmup_steps = 0;
    cfg.optim.schedule = Schedule::Constant;
    cfg.optim.lr = 3e-3;
    edit(&mut cfg);
    let batch = rank_batch(0, 1);
    let device = Default::default();
    let seeded = seeded();
    AB::seed(&device, 0);
    let model: Dit<AB> = cfg.model.init(&device).unwrap();
    // Draw every weight now, in module order: a lazy parameter is drawn
    // when first read, and copies made before that draw their own.
    orrery_model::named::visit_named(&model, |_, _, _, _| {});
    drop(seeded);
    let shapes = param_shapes(&model);
    (cfg, model, shapes, batch)
}
