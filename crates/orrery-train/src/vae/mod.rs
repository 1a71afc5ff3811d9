//! Latent diffusion's first stage: training the video autoencoder
//! (`orrery vae train`), its checkpoints, its reconstruction scores, and
//! encoding pixel clips into latent Parquet with it (`orrery encode`).
pub mod ckpt;
pub mod decode;
pub mod encode;
mod run;
pub mod scores;
pub mod step;

pub use run::{reconstruct, train_vae, train_vae_on, VaeSummary};

#[cfg(test)]
mod tests;
