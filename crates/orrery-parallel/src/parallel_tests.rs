//! DDP and FSDP on 1, 2 and 4 ranks (divisors of the batch of 8) run as threads of one process
//! (`ThreadComm`) against one process taking the same steps on the whole
//! global batch: the model, EMA and AdamW moments agree after three steps
//! with clipping and weight decay on. The mpirun end-to-end tests check the
//! same through the binary; these run in seconds.
use std::collections::BTreeMap;
use std::time::Duration;

use burn::backend::Flex;
use burn::module::AutodiffModule;
use orrery_dist::{Collective, ThreadComm};
use orrery_model::named::to_host;

use crate::fixtures::{rank_batch, run_steps, setup_with, AB};
use crate::fsdp::Fsdp;
use crate::fsdp_step::fsdp_step;
use crate::fsdp_step::tests::max_diff;
use crate::glue::to_device;
use crate::optim::{AdamW, Ema};
use crate::step::train_step;

/// Run `f` on each rank of a world of `n` threads; results by rank.
fn on_ranks<T: Send>(n: usize, f: impl Fn(&ThreadComm) -> T + Sync) -> Vec<T> {
    let comms = ThreadComm::world(n, Duration::from_secs(120));
    std::thread::scope(|s| {
        let handles: Vec<_> = comms.iter().map(|c| s.spawn(|| f(c))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

const STEPS: u64 = 3;

#[test]
fn ddp_and_fsdp_on_thread_ranks_take_the_one_process_steps() {
    let (cfg, model, shapes, batch) = setup_with(|cfg| {
        cfg.optim.weight_decay = 0.1;
        cfg.optim.grad_clip = 0.05;
    });
    let device = Default::default();
    let whole_batch = to_device::<AB>(&batch, &cfg.model, &device);
    let (reference, _, optim, ema) =
        run_steps(&cfg, model.clone(), &shapes, &whole_batch, 0..STEPS);
    let want = [
        to_host(&reference.valid()),
        ema.to_host(&shapes),
        optim.to_host(&shapes),
    ];
    // Each rank gets its own copy of the initial model (burn modules are
    // Send, not Sync).
    let host = to_host(&model.valid());
    for n in 1..=4 {
        if 8 % n != 0 {
            continue;
        }
        let ddp = on_ranks(n, |c| {
            let device = Default::default();
            let mut m = orrery_model::named::load_host(
                cfg.model.init::<AB>(&device).unwrap(),
                &host,
                &device,
            )
            .unwrap();
            let b = to_device::<AB>(&rank_batch(c.rank(), n), &cfg.model, &device);
            let (mut optim, mut ema) = (AdamW::default(), Ema::new(BTreeMap::new()));
            for step in 0..STEPS {
                m = train_step(&cfg, m, &b, step, (&mut optim, &mut ema), &shapes, c)
                    .unwrap()
                    .0;
            }
            [
                to_host(&m.valid()),
                ema.to_host(&shapes),
                optim.to_host(&shapes),
            ]
        });
        for (rank, got) in ddp.iter().enumerate() {
            let d: Vec<f32> = want.iter().zip(got).map(|(a, b)| max_diff(a, b)).collect();
            assert!(
                d.iter().all(|&x| x < 2e-6),
                "DDP on {n} ranks, rank {rank}: model, EMA, AdamW differ by {d:?}"
            );
        }
        let fsdp = on_ranks(n, |c| {
            let device = Default::default();
            let whole = orrery_model::named::load_host(
                cfg.model.init::<Flex>(&device).unwrap(),
                &host,
                &device,
            )
            .unwrap();
            let mut fsdp = Fsdp::new(&whole, c.rank(), n, &device).unwrap();
            drop(whole);
            let b = to_device::<AB>(&rank_batch(c.rank(), n), &cfg.model, &device);
            let (mut optim, mut ema) = (AdamW::default(), Ema::new(BTreeMap::new()));
            for step in 0..STEPS {
                fsdp_step(&cfg, &mut fsdp, &b, step, (&mut optim, &mut ema), c).unwrap();
            }
            let gather = |m, prefix| {
                fsdp.gather_named(m, prefix, true, c as &dyn Collective)
                    .unwrap()
            };
            let mut moments = gather(&optim.exp_avg, "exp_avg.");
            moments.extend(gather(&optim.exp_avg_sq, "exp_avg_sq."));
            [gather(&fsdp.params, ""), gather(&ema.weights, ""), moments]
        });
        // Rank 0 gathers whole tensors (as it does to write a checkpoint).
        let d: Vec<f32> = want
            .iter()
            .zip(&fsdp[0])
            .map(|(a, b)| max_diff(a, b))
            .collect();
        assert!(
            d.iter().all(|&x| x < 2e-6),
            "FSDP on {n} ranks: model, EMA, AdamW differ by {d:?}"
        );
    }
}
