//! `orrery data ...` (synth, import, inspect) and `orrery bench data`.
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use orrery_data::synth::{render_clips, SynthConfig};

#[derive(Subcommand)]
pub enum DataCommand {
    /// Render the embedded toy world (agent, actions, bouncing ball) to Parquet.
    Synth(SynthArgs),
    /// Convert a folder of per-clip latent files (NAME.npy with optional
    /// NAME.actions.npy, or NAME.safetensors with latents / action_ids /
    /// actions / label tensors) into schema-v1 Parquet shards.
    Import(ImportArgs),
    /// Show a dataset's files, schema and shapes, reading and checking every row.
    Inspect {
        /// Directory, file or URL.
        url: String,
        /// Go on past problems: list every unreadable file and bad row, by
        /// file and row, and exit with code 2 if there was any.
        #[arg(long)]
        validate: bool,
    },
    /// Index a dataset from its files' footers alone (ranged reads, no
    /// data): files, row groups and rows. With --cache, reuse and update a
    /// JSON index (files whose size and version tag are unchanged are not
    /// read again).
    Index {
        /// Directory, file or URL.
        url: String,
        /// JSON file to reuse and update (e.g. next to the data, or in a run directory).
        #[arg(long)]
        cache: Option<PathBuf>,
    },
}

/// The arguments of `orrery data import`.
#[derive(Args)]
pub struct ImportArgs {
    /// Folder of clip files.
    #[arg(long)]
    pub from: PathBuf,
    /// Output directory or URL.
    #[arg(long)]
    pub out: String,
    /// Target shard size in MiB of (f32) latents.
    #[arg(long, default_value_t = 256.0)]
    pub shard_mb: f64,
    /// Latent scale for the metadata (orrery trains on (x - shift) * scale).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Latent shift for the metadata.
    #[arg(long, default_value_t = 0.0)]
    pub shift: f64,
    /// Replace a dataset already at --out: delete its .parquet files first.
    #[arg(long)]
    pub overwrite: bool,
}

/// The arguments of `orrery data synth`.
#[derive(Args)]
pub struct SynthArgs {
    /// Output directory or URL.
    #[arg(long)]
    pub out: String,
    /// Number of clips.
    #[arg(long, default_value_t = 512)]
    pub clips: usize,
    /// Frames per clip.
    #[arg(long, default_value_t = 16)]
    pub frames: usize,
    /// Frame height and width in pixels.
    #[arg(long, num_args = 2, value_names = ["H", "W"], default_values_t = [32, 32])]
    pub size: Vec<usize>,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Clips per Parquet file.
    #[arg(long, default_value_t = 128)]
    pub clips_per_file: usize,
    /// Write continuous (dx, dy) actions (`actions`, A = 2) instead of action ids.
    #[arg(long)]
    pub continuous_actions: bool,
    /// Replace a dataset already at --out: delete its .parquet files first.
    #[arg(long)]
    pub overwrite: bool,
}

/// A dataset is written into a location of its own: files already there
/// would mix with the new ones (two seeds' clips, or duplicate clip ids).
/// Returns the files that `--overwrite` replaces; they are deleted only
/// after the new dataset is written ([`remove_replaced`]), so a failed
/// write loses nothing.
fn existing_dataset(out: &str, overwrite: bool) -> Result<Vec<String>> {
    if !out.contains("://") {
        if let Ok(m) = std::fs::metadata(out) {
            if !m.is_dir() {
                bail!("--out {out} exists and is not a folder: name a new folder");
            }
        }
    }
    let names = orrery_data::store::parquet_names(out)?;
    if names.is_empty() {
        return Ok(names);
    }
    if !overwrite {
        bail!(
            "--out {out} already holds {} .parquet file(s); new files would mix with them into one dataset: choose a new --out, or add --overwrite to replace them",
            names.len()
        );
    }
    if let Some(nested) = names.iter().find(|n| n.contains('/')) {
        bail!(
            "--out {out} holds .parquet files in subfolders too ({out}/{nested}), perhaps other datasets: --overwrite replaces only a dataset in a folder of its own; choose another --out"
        );
    }
    Ok(names)
}

/// After a dataset was written to `out`: delete the files it replaced that
/// the new files did not overwrite.
fn remove_replaced(out: &str, old: Vec<String>, written: &[String]) -> Result<()> {
    if old.is_empty() {
        return Ok(());
    }
    let new: std::collections::HashSet<&str> = written
        .iter()
        .map(|w| w.rsplit('/').next().unwrap_or(w))
        .collect();
    let stale: Vec<String> = old
        .iter()
        .filter(|n| !new.contains(n.as_str()))
        .cloned()
        .collect();
    orrery_data::store::remove_names(out, &stale)?;
    eprintln!(
        "--overwrite: replaced the {} .parquet file(s) that were under {out}",
        old.len()
    );
    Ok(())
}

pub fn run_data(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Synth(args) => synth(args),
        DataCommand::Import(args) => import(args),
        DataCommand::Inspect {
            url,
            validate: true,
        } => validate(url),
        DataCommand::Index { url, cache } => index(url, cache),
        DataCommand::Inspect {
            url,
            validate: false,
        } => inspect(url),
    }
}

fn synth(args: SynthArgs) -> Result<()> {
    let SynthArgs {
        out,
        clips,
        frames,
        size,
        seed,
        clips_per_file,
        continuous_actions,
        overwrite,
    } = args;
    let cfg = SynthConfig {
        clips,
        frames,
        height: size[0],
        width: size[1],
        seed,
        continuous_actions,
    };
    if let Err(e) = cfg.validate() {
        bail!("orrery data synth: {e}");
    }
    if clips_per_file == 0 {
        bail!("--clips-per-file 0: each file holds at least 1 clip (default 128)");
    }
    let replaced = existing_dataset(&out, overwrite)?;
    let files = orrery_data::store::write_dataset(
        &out,
        &render_clips(&cfg),
        &cfg.metadata(),
        clips_per_file,
    )?;
    remove_replaced(&out, replaced, &files)?;
    println!(
        "wrote {clips} clips of [{frames}, 3, {}, {}] with actions to {} file(s) under {out}",
        size[0],
        size[1],
        files.len()
    );
    Ok(())
}

fn import(args: ImportArgs) -> Result<()> {
    let ImportArgs {
        from,
        out,
        shard_mb,
        scale,
        shift,
        overwrite,
    } = args;
    if !(shard_mb > 0.0 && shard_mb.is_finite()) {
        bail!("--shard-mb {shard_mb} must be positive");
    }
    if !scale.is_finite() || scale == 0.0 {
        bail!("--scale {scale}: the latent scale must be a finite, non-zero number");
    }
    if !shift.is_finite() {
        bail!("--shift {shift}: the latent shift must be a finite number");
    }
    let replaced = existing_dataset(&out, overwrite)?;
    let r = orrery_data::import::import(&orrery_data::import::ImportOptions {
        from,
        out: out.clone(),
        shard_mb,
        scale,
        shift,
    })?;
    remove_replaced(&out, replaced, &r.files)?;
    println!(
        "imported {} clips into {} file(s) under {out}: num_actions {}, action_dim {}, num_classes {}, scale {} shift {}",
        r.clips,
        r.files.len(),
        r.meta.num_actions,
        r.meta.action_dim,
        r.meta.num_classes,
        r.meta.scale,
        r.meta.shift
    );
    Ok(())
}

fn validate(url: String) -> Result<()> {
    let problems = orrery_data::store::validate(&url)?;
    if problems.is_empty() {
        println!("{url}: no problems (every row of every file decoded and checked)");
        return Ok(());
    }
    let files: std::collections::BTreeSet<&str> =
        problems.iter().map(|(f, _)| f.as_str()).collect();
    for (_, problem) in &problems {
        println!("{problem}");
    }
    bail!(
        "{} problem(s) in {} file(s) under {url} (listed above)",
        problems.len(),
        files.len()
    )
}

fn index(url: String, cache: Option<PathBuf>) -> Result<()> {
    if let Some(c) = &cache {
        orrery_train::paths::output_file(c, "--cache")?;
    }
    let (index, stats) = orrery_data::index::load_or_build(&url, cache.as_deref())?;
    println!(
        "{url}: {} file(s), {} row groups, {} rows, {:.1} MB",
        index.files.len(),
        index.row_groups(),
        index.rows(),
        index.bytes() as f64 / 1e6
    );
    let loc = orrery_data::store::parse(&url)?;
    for f in &index.files {
        println!(
            "  {}  {} bytes  row groups {:?}",
            loc.shown(&f.path.as_str().into()),
            f.size,
            f.row_groups
        );
    }
    println!(
        "footers read: {} file(s), {} bytes fetched ({:.3}% of the data); reused from the cache: {}",
        stats.read,
        stats.bytes_fetched,
        100.0 * stats.bytes_fetched as f64 / index.bytes().max(1) as f64,
        stats.reused
    );
    Ok(())
}

fn inspect(url: String) -> Result<()> {
    let files = orrery_data::store::inspect(&url)?;
    let total: usize = files.iter().map(|f| f.clips).sum();
    println!(
        "{url}: {} file(s), {total} clips, schema v{}",
        files.len(),
        orrery_data::schema::SCHEMA_VERSION
    );
    for f in &files {
        println!(
            "  {}  {} bytes  {} clips  shapes {:?}  actions: {}  labels: {}  scale {} shift {}",
            f.path,
            f.bytes,
            f.clips,
            f.shapes,
            if f.actions {
                format!("{} ids", f.meta.num_actions)
            } else if f.action_values {
                format!("vectors of {}", f.meta.action_dim)
            } else {
                "none".into()
            },
            if f.labels {
                format!("{} classes", f.meta.num_classes)
            } else {
                "none".into()
            },
            f.meta.scale,
            f.meta.shift
        );
    }
    println!("validation: every row decoded; latents finite, shapes match byte counts, action ids in range");
    Ok(())
}

pub fn run_bench_data(url: &str, repeat: usize) -> Result<()> {
    if repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    let mut runs: Vec<orrery_data::store::ReadBench> = (0..repeat)
        .map(|_| orrery_data::store::bench_read(url))
        .collect::<std::result::Result<_, _>>()?;
    runs.sort_by(|a, b| a.total_s.total_cmp(&b.total_s));
    let r = &runs[runs.len() / 2];
    let total = r.total_s;
    let mb = r.bytes as f64 / 1e6;
    let latent_mb = r.values as f64 * 4.0 / 1e6;
    println!("| {url} | median of {repeat} |");
    println!("|---|---|");
    println!("| files / clips | {} / {} |", r.files, r.clips);
    println!("| file bytes (MB) / decoded f32 latents (MB) | {mb:.1} / {latent_mb:.1} |");
    println!(
        "| list + fetch + decode + check, overlapped (s) | {total:.3} ({:.1} MB/s of files, {:.1} MB/s of latents) |",
        mb / total,
        latent_mb / total
    );
    println!("| clips/s | {:.0} |", r.clips as f64 / total);
    Ok(())
}

/// `bench data --stream`: one epoch of the streaming loader (one rank),
/// `repeat` times; the median epoch is reported.
pub fn run_bench_stream(
    url: &str,
    repeat: usize,
    batch: usize,
    frames: usize,
    buffer: usize,
    prefetch: usize,
) -> Result<()> {
    use orrery_data::stream::{StreamConfig, StreamLoader};
    if repeat == 0 || batch == 0 {
        bail!("--repeat and --batch must be at least 1");
    }
    let mut runs = Vec::new();
    for _ in 0..repeat {
        let t0 = std::time::Instant::now();
        let (index, _, footers) =
            orrery_data::index::load_or_build_keeping_footers(url, None, 4096)?;
        let index_s = t0.elapsed().as_secs_f64();
        let cfg = StreamConfig {
            buffer,
            prefetch,
            ..StreamConfig::default()
        };
        let mut loader = StreamLoader::new(
            url,
            index,
            cfg,
            (0, batch, frames),
            (0, 1),
            Default::default(),
        )?
        .with_footers(footers);
        let (mut clips, mut values, mut most) = (0usize, 0usize, 0usize);
        for _ in 0..loader.batches_per_epoch() {
            let b = loader.next_batch()?;
            clips += b.dims[0];
            values += b.latents.len();
            most = most.max(loader.stats().resident_rows);
        }
        let total = t0.elapsed().as_secs_f64();
        runs.push((
            total,
            index_s,
            clips,
            values,
            loader.stats().bytes,
            most,
            (loader.stats().blocks_read, loader.stats().requests),
        ));
    }
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (total, index_s, clips, values, bytes, most, (blocks, requests)) = runs[runs.len() / 2];
    println!("| {url}, streaming: batch {batch}, {frames} frames, buffer {buffer}, prefetch {prefetch} | median of {repeat} |");
    println!("|---|---|");
    println!(
        "| row groups read / requests for them / clips taken | {blocks} / {requests} / {clips} |"
    );
    println!("| index (list + footers) (s) | {index_s:.3} |");
    println!(
        "| index + one epoch (s) | {total:.3} ({:.1} MB/s fetched, {:.1} MB/s of cropped latents) |",
        bytes as f64 / 1e6 / total,
        values as f64 * 4.0 / 1e6 / total
    );
    println!("| clips/s | {:.0} |", clips as f64 / total);
    println!("| most rows held in memory | {most} |");
    Ok(())
}
