//! One autoencoder step on one rank: its share of the global batch through
//! encoder, posterior draw and decoder; reconstruction, KL and (after
//! `train.disc_start`) the adversarial term, weighted adaptively (Esser et
//! al. 2021, eq. 7) from gradients summed over ranks; the discriminator's
//! hinge step; gradients summed over ranks; AdamW for both and the
//! autoencoder's EMA. Letters: b batch (this rank's), t frames, c
//! channels, h/w size, C latent channels, w0 the decoder's last width.
use std::collections::BTreeMap;

use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use orrery_dist::Collective;
use orrery_model::named::{map_named, named_grads, visit_named};
use orrery_parallel::ddp::sum_over_ranks;
use orrery_parallel::optim::{global_norm, AdamW, Ema};
use orrery_parallel::update::{finite_step, update, Decay, ParamGrad, UpdateConfig};
use orrery_vae::layers::CausalConv;
use orrery_vae::{loss, PatchDisc, VideoVae};
use rand_distr::{Distribution, StandardNormal};

use crate::config::VaeTrainConfig;
use crate::{Result, TrainError};

/// Flat gradients (or weights) by name, on the inner backend.
type Flat<B> = BTreeMap<String, Tensor<<B as AutodiffBackend>::InnerBackend, 1>>;

/// The weights and optimizer state of an autoencoder run.
pub struct VaeRun<B: AutodiffBackend> {
    /// The autoencoder.
    pub vae: VideoVae<B>,
    /// The patch discriminator (with `train.disc_weight > 0`).
    pub disc: Option<PatchDisc<B>>,
    /// The autoencoder's AdamW.
    pub optim: AdamW<B::InnerBackend>,
    /// The discriminator's AdamW.
    pub disc_optim: AdamW<B::InnerBackend>,
    /// The EMA of the autoencoder's weights.
    pub ema: Ema<B::InnerBackend>,
    /// Steps taken.
    pub step: u64,
}

/// What one step reports: every value is a mean over the global batch.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct VaeStepOut {
    /// The autoencoder's loss: reconstruction + kl_weight KL + weight x adversarial.
    pub loss: f64,
    /// Reconstruction loss (L1 or L2 per value).
    pub reconstruction: f64,
    /// KL per latent value.
    pub kl: f64,
    /// The generator's adversarial loss (-mean fake logit; 0 before disc_start).
    pub adversarial: f64,
    /// The adversarial term's weight: disc_weight x the adaptive weight.
    pub adversarial_weight: f64,
    /// The discriminator's hinge loss (0 before disc_start).
    pub disc_loss: f64,
    /// The autoencoder's gradient norm before clipping.
    pub grad_norm: f64,
    /// The discriminator's gradient norm.
    pub disc_grad_norm: f64,
    /// Learning rate.
    pub lr: f64,
    /// The loss or gradient norm was not finite: nothing was updated.
    pub skipped: bool,
}

/// Standard normal noise for each sample's latent draw, from the sample's
/// own key (seed, step, global sample index): the same on any number of
/// ranks.
///
/// # Shapes
/// -> [b, t', C, h', w'] for `dims`
pub fn posterior_noise<B: Backend>(
    seed: u64,
    step: u64,
    sample_ids: &[u64],
    dims: [usize; 5],
    device: &B::Device,
) -> Tensor<B, 5> {
    let per: usize = dims[1..].iter().product();
    let mut v = Vec::with_capacity(per * sample_ids.len());
    for &id in sample_ids {
        // A salt keeps these draws apart from the DiT's noise of the same key.
        let mut rng = orrery_diffusion::sample_rng(seed ^ 0x5641_455f_4e4f_4953, step, id);
        v.extend((0..per).map(|_| -> f32 { StandardNormal.sample(&mut rng) }));
    }
    Tensor::from_data(TensorData::new(v, dims), device)
}

/// The gradient at the last layer's weights of a loss whose gradient at
/// the frames is `g`: one small graph over a detached copy of the layer.
///
/// # Shapes
/// features: [b, w0, t, h, w]; g: [b, t, c, h, w]
fn last_layer_grad<B: AutodiffBackend>(
    last: &CausalConv<B>,
    features: Tensor<B::InnerBackend, 5>,
    g: Tensor<B::InnerBackend, 5>,
) -> Flat<B> {
    let probe = map_named(last.clone(), |_, _, t| t.detach());
    let out = probe.forward(Tensor::from_inner(features)); // [b, c, t, h, w]
    let grads = (out * Tensor::from_inner(g.swap_dims(1, 2)))
        .sum()
        .backward();
    let mut grads = GradientsParams::from_grads(grads, &probe);
    named_grads(&probe, &mut grads)
}

/// The gradient of `f(frames)` at `frames`, from a graph of its own.
fn grad_at<B: AutodiffBackend>(
    frames: &Tensor<B, 5>,
    f: impl FnOnce(Tensor<B, 5>) -> Tensor<B, 1>,
) -> (f64, Tensor<B::InnerBackend, 5>) {
    let leaf = frames.clone().detach().require_grad();
    let value = f(leaf.clone());
    let v: f32 = value.clone().into_scalar().elem();
    let grads = value.backward();
    let g = leaf.grad(&grads).expect("the loss depends on the frames");
    (v as f64, g)
}

/// Every parameter of `module` with its summed gradient, for [`update`];
/// matrices and kernels (2 or more dimensions) take weight decay.
fn params<B: AutodiffBackend, M: burn::module::AutodiffModule<B>>(
    module: &M,
    mut grads: Flat<B>,
) -> Result<Vec<ParamGrad<B::InnerBackend>>> {
    let mut out = Vec::new();
    visit_named(module, |name, _, shape, flat| {
        out.push((name.to_string(), flat.inner(), shape.len() >= 2));
    });
    out.into_iter()
        .map(|(name, value, decays)| {
            let grad = grads
                .remove(&name)
                .ok_or_else(|| TrainError::Internal(format!("parameter {name} got no gradient")))?;
            Ok(ParamGrad {
                name,
                value,
                grad,
                decay: if decays { Decay::Yes } else { Decay::No },
            })
        })
        .collect()
}

impl<B: AutodiffBackend> VaeRun<B> {
    /// Step `self.step` on this rank's share `x` of the global batch
    /// (`sample_ids` its global indices); every rank calls it together.
    ///
    /// # Shapes
    /// x: [b, t, c, h, w]
    pub fn step(
        &mut self,
        cfg: &VaeTrainConfig,
        x: Tensor<B, 5>,
        sample_ids: &[u64],
        comm: &dyn Collective,
    ) -> Result<VaeStepOut> {
        let t = &cfg.train;
        let bucket = cfg.parallel.bucket_elems();
        // Each rank's means count b / global of the global mean: summed over
        // ranks, the parts' gradients are the whole batch's.
        let part = sample_ids.len() as f64 / cfg.data.global_batch as f64;
        let adversarial_on = self.disc.is_some() && self.step >= t.disc_start;
        let q = self.vae.encoder.forward(x.clone());
        let noise = posterior_noise::<B>(
            cfg.run.seed,
            self.step,
            sample_ids,
            q.mean.dims(),
            &x.device(),
        );
        let (features, frames) = self.vae.decoder.forward_parts(q.sample_with(noise));
        let kind = t.reconstruction;
        let (rec, g_rec) = grad_at(&frames, |f| {
            loss::reconstruction(kind, f, x.clone().detach()) * part
        });
        let mut g = g_rec.clone();
        let (mut adversarial, mut weight) = (0.0, 0.0);
        if let (true, Some(disc)) = (adversarial_on, &self.disc) {
            let (adv, g_adv) = grad_at(&frames, |f| loss::generator(disc.forward(f)) * part);
            // The adaptive weight from the whole batch's gradients at the
            // last layer (summed over ranks; the ratio of norms does not
            // mind the scale).
            let last = self.vae.decoder.last_layer();
            let feats = features.clone().inner();
            let mut at_rec = last_layer_grad::<B>(last, feats.clone(), g_rec);
            let mut at_adv = last_layer_grad::<B>(last, feats, g_adv.clone());
            sum_over_ranks(comm, &mut at_rec, &mut [], bucket)?;
            sum_over_ranks(comm, &mut at_adv, &mut [], bucket)?;
            weight =
                t.disc_weight * loss::adaptive_weight(global_norm(&at_rec), global_norm(&at_adv));
            adversarial = adv;
            g = g + g_adv * weight;
        }
        // One backward through the autoencoder: the frames' gradient (the
        // sum of the terms') and the KL.
        let kl = q.kl();
        let kl_value: f32 = kl.clone().into_scalar().elem();
        let surrogate = (frames.clone() * Tensor::from_inner(g)).sum() + kl * (t.kl_weight * part);
        let mut gp = GradientsParams::from_grads(surrogate.backward(), &self.vae);
        let mut grads = named_grads(&self.vae, &mut gp);
        let mut scalars = [
            rec as f32,
            (kl_value as f64 * part) as f32,
            adversarial as f32,
            0.0,
        ];
        let mut disc_grads = BTreeMap::new();
        if let (true, Some(disc)) = (adversarial_on, &self.disc) {
            let fake = Tensor::from_inner(frames.inner());
            let real = Tensor::from_inner(x.inner());
            let d = loss::hinge_discriminator(disc.forward(real), disc.forward(fake)) * part;
            scalars[3] = d.clone().into_scalar().elem::<f32>();
            let mut gd = GradientsParams::from_grads(d.backward(), disc);
            disc_grads = named_grads(disc, &mut gd);
        }
        sum_over_ranks(comm, &mut grads, &mut scalars, bucket)?;
        let [rec, kl, adversarial, disc_loss] = scalars.map(|v| v as f64);
        let loss = rec + t.kl_weight * kl + weight * adversarial;
        let norm = global_norm(&grads);
        let settings = UpdateConfig {
            optim: &cfg.optim,
            steps: cfg.run.steps,
            ema_decay: cfg.ema.decay,
        };
        let (mut next, lr) = update(
            settings,
            self.step,
            (loss, norm),
            (&mut self.optim, Some(&mut self.ema)),
            params(&self.vae, grads)?,
        )?;
        self.vae = map_named(self.vae.clone(), |name, _, _| {
            Tensor::from_inner(next.remove(name).expect("every parameter was updated"))
        });
        let mut disc_norm = 0.0;
        let training_disc = if adversarial_on {
            self.disc.take()
        } else {
            None
        };
        if let Some(disc) = training_disc {
            sum_over_ranks(comm, &mut disc_grads, &mut [], bucket)?;
            disc_norm = global_norm(&disc_grads);
            // Only while the autoencoder's step is finite too: a skipped
            // step changes nothing.
            let finite = if finite_step(loss, norm) {
                disc_loss
            } else {
                f64::NAN
            };
            let (mut next, _) = update(
                settings,
                self.step,
                (finite, disc_norm),
                (&mut self.disc_optim, None),
                params(&disc, disc_grads)?,
            )?;
            self.disc = Some(map_named(disc, |name, _, _| {
                Tensor::from_inner(next.remove(name).expect("every parameter was updated"))
            }));
        }
        self.step += 1;
        Ok(VaeStepOut {
            loss,
            reconstruction: rec,
            kl,
            adversarial,
            adversarial_weight: weight,
            disc_loss,
            grad_norm: norm,
            disc_grad_norm: disc_norm,
            lr,
            skipped: !finite_step(loss, norm),
        })
    }
}
