//! Object storage access: a URL (plain path, file://, memory://) becomes a store
//! and a prefix; files are listed, read whole and written through it.
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::{path::Path, ObjectStore, ObjectStoreExt, PutPayload};
use url::Url;

use crate::{DataError, Result};

/// A store plus the prefix (directory or single file) a URL names.
#[derive(Clone, Debug)]
pub struct Location {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// The path inside the store.
    pub prefix: Path,
    /// The URL as the user gave it, for messages.
    pub url: String,
}

/// Parse a data URL: `s3://`, `gs://` and `az://` come with the data-plane work;
/// here plain paths, `file://` and `memory://`.
pub fn parse(url: &str) -> Result<Location> {
    let bad = |reason: String| DataError::Url {
        url: url.to_string(),
        reason,
    };
    let parsed = if url.contains("://") {
        Url::parse(url).map_err(|e| bad(e.to_string()))?
    } else {
        let abs = std::path::absolute(url).map_err(|e| bad(e.to_string()))?;
        Url::from_file_path(&abs).map_err(|_| bad("not an absolute path".into()))?
    };
    match parsed.scheme() {
        "file" | "memory" => {}
        other => {
            return Err(bad(format!(
                "scheme {other}:// is not supported yet: use a local path, file:// or memory://"
            )))
        }
    }
    let (store, prefix) = object_store::parse_url(&parsed).map_err(|e| bad(e.to_string()))?;
    Ok(Location {
        store: Arc::from(store),
        prefix,
        url: url.to_string(),
    })
}

/// A small current-thread runtime for the blocking API.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

impl Location {
    fn store_err(&self, source: object_store::Error) -> DataError {
        DataError::Store {
            url: self.url.clone(),
            source,
        }
    }

    /// The `.parquet` files under the prefix (or the prefix itself if it is
    /// one), sorted by path.
    pub async fn list_parquet(&self) -> Result<Vec<Path>> {
        if self.prefix.as_ref().ends_with(".parquet") {
            self.store
                .head(&self.prefix)
                .await
                .map_err(|e| self.store_err(e))?;
            return Ok(vec![self.prefix.clone()]);
        }
        let metas: Vec<_> = self
            .store
            .list(Some(&self.prefix))
            .try_collect()
            .await
            .map_err(|e| self.store_err(e))?;
        let mut files: Vec<Path> = metas
            .into_iter()
            .map(|m| m.location)
            .filter(|p| p.as_ref().ends_with(".parquet"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(DataError::Empty {
                url: self.url.clone(),
            });
        }
        Ok(files)
    }

    /// Read one object whole.
    pub async fn get(&self, path: &Path) -> Result<Bytes> {
        let res = self.store.get(path).await.map_err(|e| self.store_err(e))?;
        res.bytes().await.map_err(|e| self.store_err(e))
    }

    /// Write one object under the prefix.
    pub async fn put(&self, name: &str, data: Bytes) -> Result<Path> {
        let path = self.prefix.clone().join(name);
        self.store
            .put(&path, PutPayload::from(data))
            .await
            .map_err(|e| self.store_err(e))?;
        Ok(path)
    }
}

/// Write clips as Parquet shards `part-NNNNN.parquet` of at most
/// `clips_per_file` rows under `url`. Returns the paths written.
pub fn write_dataset(
    url: &str,
    clips: &[crate::Clip],
    meta: &crate::DatasetMeta,
    clips_per_file: usize,
) -> Result<Vec<String>> {
    let loc = parse(url)?;
    runtime().block_on(async {
        let mut written = Vec::new();
        for (i, chunk) in clips.chunks(clips_per_file.max(1)).enumerate() {
            let bytes = crate::schema::write_parquet(chunk, meta)?;
            written.push(
                loc.put(&format!("part-{i:05}.parquet"), bytes)
                    .await?
                    .to_string(),
            );
        }
        Ok(written)
    })
}

/// What `orrery data inspect` reports about one file.
#[derive(Debug, Clone)]
pub struct FileReport {
    /// Path in the store.
    pub path: String,
    /// Size in bytes.
    pub bytes: usize,
    /// Clips.
    pub clips: usize,
    /// Distinct [T, C, H, W] shapes seen.
    pub shapes: Vec<[usize; 4]>,
    /// Whether rows carry actions.
    pub actions: bool,
    /// File metadata.
    pub meta: crate::DatasetMeta,
}

/// Read and validate every file under `url` (every row is decoded and checked).
pub fn inspect(url: &str) -> Result<Vec<FileReport>> {
    let loc = parse(url)?;
    runtime().block_on(async {
        let mut out = Vec::new();
        for path in loc.list_parquet().await? {
            let bytes = loc.get(&path).await?;
            let part = crate::schema::read_parquet(&bytes, path.as_ref())?;
            let mut shapes: Vec<[usize; 4]> = part.clips.iter().map(|c| c.shape).collect();
            shapes.sort();
            shapes.dedup();
            out.push(FileReport {
                path: path.to_string(),
                bytes: bytes.len(),
                clips: part.clips.len(),
                shapes,
                actions: part.clips.iter().any(|c| c.actions.is_some()),
                meta: part.meta,
            });
        }
        Ok(out)
    })
}
