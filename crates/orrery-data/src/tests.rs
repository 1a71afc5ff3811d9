//! Schema, world, store and loader invariants.
use std::sync::Arc;

use arrow::array::{Int32Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use bytes::Bytes;

use crate::schema::{read_parquet, write_parquet};
use crate::synth::{
    locate_agent, render_clip, render_clips, SynthConfig, WorldState, NUM_ACTIONS, SPEED,
};
use crate::{store, Cursor, DataError, Dataset, Loader};

fn small() -> SynthConfig {
    SynthConfig {
        clips: 12,
        frames: 10,
        height: 16,
        width: 20,
        seed: 3,
        continuous_actions: false,
    }
}

#[test]
fn parquet_round_trips_clips_and_metadata() {
    let cfg = small();
    let clips = render_clips(&cfg);
    let bytes = write_parquet(&clips, &cfg.metadata()).unwrap();
    let back = read_parquet(&bytes, "x.parquet").unwrap();
    assert_eq!(back.clips, clips);
    assert_eq!(back.meta, cfg.metadata());
}

#[test]
fn wrong_columns_and_truncated_files_name_the_file() {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "pixels",
        DataType::Int32,
        false,
    )]));
    let batch =
        RecordBatch::try_new(schema.clone(), vec![Arc::new(Int32Array::from(vec![1, 2]))]).unwrap();
    let mut out = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let err = read_parquet(&Bytes::from(out), "bad.parquet")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("bad.parquet: missing column `clip_id`") && err.contains("pixels"),
        "{err}"
    );

    let good = write_parquet(&render_clips(&small()), &small().metadata()).unwrap();
    let cut = good.slice(0..good.len() / 2);
    let err = read_parquet(&cut, "cut.parquet").unwrap_err().to_string();
    assert!(
        err.starts_with("cut.parquet: not a readable Parquet file"),
        "{err}"
    );
}

#[test]
fn non_finite_latents_are_rejected_with_the_row() {
    let mut clips = render_clips(&small());
    clips[2].latents[5] = f32::NAN;
    let bytes = write_parquet(&clips, &small().metadata()).unwrap();
    match read_parquet(&bytes, "nan.parquet").unwrap_err() {
        DataError::Row { row, reason, .. } => {
            assert!(row == 2 && reason.contains("non-finite"), "{row} {reason}")
        }
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn the_agent_follows_its_actions_and_is_found_in_the_pixels() {
    let cfg = small();
    let clip = render_clip(&cfg, 5);
    assert_eq!(clip, render_clip(&cfg, 5), "rendering is deterministic");
    let (actions, xy) = (
        clip.actions.as_ref().unwrap(),
        clip.agent_xy.as_ref().unwrap(),
    );
    for f in 1..cfg.frames {
        let (dx, dy) = (xy[2 * f] - xy[2 * f - 2], xy[2 * f + 1] - xy[2 * f - 1]);
        let expected = match actions[f] {
            1 => (0.0, -(SPEED as f32)),
            2 => (0.0, SPEED as f32),
            3 => (-(SPEED as f32), 0.0),
            4 => (SPEED as f32, 0.0),
            _ => (0.0, 0.0),
        };
        // Either the move happened or a wall stopped it.
        assert!(
            (dx, dy) == expected || (dx, dy) == (0.0, 0.0),
            "frame {f}: moved {dx},{dy} under action {}",
            actions[f]
        );
        let found = locate_agent(clip.frame(f), cfg.height, cfg.width).unwrap();
        assert!(
            (found.0 - xy[2 * f]).abs() < 1e-4 && (found.1 - xy[2 * f + 1]).abs() < 1e-4,
            "{found:?}"
        );
    }
    assert!(actions
        .iter()
        .all(|&a| (0..NUM_ACTIONS as i64).contains(&a)));
}

#[test]
fn the_ball_bounces_inside_the_frame() {
    let mut s = WorldState {
        agent: (0, 0),
        ball: (0, 0),
        ball_v: (-2, 1),
    };
    for _ in 0..50 {
        s.step(0, 12, 12);
        assert!(
            (0..=9).contains(&s.ball.0) && (0..=9).contains(&s.ball.1),
            "{s:?}"
        );
    }
}

#[test]
fn datasets_open_from_a_directory_and_missing_paths_say_how_to_fix() {
    let dir = std::env::temp_dir().join(format!("orrery-data-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let url = dir.to_str().unwrap().to_string();
    let loc = store::parse(&url).unwrap();
    let cfg = small();
    let clips = render_clips(&cfg);
    store::runtime().block_on(async {
        loc.put(
            "a.parquet",
            write_parquet(&clips[..5], &cfg.metadata()).unwrap(),
        )
        .await
        .unwrap();
        loc.put(
            "b.parquet",
            write_parquet(&clips[5..], &cfg.metadata()).unwrap(),
        )
        .await
        .unwrap();
    });
    let ds = Dataset::open(&url, 2).unwrap();
    assert_eq!((ds.files, ds.train.len(), ds.holdout.len()), (2, 10, 2));
    assert_eq!(ds.holdout[1].id, "synth-000011");
    let missing = dir.join("nope").to_str().unwrap().to_string();
    let err = Dataset::open(&missing, 0).unwrap_err().to_string();
    assert!(
        err.contains("no .parquet files found") && err.contains("orrery data synth"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_order_is_deterministic_resumable_and_split_across_ranks() {
    let cfg = SynthConfig {
        clips: 20,
        ..small()
    };
    let clips = render_clips(&cfg);
    let mut whole = Loader::new(&clips, 7, 4, 6, (0, 1), Cursor::default()).unwrap();
    let seq: Vec<_> = (0..12).map(|_| whole.next_batch()).collect();
    // Epochs: 20 clips / 4 = 5 batches; every clip once per epoch.
    let mut first_epoch: Vec<_> = seq[..5].iter().flat_map(|b| b.clip_ids.clone()).collect();
    first_epoch.sort();
    first_epoch.dedup();
    assert_eq!(first_epoch.len(), 20);
    assert_ne!(seq[0].clip_ids, seq[5].clip_ids, "each epoch reshuffles");
    // Resume from a cursor mid-epoch-two.
    let mut resumed = Loader::new(&clips, 7, 4, 6, (0, 1), Cursor { epoch: 1, batch: 2 }).unwrap();
    assert_eq!(resumed.next_batch(), seq[7]);
    // Two ranks take the halves of each global batch.
    let mut r0 = Loader::new(&clips, 7, 4, 6, (0, 2), Cursor::default()).unwrap();
    let mut r1 = Loader::new(&clips, 7, 4, 6, (1, 2), Cursor::default()).unwrap();
    for b in &seq[..6] {
        let (a, c) = (r0.next_batch(), r1.next_batch());
        assert_eq!([a.clip_ids, c.clip_ids].concat(), b.clip_ids);
        assert_eq!([a.latents, c.latents].concat(), b.latents);
        assert_eq!([a.sample_ids, c.sample_ids].concat(), b.sample_ids);
    }
    assert_eq!(seq[0].dims, [4, 6, 3, 16, 20]);
    let err = Loader::new(&clips, 7, 3, 6, (0, 2), Cursor::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("multiple of 2"), "{err}");
    let err = Loader::new(&clips, 7, 4, 11, (0, 1), Cursor::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("20 are shorter"), "{err}");
}

#[test]
fn labels_round_trip_reach_the_batch_and_are_checked() {
    let cfg = small();
    let mut clips = render_clips(&cfg);
    for (i, c) in clips.iter_mut().enumerate() {
        c.label = Some((i % 3) as i64);
    }
    let meta = crate::DatasetMeta {
        num_classes: 3,
        ..cfg.metadata()
    };
    let bytes = write_parquet(&clips, &meta).unwrap();
    let back = read_parquet(&bytes, "l.parquet").unwrap();
    assert_eq!(back.clips, clips);
    assert_eq!(back.meta.num_classes, 3);

    let mut loader = Loader::new(&clips, 1, 4, 2, (0, 1), Cursor::default()).unwrap();
    let batch = loader.next_batch();
    let want: Vec<i64> = batch
        .clip_ids
        .iter()
        .map(|id| clips.iter().find(|c| &c.id == id).unwrap().label.unwrap())
        .collect();
    assert_eq!(batch.labels, Some(want));

    // A label outside the stated classes names the row.
    clips[4].label = Some(7);
    let bytes = write_parquet(&clips, &meta).unwrap();
    match read_parquet(&bytes, "l.parquet").unwrap_err() {
        DataError::Row { row, reason, .. } => {
            assert!(
                row == 4 && reason.contains("label 7 is outside 0..3"),
                "{reason}"
            )
        }
        other => panic!("unexpected {other}"),
    }

    // Some clips labelled, some not: refused when the dataset opens.
    let dir = std::env::temp_dir().join(format!("orrery-label-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let url = dir.to_str().unwrap().to_string();
    clips[4].label = None;
    store::runtime().block_on(async {
        store::parse(&url)
            .unwrap()
            .put("a.parquet", write_parquet(&clips, &meta).unwrap())
            .await
            .unwrap();
    });
    let err = Dataset::open(&url, 1).unwrap_err().to_string();
    assert!(
        err.contains("has a label but clip synth-000004 has none"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The footer index agrees with the rows written, and a truncated file is
/// named with what is wrong.
#[test]
fn the_footer_index_counts_rows_and_names_a_truncated_file() {
    let dir = std::env::temp_dir().join(format!("orrery-index-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = SynthConfig {
        clips: 7,
        frames: 2,
        ..SynthConfig::default()
    };
    let clips = render_clips(&cfg);
    let url = dir.to_str().unwrap().to_string();
    crate::store::write_dataset(&url, &clips, &cfg.metadata(), 3).unwrap();
    let (index, stats) = crate::index::load_or_build(&url, None).unwrap();
    let groups: Vec<usize> = index
        .files
        .iter()
        .flat_map(|f| f.row_groups.clone())
        .collect();
    assert_eq!(groups.iter().sum::<usize>(), 7);
    assert_eq!(index.rows(), 7);
    assert_eq!((stats.read, stats.reused), (3, 0));
    assert!(stats.bytes_fetched < index.bytes(), "footers only");
    assert!(
        index.files[0]
            .metadata
            .contains_key("orrery.schema_version"),
        "{:?}",
        index.files[0].metadata
    );
    let first = std::path::PathBuf::from(&index.files[0].path);
    let path = if first.is_absolute() {
        first
    } else {
        std::path::Path::new("/").join(first)
    };
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
    let err = crate::index::load_or_build(&url, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("part-00000.parquet") && err.contains("PAR1"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Row groups read one by one, with a ranged read each, give the same clips
/// as reading the whole files; each read fetches less than its file, and a
/// bad row is named by its row in the file (not in the row group).
#[test]
fn row_groups_read_by_range_equal_whole_files_and_name_bad_rows() {
    let dir = std::env::temp_dir().join(format!("orrery-rowgroups-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = SynthConfig {
        clips: 150,
        frames: 3,
        height: 8,
        width: 8,
        ..SynthConfig::default()
    };
    let mut clips = render_clips(&cfg);
    clips[140].latents[5] = f32::NAN; // file 1, row 140 - 100 = 40: its first row group
    clips[70].latents[0] = f32::INFINITY; // file 0, row 70: its second row group
    let url = dir.to_str().unwrap().to_string();
    crate::store::write_dataset(&url, &clips, &cfg.metadata(), 100).unwrap();
    let (index, _) = crate::index::load_or_build(&url, None).unwrap();
    assert_eq!(index.files[0].row_groups, vec![64, 36]);
    let loc = store::parse(&url).unwrap();
    let rt = store::runtime();
    let (mut got, mut bad) = (Vec::new(), Vec::new());
    for f in &index.files {
        let path = object_store::path::Path::from(f.path.as_str());
        let (footer, _) = rt
            .block_on(crate::index::footer(&loc, &path, f.size))
            .unwrap();
        let footer = Arc::new(footer);
        for rg in 0..f.row_groups.len() {
            let read = rt
                .block_on(crate::rowgroup::read_row_group(
                    &loc, &path, f.size, &footer, rg,
                ))
                .unwrap();
            assert!(read.bytes < f.size, "one row group, not the file");
            assert_eq!(read.rows.len(), f.row_groups[rg]);
            got.extend(read.clips().cloned());
            bad.extend(read.bad().cloned());
        }
        // All of the file's row groups in one request: the same rows.
        let n = f.row_groups.len();
        let (runs, fetched) = rt
            .block_on(crate::rowgroup::read_row_groups(
                &loc,
                &path,
                f.size,
                &footer,
                0..n,
            ))
            .unwrap();
        assert_eq!(
            fetched,
            runs.iter().map(|r| r.bytes).sum::<u64>(),
            "no gaps"
        );
        let run_rows: Vec<_> = runs.iter().flat_map(|r| r.rows.clone()).collect();
        let each: Vec<_> = (0..n)
            .flat_map(|rg| {
                rt.block_on(crate::rowgroup::read_row_group(
                    &loc, &path, f.size, &footer, rg,
                ))
                .unwrap()
                .rows
            })
            .collect();
        assert_eq!(run_rows, each);
        let err = rt
            .block_on(crate::rowgroup::read_row_group(
                &loc, &path, f.size, &footer, 9,
            ))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no row group 9"), "{err}");
    }
    let want: Vec<_> = clips
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 140 && *i != 70)
        .map(|(_, c)| c.clone())
        .collect();
    assert_eq!(got, want);
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(
        bad[0].contains("part-00000.parquet") && bad[0].contains("row 70"),
        "{bad:?}"
    );
    assert!(
        bad[1].contains("part-00001.parquet") && bad[1].contains("row 40"),
        "{bad:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
