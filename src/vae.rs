//! `orrery vae train` and `orrery encode`: latent diffusion's first stage.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};
use orrery_train::config::VaeTrainConfig;
use orrery_train::vae::encode::{encode, EncodeOptions};
use orrery_train::vae::train_vae;

use crate::{preempted, print_run_dir, run_options, TrainArgs};

#[derive(Subcommand)]
pub enum VaeCommand {
    /// Train a video autoencoder from a TOML config (docs/vae.md).
    Train(TrainArgs),
}

#[derive(Args)]
pub struct EncodeArgs {
    /// The autoencoder: a run directory of `orrery vae train`, its
    /// checkpoints/ or one checkpoint.
    #[arg(long)]
    vae: PathBuf,
    /// Pixel clips: a Parquet dataset (directory or URL), or a folder of
    /// .npy / .safetensors clip files (as `data import` takes).
    #[arg(long)]
    from: String,
    /// Output directory or URL (must hold no Parquet files yet).
    #[arg(long)]
    out: String,
    /// Clips per forward pass.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Folder input: clip files per output Parquet file.
    #[arg(long, default_value_t = 256)]
    clips_per_file: usize,
    /// Encode with the online weights instead of the EMA's.
    #[arg(long)]
    online: bool,
    /// Seconds a rank waits for the others before giving up.
    #[arg(long, default_value_t = 600.0)]
    timeout_s: f64,
}

pub fn run_vae(cmd: VaeCommand) -> Result<()> {
    let VaeCommand::Train(args) = cmd;
    let cfg = VaeTrainConfig::load(&args.config, &args.set)?;
    let run_dir = args
        .run_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(&cfg.run.name));
    let opts = run_options(&args, &run_dir)?;
    let (stop, steps) = (opts.stop.clone(), cfg.run.steps);
    let s = train_vae(cfg, opts)?;
    if let Some(sig) = s.stopped_by {
        let at = (s.rank, s.end_step, steps, s.checkpoint.as_path());
        let command = format!("orrery vae train {}", args.config.display());
        return Err(preempted(sig, &stop, at, &command, &run_dir));
    }
    if s.rank != 0 {
        return Ok(());
    }
    println!(
        "trained steps {}..{} in {:.3} s/step",
        s.start_step, s.end_step, s.seconds_per_step
    );
    for (name, h) in [
        ("EMA weights", &s.heldout_ema),
        ("online weights", &s.heldout),
    ] {
        println!(
            "held-out reconstruction ({name}): PSNR {:.2} dB (a blurred frame: {:.2} dB), SSIM {:.3}, sharpness {:.2} of the real frames' ({} frames)",
            h.psnr_db,
            h.blur_psnr_db,
            h.ssim,
            h.sharpness(),
            h.frames
        );
    }
    print_run_dir(&run_dir, &s.checkpoint);
    Ok(())
}

pub fn run_encode(args: EncodeArgs) -> Result<()> {
    let world = orrery_dist::World::from_env()?;
    let comm = orrery_dist::connect(&world, Duration::from_secs_f64(args.timeout_s), None)?;
    let opts = EncodeOptions {
        vae: args.vae,
        from: args.from,
        out: args.out,
        batch: args.batch,
        clips_per_file: args.clips_per_file,
        online: args.online,
    };
    let r = orrery_dist::abort_on_error(comm.as_ref(), encode(&opts, comm.as_ref()))?;
    if world.is_main() {
        println!(
            "encoded {} clips ({} frames) into {} files under {}: latents {:?} per clip, shift {:.5} scale {:.5}; {:.0} frames/s on rank 0 ({} frames in {:.2} s)",
            r.clips,
            r.frames,
            r.files,
            opts.out,
            r.latent_shape,
            r.shift,
            r.scale,
            r.own_frames as f64 / r.seconds.max(1e-9),
            r.own_frames,
            r.seconds
        );
    }
    Ok(())
}
