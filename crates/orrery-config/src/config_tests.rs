//! Tests of the config tree: presets, validation, defaults.
use super::*;

fn parse(text: &str, overrides: &[&str]) -> Result<TrainConfig> {
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    TrainConfig::from_toml(text, "test.toml", &o)
}

#[test]
fn presets_fill_only_what_the_file_leaves_out() {
    let cfg = parse(
        "[model]\npreset = \"B/4\"\ndepth = 2\nheight = 32\nwidth = 32\nnum_actions = 0\n",
        &[],
    )
    .unwrap();
    let m = &cfg.model;
    assert_eq!((m.hidden, m.depth, m.heads, m.patch_size), (768, 2, 12, 4));
    // The resolved config round-trips: the preset fills nothing twice.
    let again = parse(&toml::to_string(&cfg).unwrap(), &[]).unwrap();
    assert_eq!(again, cfg);
    // A preset from the command line works too.
    let cfg = parse(
        "[model]\nheight = 32\nwidth = 32\n",
        &["model.preset=\"S/2\""],
    )
    .unwrap();
    assert_eq!((cfg.model.hidden, cfg.model.patch_size), (384, 2));
    let err = parse("[model]\npreset = \"XXL\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a preset"), "{err}");
}

#[test]
fn kernel_fusion_is_off_unless_asked_for() {
    let cfg = parse("", &[]).unwrap();
    assert!(!cfg.run.fusion);
    assert!(parse("", &["run.fusion=true"]).unwrap().run.fusion);
    // A config saved before the key existed (a checkpoint's) still loads.
    let saved = toml::to_string(&cfg).unwrap();
    assert!(saved.contains("fusion = false"), "{saved}");
    let old = parse(&saved.replace("fusion = false\n", ""), &[]).unwrap();
    assert_eq!(old, cfg);
    let err = parse("", &["run.fusion=\"yes\""]).unwrap_err().to_string();
    assert!(err.contains("fusion"), "{err}");
}

#[test]
fn guidance_needs_each_condition_trained_with_dropout() {
    let image =
        "[model]\nframes = 1\nnum_actions = 0\nnum_classes = 10\n[sample]\nguidance = 3.0\n";
    parse(image, &[]).unwrap();
    let err = parse(image, &["objective.label_dropout=0.0"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("objective.label_dropout > 0"), "{err}");
    let err = parse(image, &["model.num_classes=0"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs a condition to guide on"), "{err}");
    let err = parse("[model]\nframes = 1\n", &[]).unwrap_err().to_string();
    assert!(err.contains("world model needs model.frames >= 2"), "{err}");
    // Frames sharing a token must share a noise level.
    let video = "[model]\nframes = 4\npatch_t = 2\nnum_actions = 0\n";
    let err = parse(video, &[]).unwrap_err().to_string();
    assert!(err.contains("objective.frame_noise = \"shared\""), "{err}");
    parse(
        video,
        &[
            "objective.frame_noise=\"shared\"",
            "objective.context_prob=0.0",
        ],
    )
    .unwrap();
}

#[test]
fn a_preset_from_the_command_line_replaces_the_files_sizes() {
    let file =
        "[model]\nheight = 32\nwidth = 32\nhidden = 128\ndepth = 4\nheads = 4\npatch_size = 4\n";
    let m = parse(file, &["model.preset=\"S/2\""]).unwrap().model;
    assert_eq!((m.hidden, m.depth, m.heads, m.patch_size), (384, 12, 6, 2));
    // Keys given with --set still win over the preset.
    let m = parse(file, &["model.preset=\"S/2\"", "model.depth=3"])
        .unwrap()
        .model;
    assert_eq!((m.hidden, m.depth), (384, 3));
}

#[test]
fn messages_name_the_line_or_the_override() {
    let err = parse("[run]\nname = \"x\"\n[model]\nhidden = \"big\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("test.toml line 4: bad value for model.hidden"),
        "{err}"
    );
    assert!(!err.contains('\n'), "one line: {err}");
    let err = parse("[model]\nhidden = 64\n", &["model.hidden=big"])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("--set model.hidden=big: bad value for model.hidden"),
        "{err}"
    );
}

#[test]
fn tagged_tables_take_the_bare_variant_name() {
    for (text, set) in [
        ("[objective]\nweighting = \"none\"\n", vec![]),
        ("", vec!["objective.weighting=none"]),
    ] {
        let cfg = parse(text, &set).unwrap();
        let again = parse("[objective]\nweighting = { kind = \"none\" }\n", &[]).unwrap();
        assert_eq!(
            cfg.objective.weighting, again.objective.weighting,
            "{text} {set:?}"
        );
    }
    // A bare name in the file, then one of its fields from the command line.
    let cfg = parse(
        "[objective]\nweighting = \"min_snr\"\n",
        &["objective.weighting.gamma=3.0"],
    )
    .unwrap();
    let want = parse(
        "[objective]\nweighting = { kind = \"min_snr\", gamma = 3.0 }\n",
        &[],
    )
    .unwrap();
    assert_eq!(cfg.objective.weighting, want.objective.weighting);
    let cfg = parse("", &["sample.sampler=heun", "objective.timesteps=uniform"]).unwrap();
    assert_eq!(cfg.sample.sampler, Sampler::Heun);
}

#[test]
fn unknown_keys_are_named_in_full_with_their_section_only() {
    let err = parse("[model]\nhiden = 3\n", &[]).unwrap_err().to_string();
    assert!(
        err.contains("unknown config key model.hiden; did you mean model.hidden?"),
        "{err}"
    );
    let valid = err
        .split("valid keys here: ")
        .nth(1)
        .unwrap()
        .trim_end_matches(')');
    assert!(valid.ends_with("preset"), "{err}");
    assert!(!valid.split(", ").any(|k| k == "model"), "{err}");
    let err = parse(
        "[objective]\nweighting = { kind = \"min_snr\", gama = 5.0 }\n",
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("objective.weighting.gama; did you mean objective.weighting.gamma? (valid keys here: gamma)"),
        "{err}"
    );
    assert!(err.starts_with("test.toml line 2"), "{err}");
}

/// docs/config.md documents every key the parser accepts, and no key it
/// does not: rows are `| `key` | `value` | meaning |`, and a variant's own
/// field says `with kind = "name"`.
#[test]
fn every_config_key_is_documented_and_every_documented_key_exists() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/config.md");
    let doc = std::fs::read_to_string(path).expect("docs/config.md");
    let mut documented = std::collections::BTreeMap::<String, Vec<(String, String)>>::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[1].starts_with('`') {
            continue;
        }
        let key = cells[1].trim_matches('`').to_string();
        let value = cells[2].trim_matches('`').to_string();
        let kind = cells[3]
            .split("with kind = \"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("")
            .to_string();
        documented.entry(key).or_default().push((value, kind));
    }
    let mut defaults = Vec::new();
    fn leaves(prefix: &str, t: &toml::Table, out: &mut Vec<String>) {
        for (k, v) in t {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                toml::Value::Table(inner) => leaves(&key, inner, out),
                _ => out.push(key),
            }
        }
    }
    leaves(
        "",
        &toml::Table::try_from(TrainConfig::default()).unwrap(),
        &mut defaults,
    );
    defaults.push("model.preset".into());
    let missing: Vec<&String> = defaults
        .iter()
        .filter(|k| !documented.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "keys missing from docs/config.md: {missing:?}"
    );
    // Variant fields: parse each variant with its documented fields.
    let mut variants = std::collections::BTreeMap::<(String, String), Vec<(String, String)>>::new();
    for (key, rows) in &documented {
        if defaults.contains(key) {
            continue;
        }
        for (value, kind) in rows {
            assert!(!kind.is_empty(), "{key} is documented but is no config key (nor a variant's field with kind = \"...\")");
            let (parent, field) = key.rsplit_once('.').unwrap();
            variants
                .entry((parent.to_string(), kind.clone()))
                .or_default()
                .push((field.to_string(), value.clone()));
        }
    }
    assert!(
        !variants.is_empty(),
        "no variant field rows found: is the table format still parsed?"
    );
    for ((parent, kind), fields) in &variants {
        let mut text = format!("[{parent}]\nkind = \"{kind}\"\n");
        for (f, v) in fields {
            text.push_str(&format!("{f} = {v}\n"));
        }
        if let Err(e) = parse(&text, &[]) {
            let e = e.to_string();
            assert!(
                !e.contains("unknown") && !e.contains("bad value"),
                "{text}: {e}"
            );
        }
    }
}

/// `--set model.<key>` on a file without a [model] table: the table is made
/// from the defaults, whose preset placeholder means no preset.
#[test]
fn a_model_key_can_be_set_without_a_model_table() {
    let cfg = parse("[run]\nsteps = 2\n", &["model.depth=1"]).unwrap();
    assert_eq!(cfg.model.depth, 1);
    assert_eq!(cfg.model.hidden, orrery_model::DitConfig::default().hidden);
}

/// The long-clip settings: defaults, and layouts refused with what to change.
#[test]
fn long_clip_settings_default_and_refuse_bad_layouts() {
    let cfg = parse("", &[]).unwrap();
    assert_eq!(
        cfg.model.attention_impl,
        orrery_model::AttentionImpl::Blockwise
    );
    assert_eq!(cfg.parallel.context, 1);
    assert_eq!(
        cfg.parallel.activation_checkpoint,
        crate::ActivationCheckpoint::None
    );
    let err = |set: &[&str]| parse("", set).unwrap_err().to_string();
    assert!(err(&["model.attention_block=0"]).contains("model.attention_block must be at least 1"));
    assert!(err(&["parallel.context=0"]).contains("parallel.context must be at least 1"));
    // The default model has 4 heads and 8 frames: 3 divides neither.
    assert!(err(&["parallel.context=3"]).contains("both must be divisible by 3"));
    let two = parse("", &["parallel.context=2"]).unwrap();
    assert!(two.validate_world(4).is_ok());
    let world = two.validate_world(3).unwrap_err().to_string();
    assert!(world.contains("start a multiple of 2 ranks"), "{world}");
    // Context groups share clips: a global batch of 16 over 4 ranks in groups of 2 is 8 per group.
    let odd = parse("", &["parallel.context=2", "data.global_batch=6"]).unwrap();
    assert!(odd
        .validate_world(8)
        .unwrap_err()
        .to_string()
        .contains("over 4 ranks"));
}

/// docs/vae.md documents every key of an autoencoder run's own sections
/// (`vae`, `train`), and the TOML parser takes the documented defaults.
#[test]
fn every_autoencoder_key_is_documented() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/vae.md");
    let doc = std::fs::read_to_string(path).expect("docs/vae.md");
    let mut rows = std::collections::BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() >= 4 && cells[1].starts_with('`') {
            rows.insert(
                cells[1].trim_matches('`').to_string(),
                cells[2].trim_matches('`').to_string(),
            );
        }
    }
    let defaults = toml::Table::try_from(crate::VaeTrainConfig::default()).unwrap();
    let mut text = String::new();
    for section in ["vae", "train"] {
        text += &format!("[{section}]\n");
        for key in defaults[section].as_table().unwrap().keys() {
            let dotted = format!("{section}.{key}");
            let value = rows
                .remove(&dotted)
                .unwrap_or_else(|| panic!("{dotted} is missing from docs/vae.md"));
            text += &format!("{key} = {value}\n");
        }
    }
    assert!(
        rows.is_empty(),
        "documented in docs/vae.md but no key: {rows:?}"
    );
    let parsed = crate::VaeTrainConfig::from_toml(&text, "docs/vae.md", &[]).unwrap();
    assert_eq!(parsed, crate::VaeTrainConfig::default());
}

#[test]
fn autoencoder_configs_say_what_to_change() {
    let err = |text: &str| {
        crate::VaeTrainConfig::from_toml(text, "v.toml", &[])
            .unwrap_err()
            .to_string()
    };
    assert!(err("[vae]\ntemporal_down = 4\n[train]\nframes = 4\n").contains("1 + 4k frames"));
    assert!(err("[vae]\nspatial_down = 2\n").contains("use 4 or 8"));
    assert!(err("[train]\ndisc_weight = 0.5\ndisc_groups = 5\n").contains("train.disc_groups"));
    assert!(err("[parallel]\nstrategy = \"fsdp\"\n").contains("ddp"));
    assert!(err("[train]\nkl_wieght = 1\n").contains("kl_weight"));
    assert!(err("[model]\nhidden = 64\n").contains("`orrery train v.toml`"));
    let dit = TrainConfig::from_toml("[vae]\nwidth = 8\n", "v.toml", &[])
        .unwrap_err()
        .to_string();
    assert!(dit.contains("`orrery vae train v.toml`"), "{dit}");
}

/// Every config we ship parses and validates: a DiT's, or (with `[vae]`)
/// an autoencoder's.
#[test]
fn every_shipped_config_loads() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs");
    let mut seen = 0;
    let mut dirs = vec![std::path::PathBuf::from(root)];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "sweeps") {
                    dirs.push(p);
                }
                continue;
            }
            if p.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            let is_vae = toml::from_str::<toml::Table>(&text)
                .unwrap()
                .contains_key("vae");
            let loaded = if is_vae {
                crate::VaeTrainConfig::load(&p, &[]).map(|_| ())
            } else {
                TrainConfig::load(&p, &[]).map(|_| ())
            };
            loaded.unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            seen += 1;
        }
    }
    assert!(seen >= 5, "{seen} configs");
}
