//! The model contract of `model.onnx` (see the README's "Model contract").
//!
//! - input `image`: float32 `N x 3 x H x W`, RGB, values 0..255, `N`, `H`, `W` dynamic;
//!   BGR reordering and mean subtraction are nodes inside the graph;
//! - output `train_ids`: uint8 `N x H x W`, the arg-max train id of every pixel;
//! - output `scores`: float32 `N x C x H x W`, the class logits;
//! - `metadata_props`: the keys of [`ModelMeta`], each value a JSON document, under
//!   the prefix `lse.`.
//!
//! The trainer writes this metadata ([`ModelMeta::to_props`]) and everything that
//! loads a model reads it back ([`ModelMeta::from_props`]), so both sides share one
//! definition.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::labels;

/// Name of the graph input.
pub const INPUT: &str = "image";
/// Name of the arg-max output.
pub const OUTPUT_TRAIN_IDS: &str = "train_ids";
/// Name of the logits output.
pub const OUTPUT_SCORES: &str = "scores";
/// Prefix of every metadata key this project writes.
pub const META_PREFIX: &str = "lse.";
/// Version of this metadata layout.
pub const CONTRACT_VERSION: u32 = 1;

/// The post-processing protocol (metadata key `lse.upsampling`), the reference
/// implementation's evaluation: softmax over the classes at the model's output size,
/// bilinear upsampling of the probabilities to the requested size with
/// `align_corners = true` (`F.upsample(output, (1024, 2048), mode='bilinear',
/// align_corners=True)`: output pixel `o` samples source coordinate
/// `o * (in - 1) / (out - 1)`, so the corner pixels of both grids coincide), then the
/// arg-max. `lse segment`, `lse label`, the server ([`crate::predict`]) and
/// `lse-train eval` all follow it; a model that names another protocol is rejected.
pub const UPSAMPLING: &str = "softmax-bilinear-align-corners-argmax";

fn default_upsampling() -> String {
    UPSAMPLING.to_string()
}

/// Floating-point precision of a network's weights and compute (`lse.precision`), and
/// the precision TensorRT builds an engine in (`--precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// float32 everywhere.
    #[default]
    Fp32,
    /// float16 weights and compute; the `image` input, the `scores` output and the
    /// arg-max stay float32 (Cast nodes at both ends).
    Fp16,
    /// int8 weights (per output channel) and 8-bit activations (per tensor) as
    /// QuantizeLinear/DequantizeLinear pairs (QDQ), calibrated on target images; the
    /// `image` input, the preprocessing, `scores` and the arg-max stay float32.
    Int8,
}

crate::choice!(Precision, "precision" {
    Fp32 => "fp32", "float32 everywhere";
    Fp16 => "fp16", "float16 weights and compute; input, scores and arg-max stay float32";
    Int8 => "int8", "int8 weights and 8-bit activations (QDQ, calibrated); input and scores stay float32";
});

/// Everything a model carries about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    /// Version of this contract's layout.
    pub contract_version: u32,
    /// Version of the project that wrote the model.
    pub producer_version: String,
    /// `"vgg16-fcn8s"`.
    pub architecture: String,
    /// Channel width multiplier (1.0 is the paper's network).
    pub width: f64,
    /// Class names, indexed by train id.
    pub class_names: Vec<String>,
    /// Cityscapes label id of each train id.
    pub label_ids: Vec<u8>,
    /// RGB colour of each train id.
    pub colors: Vec<[u8; 3]>,
    /// The input size the model was trained at: `[width, height]`.
    pub train_size: [u32; 2],
    /// The mean the graph subtracts, (B, G, R).
    pub mean_bgr: [f32; 3],
    /// Source domain, e.g. `"gta5"`, `"synthia"`, `"synth-gta5"`, or `"none"`.
    pub source: String,
    /// Target domain, e.g. `"cityscapes"`, or `"none"`.
    pub target: String,
    /// `"init"`, `"source-only"` or `"lse"`.
    pub method: String,
    /// The run's resolved settings (free-form JSON).
    #[serde(default)]
    pub settings: serde_json::Value,
    /// The evaluation result, if any (free-form JSON: mIoU, per-class IoU, subset).
    #[serde(default)]
    pub evaluation: Option<serde_json::Value>,
    /// The post-processing protocol, [`UPSAMPLING`] (models written before this key
    /// existed read as [`UPSAMPLING`]).
    #[serde(default = "default_upsampling")]
    pub upsampling: String,
    /// The network's weights and compute (models written before this key existed are
    /// float32).
    #[serde(default)]
    pub precision: Precision,
    /// How an int8 model's activation ranges were calibrated (free-form JSON: method,
    /// the dataset's summary, image count); absent for float models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<serde_json::Value>,
}

/// Errors reading a model's metadata.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error(
        "the model has no LSE metadata (key `{key}` missing): it was not exported by lse-train"
    )]
    Missing { key: String },
    #[error("the model's metadata key `{key}` is invalid: {message}")]
    Invalid { key: String, message: String },
}

impl ModelMeta {
    /// Metadata for the Cityscapes 19-class label space with everything else given.
    pub fn cityscapes(width: f64, train_size: [u32; 2]) -> Self {
        let classes = labels::train_classes();
        Self {
            contract_version: CONTRACT_VERSION,
            producer_version: crate::VERSION.to_string(),
            architecture: "vgg16-fcn8s".into(),
            width,
            class_names: classes.iter().map(|l| l.name.to_string()).collect(),
            label_ids: classes.iter().map(|l| l.id).collect(),
            colors: classes.iter().map(|l| l.color).collect(),
            train_size,
            mean_bgr: crate::imageio::MEAN_BGR,
            source: "none".into(),
            target: "none".into(),
            method: "init".into(),
            settings: serde_json::Value::Null,
            evaluation: None,
            upsampling: default_upsampling(),
            precision: Precision::Fp32,
            calibration: None,
        }
    }

    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// The metadata as `(key, value)` pairs for ONNX `metadata_props`.
    pub fn to_props(&self) -> Vec<(String, String)> {
        let value = serde_json::to_value(self).expect("metadata serialises");
        let serde_json::Value::Object(map) = value else {
            unreachable!("ModelMeta is a struct")
        };
        map.into_iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (format!("{META_PREFIX}{k}"), v.to_string()))
            .collect()
    }

    /// Reads the metadata back from `metadata_props` (keys without the prefix are ignored).
    pub fn from_props(props: &BTreeMap<String, String>) -> Result<Self, ContractError> {
        let mut map = serde_json::Map::new();
        for (k, v) in props {
            if let Some(key) = k.strip_prefix(META_PREFIX) {
                let value: serde_json::Value =
                    serde_json::from_str(v).map_err(|e| ContractError::Invalid {
                        key: k.clone(),
                        message: e.to_string(),
                    })?;
                map.insert(key.to_string(), value);
            }
        }
        for key in ["contract_version", "class_names", "train_size"] {
            if !map.contains_key(key) {
                return Err(ContractError::Missing {
                    key: format!("{META_PREFIX}{key}"),
                });
            }
        }
        let meta: Self = serde_json::from_value(serde_json::Value::Object(map)).map_err(|e| {
            ContractError::Invalid {
                key: "lse.*".into(),
                message: e.to_string(),
            }
        })?;
        let n = meta.class_names.len();
        if meta.label_ids.len() != n || meta.colors.len() != n || n == 0 || n > 255 {
            return Err(ContractError::Invalid {
                key: "lse.class_names".into(),
                message: format!(
                    "{} class names, {} label ids, {} colours",
                    n,
                    meta.label_ids.len(),
                    meta.colors.len()
                ),
            });
        }
        if meta.upsampling != UPSAMPLING {
            return Err(ContractError::Invalid {
                key: "lse.upsampling".into(),
                message: format!(
                    "`{}`: this runtime post-processes as `{UPSAMPLING}` only",
                    meta.upsampling
                ),
            });
        }
        if meta.train_size[0] == 0 || meta.train_size[1] == 0 {
            return Err(ContractError::Invalid {
                key: "lse.train_size".into(),
                message: format!("{:?}", meta.train_size),
            });
        }
        Ok(meta)
    }

    /// Lookup table train id -> label id from this model's own metadata.
    pub fn label_lut(&self) -> [u8; 256] {
        let mut lut = [0u8; 256];
        for (t, &id) in self.label_ids.iter().enumerate() {
            lut[t] = id;
        }
        lut
    }

    /// Lookup table train id -> colour from this model's own metadata.
    pub fn color_lut(&self) -> [[u8; 3]; 256] {
        let mut lut = [[0u8; 3]; 256];
        for (t, &c) in self.colors.iter().enumerate() {
            lut[t] = c;
        }
        lut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn props_round_trip() {
        let mut m = ModelMeta::cityscapes(0.125, [256, 128]);
        m.evaluation = Some(serde_json::json!({"miou": 12.5}));
        let props: BTreeMap<_, _> = m.to_props().into_iter().collect();
        assert!(props.contains_key("lse.class_names"));
        assert_eq!(ModelMeta::from_props(&props).unwrap(), m);
    }

    #[test]
    fn upsampling_protocol_is_recorded_and_checked() {
        let m = ModelMeta::cityscapes(0.125, [256, 128]);
        let mut props: BTreeMap<_, _> = m.to_props().into_iter().collect();
        assert_eq!(
            props["lse.upsampling"],
            "\"softmax-bilinear-align-corners-argmax\""
        );
        // Models exported before the key existed follow the same protocol.
        props.remove("lse.upsampling");
        assert_eq!(
            ModelMeta::from_props(&props).unwrap().upsampling,
            UPSAMPLING
        );
        props.insert("lse.upsampling".into(), "\"bilinear-half-pixel\"".into());
        let err = ModelMeta::from_props(&props).unwrap_err();
        assert!(err.to_string().contains("lse.upsampling"), "{err}");
    }

    #[test]
    fn precision_is_recorded_and_checked() {
        let mut m = ModelMeta::cityscapes(0.125, [256, 128]);
        m.precision = Precision::Fp16;
        let mut props: BTreeMap<_, _> = m.to_props().into_iter().collect();
        assert_eq!(props["lse.precision"], "\"fp16\"");
        assert_eq!(
            ModelMeta::from_props(&props).unwrap().precision,
            Precision::Fp16
        );
        // Models exported before the key existed are float32.
        props.remove("lse.precision");
        assert_eq!(
            ModelMeta::from_props(&props).unwrap().precision,
            Precision::Fp32
        );
        props.insert("lse.precision".into(), "\"int8\"".into());
        assert_eq!(
            ModelMeta::from_props(&props).unwrap().precision,
            Precision::Int8
        );
        props.insert("lse.precision".into(), "\"int4\"".into());
        let err = ModelMeta::from_props(&props).unwrap_err();
        assert!(err.to_string().contains("int4"), "{err}");
        assert_eq!("fp16".parse::<Precision>(), Ok(Precision::Fp16));
        assert!("bf16".parse::<Precision>().unwrap_err().contains("bf16"));
    }

    #[test]
    fn missing_metadata_is_named() {
        let err = ModelMeta::from_props(&BTreeMap::new()).unwrap_err();
        assert!(err.to_string().contains("lse.contract_version"), "{err}");
    }
}
