//! Runs left alone: a step whose loss is not finite is skipped and counted,
//! too many in a row stop the run; a signal checkpoints and stops it so that
//! a resume ends where an uninterrupted run ends.
use std::path::Path;

use super::{ok, orrery, tiny_dir};

/// Add one clip to `dir`'s tiny dataset whose values are finite but so
/// large (1e30) that a batch holding it has an infinite loss: the data
/// plane refuses NaN, so this is how a bad batch gets past it. Its id
/// sorts first, so it is never held out.
fn add_overflowing_clip(dir: &Path) {
    use orrery_data::synth::{render_clip, SynthConfig};
    let cfg = SynthConfig {
        clips: 24,
        frames: 6,
        height: 16,
        width: 16,
        ..Default::default()
    };
    let mut clip = render_clip(&cfg, 0);
    clip.id = "0-overflow".into();
    clip.latents.iter_mut().for_each(|v| *v = 1e30 * (*v + 2.0));
    let bytes = orrery_data::schema::write_parquet(&[clip], &cfg.metadata()).unwrap();
    std::fs::write(dir.join("data/0-overflow.parquet"), bytes).unwrap();
}

/// One overflowing clip among 25 training clips: the one step a batch
/// holds it in each epoch is skipped (nothing updated, counted in
/// metrics.jsonl) and the run goes on; with run.max_skipped_steps = 1 the
/// first such step stops the run with an error, keeping the checkpoint
/// before it.
#[test]
fn a_non_finite_step_is_skipped_and_too_many_stop_the_run() {
    let dir = tiny_dir("health");
    add_overflowing_clip(&dir);
    // 24 + 1 clips, 4 held out, batches of 4: the clip is in one of each
    // epoch's 5 batches (the last, partial batch is dropped or not).
    let log = ok(orrery(
        &[
            "train",
            "tiny.toml",
            "--run-dir",
            "skips",
            "--set",
            "run.steps=12",
        ],
        &dir,
    ));
    let skipped: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" skipped: loss"))
        .collect();
    assert!(!skipped.is_empty() && skipped.len() <= 3, "{log}");
    assert!(skipped[0].contains("nothing was updated"), "{log}");
    let metrics = std::fs::read_to_string(dir.join("skips/metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert_eq!(last["step"], 12, "{metrics}");
    assert_eq!(
        last["skipped_steps"].as_u64(),
        Some(skipped.len() as u64),
        "{metrics}"
    );
    // Finite losses and weights after the skips.
    assert!(last["heldout_loss"].as_f64().unwrap().is_finite());
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("skips/checkpoints/step_00000012/trainer_state.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(state["skipped_steps"].as_u64(), Some(skipped.len() as u64));
    assert_eq!(
        state["ema_updates"].as_u64(),
        Some(12 - skipped.len() as u64),
        "a skipped step does not update the EMA"
    );

    // The first skipped step stops a run that allows 1.
    let first: u64 = skipped[0]
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    let out = orrery(
        &[
            "train",
            "tiny.toml",
            "--run-dir",
            "stops",
            "--set",
            "run.steps=12",
            "--set",
            "run.max_skipped_steps=1",
        ],
        &dir,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "steps {first}..={first} all had a non-finite loss"
        )) && err.contains("run.max_skipped_steps = 1")
            && !err.contains("panicked"),
        "{err}"
    );
    // Its last checkpoint (every 3 steps) is the one before the bad step.
    let latest = std::fs::read_to_string(dir.join("stops/checkpoints/latest")).unwrap();
    assert_eq!(
        latest.trim(),
        format!("step_{:08}", (first - 1) / 3 * 3),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// SIGTERM (twice) to `orrery launch -n 2`: both ranks finish the step in flight,
/// write a checkpoint of it (off the checkpoint.every schedule) and exit
/// with the documented code 75; the launcher exits with 75 too, and the
/// same command resumes and ends with the weights of an uninterrupted run.
#[test]
fn sigterm_to_a_launch_checkpoints_and_a_resume_ends_equal() {
    let dir = tiny_dir("preempt");
    let steps = ["--set", "run.steps=60", "--set", "checkpoint.every=50"];
    let mut child = super::dist::spawn_launch_train(&dir, "stopped", &steps);
    // Once step 4 is logged (logging.every = 2), signal the launcher.
    let metrics = dir.join("stopped/metrics.jsonl");
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&metrics).is_ok_and(|m| m.contains("\"step\":4,")) {
        assert!(
            started.elapsed().as_secs() < 120,
            "the run never reached step 4"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before the signal"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let signalled = std::time::Instant::now();
    // A second SIGTERM right after the first (as an impatient user or a
    // scheduler sends) changes nothing: the checkpoint is written whole.
    for _ in 0..2 {
        std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(30));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{err}");
    assert!(
        signalled.elapsed().as_secs() < 60,
        "took {:?}",
        signalled.elapsed()
    );
    assert!(
        err.contains("SIGUSR1 received: finishing this step"),
        "{err}"
    );
    assert!(
        err.contains("run the same command again to resume"),
        "{err}"
    );
    let latest = std::fs::read_to_string(dir.join("stopped/checkpoints/latest")).unwrap();
    let at: u64 = latest.trim().trim_start_matches("step_").parse().unwrap();
    assert!((4..60).contains(&at), "stopped at step {at}");
    assert!(
        err.contains(&format!("after step {at} of 60: wrote checkpoint")),
        "{err}"
    );

    // The same command resumes; the end equals an uninterrupted run.
    let resume = super::dist::launch_train(&dir, "2", "stopped", &steps);
    assert!(
        resume.contains(&format!("resuming from stopped/checkpoints/step_{at:08}")),
        "{resume}"
    );
    super::dist::launch_train(&dir, "2", "straight", &steps);
    super::dist::assert_bitwise_checkpoint(
        &dir.join("straight/checkpoints/step_00000060"),
        &dir.join("stopped/checkpoints/step_00000060"),
        "stopped by SIGTERM and resumed vs uninterrupted",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--resume auto` whose latest checkpoint fails its checksum falls back to
/// the newest intact one, says so, and keeps the damaged one (renamed, so
/// that reaching its step again does not replace it).
#[test]
fn a_damaged_latest_checkpoint_falls_back_to_an_intact_one() {
    let dir = tiny_dir("damaged");
    ok(orrery(&["train", "tiny.toml", "--run-dir", "run"], &dir));
    let ckpts = dir.join("run/checkpoints");
    // One flipped bit in step 6's EMA values: the file still parses.
    let ema = ckpts.join("step_00000006/ema.safetensors");
    let mut bytes = std::fs::read(&ema).unwrap();
    let at = bytes.len() - 5;
    bytes[at] ^= 0x10;
    std::fs::write(&ema, bytes).unwrap();
    let log = ok(orrery(
        &[
            "train",
            "tiny.toml",
            "--run-dir",
            "run",
            "--set",
            "run.steps=9",
        ],
        &dir,
    ));
    assert!(
        log.contains("warning: checkpoint run/checkpoints/step_00000006 is damaged")
            && log.contains("ema.safetensors: checksum")
            && log.contains("resuming from run/checkpoints/step_00000003 instead"),
        "{log}"
    );
    assert!(log.contains("trained steps 3..9"), "{log}");
    let kept = ckpts.join("step_00000006.damaged/ema.safetensors");
    assert!(kept.is_file(), "the damaged checkpoint was not kept");
    assert_eq!(
        std::fs::read_to_string(ckpts.join("latest"))
            .unwrap()
            .trim(),
        "step_00000009"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `kill -9` at each point of an asynchronous save (while writing tensors,
/// before the rename of the `.tmp` folder, before `latest` names it),
/// stopped there deterministically by the hidden `--debug-kill-at`: the
/// previous checkpoint stays intact and named, and `--resume auto`
/// continues from it to the weights of an uninterrupted run.
#[test]
fn a_kill_during_an_asynchronous_save_keeps_the_previous_checkpoint() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tiny_dir("crash");
    let nine = ["--set", "run.steps=9", "--set", "checkpoint.async=true"];
    ok(orrery(
        &[&["train", "tiny.toml", "--run-dir", "straight"][..], &nine].concat(),
        &dir,
    ));
    // Step 6's asynchronous checkpoint, written while steps 7 to 9 trained,
    // holds the bytes a synchronous save of step 6 holds.
    ok(orrery(
        &[
            "train",
            "tiny.toml",
            "--run-dir",
            "sync",
            "--set",
            "run.steps=9",
            "--set",
            "checkpoint.async=false",
        ],
        &dir,
    ));
    for step in ["step_00000006", "step_00000009"] {
        let ckpt = |run: &str| dir.join(run).join("checkpoints").join(step);
        super::dist::assert_bitwise_checkpoint(&ckpt("straight"), &ckpt("sync"), "async vs sync");
    }
    for point in ["tensors", "rename", "latest"] {
        let run = format!("killed-{point}");
        let train = |extra: &[&str]| {
            let mut args = vec!["train", "tiny.toml", "--run-dir", &run];
            args.extend(nine);
            args.extend(extra);
            orrery(&args, &dir)
        };
        // Checkpoints 3 and 6, then a kill while step 9's is written.
        ok(train(&["--stop-after", "6"]));
        let out = train(&["--debug-kill-at", point]);
        assert_eq!(
            out.status.signal(),
            Some(9),
            "{point}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ckpts = dir.join(&run).join("checkpoints");
        let latest = std::fs::read_to_string(ckpts.join("latest")).unwrap();
        assert_eq!(latest.trim(), "step_00000006", "{point}");
        let (tmp, done) = (
            ckpts.join("step_00000009.tmp").exists(),
            ckpts.join("step_00000009").exists(),
        );
        let expected = match point {
            "latest" => (false, true),
            _ => (true, false),
        };
        assert_eq!((tmp, done), expected, "{point}: (.tmp, renamed)");
        let log = ok(train(&[]));
        assert!(
            log.contains(&format!("resuming from {run}/checkpoints/step_00000006")),
            "{point}: {log}"
        );
        super::dist::assert_bitwise_checkpoint(
            &dir.join("straight/checkpoints/step_00000009"),
            &ckpts.join("step_00000009"),
            &format!("killed at {point} and resumed vs uninterrupted"),
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
