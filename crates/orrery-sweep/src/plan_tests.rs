use super::*;

fn spec(text: &str) -> SweepSpec {
    SweepSpec::parse(text, Path::new("sweeps/s.toml")).unwrap()
}

const GRID: &str = r#"
base = "b.toml"
name = "g"
[set]
"run.steps" = 60
[grid]
"optim.lr" = [1e-3, 3e-4]
"model.depth" = [2, 4]
"objective.sampler" = ["a b"]
"#;

#[test]
fn the_grid_is_a_product_with_the_last_key_fastest() {
    let plan = Plan::expand(&spec(GRID)).unwrap();
    let names: Vec<&str> = plan.runs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "lr=0.001_depth=2_sampler=a-b",
            "lr=0.001_depth=4_sampler=a-b",
            "lr=0.0003_depth=2_sampler=a-b",
            "lr=0.0003_depth=4_sampler=a-b",
        ]
    );
    let r = &plan.runs[2];
    assert_eq!(r.run_dir, Path::new("runs/g/lr=0.0003_depth=2_sampler=a-b"));
    assert_eq!(
        r.overrides,
        [
            "run.steps=60",
            "optim.lr=0.0003",
            "model.depth=2",
            "objective.sampler=\"a b\"",
            "run.name=\"g/lr=0.0003_depth=2_sampler=a-b\"",
        ]
    );
    assert_eq!(
        r.swept,
        [
            ("optim.lr".to_string(), "0.0003".to_string()),
            ("model.depth".into(), "2".into()),
            ("objective.sampler".into(), "a b".into()),
        ]
    );
    assert_eq!(plan.labels[0], ("optim.lr".to_string(), "lr".to_string()));
    assert_eq!(plan.base, Path::new("sweeps/b.toml"));
    let args = plan.train_args(r);
    assert_eq!(
        args[..4],
        ["train", "sweeps/b.toml", "--set", "run.steps=60"]
    );
    assert_eq!(
        args[args.len() - 2..],
        ["--run-dir", "runs/g/lr=0.0003_depth=2_sampler=a-b"]
    );
}

const RANDOM: &str = r#"
base = "b.toml"
seed = 3
samples = 3
[grid]
"model.depth" = [2, 4]
[random]
"optim.lr" = { log_uniform = [1e-4, 1e-2] }
"ema.decay" = { uniform = [0.99, 0.999] }
"run.seed" = { int = [0, 100] }
"objective.sampler" = { choice = ["a", "b", "c"] }
"#;

fn swept(text: &str) -> Vec<Vec<(String, String)>> {
    Plan::expand(&spec(text))
        .unwrap()
        .runs
        .into_iter()
        .map(|r| r.swept)
        .collect()
}

#[test]
fn random_draws_depend_on_the_seed_alone() {
    let a = swept(RANDOM);
    assert_eq!(a.len(), 6);
    assert_eq!(a, swept(RANDOM), "the same seed draws the same values");
    let b = swept(&RANDOM.replace("seed = 3", "seed = 4"));
    assert_ne!(a, b, "another seed draws other values");
    // Grid points in order, `samples` draws each.
    assert_eq!(a[2][0].1, "2");
    assert_eq!(a[3][0].1, "4");
    // A draw does not depend on the other keys (or their order).
    let fewer = swept(&RANDOM.replace("\"run.seed\" = { int = [0, 100] }\n", ""));
    for (x, y) in a.iter().zip(&fewer) {
        assert_eq!(x[1], y[1]);
    }
    for run in &a {
        let lr: f64 = run[1].1.parse().unwrap();
        let decay: f64 = run[2].1.parse().unwrap();
        let seed: i64 = run[3].1.parse().unwrap();
        assert!((1e-4..=1e-2).contains(&lr), "{lr}");
        assert!((0.99..=0.999).contains(&decay), "{decay}");
        assert!((0..=100).contains(&seed), "{seed}");
        assert!(["a", "b", "c"].contains(&run[4].1.as_str()));
        assert!(run[1].1.len() <= 12, "six significant digits: {}", run[1].1);
    }
    // Different runs draw different values.
    assert_ne!(a[0][1], a[1][1]);
}

#[test]
fn names_are_stable_unique_and_safe() {
    let plan = Plan::expand(&spec(RANDOM)).unwrap();
    let again = Plan::expand(&spec(RANDOM)).unwrap();
    assert_eq!(plan, again);
    let mut names: Vec<&str> = plan.runs.iter().map(|r| r.name.as_str()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 6);
    // Values that round to the same name get a hash of their overrides.
    let close = "base = \"b.toml\"\n[grid]\n\"optim.lr\" = [0.00100001, 0.00100002]\n";
    let plan = Plan::expand(&spec(close)).unwrap();
    let (a, b) = (&plan.runs[0].name, &plan.runs[1].name);
    assert!(
        a.starts_with("lr=0.001-") && b.starts_with("lr=0.001-") && a != b,
        "{a} {b}"
    );
    assert_eq!(a, &Plan::expand(&spec(close)).unwrap().runs[0].name);
    // Keys sharing a last segment are named in full.
    let shared = "base = \"b.toml\"\n[grid]\n\"optim.lr\" = [1]\n\"other.lr\" = [2]\n";
    let plan = Plan::expand(&spec(shared)).unwrap();
    assert_eq!(plan.runs[0].name, "optim.lr=1_other.lr=2");
    // Long names are cut and hashed.
    let long = format!(
        "base = \"b.toml\"\n[grid]\n\"run.name\" = [\"{}\"]\n",
        "x".repeat(300)
    );
    let plan = Plan::expand(&spec(&long)).unwrap();
    assert!(plan.runs[0].name.len() <= MAX_NAME, "{}", plan.runs[0].name);
    // run.name swept: the sweep does not set it again.
    assert_eq!(plan.runs[0].overrides.len(), 1);
}

#[test]
fn identical_draws_and_huge_sweeps_are_refused() {
    let same = "base = \"b.toml\"\nsamples = 3\n[random]\n\"run.seed\" = { int = [1, 1] }\n";
    let e = Plan::expand(&spec(same)).unwrap_err().to_string();
    assert!(
        e.contains("samples") && e.contains("draw the same values"),
        "{e}"
    );
    let lists: String = (0..5)
        .map(|i| format!("\"a.k{i}\" = [1, 2, 3, 4, 5, 6, 7]\n"))
        .collect();
    let e = Plan::expand(&spec(&format!("base = \"b.toml\"\n[grid]\n{lists}")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than 10000 runs"), "{e}");
}

#[test]
fn numbers_are_compact() {
    assert_eq!(compact_number(1e-3), "0.001");
    assert_eq!(compact_number(3e-4), "0.0003");
    assert_eq!(compact_number(0.000123456), "0.0001235");
    assert_eq!(compact_number(0.99512), "0.9951");
    assert_eq!(compact_number(1234.5678), "1235");
    assert_eq!(compact_number(2.0), "2");
    assert_eq!(compact_number(1e-5), "1e-5");
    assert_eq!(compact_number(2.5e7), "2.5e7");
    assert_eq!(compact_number(-0.25), "-0.25");
    assert_eq!(compact_number(0.0), "0");
}

#[test]
fn every_run_config_is_loaded_and_a_bad_key_named() {
    let dir = std::env::temp_dir().join(format!("orrery-sweep-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // (A base without [model] cannot take `--set model.KEY`: orrery-config
    // copies its defaults' `preset = ""` placeholder into the file.)
    std::fs::write(dir.join("b.toml"), "[run]\nsteps = 9\n[model]\ndepth = 3\n").unwrap();
    let file = dir.join("s.toml");
    std::fs::write(
        &file,
        "base = \"b.toml\"\n[grid]\n\"model.depth\" = [1, 2]\n",
    )
    .unwrap();
    let plan = Plan::load(&file).unwrap();
    assert_eq!(plan.runs[1].steps, 9);
    std::fs::write(
        &file,
        "base = \"b.toml\"\n[grid]\n\"model.dpth\" = [1, 2]\n",
    )
    .unwrap();
    let e = Plan::load(&file).unwrap_err().to_string();
    assert!(
        e.contains("s.toml: run dpth=1:") && e.contains("model.dpth") && e.contains("model.depth"),
        "{e}"
    );
    std::fs::write(&file, "base = \"b.toml\"\n[grid]\n\"optim.lr\" = [-1.0]\n").unwrap();
    let e = Plan::load(&file).unwrap_err().to_string();
    assert!(e.contains("optim.lr") && e.contains("positive"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
