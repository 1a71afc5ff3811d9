//! A TensorBoard event-file writer: scalars and PNG images.
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
    #[prost(oneof = "ValueKind", tags = "2, 4")]
    kind: Option<ValueKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum ValueKind {
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    #[prost(message, tag = "4")]
    Image(Image),
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
            },
        )
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
