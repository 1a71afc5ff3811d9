//! FSDP over mpirun: the one-process run's state on any number of ranks,
//! 1/N of the state per rank, bf16 gathers and compute, prefetch, DDP ->
//! FSDP resume.
use super::dist::{assert_bitwise_checkpoint, assert_same_checkpoint, launch_train, losses};
use super::{ok, orrery, tiny_dir, user_error};

/// FSDP over 1, 2 and 4 ranks (and 2 ranks with 1-clip micro-batches) ends
/// with the one-process DDP run's weights, EMA and AdamW state; each rank
/// holds 1/N of the parameter, gradient and AdamW bytes (plus padding) and
/// gathers at most one unit; bf16 gathers and bf16 compute track f32 and
/// the one-process bf16 run; a DDP run on 4 ranks resumes as FSDP on 2.
#[test]
fn fsdp_over_mpi_matches_one_process_with_a_1_over_n_share_of_the_state() {
    let dir = tiny_dir("fsdp");
    ok(orrery(&["train", "tiny.toml", "--run-dir", "one"], &dir));
    let single = dir.join("one/checkpoints/step_00000006");
    let fsdp = "parallel.strategy=fsdp";
    for (n, micro) in [("1", "0"), ("2", "0"), ("4", "0"), ("2", "1")] {
        let run = format!("fsdp{n}micro{micro}");
        let set = format!("data.micro_batch={micro}");
        let out = launch_train(&dir, n, &run, &["--set", fsdp, "--set", &set]);
        assert_eq!(out.matches("fsdp: ").count(), 1, "{out}");
        assert_same_checkpoint(
            &single,
            &dir.join(&run).join("checkpoints/step_00000006"),
            &format!("fsdp on {n} ranks vs one process"),
        );
        let mem: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(&run).join("fsdp_memory.json")).unwrap(),
        )
        .unwrap();
        let get = |k: &str| mem[k].as_u64().unwrap() as usize;
        let (n, units) = (n.parse::<usize>().unwrap(), get("units"));
        let (per_rank, whole) = (get("state_bytes_per_rank"), get("state_bytes_one_process"));
        eprintln!("fsdp memory, {n} ranks: {mem}");
        assert_eq!(get("world_size"), n);
        // Shards are ceil(L / n) long: at most n - 1 padding values per unit.
        assert!(
            per_rank * n >= whole && per_rank * n <= whole + 16 * n * units,
            "{n} ranks hold {per_rank} bytes each of {whole}"
        );
        assert!(get("largest_unit_bytes") < whole / 2, "{mem}");
    }
    // Asynchronous (the default) and synchronous FSDP checkpoints are the
    // same files: each rank writes its shards in place, rank 0 commits
    // once all are written (step 3's in the background while step 4
    // trains); a run stopped at step 3 resumes from it to the same end.
    let sync = ["--set", fsdp, "--set", "checkpoint.async=false"];
    launch_train(&dir, "2", "fsdp-sync", &sync);
    for step in ["step_00000003", "step_00000006"] {
        let ckpt = |run: &str| dir.join(run).join("checkpoints").join(step);
        assert_bitwise_checkpoint(&ckpt("fsdp2micro0"), &ckpt("fsdp-sync"), "async vs sync");
    }
    launch_train(
        &dir,
        "2",
        "fsdp-stop",
        &["--set", fsdp, "--stop-after", "3"],
    );
    let resumed = launch_train(&dir, "2", "fsdp-stop", &["--set", fsdp]);
    assert!(
        resumed.contains("resuming from fsdp-stop/checkpoints/step_00000003"),
        "{resumed}"
    );
    assert_same_checkpoint(
        &single,
        &dir.join("fsdp-stop/checkpoints/step_00000006"),
        "fsdp stopped at step 3 and resumed vs one process",
    );
    // bf16 gathers: half the bytes, losses within 1% of f32 (not equal).
    let bf16 = ["--set", fsdp, "--set", "parallel.gather_dtype=bf16"];
    launch_train(&dir, "2", "bf16", &bf16);
    let (full, half) = (losses(&dir, "one"), losses(&dir, "bf16"));
    assert_eq!(full.len(), half.len());
    assert_ne!(full, half, "bf16 gathers change the numbers");
    for (a, b) in full.iter().zip(&half) {
        assert!((a - b).abs() / a < 1e-2, "losses {full:?} vs bf16 {half:?}");
    }
    // Prefetch (the next unit gathered on a helper thread over a duplicate
    // communicator) gives the in-line gathers' checkpoints bit for bit, with
    // f32 gathers on 4 ranks and bf16 gathers on 2.
    let prefetch = "parallel.prefetch=true";
    let out = launch_train(&dir, "4", "prefetch4", &["--set", fsdp, "--set", prefetch]);
    assert!(
        out.contains("fsdp: prefetch: each next unit is gathered on a helper thread"),
        "{out}"
    );
    let bf16_prefetch = [bf16.as_slice(), &["--set", prefetch]].concat();
    launch_train(&dir, "2", "prefetch-bf16", &bf16_prefetch);
    for (run, inline) in [("prefetch4", "fsdp4micro0"), ("prefetch-bf16", "bf16")] {
        let ckpt = |run: &str| dir.join(run).join("checkpoints/step_00000006");
        assert_bitwise_checkpoint(&ckpt(run), &ckpt(inline), "prefetch vs in-line gathers");
    }
    // Mixed precision (bf16 compute and gathers, f32 shards) on 2 ranks
    // takes the one-process bf16 run's steps, not f32's.
    let bf16_compute = "run.precision=bf16";
    ok(orrery(
        &[
            "train",
            "tiny.toml",
            "--run-dir",
            "one16",
            "--set",
            bf16_compute,
        ],
        &dir,
    ));
    let mut mixed = bf16.to_vec();
    mixed.extend(["--set", bf16_compute]);
    launch_train(&dir, "2", "fsdp16", &mixed);
    let (one16, fsdp16) = (losses(&dir, "one16"), losses(&dir, "fsdp16"));
    // Measured: 4e-6 apart (reduction order), against 6e-5 from f32.
    let rel = |x: &[f64], y: &[f64]| {
        x.iter()
            .zip(y)
            .map(|(a, b)| (a - b).abs() / a)
            .fold(0.0, f64::max)
    };
    assert!(
        rel(&one16, &fsdp16) < 2e-5 && rel(&one16, &full) > 2e-5,
        "one-process bf16 {one16:?} vs fsdp bf16 {fsdp16:?} (f32 {full:?})"
    );
    eprintln!("losses: f32 {full:?}, bf16 one process {one16:?}, bf16 fsdp 2 ranks {fsdp16:?}");
    user_error(
        orrery(
            &["train", "tiny.toml", "--set", "parallel.gather_dtype=bf16"],
            &dir,
        ),
        "parallel.strategy = \"fsdp\"",
    );

    // Checkpoints hold whole tensors: DDP on 4 ranks, then FSDP on 2.
    for (n, extra) in [
        ("4", &["--stop-after", "3"][..]),
        ("2", &["--set", fsdp][..]),
    ] {
        launch_train(&dir, n, "mixed", extra);
    }
    assert_same_checkpoint(
        &single,
        &dir.join("mixed/checkpoints/step_00000006"),
        "ddp 4 ranks -> fsdp 2 ranks vs one process",
    );
}
