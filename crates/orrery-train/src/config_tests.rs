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
