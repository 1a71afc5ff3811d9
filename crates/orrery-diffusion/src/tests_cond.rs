//! Conditions: guidance against the null condition, per-condition dropout,
//! labels kept through rollouts.
use burn::tensor::{Int, Tensor};

use crate::sample::{generate, rollout, RolloutConfig, Sampler, SamplerConfig};
use crate::tests::{moments, sampler_cfg, B};
use crate::{
    sample_rng, Actions, Cond, Interpolant, ObjectiveConfig, Parameterization, Prediction, Result,
    TrainBatch,
};

#[test]
fn guidance_extrapolates_from_the_null_condition() {
    let device = Default::default();
    // out = 1 with actions, 0 without: guided output is w.
    let model = |x: Tensor<B, 5>, _t: Tensor<B, 2>, c: Cond<B>| -> Result<Tensor<B, 5>> {
        Ok(if !c.is_null() {
            x.ones_like()
        } else {
            x.zeros_like()
        })
    };
    // With the x_0 target, a one-step DDIM sample is the guided x_0 itself.
    let param = Parameterization {
        interpolant: Interpolant::RectifiedFlow,
        prediction: Prediction::X0,
    };
    for w in [0.0, 1.0, 3.0] {
        let cfg = SamplerConfig {
            guidance: w,
            ..sampler_cfg(Sampler::Ddim { eta: 0.0 }, 1, param)
        };
        let actions = Cond::actions(Actions::Ids(Tensor::<B, 2, Int>::zeros([1, 2], &device)));
        let vectors = Cond::actions(Actions::Values {
            values: Tensor::<B, 3>::zeros([1, 2, 3], &device),
            keep: Tensor::<B, 2>::ones([1, 2], &device),
        });
        let labels = Cond {
            actions: None,
            labels: Some(Tensor::<B, 1, Int>::zeros([1], &device)),
        };
        for cond in [actions, vectors, labels] {
            let x = generate(
                &model,
                [1, 2, 1, 2, 2],
                cond,
                &cfg,
                &mut sample_rng(0, 0, 0),
                &device,
            )
            .unwrap();
            let (mean, var) = moments(x);
            assert!((mean - w).abs() < 1e-5 && var < 1e-9, "w {w}: {mean}");
        }
    }
}

#[test]
fn dropout_nulls_each_condition_by_its_own_draw() {
    use std::cell::RefCell;
    let device = Default::default();
    let b = 64;
    let batch = TrainBatch {
        latents: Tensor::<B, 5>::zeros([b, 2, 1, 2, 2], &device),
        actions: Some(Actions::Values {
            values: Tensor::<B, 3>::ones([b, 2, 3], &device),
            keep: Tensor::<B, 2>::ones([b, 2], &device),
        }),
        null_action: 0,
        labels: Some(Tensor::<B, 1, Int>::zeros([b], &device)),
        null_label: 10,
        sample_ids: (0..b as u64).collect(),
    };
    let cfg = ObjectiveConfig {
        action_dropout: 0.3,
        label_dropout: 0.5,
        ..Default::default()
    };
    let seen = RefCell::new((Vec::new(), Vec::new()));
    let spy = |x: Tensor<B, 5>, _t: Tensor<B, 2>, c: Cond<B>| -> Result<Tensor<B, 5>> {
        let keep = match c.actions {
            Some(Actions::Values { keep, .. }) => keep.into_data().into_vec::<f32>().unwrap(),
            _ => panic!("continuous actions expected"),
        };
        let labels = c
            .labels
            .unwrap()
            .into_data()
            .convert::<i64>()
            .into_vec::<i64>()
            .unwrap();
        *seen.borrow_mut() = (keep, labels);
        Ok(x.zeros_like())
    };
    cfg.loss(&spy, &batch, 3, 4).unwrap();
    let plan = cfg.plan(3, 4, &batch.sample_ids, [b, 2, 1, 2, 2]);
    let (keep, labels) = seen.into_inner();
    for row in 0..b {
        let want_keep = if plan.drop_actions[row] { 0.0 } else { 1.0 };
        assert_eq!(&keep[2 * row..2 * row + 2], &[want_keep, want_keep]);
        assert_eq!(labels[row], if plan.drop_labels[row] { 10 } else { 0 });
    }
    // Two independent draws near their rates, not the same rows.
    let dropped = |v: &[bool]| v.iter().filter(|&&d| d).count();
    assert!(
        (10..=30).contains(&dropped(&plan.drop_actions)),
        "{:?}",
        plan.drop_actions
    );
    assert!(
        (20..=44).contains(&dropped(&plan.drop_labels)),
        "{:?}",
        plan.drop_labels
    );
    assert_ne!(plan.drop_actions, plan.drop_labels);
}

#[test]
fn rollout_keeps_the_labels_on_every_conditional_call() {
    use std::cell::RefCell;
    let device = Default::default();
    let calls = RefCell::new((0usize, 0usize)); // (conditional calls, with labels)
    let model = |x: Tensor<B, 5>, _t: Tensor<B, 2>, c: Cond<B>| -> Result<Tensor<B, 5>> {
        if c.actions.is_some() {
            let mut n = calls.borrow_mut();
            n.0 += 1;
            n.1 += c.labels.is_some() as usize;
        }
        Ok(x.zeros_like())
    };
    let cfg = RolloutConfig {
        window: 2,
        context_noise: 0.0,
        residual: false,
        sampler: SamplerConfig {
            guidance: 2.0,
            ..sampler_cfg(Sampler::Euler, 3, Parameterization::default())
        },
    };
    let cond = Cond {
        actions: Some(Actions::Ids(Tensor::<B, 2, Int>::zeros([2, 4], &device))),
        labels: Some(Tensor::<B, 1, Int>::ones([2], &device)),
    };
    let context = Tensor::<B, 5>::zeros([2, 1, 1, 2, 2], &device);
    rollout(
        &model,
        context.clone(),
        cond,
        &cfg,
        &mut sample_rng(0, 0, 0),
    )
    .unwrap();
    let (conditional, labelled) = *calls.borrow();
    assert_eq!(
        (conditional, labelled),
        (9, 9),
        "3 frames x 3 steps, all with labels"
    );
    let err = rollout(
        &model,
        context,
        Cond::null(),
        &cfg,
        &mut sample_rng(0, 0, 0),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("needs an action per frame"),
        "{err}"
    );
}
