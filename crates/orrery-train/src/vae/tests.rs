//! The autoencoder's DDP step on 1 and 2 thread ranks takes the one-process
//! step (the adversarial weight included, from gradients summed over
//! ranks); the posterior noise is keyed by sample, not by rank.
use std::time::Duration;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::tensor::{Tensor, TensorData};
use orrery_dist::{Collective, ThreadComm};
use orrery_model::named::{load_host, to_host, NamedTensors};
use orrery_parallel::optim::{AdamW, Ema};

use super::step::{posterior_noise, VaeRun};
use crate::config::VaeTrainConfig;

type AB = Autodiff<Flex>;

fn config() -> VaeTrainConfig {
    let mut cfg = VaeTrainConfig::default();
    cfg.vae.width = 8;
    cfg.vae.width_cap = 16;
    cfg.vae.groups = 4;
    cfg.train.frames = 2;
    cfg.train.disc_weight = 0.5;
    cfg.train.disc_start = 1;
    cfg.train.disc_width = 8;
    cfg.train.disc_groups = 4;
    cfg.data.global_batch = 4;
    cfg.run.steps = 3;
    cfg.optim.lr = 1e-3;
    cfg.optim.weight_decay = 0.1;
    cfg.optim.grad_clip = 0.5;
    cfg.validate().unwrap();
    cfg
}

/// Frames [4, 2, 3, 16, 16] of smooth patterns.
fn frames() -> Vec<f32> {
    (0..4 * 2 * 3 * 16 * 16)
        .map(|i| ((i % 16) as f32 * 0.3 + (i / 16 % 16) as f32 * 0.2 + (i / 768) as f32).sin())
        .collect()
}

/// Weights, EMA, moments and the discriminator after 3 steps on rows
/// `rows` of the batch, as rank `comm.rank()`.
fn run(
    cfg: &VaeTrainConfig,
    start: &[NamedTensors; 2],
    rows: std::ops::Range<usize>,
    comm: &dyn Collective,
) -> Vec<NamedTensors> {
    let device = Default::default();
    let vae = load_host(cfg.vae.init::<AB>(&device).unwrap(), &start[0], &device).unwrap();
    let disc = load_host(
        cfg.train.disc().init::<AB>(3, &device).unwrap(),
        &start[1],
        &device,
    )
    .unwrap();
    let mut run = VaeRun {
        ema: Ema::new(
            to_host(&vae)
                .into_iter()
                .map(|(n, t)| (n, t.to_flat(&device)))
                .collect(),
        ),
        vae,
        disc: Some(disc),
        optim: AdamW::default(),
        disc_optim: AdamW::default(),
        step: 0,
    };
    let all = frames();
    let per = 2 * 3 * 16 * 16;
    let x = all[rows.start * per..rows.end * per].to_vec();
    let ids: Vec<u64> = rows.clone().map(|r| r as u64).collect();
    let shapes = super::ckpt::shapes(&run.vae);
    for _ in 0..3 {
        let xt = Tensor::<AB, 5>::from_data(
            TensorData::new(x.clone(), [rows.len(), 2, 3, 16, 16]),
            &device,
        );
        let out = run.step(cfg, xt, &ids, comm).unwrap();
        assert!(!out.skipped && out.loss.is_finite());
        if run.step > 1 {
            assert!(
                out.disc_loss > 0.0 && out.adversarial_weight > 0.0,
                "{out:?}"
            );
        }
    }
    let disc = run.disc.as_ref().unwrap();
    vec![
        to_host(&run.vae.valid()),
        run.ema.to_host(&shapes),
        run.optim.to_host(&shapes),
        to_host(&disc.valid()),
    ]
}

fn max_diff(a: &NamedTensors, b: &NamedTensors) -> f32 {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter()
        .flat_map(|(k, t)| t.data.iter().zip(&b[k].data).map(|(x, y)| (x - y).abs()))
        .fold(0.0, f32::max)
}

#[test]
fn ddp_on_two_thread_ranks_takes_the_one_process_steps() {
    let cfg = config();
    let device = Default::default();
    <AB as burn::tensor::backend::Backend>::seed(&device, 5);
    let start = [
        to_host(&cfg.vae.init::<AB>(&device).unwrap()),
        to_host(&cfg.train.disc().init::<AB>(3, &device).unwrap()),
    ];
    let one = run(&cfg, &start, 0..4, &orrery_dist::SingleProcess);
    let comms = ThreadComm::world(2, Duration::from_secs(120));
    let two: Vec<Vec<NamedTensors>> = std::thread::scope(|s| {
        let hs: Vec<_> = comms
            .iter()
            .map(|c| {
                let (cfg, start) = (&cfg, &start);
                s.spawn(move || run(cfg, start, 2 * c.rank()..2 * c.rank() + 2, c))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (rank, got) in two.iter().enumerate() {
        let d: Vec<f32> = one.iter().zip(got).map(|(a, b)| max_diff(a, b)).collect();
        assert!(
            d.iter().all(|&x| x < 1e-5),
            "rank {rank}: autoencoder, EMA, AdamW, discriminator differ by {d:?}"
        );
    }
    // And the steps moved the weights (the comparison is not vacuous).
    assert!(max_diff(&one[0], &start[0]) > 1e-4);
    assert!(max_diff(&one[3], &start[1]) > 1e-4);
}

#[test]
fn posterior_noise_is_keyed_by_sample_not_by_position() {
    let device = Default::default();
    let both = posterior_noise::<Flex>(1, 7, &[10, 11], [2, 1, 4, 2, 2], &device);
    let alone = posterior_noise::<Flex>(1, 7, &[11], [1, 1, 4, 2, 2], &device);
    let both: Vec<f32> = both.into_data().into_vec().unwrap();
    let alone: Vec<f32> = alone.into_data().into_vec().unwrap();
    assert_eq!(&both[16..], &alone[..]);
    assert_ne!(&both[..16], &alone[..]);
}
