use super::*;

fn parse(text: &str) -> Result<SweepSpec> {
    SweepSpec::parse(text, Path::new("configs/sweeps/s.toml"))
}

/// The error of `text`, which must name the sweep file and `key`.
fn error(text: &str, key: &str) -> String {
    let e = parse(text).expect_err("an error").to_string();
    assert!(e.starts_with("configs/sweeps/s.toml: "), "{e}");
    assert!(e.contains(key), "{e} lacks {key}");
    e
}

const FULL: &str = r#"
base = "../quickstart.toml"
name = "q"
seed = 7
samples = 2
[set]
"run.steps" = 60
"objective.weighting" = { kind = "min_snr", gamma = 5.0 }
[grid]
"optim.lr" = [1e-3, 3e-4]
"model.depth" = [2, 4]
[random]
"ema.decay" = { uniform = [0.99, 0.999] }
"optim.beta2" = { log_uniform = [0.9, 0.999] }
"objective.sampler" = { choice = ["a", "b"] }
"run.seed" = { int = [0, 100] }
"#;

#[test]
fn a_full_file_parses_in_file_order() {
    let s = parse(FULL).unwrap();
    assert_eq!(s.base, Path::new("configs/quickstart.toml"));
    assert_eq!(s.name, "q");
    assert_eq!(s.root, Path::new("runs/q"));
    assert_eq!((s.seed, s.samples), (7, Some(2)));
    let keys = |v: Vec<&String>| v.into_iter().cloned().collect::<Vec<_>>();
    assert_eq!(
        keys(s.set.iter().map(|(k, _)| k).collect()),
        ["run.steps", "objective.weighting"]
    );
    // File order, not sorted order.
    assert_eq!(
        keys(s.grid.iter().map(|(k, _)| k).collect()),
        ["optim.lr", "model.depth"]
    );
    assert_eq!(
        keys(s.random.iter().map(|(k, _)| k).collect()),
        ["ema.decay", "optim.beta2", "objective.sampler", "run.seed"]
    );
    assert_eq!(
        s.random[0].1,
        Distribution::Uniform {
            low: 0.99,
            high: 0.999
        }
    );
    assert_eq!(s.random[3].1, Distribution::Int { low: 0, high: 100 });
    assert_eq!(
        s.random[2].1,
        Distribution::Choice(vec!["a".into(), "b".into()])
    );
}

#[test]
fn name_defaults_to_the_stem_and_root_can_be_set() {
    let s = parse("base = \"b.toml\"\nroot = \"elsewhere\"\n[grid]\n\"optim.lr\" = [1]\n").unwrap();
    assert_eq!(s.name, "s");
    assert_eq!(s.root, Path::new("elsewhere"));
    assert_eq!(s.base, Path::new("configs/sweeps/b.toml"));
    assert_eq!(s.samples, None);
}

#[test]
fn each_mistake_names_its_key() {
    let head = "base = \"b.toml\"\n";
    let grid = "[grid]\n\"optim.lr\" = [1e-3]\n";
    let e = error(&format!("{head}bogus = 1\n{grid}"), "bogus");
    assert!(!e.contains("did you mean"), "{e}");
    let e = error(&format!("{head}sample = 1\n{grid}"), "sample");
    assert!(e.contains("did you mean samples?"), "{e}");
    error(grid, "base");
    error(
        &format!("{head}[grid]\n\"optim.lr\" = []\n"),
        "[grid] \"optim.lr\"",
    );
    let e = error(
        &format!("{head}[grid]\n\"optim.lr\" = 1e-3\n"),
        "\"optim.lr\"",
    );
    assert!(e.contains("list"), "{e}");
    error(
        &format!("{head}[grid]\n\"optim.lr\" = [1, 1]\n"),
        "\"optim.lr\"",
    );
    let e = error(&format!("{head}[grid]\noptim.lr = [1e-3]\n"), "\"optim\"");
    assert!(e.contains("in quotes"), "{e}");
    let random = |d: &str| format!("{head}samples = 2\n[random]\n\"optim.lr\" = {d}\n");
    let e = error(&random("{ normal = [0, 1] }"), "[random] \"optim.lr\"");
    assert!(e.contains("unknown distribution kind \"normal\""), "{e}");
    error(&random("{ uniform = [1, 1] }"), "\"optim.lr\"");
    error(&random("{ uniform = [2, 1] }"), "\"optim.lr\"");
    let e = error(&random("{ log_uniform = [0, 1] }"), "\"optim.lr\"");
    assert!(e.contains("0 < low"), "{e}");
    error(&random("{ int = [3, 1] }"), "\"optim.lr\"");
    error(&random("{ int = [0.5, 1] }"), "\"optim.lr\"");
    error(&random("{ choice = [] }"), "\"optim.lr\"");
    error(
        &random("{ uniform = [0, 1], int = [0, 1] }"),
        "\"optim.lr\"",
    );
    let e = error(
        &format!("{head}[random]\n\"optim.lr\" = {{ uniform = [0, 1] }}\n"),
        "samples",
    );
    assert!(e.contains("missing"), "{e}");
    error(&format!("{head}samples = 3\n{grid}"), "samples");
    error(
        &random("{ uniform = [0, 1] }").replace("samples = 2", "samples = 0"),
        "samples",
    );
    let both =
        format!("{head}samples = 2\n{grid}[random]\n\"optim.lr\" = {{ uniform = [0, 1] }}\n");
    let e = error(&both, "[grid] \"optim.lr\"");
    assert!(e.contains("also in [random]"), "{e}");
    let e = error(
        &format!("{head}[set]\n\"optim.lr\" = 1\n{grid}"),
        "[set] \"optim.lr\"",
    );
    assert!(e.contains("drop it from [set]"), "{e}");
    error(&format!("{head}[set]\n\"run.steps\" = 1\n"), "grid");
    error(&format!("{head}seed = -1\n{grid}"), "seed");
    error(&format!("{head}name = \"a/b\"\n{grid}"), "name");
    error(&format!("{head}grid = 3\n"), "grid");
    error(
        &format!("{head}[grid]\n\"optim lr.x\" = [1]\n"),
        "\"optim lr.x\"",
    );
}

#[test]
fn invalid_toml_and_a_missing_base_are_errors() {
    let e = parse("base = ").unwrap_err().to_string();
    assert!(e.contains("configs/sweeps/s.toml is not valid TOML"), "{e}");
    let dir = std::env::temp_dir().join(format!("orrery-sweep-spec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("s.toml");
    std::fs::write(
        &file,
        "base = \"missing.toml\"\n[grid]\n\"optim.lr\" = [1]\n",
    )
    .unwrap();
    let e = SweepSpec::load(&file).unwrap_err().to_string();
    assert!(
        e.contains(": base: the base config") && e.contains("missing.toml"),
        "{e}"
    );
    let e = SweepSpec::load(&dir.join("none.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot read sweep file"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn paths_are_cleaned_lexically() {
    assert_eq!(clean(Path::new("a/b/../c.toml")), Path::new("a/c.toml"));
    assert_eq!(clean(Path::new("../c.toml")), Path::new("../c.toml"));
    assert_eq!(clean(Path::new("a/./b")), Path::new("a/b"));
}
