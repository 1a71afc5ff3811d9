//! Schema v1: one Parquet row per clip (see datasets/README.md).
//!
//! | column        | type          | meaning                                     |
//! |---------------|---------------|---------------------------------------------|
//! | clip_id       | utf8          | unique id of the clip                       |
//! | latents       | binary        | little-endian values, `latent_shape` order  |
//! | latent_shape  | list<int32>   | [T, C, H, W]                                |
//! | latent_dtype  | utf8          | f32, f16 or bf16                            |
//! | action_ids    | list<int32>?  | [T] discrete action per frame (optional)    |
//! | actions       | list<float32>?| [T, A] continuous action per frame (opt.)   |
//! | label         | int32?        | class label of the clip (optional)          |
//! | agent_xy      | list<float32>?| [T, 2] ground-truth agent centre (synth)    |
use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BinaryBuilder, Float32Array, Float32Builder, Int32Array,
    Int32Builder, ListArray, ListBuilder, RecordBatch, StringArray, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use crate::{DataError, Result};

/// The schema version written to and expected in file metadata.
pub const SCHEMA_VERSION: &str = "1";
/// Metadata key of the schema version.
pub const KEY_VERSION: &str = "orrery.schema_version";
/// Metadata key of the latent scale (x_model = (x_file - shift) * scale).
pub const KEY_SCALE: &str = "orrery.latent_scale";
/// Metadata key of the latent shift.
pub const KEY_SHIFT: &str = "orrery.latent_shift";
/// Metadata key of the number of discrete actions.
pub const KEY_NUM_ACTIONS: &str = "orrery.num_actions";
/// Metadata key of the width A of continuous actions.
pub const KEY_ACTION_DIM: &str = "orrery.action_dim";
/// Metadata key of the number of class labels.
pub const KEY_NUM_CLASSES: &str = "orrery.num_classes";
/// Metadata key of the generator's settings (JSON), for synthetic data.
pub const KEY_GENERATOR: &str = "orrery.generator";

/// One clip, decoded to f32.
#[derive(Debug, Clone, PartialEq)]
pub struct Clip {
    /// Unique id.
    pub id: String,
    /// [T, C, H, W].
    pub shape: [usize; 4],
    /// Values, row-major in `shape`.
    pub latents: Vec<f32>,
    /// Discrete action per frame: [T].
    pub actions: Option<Vec<i64>>,
    /// Continuous action per frame: [T, A].
    pub action_values: Option<Vec<f32>>,
    /// Class label.
    pub label: Option<i64>,
    /// Ground-truth agent centre (x, y) per frame: [T, 2] (synthetic data).
    pub agent_xy: Option<Vec<f32>>,
}

impl Clip {
    /// Values of one frame: [C, H, W].
    pub fn frame(&self, f: usize) -> &[f32] {
        let len = self.shape[1] * self.shape[2] * self.shape[3];
        &self.latents[f * len..(f + 1) * len]
    }
}

/// File-level metadata.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DatasetMeta {
    /// Latent scale.
    pub scale: f64,
    /// Latent shift.
    pub shift: f64,
    /// Number of discrete actions (0 if none).
    pub num_actions: usize,
    /// Number of class labels (0 if none or not stated).
    pub num_classes: usize,
    /// Width A of continuous actions (0 if none).
    pub action_dim: usize,
    /// Generator settings, if synthetic.
    pub generator: Option<String>,
}

/// A decoded file.
#[derive(Debug, Clone)]
pub struct ParquetClips {
    /// Its clips.
    pub clips: Vec<Clip>,
    /// Its metadata.
    pub meta: DatasetMeta,
}

fn schema(with_actions: bool, with_values: bool, with_labels: bool, with_xy: bool) -> Schema {
    let list = |t: DataType| DataType::List(Arc::new(Field::new("item", t, true)));
    let mut fields = vec![
        Field::new("clip_id", DataType::Utf8, false),
        Field::new("latents", DataType::Binary, false),
        Field::new("latent_shape", list(DataType::Int32), false),
        Field::new("latent_dtype", DataType::Utf8, false),
    ];
    if with_actions {
        fields.push(Field::new("action_ids", list(DataType::Int32), true));
    }
    if with_values {
        fields.push(Field::new("actions", list(DataType::Float32), true));
    }
    if with_labels {
        fields.push(Field::new("label", DataType::Int32, true));
    }
    if with_xy {
        fields.push(Field::new("agent_xy", list(DataType::Float32), true));
    }
    Schema::new(fields)
}

/// Encode clips (as f32) into one Parquet file with schema-v1 metadata.
pub fn write_parquet(clips: &[Clip], meta: &DatasetMeta) -> Result<Bytes> {
    let err = |reason: String| DataError::Schema {
        file: "(writing)".into(),
        reason,
    };
    let with_actions = clips.iter().any(|c| c.actions.is_some());
    let with_values = clips.iter().any(|c| c.action_values.is_some());
    let with_labels = clips.iter().any(|c| c.label.is_some());
    let with_xy = clips.iter().any(|c| c.agent_xy.is_some());
    let (mut ids, mut lat, mut dtype) = (
        StringBuilder::new(),
        BinaryBuilder::new(),
        StringBuilder::new(),
    );
    let mut shapes = ListBuilder::new(Int32Builder::new());
    let mut actions = ListBuilder::new(Int32Builder::new());
    let mut xy = ListBuilder::new(Float32Builder::new());
    let mut labels = Int32Builder::new();
    let mut values = ListBuilder::new(Float32Builder::new());
    for c in clips {
        match &c.action_values {
            Some(a) => values.append_value(a.iter().map(|&x| Some(x))),
            None => values.append_null(),
        }
        labels.append_option(c.label.map(|l| l as i32));
        ids.append_value(&c.id);
        let bytes: Vec<u8> = c.latents.iter().flat_map(|v| v.to_le_bytes()).collect();
        lat.append_value(&bytes);
        shapes.append_value(c.shape.iter().map(|&d| Some(d as i32)));
        dtype.append_value("f32");
        match &c.actions {
            Some(a) => actions.append_value(a.iter().map(|&x| Some(x as i32))),
            None => actions.append_null(),
        }
        match &c.agent_xy {
            Some(a) => xy.append_value(a.iter().map(|&x| Some(x))),
            None => xy.append_null(),
        }
    }
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(ids.finish()),
        Arc::new(lat.finish()),
        Arc::new(shapes.finish()),
        Arc::new(dtype.finish()),
    ];
    if with_actions {
        columns.push(Arc::new(actions.finish()));
    }
    if with_values {
        columns.push(Arc::new(values.finish()));
    }
    if with_labels {
        columns.push(Arc::new(labels.finish()));
    }
    if with_xy {
        columns.push(Arc::new(xy.finish()));
    }
    let schema = Arc::new(schema(with_actions, with_values, with_labels, with_xy));
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| err(e.to_string()))?;
    let mut kv = vec![
        KeyValue::new(KEY_VERSION.into(), SCHEMA_VERSION.to_string()),
        KeyValue::new(KEY_SCALE.into(), meta.scale.to_string()),
        KeyValue::new(KEY_SHIFT.into(), meta.shift.to_string()),
        KeyValue::new(KEY_NUM_ACTIONS.into(), meta.num_actions.to_string()),
        KeyValue::new(KEY_NUM_CLASSES.into(), meta.num_classes.to_string()),
        KeyValue::new(KEY_ACTION_DIM.into(), meta.action_dim.to_string()),
    ];
    if let Some(g) = &meta.generator {
        kv.push(KeyValue::new(KEY_GENERATOR.into(), g.clone()));
    }
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap()))
        .set_max_row_group_row_count(Some(64))
        .set_key_value_metadata(Some(kv))
        .build();
    let mut out = Vec::new();
    let mut writer =
        ArrowWriter::try_new(&mut out, schema, Some(props)).map_err(|e| err(e.to_string()))?;
    writer.write(&batch).map_err(|e| err(e.to_string()))?;
    writer.close().map_err(|e| err(e.to_string()))?;
    Ok(Bytes::from(out))
}

fn column<'a, T: 'static>(
    batch: &'a RecordBatch,
    name: &str,
    file: &str,
    required: bool,
) -> Result<Option<&'a T>> {
    match batch.column_by_name(name) {
        None if required => Err(DataError::Schema {
            file: file.into(),
            reason: format!(
                "missing column `{name}`; schema v1 needs clip_id, latents, latent_shape, latent_dtype (see datasets/README.md), found: {}",
                batch.schema().fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ")
            ),
        }),
        None => Ok(None),
        Some(col) => col.as_any().downcast_ref::<T>().map(Some).ok_or_else(|| DataError::Schema {
            file: file.into(),
            reason: format!("column `{name}` has type {}, which schema v1 does not allow", col.data_type()),
        }),
    }
}

fn list_values<T: 'static + Array>(list: &ListArray, row: usize) -> Option<T>
where
    T: From<arrow::array::ArrayData>,
{
    if list.is_null(row) {
        return None;
    }
    Some(T::from(list.value(row).to_data()))
}

/// Little-endian f32 / f16 / bf16 bytes to finite f32 values (n of them).
pub(crate) fn decode_latents(
    bytes: &[u8],
    dtype: &str,
    n: usize,
) -> std::result::Result<Vec<f32>, String> {
    let width = match dtype {
        "f32" => 4,
        "f16" | "bf16" => 2,
        other => {
            return Err(format!(
                "latent_dtype {other:?} is not one of f32, f16, bf16"
            ))
        }
    };
    if bytes.len() != n * width {
        return Err(format!(
            "latents hold {} bytes but latent_shape and {dtype} need {}",
            bytes.len(),
            n * width
        ));
    }
    let vals: Vec<f32> = match dtype {
        "f32" => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        "f16" => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
    };
    if let Some(i) = vals.iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "latents hold a non-finite value ({}) at flat index {i}",
            vals[i]
        ));
    }
    Ok(vals)
}

/// Decode one Parquet file, checking the schema and every row; the first
/// bad row is an error naming the file and row.
pub fn read_parquet(bytes: &Bytes, file: &str) -> Result<ParquetClips> {
    let (clips, mut bad) = read_parquet_lenient(bytes, file)?;
    match bad.is_empty() {
        true => Ok(clips),
        false => Err(bad.swap_remove(0)),
    }
}

/// A Parquet file's key-value metadata (keys without a value are left out).
pub(crate) fn key_values<C: FromIterator<(String, String)> + Default>(
    meta: &parquet::file::metadata::FileMetaData,
) -> C {
    meta.key_value_metadata()
        .map(|kv| {
            kv.iter()
                .filter_map(|e| e.value.clone().map(|v| (e.key.clone(), v)))
                .collect()
        })
        .unwrap_or_default()
}

/// A file's [`DatasetMeta`] from its key-value metadata (checking the
/// schema version).
pub fn dataset_meta<M>(kv: &M, file: &str) -> Result<DatasetMeta>
where
    for<'k> &'k M: IntoIterator<Item = (&'k String, &'k String)>,
{
    let schema_err = |reason: String| DataError::Schema {
        file: file.to_string(),
        reason,
    };
    let get = |k: &str| {
        kv.into_iter()
            .find(|(key, _)| key.as_str() == k)
            .map(|(_, v)| v)
    };
    match get(KEY_VERSION).map(String::as_str) {
        Some(SCHEMA_VERSION) | None => {}
        Some(v) => {
            return Err(schema_err(format!(
                "schema version {v} is not supported (this orrery reads {SCHEMA_VERSION})"
            )))
        }
    }
    let num = |k: &str, default: f64| -> Result<f64> {
        get(k)
            .map(|v| match v.parse::<f64>() {
                Ok(x) if x.is_finite() => Ok(x),
                Ok(_) => Err(schema_err(format!(
                    "metadata {k} = {v:?} is not a finite number (every latent would become NaN): rewrite the dataset with a finite value"
                ))),
                Err(_) => Err(schema_err(format!("metadata {k} = {v:?} is not a number"))),
            })
            .unwrap_or(Ok(default))
    };
    Ok(DatasetMeta {
        scale: num(KEY_SCALE, 1.0)?,
        shift: num(KEY_SHIFT, 0.0)?,
        num_actions: num(KEY_NUM_ACTIONS, 0.0)? as usize,
        num_classes: num(KEY_NUM_CLASSES, 0.0)? as usize,
        action_dim: num(KEY_ACTION_DIM, 0.0)? as usize,
        generator: get(KEY_GENERATOR).cloned(),
    })
}

/// Decode one Parquet file, keeping the good rows and returning each bad
/// row's error (file-level problems, such as an unreadable file or missing
/// columns, are still an error).
pub fn read_parquet_lenient(bytes: &Bytes, file: &str) -> Result<(ParquetClips, Vec<DataError>)> {
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(bytes.clone()).map_err(|e| DataError::Schema {
            file: file.to_string(),
            reason: format!("not a readable Parquet file ({e})"),
        })?;
    decode_lenient(builder, file, 0)
}

/// Row `r`'s action ids, if the file has them: one per frame, each within
/// 0..num_actions of the metadata (when it gives one).
fn row_action_ids(
    col: Option<&ListArray>,
    r: usize,
    frames: usize,
    meta: &DatasetMeta,
) -> std::result::Result<Option<Vec<i64>>, String> {
    let Some(a) = col.and_then(|a| list_values::<Int32Array>(a, r)) else {
        return Ok(None);
    };
    if a.len() != frames || a.null_count() > 0 {
        return Err(format!(
            "action_ids has {} entries for {frames} frames",
            a.len()
        ));
    }
    if let Some(bad) = a
        .values()
        .iter()
        .find(|&&x| x < 0 || (meta.num_actions > 0 && x as usize >= meta.num_actions))
    {
        return Err(format!(
            "action id {bad} is outside 0..{}",
            meta.num_actions
        ));
    }
    Ok(Some(a.values().iter().map(|&x| x as i64).collect()))
}

/// Row `r`'s continuous actions, if the file has them: frames x A finite values.
fn row_action_values(
    col: Option<&ListArray>,
    r: usize,
    frames: usize,
    meta: &DatasetMeta,
) -> std::result::Result<Option<Vec<f32>>, String> {
    let Some(a) = col.and_then(|a| list_values::<Float32Array>(a, r)) else {
        return Ok(None);
    };
    if a.len() != frames * meta.action_dim || a.null_count() > 0 {
        return Err(format!(
            "actions has {} values, not frames x {KEY_ACTION_DIM} = {frames} x {}",
            a.len(),
            meta.action_dim
        ));
    }
    if let Some(i) = a.values().iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "actions hold a non-finite value ({}) at flat index {i}",
            a.value(i)
        ));
    }
    Ok(Some(a.values().to_vec()))
}

/// Row `r`'s class label, if any: within 0..num_classes of the metadata.
fn row_label(
    col: Option<&Int32Array>,
    r: usize,
    meta: &DatasetMeta,
) -> std::result::Result<Option<i64>, String> {
    match col.filter(|l| !l.is_null(r)).map(|l| l.value(r)) {
        Some(l) if l < 0 || (meta.num_classes > 0 && l as usize >= meta.num_classes) => {
            Err(format!(
                "label {l} is outside 0..{} (metadata {KEY_NUM_CLASSES})",
                meta.num_classes
            ))
        }
        l => Ok(l.map(i64::from)),
    }
}

/// Decode what `builder` reads (a whole file, or some of its row groups
/// whose first row is row `first_row` of the file), keeping the good rows
/// and returning each bad row's error, numbered by its row in the file.
pub(crate) fn decode_lenient<T: parquet::file::reader::ChunkReader + 'static>(
    builder: ParquetRecordBatchReaderBuilder<T>,
    file: &str,
    first_row: usize,
) -> Result<(ParquetClips, Vec<DataError>)> {
    let schema_err = |reason: String| DataError::Schema {
        file: file.to_string(),
        reason,
    };
    let kv: HashMap<String, String> = key_values(builder.metadata().file_metadata());
    let meta = dataset_meta(&kv, file)?;
    let reader = builder.build().map_err(|e| schema_err(e.to_string()))?;
    let (mut clips, mut bad, mut rows_before) = (Vec::new(), Vec::new(), first_row);
    for batch in reader {
        let batch = batch.map_err(|e| schema_err(format!("reading row group: {e}")))?;
        let ids = column::<StringArray>(&batch, "clip_id", file, true)?.unwrap();
        let lat = column::<BinaryArray>(&batch, "latents", file, true)?.unwrap();
        let shapes = column::<ListArray>(&batch, "latent_shape", file, true)?.unwrap();
        let dtypes = column::<StringArray>(&batch, "latent_dtype", file, true)?.unwrap();
        let actions = column::<ListArray>(&batch, "action_ids", file, false)?;
        let xy = column::<ListArray>(&batch, "agent_xy", file, false)?;
        let labels = column::<Int32Array>(&batch, "label", file, false)?;
        let values = column::<ListArray>(&batch, "actions", file, false)?;
        if values.is_some() && meta.action_dim == 0 {
            return Err(schema_err(format!(
                "has a continuous `actions` column but no metadata {KEY_ACTION_DIM} giving its width A"
            )));
        }
        let decode = |r: usize| -> Result<Clip> {
            let row = rows_before + r;
            let row_err = |reason: String| DataError::Row {
                file: file.to_string(),
                row,
                reason,
            };
            let shape: Int32Array =
                list_values(shapes, r).ok_or_else(|| row_err("latent_shape is null".into()))?;
            if shape.len() != 4 || shape.iter().any(|d| d.is_none_or(|d| d <= 0)) {
                return Err(row_err(format!(
                    "latent_shape {:?} is not four positive dims [T, C, H, W]",
                    shape.values()
                )));
            }
            let s: Vec<usize> = shape.values().iter().map(|&d| d as usize).collect();
            let shape = [s[0], s[1], s[2], s[3]];
            let n = shape.iter().product();
            let mut latents = decode_latents(lat.value(r), dtypes.value(r), n).map_err(row_err)?;
            if meta.scale != 1.0 || meta.shift != 0.0 {
                latents
                    .iter_mut()
                    .for_each(|v| *v = ((*v as f64 - meta.shift) * meta.scale) as f32);
            }
            let actions = row_action_ids(actions, r, shape[0], &meta).map_err(row_err)?;
            let action_values = row_action_values(values, r, shape[0], &meta).map_err(row_err)?;
            let label = row_label(labels, r, &meta).map_err(row_err)?;
            let agent_xy = xy
                .and_then(|a| list_values::<Float32Array>(a, r))
                .map(|a| a.values().to_vec());
            Ok(Clip {
                id: ids.value(r).to_string(),
                shape,
                latents,
                actions,
                action_values,
                label,
                agent_xy,
            })
        };
        for r in 0..batch.num_rows() {
            match decode(r) {
                Ok(clip) => clips.push(clip),
                Err(e) => bad.push(e),
            }
        }
        rows_before += batch.num_rows();
    }
    Ok((ParquetClips { clips, meta }, bad))
}
