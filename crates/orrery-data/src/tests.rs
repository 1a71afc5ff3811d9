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

mod streaming {
    use super::*;
    use crate::stream::{StreamConfig, StreamLoader};

    /// 200 clips of 4 frames (clip 13 has 2) in files of 10: 20 blocks.
    fn dataset(
        tag: &str,
        edit: impl FnOnce(&mut Vec<crate::Clip>),
    ) -> (std::path::PathBuf, crate::index::Index) {
        let dir = std::env::temp_dir().join(format!("orrery-stream-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = SynthConfig {
            clips: 200,
            frames: 4,
            height: 8,
            width: 8,
            ..SynthConfig::default()
        };
        let mut clips = render_clips(&cfg);
        clips[13].shape[0] = 2;
        clips[13].latents.truncate(2 * 3 * 64);
        clips[13].actions.as_mut().unwrap().truncate(2);
        clips[13].agent_xy.as_mut().unwrap().truncate(4);
        edit(&mut clips);
        store::write_dataset(dir.to_str().unwrap(), &clips, &cfg.metadata(), 10).unwrap();
        let (index, _) = crate::index::load_or_build(dir.to_str().unwrap(), None).unwrap();
        (dir, index)
    }

    fn loader(
        dir: &std::path::Path,
        index: &crate::index::Index,
        rank: usize,
        world: usize,
        cursor: Cursor,
    ) -> StreamLoader {
        let cfg = StreamConfig {
            buffer: 40,
            prefetch: 4,
            ..StreamConfig::default()
        };
        StreamLoader::new(
            dir.to_str().unwrap(),
            index.clone(),
            cfg,
            (5, 16, 3),
            (rank, world),
            cursor,
        )
        .unwrap()
    }

    /// What each step's global batch holds: (sample id, clip id, latents) per row.
    type Rows = Vec<(u64, String, Vec<f32>)>;

    fn rows(b: &crate::Batch) -> Rows {
        let len = b.latents.len() / b.dims[0];
        (0..b.dims[0])
            .map(|i| {
                (
                    b.sample_ids[i],
                    b.clip_ids[i].clone(),
                    b.latents[i * len..(i + 1) * len].to_vec(),
                )
            })
            .collect()
    }

    /// The same global sequence on 1, 2 and 4 ranks, resumed mid-epoch on
    /// another world size, with no clip twice in an epoch and only the
    /// short clip left out.
    #[test]
    fn the_stream_is_the_same_on_any_world_size_and_resumes_elastically() {
        let (dir, index) = dataset("elastic", |_| {});
        let steps = 20; // 12 batches per epoch: crosses into epoch 1
        let mut one = loader(&dir, &index, 0, 1, Cursor::default());
        let single: Vec<Rows> = (0..steps)
            .map(|_| rows(&one.next_batch().unwrap()))
            .collect();
        assert_eq!(one.batches_per_epoch(), 12);
        let epoch0: Vec<&String> = single[..12].iter().flatten().map(|r| &r.1).collect();
        let mut unique = epoch0.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), epoch0.len(), "no clip twice in an epoch");
        assert!(
            epoch0.len() >= 12 * 16 - 1,
            "only the short clip may be missing"
        );
        // 4 ranks for 5 steps, then 2 ranks from their cursor, then 1 -> 4.
        let mut joined: Vec<Rows> = Vec::new();
        let mut run = |world: usize, cursor: Cursor, n: usize| -> Cursor {
            let mut ranks: Vec<_> = (0..world)
                .map(|r| loader(&dir, &index, r, world, cursor))
                .collect();
            for _ in 0..n {
                joined.push(
                    ranks
                        .iter_mut()
                        .flat_map(|l| rows(&l.next_batch().unwrap()))
                        .collect(),
                );
            }
            ranks[0].cursor()
        };
        let c = run(4, Cursor::default(), 5);
        let c = run(2, c, 5);
        let c = run(1, c, 3);
        run(4, c, steps - 13);
        assert_eq!(joined, single);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Memory stays bounded: blocks are dropped after their last use, and
    /// far fewer than all of them are ever in memory at once.
    #[test]
    fn blocks_leave_memory_after_their_last_use() {
        let (dir, index) = dataset("memory", |_| {});
        let mut l = loader(&dir, &index, 0, 1, Cursor::default());
        let mut most = 0;
        for _ in 0..12 {
            l.next_batch().unwrap();
            most = most.max(l.stats().resident_rows);
        }
        assert_eq!(
            l.stats().blocks_read,
            20,
            "each block read once in the epoch"
        );
        // buffer 40 + (prefetch 4 + the block in hand) x 10 rows
        assert!(most <= 90, "at most {most} of 200 rows resident");
        eprintln!("resident rows, most: {most}");
        assert_eq!(
            l.stats().resident_rows,
            0,
            "nothing left at the end of the epoch"
        );
        // Two ranks keep only their own rows.
        let (mut a, mut b) = (
            loader(&dir, &index, 0, 2, Cursor::default()),
            loader(&dir, &index, 1, 2, Cursor::default()),
        );
        let mut most2 = 0;
        for _ in 0..12 {
            a.next_batch().unwrap();
            b.next_batch().unwrap();
            most2 = most2.max(a.stats().resident_rows.max(b.stats().resident_rows));
        }
        assert!(
            most2 < most,
            "a rank of 2 holds {most2} rows, one process {most}"
        );
        eprintln!("resident rows per rank of 2, most: {most2}");
        assert!(
            l.stats().bytes < index.bytes() + 20 * 4096,
            "{} bytes read",
            l.stats().bytes
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A bad row is an error naming file and row, or (with max_bad_rows)
    /// left out and counted.
    #[test]
    fn a_bad_row_is_named_or_skipped_and_counted() {
        let (dir, index) = dataset("bad", |clips| clips[57].latents[3] = f32::NAN);
        let mut strict = loader(&dir, &index, 0, 1, Cursor::default());
        let err = (0..12)
            .find_map(|_| strict.next_batch().err())
            .expect("the NaN row fails");
        let msg = err.to_string();
        assert!(
            msg.contains("part-00005.parquet, row 7") && msg.contains("max_bad_rows"),
            "{msg}"
        );
        let cfg = StreamConfig {
            buffer: 40,
            prefetch: 4,
            max_bad_rows: 1,
            ..StreamConfig::default()
        };
        let mut lenient = StreamLoader::new(
            dir.to_str().unwrap(),
            index,
            cfg,
            (5, 16, 3),
            (0, 1),
            Cursor::default(),
        )
        .unwrap();
        let got: usize = (0..12).map(|_| lenient.next_batch().unwrap().dims[0]).sum();
        assert_eq!(got, 12 * 16 - 2, "the bad and the short clip left out");
        assert_eq!(lenient.stats().bad_rows.len(), 1);
        assert_eq!(lenient.stats().skipped_short, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The held-out clips are the index's last rows, and training never
    /// takes them.
    #[test]
    fn held_out_rows_are_the_last_and_never_trained_on() {
        let (dir, index) = dataset("holdout", |_| {});
        let cfg = StreamConfig {
            buffer: 40,
            holdout: 25,
            ..StreamConfig::default()
        };
        let mut l = StreamLoader::new(
            dir.to_str().unwrap(),
            index,
            cfg,
            (5, 16, 3),
            (0, 1),
            Cursor::default(),
        )
        .unwrap();
        let held: Vec<String> = l
            .holdout_clips()
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect();
        let want: Vec<String> = render_clips(&SynthConfig {
            clips: 200,
            frames: 4,
            height: 8,
            width: 8,
            ..SynthConfig::default()
        })
        .into_iter()
        .skip(175)
        .map(|c| c.id)
        .collect();
        assert_eq!(held, want);
        assert_eq!(l.batches_per_epoch(), 175 / 16);
        for _ in 0..l.batches_per_epoch() {
            let b = l.next_batch().unwrap();
            assert!(
                b.clip_ids.iter().all(|id| !held.contains(id)),
                "trained on a held-out clip"
            );
        }
        assert_eq!(l.meta().unwrap().num_actions, crate::synth::NUM_ACTIONS);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Behind the loader thread's queue: the same batches, and a cursor
    /// that follows the batches taken, not those queued; an error arrives
    /// in its turn.
    #[test]
    fn the_batch_queue_gives_the_loaders_batches_and_cursors() {
        let (dir, index) = dataset("queue", |clips| clips[57].latents[3] = f32::NAN);
        let mut direct = loader(&dir, &index, 0, 1, Cursor::default());
        let mut queued =
            crate::stream::BatchQueue::start(loader(&dir, &index, 0, 1, Cursor::default()), 3);
        let mut served = 0;
        for _ in 0..30 {
            match (direct.next_batch(), queued.next_batch()) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a, b);
                    assert_eq!(direct.cursor(), queued.cursor());
                    assert_eq!(direct.last_global_rows(), queued.last_global_rows());
                    served += 1;
                }
                (Err(a), Err(b)) => {
                    assert_eq!(a.to_string(), b.to_string());
                    break;
                }
                (a, b) => panic!(
                    "direct {:?} vs queued {:?}",
                    a.map(|x| x.dims),
                    b.map(|x| x.dims)
                ),
            }
        }
        assert!(served < 12, "the NaN row is in epoch 0");
        assert!(queued.next_batch().is_err(), "nothing after the error");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Footers the index read are reused: the loader then fetches only row
    /// groups, and the batches do not change.
    #[test]
    fn footers_from_the_index_save_a_read_per_file() {
        let (dir, _) = dataset("footers", |_| {});
        let url = dir.to_str().unwrap();
        let (index, _, footers) =
            crate::index::load_or_build_keeping_footers(url, None, 100).unwrap();
        assert!(footers.iter().all(Option::is_some));
        let (_, _, none) = crate::index::load_or_build_keeping_footers(url, None, 5).unwrap();
        assert!(none.iter().all(Option::is_none), "20 files > keep = 5");
        let mut plain = loader(&dir, &index, 0, 1, Cursor::default());
        let mut reuse = loader(&dir, &index, 0, 1, Cursor::default()).with_footers(footers);
        for _ in 0..12 {
            assert_eq!(plain.next_batch().unwrap(), reuse.next_batch().unwrap());
        }
        assert!(
            reuse.stats().bytes < plain.stats().bytes,
            "{} vs {}",
            reuse.stats().bytes,
            plain.stats().bytes
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
