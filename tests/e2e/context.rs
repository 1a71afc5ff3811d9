//! Context parallelism under mpirun: 2 and 4 ranks per context group, 2 x 2
//! with DDP and with FSDP, and block checkpointing with blockwise attention,
//! each ends 20 steps with one process's weights, EMA and AdamW state; a
//! checkpoint of C = 2 resumes with C = 1 and the reverse; bad layouts get
//! a sentence.
use super::dist::{assert_same_checkpoint, launch_train, losses};
use super::{ok, orrery, tiny_dir, user_error};

#[test]
fn context_parallel_training_matches_one_process() {
    let dir = tiny_dir("context");
    // Four heads, so that 4 ranks can each take one.
    let base = ["--set", "model.heads=4", "--set", "run.steps=20"];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        base.iter().copied().chain(extra.iter().copied()).collect()
    };
    let mut one = vec!["train", "tiny.toml", "--run-dir", "one"];
    one.extend(base);
    ok(orrery(&one, &dir));
    let single = dir.join("one/checkpoints/step_00000020");
    for (n, run, extra) in [
        ("2", "c2", &["--set", "parallel.context=2"][..]),
        ("4", "c4", &["--set", "parallel.context=4"][..]),
        ("4", "ddp2x2", &["--set", "parallel.context=2"][..]),
        (
            "4",
            "fsdp2x2",
            &[
                "--set",
                "parallel.context=2",
                "--set",
                "parallel.strategy=fsdp",
            ][..],
        ),
        (
            "2",
            "checkpointed",
            &[
                "--set",
                "parallel.context=2",
                "--set",
                "parallel.activation_checkpoint=block",
                "--set",
                "model.attention_impl=blockwise",
                "--set",
                "model.attention_block=24",
            ][..],
        ),
    ] {
        let out = launch_train(&dir, n, run, &with(extra));
        assert!(out.contains("context-parallel ranks"), "{out}");
        assert_same_checkpoint(
            &single,
            &dir.join(run).join("checkpoints/step_00000020"),
            &format!("{run} on {n} ranks vs one process"),
        );
        for (a, b) in losses(&dir, "one").iter().zip(losses(&dir, run)) {
            assert!((a - b).abs() < 1e-5, "{run}: loss {b} vs {a}");
        }
    }
    // Half the steps with C = 2, the rest in one process, and the reverse.
    let c2 = ["--set", "parallel.context=2"];
    for (run, first, second) in [("c2then1", true, false), ("c1then2", false, true)] {
        for (context, extra) in [(first, &["--stop-after", "10"][..]), (second, &[][..])] {
            let mut args = with(extra);
            if context {
                args.extend(c2);
                launch_train(&dir, "2", run, &args);
            } else {
                let mut cmd = vec!["train", "tiny.toml", "--run-dir", run];
                cmd.extend(args);
                ok(orrery(&cmd, &dir));
            }
        }
        assert_same_checkpoint(
            &single,
            &dir.join(run).join("checkpoints/step_00000020"),
            &format!("{run} vs one process"),
        );
    }
    // Layouts that cannot work are refused before anything runs.
    user_error(
        orrery(
            &[
                "train",
                "tiny.toml",
                "--run-dir",
                "bad",
                "--set",
                "parallel.context=4",
            ],
            &dir,
        ),
        "both must be divisible by 4",
    );
    let mut three = vec![
        "launch",
        "-n",
        "3",
        "--",
        "train",
        "tiny.toml",
        "--run-dir",
        "bad3",
    ];
    three.extend(with(&["--set", "parallel.context=2"]));
    let out = orrery(&three, &dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("start a multiple of 2 ranks"), "{err}");
}
