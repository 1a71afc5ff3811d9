//! orrery-data: video latents in Parquet, read through `object_store`.
//!
//! The principal types are [`Clip`] (one row of the schema in
//! datasets/README.md: latents `[T, C, H, W]`, optional per-frame actions),
//! [`Dataset`] (every clip under a URL, split into training and held-out
//! clips) and [`Loader`], which walks a deterministic global order of the
//! training clips in batches `[b, t, c, h, w]` from a resumable [`Cursor`].
//! [`synth`] renders the embedded toy world used by the quickstart.
//!
//! ```
//! use orrery_data::{schema, synth::{SynthConfig, render_clips}};
//! let cfg = SynthConfig { clips: 2, frames: 4, ..SynthConfig::default() };
//! let clips = render_clips(&cfg);
//! let bytes = schema::write_parquet(&clips, &cfg.metadata()).unwrap();
//! let back = schema::read_parquet(&bytes, "memory").unwrap();
//! assert_eq!(back.clips, clips);
//! ```
#![deny(missing_docs)]

pub mod agree;
pub mod import;
pub mod index;
mod loader;
pub mod order;
pub mod queue;
pub mod rowgroup;
pub mod schema;
pub mod store;
pub mod stream;
pub mod synth;

pub use loader::{Batch, Cursor, Dataset, Loader};
pub use schema::{Clip, DatasetMeta};

/// Errors from reading or writing data; each names the file (and row) at fault.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The URL cannot be understood.
    #[error("bad data URL {url:?}: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// Why it is refused.
        reason: String,
    },
    /// The object store failed.
    #[error("object store error at {url}: {source}")]
    Store {
        /// Where.
        url: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// The object store refused for a reason the user can fix (no
    /// credentials, an http endpoint without allow_http).
    #[error("{url}: {hint}")]
    Access {
        /// Where.
        url: String,
        /// What is wrong and what to change, with the store's own words.
        hint: String,
    },
    /// No Parquet files where some were expected.
    #[error("no .parquet files found under {url}: check data.url, or create a dataset with `orrery data synth --out {url}`")]
    Empty {
        /// Where.
        url: String,
    },
    /// A file is not valid Parquet or does not follow the schema.
    #[error("{file}: {reason}")]
    Schema {
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// A row holds bad values.
    #[error("{file}, row {row}: {reason}")]
    Row {
        /// The file.
        file: String,
        /// Row within the file.
        row: usize,
        /// What is wrong.
        reason: String,
    },
    /// Clips do not fit the requested batch geometry.
    #[error("{0}")]
    Geometry(String),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, DataError>;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_stream;
