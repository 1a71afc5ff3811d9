//! A TensorBoard event-file writer: scalars, PNG images and the hparams
//! plugin's session records (a run's hyperparameters, for the HParams tab).
//!
//! Written by hand on `prost` because tensorboard-rs pulls protobuf 2
//! (RUSTSEC-2024-0437) and panics on hparams. The format: TFRecord framing
//! (u64 length, masked CRC-32C of the length, the bytes, masked CRC-32C of the
//! bytes) around `tensorflow.Event` protos (event.proto, summary.proto).
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;

#[derive(Clone, PartialEq, prost::Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(oneof = "What", tags = "3, 5")]
    what: Option<What>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum What {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
}

#[derive(Clone, PartialEq, prost::Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<SummaryValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SummaryValue {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(oneof = "ValueKind", tags = "2, 4, 8")]
    kind: Option<ValueKind>,
    #[prost(message, optional, tag = "9")]
    metadata: Option<SummaryMetadata>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum ValueKind {
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    #[prost(message, tag = "4")]
    Image(Image),
    #[prost(message, tag = "8")]
    Tensor(TensorProto),
}

/// summary.proto's SummaryMetadata: which plugin a value is for.
#[derive(Clone, PartialEq, prost::Message)]
struct SummaryMetadata {
    #[prost(message, optional, tag = "1")]
    plugin_data: Option<PluginData>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PluginData {
    #[prost(string, tag = "1")]
    plugin_name: String,
    #[prost(bytes = "vec", tag = "2")]
    content: Vec<u8>,
}

/// tensor.proto's TensorProto, as far as the hparams plugin's empty f32
/// tensor of shape [0] needs it.
#[derive(Clone, PartialEq, prost::Message)]
struct TensorProto {
    #[prost(int32, tag = "1")]
    dtype: i32,
    #[prost(message, optional, tag = "2")]
    tensor_shape: Option<TensorShape>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TensorShape {
    #[prost(message, repeated, tag = "2")]
    dim: Vec<Dim>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Dim {
    #[prost(int64, tag = "1")]
    size: i64,
}

/// The hparams plugin's plugin_data.proto: HParamsPluginData, version 0,
/// with a session's start or end.
#[derive(Clone, PartialEq, prost::Message)]
struct HParamsPluginData {
    #[prost(int32, tag = "1")]
    version: i32,
    #[prost(oneof = "HParamsData", tags = "3, 4")]
    data: Option<HParamsData>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum HParamsData {
    #[prost(message, tag = "3")]
    SessionStart(SessionStartInfo),
    #[prost(message, tag = "4")]
    SessionEnd(SessionEndInfo),
}

#[derive(Clone, PartialEq, prost::Message)]
struct SessionStartInfo {
    #[prost(map = "string, message", tag = "1")]
    hparams: std::collections::HashMap<String, ProtoValue>,
    #[prost(string, tag = "4")]
    group_name: String,
    #[prost(double, tag = "5")]
    start_time_secs: f64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SessionEndInfo {
    /// api.proto's Status: 1 success, 2 failure.
    #[prost(int32, tag = "1")]
    status: i32,
    #[prost(double, tag = "2")]
    end_time_secs: f64,
}

/// google.protobuf.Value, for a number, a string or a bool.
#[derive(Clone, PartialEq, prost::Message)]
struct ProtoValue {
    #[prost(oneof = "ProtoKind", tags = "2, 3, 4")]
    kind: Option<ProtoKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum ProtoKind {
    #[prost(double, tag = "2")]
    Number(f64),
    #[prost(string, tag = "3")]
    Text(String),
    #[prost(bool, tag = "4")]
    Bool(bool),
}

/// A hyperparameter's value, as the HParams tab shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum HParam {
    /// A number.
    Number(f64),
    /// Text (also any TOML value that is not a number or a bool).
    Text(String),
    /// A boolean.
    Bool(bool),
}

#[derive(Clone, PartialEq, prost::Message)]
struct Image {
    #[prost(int32, tag = "1")]
    height: i32,
    #[prost(int32, tag = "2")]
    width: i32,
    #[prost(int32, tag = "3")]
    colorspace: i32,
    #[prost(bytes = "vec", tag = "4")]
    encoded_image_string: Vec<u8>,
}

fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// Appends events to one `events.out.tfevents.*` file.
pub struct EventWriter {
    out: BufWriter<File>,
    path: PathBuf,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl EventWriter {
    /// Create a new event file in `dir`.
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        let path = dir.join(format!(
            "events.out.tfevents.{}.{}.{}.orrery",
            now() as u64,
            host,
            std::process::id()
        ));
        let mut w = EventWriter {
            out: BufWriter::new(File::create(&path)?),
            path,
        };
        w.write(Event {
            wall_time: now(),
            step: 0,
            what: Some(What::FileVersion("brain.Event:2".into())),
        })?;
        w.flush()?;
        Ok(w)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, event: Event) -> std::io::Result<()> {
        let data = event.encode_to_vec();
        let len = (data.len() as u64).to_le_bytes();
        self.out.write_all(&len)?;
        self.out.write_all(&masked_crc(&len).to_le_bytes())?;
        self.out.write_all(&data)?;
        self.out.write_all(&masked_crc(&data).to_le_bytes())
    }

    fn summary(&mut self, step: u64, value: SummaryValue) -> std::io::Result<()> {
        self.write(Event {
            wall_time: now(),
            step: step as i64,
            what: Some(What::Summary(Summary { value: vec![value] })),
        })
    }

    /// Log a scalar.
    pub fn scalar(&mut self, tag: &str, step: u64, value: f64) -> std::io::Result<()> {
        self.summary(
            step,
            SummaryValue {
                tag: tag.into(),
                kind: Some(ValueKind::SimpleValue(value as f32)),
                metadata: None,
            },
        )
    }

    /// Log an RGB image given as PNG bytes.
    pub fn image_png(
        &mut self,
        tag: &str,
        step: u64,
        png: Vec<u8>,
        height: usize,
        width: usize,
    ) -> std::io::Result<()> {
        let image = Image {
            height: height as i32,
            width: width as i32,
            colorspace: 3,
            encoded_image_string: png,
        };
        self.summary(
            step,
            SummaryValue {
                tag: tag.into(),
                kind: Some(ValueKind::Image(image)),
                metadata: None,
            },
        )
    }

    /// Record that this run (a session of the HParams tab) started with
    /// `hparams`; TensorBoard infers the experiment (the columns) from the
    /// sessions of all runs and takes the metrics from their scalars.
    pub fn hparams_start(
        &mut self,
        hparams: &[(String, HParam)],
        group: &str,
    ) -> std::io::Result<()> {
        let hparams = hparams
            .iter()
            .map(|(k, v)| {
                let kind = match v {
                    HParam::Number(x) => ProtoKind::Number(*x),
                    HParam::Text(t) => ProtoKind::Text(t.clone()),
                    HParam::Bool(b) => ProtoKind::Bool(*b),
                };
                (k.clone(), ProtoValue { kind: Some(kind) })
            })
            .collect();
        let start = HParamsData::SessionStart(SessionStartInfo {
            hparams,
            group_name: group.into(),
            start_time_secs: now(),
        });
        self.hparams_record("_hparams_/session_start_info", start)
    }

    /// Record that this run ended, successfully or not.
    pub fn hparams_end(&mut self, success: bool) -> std::io::Result<()> {
        let end = HParamsData::SessionEnd(SessionEndInfo {
            status: if success { 1 } else { 2 },
            end_time_secs: now(),
        });
        self.hparams_record("_hparams_/session_end_info", end)
    }

    /// A value for the hparams plugin: its data in the metadata, with the
    /// empty f32 tensor of shape [0] the plugin's own writer attaches.
    fn hparams_record(&mut self, tag: &str, data: HParamsData) -> std::io::Result<()> {
        let content = HParamsPluginData {
            version: 0,
            data: Some(data),
        }
        .encode_to_vec();
        let empty = TensorProto {
            dtype: 1, // DT_FLOAT
            tensor_shape: Some(TensorShape {
                dim: vec![Dim { size: 0 }],
            }),
        };
        self.summary(
            0,
            SummaryValue {
                tag: tag.into(),
                kind: Some(ValueKind::Tensor(empty)),
                metadata: Some(SummaryMetadata {
                    plugin_data: Some(PluginData {
                        plugin_name: "hparams".into(),
                        content,
                    }),
                }),
            },
        )?;
        self.flush()
    }

    /// Push buffered events to disk.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_crc_matches_tensorflow() {
        // TensorFlow's crc32c::Mask of crc32c("") = 0 is 0xa282ead8; of "a" (0xc1d04330):
        assert_eq!(masked_crc(b""), 0xa282_ead8);
        assert_eq!(crc32c::crc32c(b"a"), 0xc1d0_4330);
        assert_eq!(
            masked_crc(b"a"),
            0xc1d0_4330u32.rotate_right(15).wrapping_add(0xa282_ead8)
        );
    }

    #[test]
    fn records_are_framed_with_lengths() {
        let dir = std::env::temp_dir().join(format!("orrery-tb-{}", std::process::id()));
        let mut w = EventWriter::create(&dir).unwrap();
        w.scalar("loss", 3, 0.5).unwrap();
        w.flush().unwrap();
        let bytes = std::fs::read(w.path()).unwrap();
        let first = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let second_at = 8 + 4 + first + 4;
        let second =
            u64::from_le_bytes(bytes[second_at..second_at + 8].try_into().unwrap()) as usize;
        assert_eq!(bytes.len(), second_at + 16 + second);
        let event = Event::decode(&bytes[second_at + 12..second_at + 12 + second]).unwrap();
        assert_eq!(event.step, 3);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
