//! The streaming loader: the same global sequence on any number of ranks,
//! bounded memory, bad rows, held-out rows, the batch queue, footer reuse.
use crate::stream::{StreamConfig, StreamLoader};
use crate::synth::{render_clips, SynthConfig};
use crate::{store, Cursor};

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
        crate::queue::BatchQueue::start(loader(&dir, &index, 0, 1, Cursor::default()), 3);
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
    let (index, _, footers) = crate::index::load_or_build_keeping_footers(url, None, 100).unwrap();
    assert!(footers.iter().all(Option::is_some));
    let (_, _, none) = crate::index::load_or_build_keeping_footers(url, None, 5).unwrap();
    assert!(none.iter().all(Option::is_none), "20 files > keep = 5");
    let mut plain = loader(&dir, &index, 0, 1, Cursor::default());
    let mut reuse = loader(&dir, &index, 0, 1, Cursor::default()).with_footers(footers);
    for _ in 0..12 {
        assert_eq!(plain.next_batch().unwrap(), reuse.next_batch().unwrap());
    }
    // One row group per file: a request for each, and one for each footer.
    assert_eq!(
        (plain.stats().blocks_read, plain.stats().requests),
        (20, 40)
    );
    assert_eq!(
        (reuse.stats().blocks_read, reuse.stats().requests),
        (20, 20)
    );
    assert!(
        reuse.stats().bytes < plain.stats().bytes,
        "{} vs {}",
        reuse.stats().bytes,
        plain.stats().bytes
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Blocks started together that are consecutive row groups of one file
/// are fetched with one request, and the batches are those of one request
/// per block.
#[test]
fn consecutive_row_groups_of_a_file_are_one_request() {
    let dir = std::env::temp_dir().join(format!("orrery-stream-runs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = SynthConfig {
        clips: 200,
        frames: 4,
        height: 8,
        width: 8,
        ..SynthConfig::default()
    };
    let url = dir.to_str().unwrap();
    store::write_dataset(url, &render_clips(&cfg), &cfg.metadata(), 100).unwrap();
    let (index, _, footers) = crate::index::load_or_build_keeping_footers(url, None, 100).unwrap();
    assert_eq!(
        index.files[0].row_groups,
        vec![64, 36],
        "2 files of 2 row groups"
    );
    let open = |prefetch: usize| {
        let cfg = StreamConfig {
            buffer: 40,
            prefetch,
            ..StreamConfig::default()
        };
        StreamLoader::new(
            url,
            index.clone(),
            cfg,
            (5, 16, 3),
            (0, 1),
            Cursor::default(),
        )
        .unwrap()
        .with_footers(footers.clone())
    };
    // Runs hold at most prefetch / 4 row groups: 7 in flight make runs of 1.
    let (mut one_by_one, mut together, mut short) = (open(1), open(8), open(7));
    for _ in 0..one_by_one.batches_per_epoch() {
        let b = one_by_one.next_batch().unwrap();
        assert_eq!(b, together.next_batch().unwrap());
        assert_eq!(b, short.next_batch().unwrap());
    }
    assert_eq!((short.stats().blocks_read, short.stats().requests), (4, 4));
    assert_eq!(
        (one_by_one.stats().blocks_read, one_by_one.stats().requests),
        (4, 4)
    );
    assert_eq!(
        (together.stats().blocks_read, together.stats().requests),
        (4, 2)
    );
    assert_eq!(together.stats().bytes, one_by_one.stats().bytes);
    std::fs::remove_dir_all(&dir).unwrap();
}
