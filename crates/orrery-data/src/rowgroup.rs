//! Row groups of a Parquet file, each run of consecutive ones read with one
//! ranged request: the streaming loader's unit of I/O. The file's footer
//! (parsed once, see [`crate::index::footer`]) gives the row groups' byte
//! spans; only those are fetched, and the decoder reads them as if they were
//! the whole file.
use std::sync::Arc;

use bytes::{Buf, Bytes};
use object_store::path::Path;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::file::metadata::ParquetMetaData;
use parquet::file::reader::{ChunkReader, Length};

use crate::schema::{decode_lenient, Clip};
use crate::store::Location;
use crate::{DataError, Result};

/// What reading one row group gave.
#[derive(Debug)]
pub struct RowGroupRead {
    /// Each row in order: its clip, or what is wrong with it (naming the
    /// file and the row's number in the file).
    pub rows: Vec<std::result::Result<Clip, String>>,
    /// Bytes fetched.
    pub bytes: u64,
}

impl RowGroupRead {
    /// The good clips, in row order.
    pub fn clips(&self) -> impl Iterator<Item = &Clip> {
        self.rows.iter().filter_map(|r| r.as_ref().ok())
    }

    /// The bad rows' errors, in row order.
    pub fn bad(&self) -> impl Iterator<Item = &String> {
        self.rows.iter().filter_map(|r| r.as_ref().err())
    }
}

/// The fetched span of a file, served at the file's own offsets (a clone
/// shares the bytes).
#[derive(Clone)]
struct Window {
    start: u64,
    bytes: Bytes,
    size: u64,
}

impl Length for Window {
    fn len(&self) -> u64 {
        self.size
    }
}

impl Window {
    fn slice(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let end = start + length as u64;
        if start < self.start || end > self.start + self.bytes.len() as u64 {
            return Err(parquet::errors::ParquetError::General(format!(
                "read of bytes {start}..{end} outside the fetched row groups {}..{}",
                self.start,
                self.start + self.bytes.len() as u64
            )));
        }
        let at = (start - self.start) as usize;
        Ok(self.bytes.slice(at..at + length))
    }
}

impl ChunkReader for Window {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        let rest = (self.start + self.bytes.len() as u64).saturating_sub(start) as usize;
        Ok(self.slice(start, rest)?.reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.slice(start, length)
    }
}

/// Read row group `rg` of the file at `path` (`size` bytes, footer
/// `footer`) with one ranged read, and decode it (leniently: bad rows come
/// back as errors naming the file and row).
pub async fn read_row_group(
    loc: &Location,
    path: &Path,
    size: u64,
    footer: &Arc<ParquetMetaData>,
    rg: usize,
) -> Result<RowGroupRead> {
    let (mut reads, _) = read_row_groups(loc, path, size, footer, rg..rg + 1).await?;
    Ok(reads.pop().expect("one row group asked for"))
}

/// Read the consecutive row groups `rgs` of one file with one ranged read
/// (their column chunks lie one after another in the file), and decode
/// each as [`read_row_group`] does. Each read's `bytes` is its own span;
/// also returns the bytes fetched (with any gaps between the spans).
pub async fn read_row_groups(
    loc: &Location,
    path: &Path,
    size: u64,
    footer: &Arc<ParquetMetaData>,
    rgs: std::ops::Range<usize>,
) -> Result<(Vec<RowGroupRead>, u64)> {
    let file = loc.shown(path);
    let bad = |reason: String| DataError::Schema {
        file: file.clone(),
        reason,
    };
    let groups = footer.row_groups();
    if rgs.is_empty() || rgs.end > groups.len() {
        return Err(bad(format!(
            "has {} row groups, no row group {} (the index is stale: rebuild it)",
            groups.len(),
            groups.len().max(rgs.start)
        )));
    }
    let mut spans = Vec::with_capacity(rgs.len());
    for rg in rgs.clone() {
        let (mut start, mut end) = (u64::MAX, 0u64);
        for col in groups[rg].columns() {
            let (s, len) = col.byte_range();
            start = start.min(s);
            end = end.max(s + len);
        }
        if start >= end || end > size {
            return Err(bad(format!(
                "row group {rg} spans bytes {start}..{end} of a {size}-byte file (corrupt footer or stale index)"
            )));
        }
        spans.push(start..end);
    }
    let start = spans.iter().map(|r| r.start).min().expect("not empty");
    let end = spans.iter().map(|r| r.end).max().expect("not empty");
    let window = Window {
        start,
        bytes: loc.get_range(path, start..end).await?,
        size,
    };
    let meta = ArrowReaderMetadata::try_new(footer.clone(), ArrowReaderOptions::default())
        .map_err(|e| bad(format!("unreadable Parquet footer ({e})")))?;
    let mut first_row: usize = groups[..rgs.start]
        .iter()
        .map(|g| g.num_rows() as usize)
        .sum();
    let mut out = Vec::with_capacity(rgs.len());
    for (rg, span) in rgs.zip(spans) {
        let builder =
            ParquetRecordBatchReaderBuilder::new_with_metadata(window.clone(), meta.clone())
                .with_row_groups(vec![rg]);
        let n = groups[rg].num_rows() as usize;
        out.push(RowGroupRead {
            rows: decode_rows(builder, &file, rg, first_row, n)?,
            bytes: span.end - span.start,
        });
        first_row += n;
    }
    Ok((out, end - start))
}

/// Decode one row group's `n` rows (the first is row `first_row` of the
/// file), each a clip or what is wrong with it.
fn decode_rows(
    builder: ParquetRecordBatchReaderBuilder<Window>,
    file: &str,
    rg: usize,
    first_row: usize,
    n: usize,
) -> Result<Vec<std::result::Result<Clip, String>>> {
    let (part, errors) = decode_lenient(builder, file, first_row)?;
    // Put the bad rows (each a DataError::Row) back among the good ones.
    let mut bad = std::collections::BTreeMap::new();
    for e in errors {
        match &e {
            DataError::Row { row, .. } => bad.insert(*row - first_row, e.to_string()),
            _ => return Err(e),
        };
    }
    let mut good = part.clips.into_iter();
    Ok((0..n)
        .map(|r| match bad.remove(&r) {
            Some(e) => Err(e),
            None => good.next().ok_or_else(|| {
                format!("{file}: row group {rg} decoded fewer rows than its footer's {n}")
            }),
        })
        .collect())
}
