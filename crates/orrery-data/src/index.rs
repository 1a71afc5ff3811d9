//! The dataset index: every Parquet file under a URL with its row count per
//! row group and its key-value metadata, read from the files' footers with
//! one ranged read of each file's end (64 KiB, at most a quarter of the
//! file; a second read only for a larger footer), never the data. It is cached as JSON (in a run directory, or next to the data);
//! a cached entry is reused while the file's path, size and version tag
//! (ETag, or modification time where the store has none) are unchanged.
use std::collections::BTreeMap;
use std::path::Path;

use futures::{StreamExt, TryStreamExt};
use parquet::file::metadata::ParquetMetaDataReader;
use serde::{Deserialize, Serialize};

use crate::store::{self, Location};
use crate::{DataError, Result};

/// Index format version, in the JSON.
const INDEX_VERSION: u32 = 1;
/// Bytes read from a file's end to find its footer in one request.
const SUFFIX_GUESS: u64 = 64 * 1024;
/// Footers read at once.
const IN_FLIGHT: usize = 16;

/// One file's footer summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileIndex {
    /// Path inside the store.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// The store's version tag of the file (ETag or modification time).
    pub version: String,
    /// Rows of each row group.
    pub row_groups: Vec<usize>,
    /// The file's key-value metadata (schema version, shapes, scale, ...).
    pub metadata: BTreeMap<String, String>,
}

/// Every file under a URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Index {
    /// Format version.
    pub version: u32,
    /// The URL indexed.
    pub url: String,
    /// Files, sorted by path.
    pub files: Vec<FileIndex>,
}

/// What building an index cost.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct IndexStats {
    /// Files whose footer was read.
    pub read: usize,
    /// Files reused from the cache.
    pub reused: usize,
    /// Bytes fetched (footers and tails).
    pub bytes_fetched: u64,
}

impl Index {
    /// Rows in all files.
    pub fn rows(&self) -> usize {
        self.files.iter().flat_map(|f| &f.row_groups).sum()
    }

    /// Row groups in all files.
    pub fn row_groups(&self) -> usize {
        self.files.iter().map(|f| f.row_groups.len()).sum()
    }

    /// Bytes of all files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// Read one file's footer summary ([`footer`]): the entry and the bytes fetched.
async fn read_footer(
    loc: &Location,
    meta: &object_store::ObjectMeta,
) -> Result<(FileIndex, u64, parquet::file::metadata::ParquetMetaData)> {
    let file = meta.location.to_string();
    let (parsed, fetched) = footer(loc, &meta.location, meta.size).await?;
    let metadata = crate::schema::key_values(parsed.file_metadata());
    let entry = FileIndex {
        path: file.clone(),
        size: meta.size,
        version: version_of(meta),
        row_groups: parsed
            .row_groups()
            .iter()
            .map(|rg| rg.num_rows() as usize)
            .collect(),
        metadata,
    };
    Ok((entry, fetched, parsed))
}

/// A file's parsed footer, from one ranged read of its end (a second when
/// the footer is larger; see the module docs), and the bytes fetched.
pub async fn footer(
    loc: &Location,
    path: &object_store::path::Path,
    size: u64,
) -> Result<(parquet::file::metadata::ParquetMetaData, u64)> {
    let bad = |reason: String| DataError::Schema {
        file: loc.shown(path),
        reason,
    };
    if size < 12 {
        return Err(bad(format!("{size} bytes is too short for a Parquet file")));
    }
    // One speculative suffix read usually holds the whole footer (parquet's
    // own readers do the same): one round trip instead of two on S3. It
    // stays under a quarter of the file, so an index never reads the data.
    let guess = (SUFFIX_GUESS).min(size / 4).max(8);
    let suffix = loc.get_range(path, size - guess..size).await?;
    let tail = suffix.slice(suffix.len() - 8..);
    if &tail[4..] != b"PAR1" {
        return Err(bad(
            "does not end with the Parquet magic bytes PAR1 (truncated or not Parquet)".into(),
        ));
    }
    let len = u32::from_le_bytes(tail[..4].try_into().expect("4 bytes")) as u64;
    if len + 12 > size {
        return Err(bad(format!(
            "its footer claims {len} bytes but the file has {size} (truncated)"
        )));
    }
    let (footer, fetched) = if len + 8 <= guess {
        let end = suffix.len() - 8;
        (suffix.slice(end - len as usize..end), guess)
    } else {
        let rest = loc.get_range(path, size - 8 - len..size - guess).await?;
        let mut joined = Vec::with_capacity(len as usize);
        joined.extend_from_slice(&rest);
        joined.extend_from_slice(&suffix[..suffix.len() - 8]);
        (bytes::Bytes::from(joined), guess + rest.len() as u64)
    };
    let parsed = ParquetMetaDataReader::decode_metadata(&footer)
        .map_err(|e| bad(format!("unreadable Parquet footer ({e})")))?;
    Ok((parsed, fetched))
}

fn version_of(meta: &object_store::ObjectMeta) -> String {
    meta.e_tag
        .clone()
        .unwrap_or_else(|| meta.last_modified.to_rfc3339())
}

/// List the files under `loc` and read the footers of those not in
/// `cached` (same path, size and version).
pub async fn build(loc: &Location, cached: Option<&Index>) -> Result<(Index, IndexStats)> {
    let (index, stats, _) = build_keeping_footers(loc, cached, 0).await?;
    Ok((index, stats))
}

/// The parsed footers of the files an index read (by file, `None` for
/// those taken from the cache), for a loader to reuse.
pub type Footers = Vec<Option<std::sync::Arc<parquet::file::metadata::ParquetMetaData>>>;

/// [`build`], also handing back the parsed footers it read when there are
/// at most `keep` files (each is kilobytes: a bound for huge buckets).
pub async fn build_keeping_footers(
    loc: &Location,
    cached: Option<&Index>,
    keep: usize,
) -> Result<(Index, IndexStats, Footers)> {
    let metas = loc.list_parquet_meta().await?;
    let known: BTreeMap<&str, &FileIndex> = cached
        .filter(|c| c.version == INDEX_VERSION)
        .map(|c| c.files.iter().map(|f| (f.path.as_str(), f)).collect())
        .unwrap_or_default();
    let keep = metas.len() <= keep;
    let entries: Vec<(FileIndex, Option<u64>, Option<std::sync::Arc<_>>)> =
        futures::stream::iter(&metas)
            .map(|meta| {
                let hit = known
                    .get(meta.location.as_ref())
                    .filter(|f| f.size == meta.size && f.version == version_of(meta))
                    .map(|f| (*f).clone());
                async move {
                    match hit {
                        Some(f) => Ok((f, None, None)),
                        None => read_footer(loc, meta)
                            .await
                            .map(|(f, n, p)| (f, Some(n), keep.then(|| std::sync::Arc::new(p)))),
                    }
                }
            })
            .buffered(IN_FLIGHT)
            .try_collect()
            .await?;
    let mut stats = IndexStats::default();
    for (_, fetched, _) in &entries {
        match fetched {
            Some(n) => {
                stats.read += 1;
                stats.bytes_fetched += n;
            }
            None => stats.reused += 1,
        }
    }
    let footers = entries.iter().map(|(_, _, p)| p.clone()).collect();
    let index = Index {
        version: INDEX_VERSION,
        url: loc.url.clone(),
        files: entries.into_iter().map(|(f, _, _)| f).collect(),
    };
    Ok((index, stats, footers))
}

/// Index `url`, reusing and then updating the JSON cache at `cache` (an
/// unreadable or stale cache is rebuilt; it is written whole, then renamed).
pub fn load_or_build(url: &str, cache: Option<&Path>) -> Result<(Index, IndexStats)> {
    let (index, stats, _) = load_or_build_keeping_footers(url, cache, 0)?;
    Ok((index, stats))
}

/// [`load_or_build`], also handing back the footers read when there are at
/// most `keep` files (see [`build_keeping_footers`]).
pub fn load_or_build_keeping_footers(
    url: &str,
    cache: Option<&Path>,
    keep: usize,
) -> Result<(Index, IndexStats, Footers)> {
    let loc = store::parse(url)?;
    let cached: Option<Index> = cache
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| serde_json::from_str(&text).ok())
        .filter(|c: &Index| c.url == url);
    let (index, stats, footers) =
        store::runtime().block_on(build_keeping_footers(&loc, cached.as_ref(), keep))?;
    if let Some(path) = cache {
        let io = |e: std::io::Error| {
            DataError::Geometry(format!("writing the index cache {}: {e}", path.display()))
        };
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(&index).expect("index serializes");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
    }
    Ok((index, stats, footers))
}
