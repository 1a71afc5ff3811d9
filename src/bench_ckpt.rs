//! `orrery bench ckpt`: checkpoint save and load throughput, and the
//! step-time stall of synchronous and asynchronous saves side by side.
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use orrery_train::TrainConfig;

/// Print the table of [`orrery_train::bench_ckpt::bench_checkpoint`].
pub fn run_bench_ckpt(
    config: &Path,
    set: &[String],
    run_dir: Option<PathBuf>,
    blocks: usize,
    block: u64,
) -> Result<()> {
    if blocks == 0 || block == 0 {
        bail!("--blocks and --block must be at least 1");
    }
    let cfg = TrainConfig::load(config, set)?;
    let run_dir = run_dir.unwrap_or_else(|| PathBuf::from("runs/bench-ckpt"));
    if run_dir.join("checkpoints").exists() {
        bail!(
            "{} holds checkpoints: name an empty --run-dir (the benchmark writes and replaces its own)",
            run_dir.display()
        );
    }
    let params = cfg.model.num_params();
    let b = orrery_train::bench_ckpt::bench_checkpoint(cfg, &run_dir, blocks, block)?;
    let world = orrery_dist::World::from_env()?;
    if world.rank != 0 {
        return Ok(());
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let gb = b.bytes as f64 / 1e9;
    println!(
        "{params} parameters: {gb:.2} GB of checkpoint tensors (model, EMA, AdamW); {} ranks; {blocks} blocks of {block} steps per mode, taking turns; medians",
        world.size
    );
    println!("| | seconds | GB/s | of a step |");
    println!("|---|---|---|---|");
    println!("| a training step (no checkpoint) | {:.3} | | |", b.step_s);
    let row = |what: &str, s: f64, rate: bool| {
        let rate = if rate {
            format!("{:.2}", gb / s)
        } else {
            String::new()
        };
        println!(
            "| {what} | {s:.3} | {rate} | {:.1}% |",
            100.0 * s / b.step_s
        );
    };
    row(
        "synchronous save: the training thread waits (write, fsync, commit)",
        median(&b.blocked_sync_s),
        true,
    );
    row(
        "synchronous save: stall of the run",
        median(&b.stall_sync_s),
        false,
    );
    row(
        "asynchronous save: the training thread waits (host snapshot)",
        median(&b.blocked_async_s),
        false,
    );
    row(
        "asynchronous save: stall of the run (snapshot + the writer's share of the cores)",
        median(&b.stall_async_s),
        false,
    );
    row(
        "load every tensor, cold (evicted from the page cache)",
        b.load_s.0,
        true,
    );
    row("load every tensor, warm", b.load_s.1, true);
    println!(
        "stall per block: synchronous {:?} s, asynchronous {:?} s",
        b.stall_sync_s
            .iter()
            .map(|s| (s * 1e3).round() / 1e3)
            .collect::<Vec<_>>(),
        b.stall_async_s
            .iter()
            .map(|s| (s * 1e3).round() / 1e3)
            .collect::<Vec<_>>()
    );
    Ok(())
}
