//! Object storage access: a URL (plain path, file://, memory://, s3://,
//! gs://, az://) becomes a store and a prefix; files are listed, read whole
//! and written through it.
//!
//! Cloud stores take their credentials and settings from the usual
//! environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_REGION`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, `GOOGLE_SERVICE_ACCOUNT`,
//! `AZURE_STORAGE_ACCOUNT_NAME`, ...) and from the URL's query, whose keys
//! are object_store's config keys: `s3://bucket/prefix?endpoint=http://127.0.0.1:9000&allow_http=true&region=us-east-1&virtual_hosted_style_request=false`.
//! Transient errors are retried with exponential backoff (object_store's
//! retry config: by default up to 10 retries within 3 minutes; the query
//! keys `retries` and `retry_timeout_s` change that), and each retry is
//! logged by object_store (`orrery` prints those lines on stderr).
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
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

/// Install rustls's ring crypto provider once (object_store's HTTP client is
/// built without one, to keep aws-lc and OpenSSL out of the build).
fn tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another provider is already installed: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A cloud store from the environment plus the URL's query options.
fn cloud(parsed: &Url, bad: &dyn Fn(String) -> DataError) -> Result<Arc<dyn ObjectStore>> {
    tls_provider();
    let mut base = parsed.clone();
    base.set_query(None);
    let mut retry = object_store::RetryConfig::default();
    let mut options: Vec<(String, String)> = Vec::new();
    for (k, v) in parsed.query_pairs() {
        let number = || {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| bad(format!("{k}={v} must be a non-negative number")))
        };
        match k.as_ref() {
            "retries" => retry.max_retries = number()? as usize,
            "retry_timeout_s" => {
                retry.retry_timeout = std::time::Duration::try_from_secs_f64(number()?)
                    .map_err(|e| bad(format!("retry_timeout_s={v}: {e}")))?
            }
            _ => options.push((k.into_owned(), v.into_owned())),
        }
    }
    let key_err = |k: &str, e: object_store::Error| {
        bad(format!(
            "unknown storage option {k:?} in the URL query ({e})"
        ))
    };
    let built: std::result::Result<Arc<dyn ObjectStore>, object_store::Error> =
        match parsed.scheme() {
            "s3" | "s3a" => {
                let mut b = AmazonS3Builder::from_env()
                    .with_url(base.as_str())
                    .with_retry(retry);
                for (k, v) in &options {
                    b = b.with_config(k.parse().map_err(|e| key_err(k, e))?, v);
                }
                b.build().map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
            }
            "gs" => {
                let mut b = GoogleCloudStorageBuilder::from_env()
                    .with_url(base.as_str())
                    .with_retry(retry);
                for (k, v) in &options {
                    b = b.with_config(k.parse().map_err(|e| key_err(k, e))?, v);
                }
                b.build().map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
            }
            _ => {
                let mut b = MicrosoftAzureBuilder::from_env()
                    .with_url(base.as_str())
                    .with_retry(retry);
                for (k, v) in &options {
                    b = b.with_config(k.parse().map_err(|e| key_err(k, e))?, v);
                }
                b.build().map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
            }
        };
    built.map_err(|e| match access_hint(parsed.as_str(), &e) {
        Some(hint) => bad(hint),
        None => bad(format!("cannot set up the store: {e}")),
    })
}

/// The whole chain of an error, one cause after another.
fn chain_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cur = c.source();
    }
    text
}

/// A sentence saying what to change, for the store errors a user causes
/// and can fix: no credentials (the SDK chain ends at the instance metadata
/// service) and a plain-http endpoint without `allow_http`.
pub(crate) fn access_hint(url: &str, e: &object_store::Error) -> Option<String> {
    let text = chain_text(e);
    let innermost = text.rsplit(": ").next().unwrap_or(&text).trim().to_string();
    if text.contains("URL scheme is not allowed") || text.contains("builder error for url (http://")
    {
        return Some(format!(
            "the endpoint uses plain http, which is refused by default: add allow_http=true to the URL query (e.g. {url}{}allow_http=true) or set AWS_ALLOW_HTTP=true (object_store said: {innermost})",
            if url.contains('?') { "&" } else { "?" }
        ));
    }
    let imds = text.contains("169.254.169.254") || text.contains("latest/api/token");
    let gcp_meta = text.contains("metadata.google.internal")
        || text.contains("169.254.169.254/computeMetadata");
    if imds
        || gcp_meta
        || text.contains("Missing credentials")
        || text.contains("NoCredentialProviders")
    {
        let how = if url.starts_with("gs://") {
            "set GOOGLE_SERVICE_ACCOUNT (a service-account key file) or GOOGLE_APPLICATION_CREDENTIALS"
        } else if url.starts_with("az://") || url.starts_with("abfs") || url.starts_with("azure://")
        {
            "set AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or a SAS token)"
        } else {
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_WEB_IDENTITY_TOKEN_FILE), or add skip_signature=true to the URL for a public bucket"
        };
        return Some(format!(
            "no credentials found: {how}; without them the store asked this machine's instance metadata service, which gave none (object_store said: {innermost})"
        ));
    }
    None
}

/// Parse a data URL: a plain path, `file://`, `memory://`, `s3://bucket/prefix`,
/// `gs://bucket/prefix` or `az://container/prefix` (options in the query).
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
    let (store, prefix) = match parsed.scheme() {
        "file" | "memory" => {
            let (store, prefix) =
                object_store::parse_url(&parsed).map_err(|e| bad(e.to_string()))?;
            (Arc::from(store), prefix)
        }
        "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss" | "azure" => {
            let store = cloud(&parsed, &bad)?;
            // s3://bucket/path, gs://bucket/path, az://container/path: the
            // host is the bucket or container, the path the prefix.
            let prefix = Path::from_url_path(parsed.path()).map_err(|e| bad(e.to_string()))?;
            (store, prefix)
        }
        other => {
            return Err(bad(format!(
                "scheme {other}:// is not supported: use a local path, file://, memory://, s3://, gs:// or az://"
            )))
        }
    };
    Ok(Location {
        store,
        prefix,
        url: url.to_string(),
    })
}

/// Files fetched at once while reading a dataset.
const IN_FLIGHT: usize = 8;

/// One file read by [`read_files`].
pub(crate) struct FileRead {
    /// Bytes fetched.
    pub bytes: usize,
    /// Its good rows and metadata, and each bad row's error.
    pub part: Result<(crate::schema::ParquetClips, Vec<DataError>)>,
}

/// Fetch and decode `paths`, [`IN_FLIGHT`] files at a time: fetches overlap
/// each other and the decoding of earlier files, which runs on tokio's
/// blocking threads, so files decode in parallel. Results come in file
/// order, a failed fetch as that file's error (so the first problem in file
/// order is the one reported), and at most [`IN_FLIGHT`] files' bytes are
/// held at once.
pub(crate) async fn read_files(loc: &Location, paths: &[Path]) -> Vec<FileRead> {
    use futures::StreamExt;
    futures::stream::iter(paths)
        .map(|path| async move {
            let bytes = match loc.get(path).await {
                Ok(b) => b,
                Err(e) => {
                    return FileRead {
                        bytes: 0,
                        part: Err(e),
                    }
                }
            };
            let (file, n) = (loc.shown(path), bytes.len());
            let name = file.clone();
            let part = tokio::task::spawn_blocking(move || {
                crate::schema::read_parquet_lenient(&bytes, &file)
            })
            .await
            .unwrap_or_else(|e| {
                Err(DataError::Schema {
                    file: name.clone(),
                    reason: format!("decoding failed: {e}"),
                })
            });
            FileRead { bytes: n, part }
        })
        .buffered(IN_FLIGHT)
        .collect()
        .await
}

/// A small current-thread runtime for the blocking API.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

impl Location {
    /// An object's path as the user would write it: the URL they gave
    /// (without its query) followed by the path below the prefix, so a
    /// local `/data/x` shows as `/data/x/part-00000.parquet`, not as the
    /// store's `data/x/part-00000.parquet`.
    pub fn shown(&self, path: &Path) -> String {
        let base = self.url.split('?').next().unwrap_or(&self.url);
        match path.prefix_match(&self.prefix) {
            Some(parts) => {
                let rest: Vec<String> = parts.map(|p| p.as_ref().to_string()).collect();
                if rest.is_empty() {
                    base.to_string()
                } else {
                    format!("{}/{}", base.trim_end_matches('/'), rest.join("/"))
                }
            }
            None => path.to_string(),
        }
    }

    fn store_err(&self, source: object_store::Error) -> DataError {
        match access_hint(&self.url, &source) {
            Some(hint) => DataError::Access {
                url: self.url.clone(),
                hint,
            },
            None => DataError::Store {
                url: self.url.clone(),
                source,
            },
        }
    }

    /// The `.parquet` files under the prefix (or the prefix itself if it is
    /// one), sorted by path.
    pub async fn list_parquet(&self) -> Result<Vec<Path>> {
        Ok(self
            .list_parquet_meta()
            .await?
            .into_iter()
            .map(|m| m.location)
            .collect())
    }

    /// As [`Location::list_parquet`], with each file's size and version tag.
    pub async fn list_parquet_meta(&self) -> Result<Vec<object_store::ObjectMeta>> {
        if self.prefix.as_ref().ends_with(".parquet") {
            let meta = self
                .store
                .head(&self.prefix)
                .await
                .map_err(|e| self.store_err(e))?;
            return Ok(vec![meta]);
        }
        let metas: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&self.prefix))
            .try_collect()
            .await
            .map_err(|e| self.store_err(e))?;
        let mut files: Vec<object_store::ObjectMeta> = metas
            .into_iter()
            .filter(|m| m.location.as_ref().ends_with(".parquet"))
            .collect();
        files.sort_by(|a, b| a.location.cmp(&b.location));
        if files.is_empty() {
            return Err(DataError::Empty {
                url: self.url.clone(),
            });
        }
        Ok(files)
    }

    /// Read bytes [start, end) of one object.
    pub async fn get_range(&self, path: &Path, range: std::ops::Range<u64>) -> Result<Bytes> {
        self.store
            .get_range(path, range)
            .await
            .map_err(|e| self.store_err(e))
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

/// The `.parquet` files under `url`, as paths relative to it
/// (`part-00000.parquet`, or `sub/x.parquet` in a subfolder); empty when
/// there are none or the location does not exist yet.
pub fn parquet_names(url: &str) -> Result<Vec<String>> {
    let loc = parse(url)?;
    runtime().block_on(async {
        let files = match loc.list_parquet().await {
            Ok(files) => files,
            Err(DataError::Empty { .. }) => return Ok(Vec::new()),
            Err(DataError::Store {
                source: object_store::Error::NotFound { .. },
                ..
            }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(files
            .iter()
            .filter_map(|p| p.prefix_match(&loc.prefix))
            .map(|parts| {
                parts
                    .map(|p| p.as_ref().to_string())
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .collect())
    })
}

/// Delete the files `names` (relative to `url`, as [`parquet_names`] gives them).
pub fn remove_names(url: &str, names: &[String]) -> Result<()> {
    let loc = parse(url)?;
    runtime().block_on(async {
        for name in names {
            let path = loc.prefix.clone().join(name.as_str());
            loc.store
                .delete(&path)
                .await
                .map_err(|e| loc.store_err(e))?;
        }
        Ok(())
    })
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
    /// Whether rows carry discrete actions.
    pub actions: bool,
    /// Whether rows carry continuous actions.
    pub action_values: bool,
    /// Whether rows carry class labels.
    pub labels: bool,
    /// File metadata.
    pub meta: crate::DatasetMeta,
}

/// Every problem of every file under `url`: (file, problem) pairs, with a
/// file that cannot be read at all or lacks columns reported once and the
/// bad rows of the others reported by row. Empty when the dataset is clean.
pub fn validate(url: &str) -> Result<Vec<(String, String)>> {
    let loc = parse(url)?;
    runtime().block_on(async {
        let mut problems = Vec::new();
        for path in loc.list_parquet().await? {
            let file = loc.shown(&path);
            let found = match loc.get(&path).await {
                Err(e) => vec![e.to_string()],
                Ok(bytes) => match crate::schema::read_parquet_lenient(&bytes, &file) {
                    Err(e) => vec![e.to_string()],
                    Ok((_, rows)) => rows.iter().map(|e| e.to_string()).collect(),
                },
            };
            problems.extend(found.into_iter().map(|p| (file.clone(), p)));
        }
        Ok(problems)
    })
}

/// Read and validate every file under `url` (every row is decoded and checked).
pub fn inspect(url: &str) -> Result<Vec<FileReport>> {
    let loc = parse(url)?;
    runtime().block_on(async {
        let mut out = Vec::new();
        let mut summaries = Vec::new();
        for path in loc.list_parquet().await? {
            let bytes = loc.get(&path).await?;
            let part = crate::schema::read_parquet(&bytes, &loc.shown(&path))?;
            summaries.extend(part.clips.iter().map(crate::agree::Summary::of));
            let mut shapes: Vec<[usize; 4]> = part.clips.iter().map(|c| c.shape).collect();
            shapes.sort();
            shapes.dedup();
            out.push(FileReport {
                path: loc.shown(&path),
                bytes: bytes.len(),
                clips: part.clips.len(),
                shapes,
                actions: part.clips.iter().any(|c| c.actions.is_some()),
                action_values: part.clips.iter().any(|c| c.action_values.is_some()),
                labels: part.clips.iter().any(|c| c.label.is_some()),
                meta: part.meta,
            });
        }
        // What training checks across files, too.
        crate::agree::check(&mut summaries, url)?;
        Ok(out)
    })
}

/// Timings of reading a dataset once ([`bench_read`]).
#[derive(Debug, Clone)]
pub struct ReadBench {
    /// Files read.
    pub files: usize,
    /// Clips decoded.
    pub clips: usize,
    /// Bytes fetched from the store.
    pub bytes: usize,
    /// Latent values decoded (f32).
    pub values: usize,
    /// Seconds listing, fetching, decoding and checking every file, with
    /// fetches and decoding overlapped as a run does it.
    pub total_s: f64,
}

/// List, fetch and decode every file under `url` once, as a run does at
/// start ([`crate::Dataset::open`]), and time it.
pub fn bench_read(url: &str) -> Result<ReadBench> {
    let loc = parse(url)?;
    runtime().block_on(async {
        let t0 = std::time::Instant::now();
        let paths = loc.list_parquet().await?;
        let reads = read_files(&loc, &paths).await;
        let (mut clips, mut values, mut bytes) = (0, 0, 0);
        for r in reads {
            let (part, bad) = r.part?;
            if let Some(e) = bad.into_iter().next() {
                return Err(e);
            }
            clips += part.clips.len();
            values += part.clips.iter().map(|c| c.latents.len()).sum::<usize>();
            bytes += r.bytes;
        }
        Ok(ReadBench {
            files: paths.len(),
            clips,
            bytes,
            values,
            total_s: t0.elapsed().as_secs_f64(),
        })
    })
}

/// Read file `name` (relative to `url`, as [`parquet_names`] gives it)
/// whole and decode it; a bad row is an error naming the file and row.
pub fn read_named(url: &str, name: &str) -> Result<crate::schema::ParquetClips> {
    let loc = parse(url)?;
    let path = loc.prefix.clone().join(name);
    let bytes = runtime().block_on(loc.get(&path))?;
    crate::schema::read_parquet(&bytes, &loc.shown(&path))
}

/// Write `clips` as file `name` under `url` (one Parquet file, schema v1).
/// Returns the path written.
pub fn write_named(
    url: &str,
    name: &str,
    clips: &[crate::Clip],
    meta: &crate::DatasetMeta,
) -> Result<String> {
    let loc = parse(url)?;
    let bytes = crate::schema::write_parquet(clips, meta)?;
    runtime().block_on(async { Ok(loc.put(name, bytes).await?.to_string()) })
}
