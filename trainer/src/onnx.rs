//! The ONNX writer: turns an [`Fcn8s`] into a `model.onnx` that honours the model
//! contract of `lse_runtime::contract`, by walking the same [`Fcn8sSpec`] as the
//! libtorch forward pass.
//!
//! The graph: `image` (RGB 0..255, `N x 3 x H x W`, all three dynamic) → Gather
//! (RGB → BGR) → Sub (mean) → the VGG16 stages (Conv + Relu, ceil-mode MaxPool) →
//! fc6/fc7/score_fr → three ConvTranspose with the fixed bilinear kernels, with the
//! skips scaled (Mul) and cropped by `Shape` → `Add` → `Slice`, so the crops follow the
//! input size → `scores` (logits) and `train_ids` (ArgMax, Cast to uint8).
//! Opset 17, IR version 8; weights are little-endian `raw_data` initialisers.
//!
//! A float16 model (`lse.precision` = `fp16`, [`Precision::Fp16`]) keeps the contract's
//! types at both ends: the float32 input is cast to float16 after the mean is
//! subtracted, every weight and every layer is float16, and the cropped logits are cast
//! back to float32 before they become `scores` and before the ArgMax, so the arg-max
//! and the runtime's softmax run in float32. Its check is the arg-max agreement with
//! the float32 network ([`check_agreement`]).
//!
//! An int8 model (`lse.precision` = `int8`, [`Precision::Int8`]) is the float32 graph
//! in QDQ form ([`crate::quantize`]): every convolution reads its weights through
//! DequantizeLinear from int8 (one scale per output channel, with int32 biases at the
//! input scale times the weight scale), and every activation a convolution reads or
//! writes passes a QuantizeLinear/DequantizeLinear pair with its calibrated per-tensor
//! uint8 scale and zero point. The preprocessing, the skip sums, the three bilinear
//! upsampling layers (ONNX Runtime's CPU provider has no integer ConvTranspose, so
//! quantising them would cost accuracy and save nothing), the crops, `scores` and the
//! arg-max are the float32 graph's.

use std::path::{Path, PathBuf};

use lse_runtime::contract::{self, ModelMeta, Precision};
use onnx_protobuf::{
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
};
use tch::Tensor;

use crate::checkpoint::tensor_bytes;
use crate::fcn8s::{ConvSpec, Fcn8s, UpSpec};

/// The opset the graph is written for.
pub const OPSET: i64 = 17;
/// The ONNX IR version written.
pub const IR_VERSION: i64 = 8;

/// Errors of writing and checking an export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("the network has no parameter `{0}`")]
    MissingParameter(String),
    #[error("the calibration has no range for the activation `{0}`")]
    MissingCalibration(String),
    #[error(
        "parity check failed for {path}: ONNX Runtime and libtorch disagree on a {shape:?} probe: \
         max |diff| {max_diff:.3e} against logits up to {max_logit:.3e} (allowed {allowed:.3e} = \
         rtol {rtol:.0e} x max |logit| + atol {atol:.0e}); {flips} of {pixels} arg-max \
         disagreements, {unexplained} where libtorch's two classes are further apart than the \
         allowed difference"
    )]
    Parity {
        path: PathBuf,
        shape: Vec<i64>,
        max_diff: f32,
        max_logit: f32,
        allowed: f64,
        rtol: f64,
        atol: f64,
        flips: usize,
        unexplained: usize,
        pixels: usize,
    },
    #[error("parity check of {path} could not run: {message}")]
    ParityRun { path: PathBuf, message: String },
    #[error(
        "agreement check failed for {path}: the {precision} model's arg-max agrees with the \
         float32 network on {agreement:.2} % of the pixels of a {shape:?} probe ({flips} of \
         {pixels} differ); at least {min:.2} % is required"
    )]
    Agreement {
        path: PathBuf,
        precision: Precision,
        shape: Vec<i64>,
        agreement: f64,
        min: f64,
        flips: usize,
        pixels: usize,
    },
}

/// Builds the graph node by node; names stay unique through a counter.
struct Builder<'a> {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    n: usize,
    /// The type of the weights and of every layer between the two casts.
    float: DataType,
    /// The activation parameters of an int8 (QDQ) graph; `None` for float graphs.
    quant: Option<&'a crate::quantize::ActivationParams>,
    /// Activation parameters already written as initialisers.
    quant_inits: std::collections::HashSet<String>,
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INT.into();
    a.i = v;
    a
}

fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INTS.into();
    a.ints = v.to_vec();
    a
}

fn tensor_type(elem: DataType, dims: &[Result<i64, &str>]) -> TypeProto {
    let mut shape = TensorShapeProto::new();
    for d in dims {
        let mut dim = tensor_shape_proto::Dimension::new();
        dim.value = Some(match d {
            Ok(v) => tensor_shape_proto::dimension::Value::DimValue(*v),
            Err(p) => tensor_shape_proto::dimension::Value::DimParam(p.to_string()),
        });
        shape.dim.push(dim);
    }
    let mut t = type_proto::Tensor::new();
    t.elem_type = elem as i32;
    t.shape = Some(shape).into();
    let mut tp = TypeProto::new();
    tp.value = Some(type_proto::Value::TensorType(t));
    tp
}

fn value_info(name: &str, tp: TypeProto) -> ValueInfoProto {
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    v.type_ = Some(tp).into();
    v
}

impl Builder<'_> {
    fn fresh(&mut self, base: &str) -> String {
        self.n += 1;
        format!("{base}_{}", self.n)
    }

    fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> String {
        let out = self.fresh(name);
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.name = format!("{name}/{op}_{}", self.n);
        n.input = inputs.iter().map(|s| s.to_string()).collect();
        n.output = vec![out.clone()];
        n.attribute = attrs;
        self.nodes.push(n);
        out
    }

    fn init(&mut self, name: &str, dims: &[i64], elem: DataType, bytes: Vec<u8>) -> String {
        let mut t = TensorProto::new();
        t.name = name.into();
        t.dims = dims.to_vec();
        t.data_type = elem as i32;
        t.raw_data = bytes;
        self.inits.push(t);
        name.to_string()
    }

    fn const_f32(&mut self, name: &str, dims: &[i64], v: &[f32]) -> String {
        let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.init(name, dims, DataType::FLOAT, bytes)
    }

    /// A constant in the layers' type (float16 rounds to nearest even, as libtorch does).
    fn const_float(&mut self, name: &str, dims: &[i64], v: &[f32]) -> String {
        let t = Tensor::from_slice(v).to_kind(self.kind());
        self.init(name, dims, self.float, tensor_bytes(&t))
    }

    /// The libtorch kind of [`Builder::float`].
    fn kind(&self) -> tch::Kind {
        if self.float == DataType::FLOAT16 {
            tch::Kind::Half
        } else {
            tch::Kind::Float
        }
    }

    /// `x` cast to `to`.
    fn cast(&mut self, name: &str, x: &str, to: DataType) -> String {
        self.node("Cast", name, &[x], vec![attr_int("to", to as i64)])
    }

    fn const_i64(&mut self, name: &str, v: &[i64]) -> String {
        let mut t = TensorProto::new();
        t.name = name.into();
        t.dims = vec![v.len() as i64];
        t.data_type = DataType::INT64 as i32;
        t.raw_data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.inits.push(t);
        name.to_string()
    }

    fn param(
        &mut self,
        vars: &std::collections::HashMap<String, Tensor>,
        name: &str,
    ) -> Result<String, ExportError> {
        let t = vars
            .get(name)
            .ok_or_else(|| ExportError::MissingParameter(name.into()))?
            .to_kind(self.kind());
        Ok(self.init(name, &t.size(), self.float, tensor_bytes(&t)))
    }

    /// A convolution reading `x` (the activation `point` of an int8 graph).
    fn conv(
        &mut self,
        vars: &std::collections::HashMap<String, Tensor>,
        c: &ConvSpec,
        x: &str,
        point: &str,
    ) -> Result<String, ExportError> {
        let (w, b) = match self.quant {
            None => (
                self.param(vars, &format!("{}.weight", c.name))?,
                self.param(vars, &format!("{}.bias", c.name))?,
            ),
            Some(q) => {
                let x_scale = q.get(point)?.scale;
                self.quant_conv_params(vars, c.name, x_scale)?
            }
        };
        Ok(self.node(
            "Conv",
            c.name,
            &[x, &w, &b],
            vec![
                attr_ints("kernel_shape", &[c.kernel, c.kernel]),
                attr_ints("pads", &[c.pad, c.pad, c.pad, c.pad]),
                attr_ints("strides", &[1, 1]),
                attr_ints("dilations", &[1, 1]),
                attr_int("group", 1),
            ],
        ))
    }

    /// A transposed convolution (fixed bilinear upsampling), float in every graph but
    /// float16 ones: ONNX Runtime's CPU provider has no integer ConvTranspose.
    fn up(
        &mut self,
        vars: &std::collections::HashMap<String, Tensor>,
        u: &UpSpec,
        x: &str,
    ) -> Result<String, ExportError> {
        let w = self.param(vars, &format!("{}.weight", u.name))?;
        Ok(self.node(
            "ConvTranspose",
            u.name,
            &[x, &w],
            vec![
                attr_ints("kernel_shape", &[u.kernel, u.kernel]),
                attr_ints("strides", &[u.stride, u.stride]),
                attr_ints("pads", &[0, 0, 0, 0]),
            ],
        ))
    }

    /// In an int8 graph, `x` through QuantizeLinear and DequantizeLinear with the
    /// activation `point`'s scale and zero point; in a float graph, `x` itself.
    fn act(&mut self, point: &str, x: &str) -> Result<String, ExportError> {
        let Some(q) = self.quant else {
            return Ok(x.to_string());
        };
        let p = q.get(point)?;
        let scale = format!("{point}.act_scale");
        let zero = format!("{point}.act_zero_point");
        if self.quant_inits.insert(point.to_string()) {
            self.const_f32(&scale, &[], &[p.scale]);
            self.init(&zero, &[], DataType::UINT8, vec![p.zero_point]);
        }
        let qx = self.node("QuantizeLinear", point, &[x, &scale, &zero], vec![]);
        Ok(self.node("DequantizeLinear", point, &[&qx, &scale, &zero], vec![]))
    }

    /// `DequantizeLinear(q, scale, zero)` of an int8 or int32 initialiser `name` with
    /// per-channel (`axis` 0) or, for one scale, per-tensor parameters.
    fn dequantized(
        &mut self,
        name: &str,
        dims: &[i64],
        elem: DataType,
        bytes: Vec<u8>,
        scales: &[f32],
    ) -> String {
        let width = if elem == DataType::INT32 { 4 } else { 1 };
        let q = self.init(&format!("{name}.quantized"), dims, elem, bytes);
        let per_channel = scales.len() > 1;
        let sdims: &[i64] = if per_channel {
            &[scales.len() as i64]
        } else {
            &[]
        };
        let s = self.const_f32(&format!("{name}.scale"), sdims, scales);
        let z = self.init(
            &format!("{name}.zero_point"),
            sdims,
            elem,
            vec![0u8; width * scales.len()],
        );
        let attrs = if per_channel {
            vec![attr_int("axis", 0)]
        } else {
            vec![]
        };
        self.node("DequantizeLinear", name, &[&q, &s, &z], attrs)
    }

    /// A convolution's int8 weights (symmetric, per output channel) and int32 bias
    /// (scale `x_scale` times each channel's weight scale), each behind a
    /// DequantizeLinear.
    fn quant_conv_params(
        &mut self,
        vars: &std::collections::HashMap<String, Tensor>,
        name: &str,
        x_scale: f32,
    ) -> Result<(String, String), ExportError> {
        let get = |n: String| vars.get(&n).ok_or(ExportError::MissingParameter(n));
        let w = get(format!("{name}.weight"))?;
        let b = get(format!("{name}.bias"))?;
        let qw = crate::quantize::quantize_weight(w);
        let qb = crate::quantize::quantize_bias(b, x_scale, &qw.scales);
        let wq = self.dequantized(
            &format!("{name}.weight"),
            &w.size(),
            DataType::INT8,
            qw.values.iter().map(|&v| v as u8).collect(),
            &qw.scales,
        );
        let bias_scales: Vec<f32> = qw.scales.iter().map(|s| x_scale * s).collect();
        let bq = self.dequantized(
            &format!("{name}.bias"),
            &b.size(),
            DataType::INT32,
            qb.iter().flat_map(|v| v.to_le_bytes()).collect(),
            &bias_scales,
        );
        Ok((wq, bq))
    }

    /// Crops `x` (N x C x h x w) at `offset` to the spatial size of `like`.
    fn crop(&mut self, name: &str, x: &str, offset: i64, like: &str) -> String {
        let hw = self.node(
            "Shape",
            name,
            &[like],
            vec![attr_int("start", 2), attr_int("end", 4)],
        );
        let off = self.const_i64(&format!("{name}.offset"), &[offset, offset]);
        let ends = self.node("Add", name, &[&hw, &off], vec![]);
        let axes = self.const_i64(&format!("{name}.axes"), &[2, 3]);
        self.node("Slice", name, &[x, &off, &ends, &axes], vec![])
    }
}

/// The network's nodes from the preprocessed input `x` to the cropped logits (in the
/// layers' type). In an int8 graph every activation a convolution reads or writes
/// passes [`Builder::act`] under the name
/// [`Fcn8s::forward_observed`](crate::fcn8s::Fcn8s::forward_observed) gives it; a
/// max-pool's output keeps its input's parameters; the skip sums and the upsampling
/// stay float32.
fn network(
    b: &mut Builder,
    vars: &std::collections::HashMap<String, Tensor>,
    s: &crate::fcn8s::Fcn8sSpec,
    x: String,
) -> Result<String, ExportError> {
    let mut x = b.act("input", &x)?;
    let mut point = "input";
    let mut pools = Vec::new();
    for (i, stage) in s.stages.iter().enumerate() {
        for c in stage {
            let y = b.conv(vars, c, &x, point)?;
            x = b.node("Relu", c.name, &[&y], vec![]);
            x = b.act(c.name, &x)?;
            point = c.name;
        }
        x = b.node(
            "MaxPool",
            &format!("pool{}", i + 1),
            &[&x],
            vec![
                attr_ints("kernel_shape", &[2, 2]),
                attr_ints("strides", &[2, 2]),
                attr_ints("pads", &[0, 0, 0, 0]),
                attr_int("ceil_mode", 1),
            ],
        );
        x = b.act(point, &x)?;
        pools.push(x.clone());
    }
    let y = b.conv(vars, &s.fc6, &x, point)?;
    x = b.node("Relu", "fc6", &[&y], vec![]);
    x = b.act(s.fc6.name, &x)?;
    let y = b.conv(vars, &s.fc7, &x, s.fc6.name)?;
    x = b.node("Relu", "fc7", &[&y], vec![]);
    x = b.act(s.fc7.name, &x)?;
    let score_fr = b.conv(vars, &s.score_fr, &x, s.fc7.name)?;
    let score_fr = b.act(s.score_fr.name, &score_fr)?;
    let upscore2 = b.up(vars, &s.upscore2, &score_fr)?;

    let k4 = b.const_float("score_pool4.scale", &[], &[s.pool4_scale as f32]);
    let p4 = b.node("Mul", "score_pool4", &[&pools[3], &k4], vec![]);
    let p4 = b.act("score_pool4.input", &p4)?;
    let sp4 = b.conv(vars, &s.score_pool4, &p4, "score_pool4.input")?;
    let sp4 = b.act(s.score_pool4.name, &sp4)?;
    let sp4 = b.crop("score_pool4c", &sp4, s.crop_pool4, &upscore2);
    let fuse4 = b.node("Add", "fuse_pool4", &[&upscore2, &sp4], vec![]);
    let upscore_pool4 = b.up(vars, &s.upscore_pool4, &fuse4)?;

    let k3 = b.const_float("score_pool3.scale", &[], &[s.pool3_scale as f32]);
    let p3 = b.node("Mul", "score_pool3", &[&pools[2], &k3], vec![]);
    let p3 = b.act("score_pool3.input", &p3)?;
    let sp3 = b.conv(vars, &s.score_pool3, &p3, "score_pool3.input")?;
    let sp3 = b.act(s.score_pool3.name, &sp3)?;
    let sp3 = b.crop("score_pool3c", &sp3, s.crop_pool3, &upscore_pool4);
    let fuse3 = b.node("Add", "fuse_pool3", &[&upscore_pool4, &sp3], vec![]);
    let upscore8 = b.up(vars, &s.upscore8, &fuse3)?;
    Ok(b.crop("score", &upscore8, s.crop_out, contract::INPUT))
}

/// Renames the node outputs `scores` and `ids` to the contract's output names.
fn name_outputs(nodes: &mut [NodeProto], scores: &str, ids: &str) {
    for n in nodes.iter_mut() {
        for o in n.output.iter_mut() {
            if *o == scores {
                *o = contract::OUTPUT_SCORES.into();
            } else if *o == ids {
                *o = contract::OUTPUT_TRAIN_IDS.into();
            }
        }
        for i in n.input.iter_mut() {
            if *i == scores {
                *i = contract::OUTPUT_SCORES.into();
            }
        }
    }
}

/// The graph of `net`: preprocessing, the network in `meta.precision`, float32
/// `scores` and the uint8 arg-max `train_ids`.
fn build_graph(
    net: &Fcn8s,
    vs: &tch::nn::VarStore,
    meta: &ModelMeta,
    quant: Option<&crate::quantize::ActivationParams>,
) -> Result<GraphProto, ExportError> {
    let vars = vs.variables();
    let mut b = Builder {
        nodes: Vec::new(),
        inits: Vec::new(),
        n: 0,
        float: match meta.precision {
            Precision::Fp32 | Precision::Int8 => DataType::FLOAT,
            Precision::Fp16 => DataType::FLOAT16,
        },
        quant: if meta.precision == Precision::Int8 {
            Some(quant.ok_or_else(|| ExportError::MissingCalibration("input".into()))?)
        } else {
            None
        },
        quant_inits: Default::default(),
    };
    // Preprocessing inside the graph: RGB -> BGR, minus the mean (in float32).
    let order = b.const_i64("preprocess.bgr_order", &[2, 1, 0]);
    let bgr = b.node(
        "Gather",
        "preprocess",
        &[contract::INPUT, &order],
        vec![attr_int("axis", 1)],
    );
    let mean = b.const_f32("preprocess.mean_bgr", &[1, 3, 1, 1], &meta.mean_bgr);
    let mut x = b.node("Sub", "preprocess", &[&bgr, &mean], vec![]);
    if b.float != DataType::FLOAT {
        x = b.cast("preprocess", &x, b.float);
    }
    let mut scores = network(&mut b, &vars, &net.spec, x)?;
    if b.float != DataType::FLOAT {
        scores = b.cast("score", &scores, DataType::FLOAT);
    }
    let argmax = b.node(
        "ArgMax",
        "train_ids",
        &[&scores],
        vec![attr_int("axis", 1), attr_int("keepdims", 0)],
    );
    let ids = b.cast("train_ids", &argmax, DataType::UINT8);
    name_outputs(&mut b.nodes, &scores, &ids);

    let c = net.spec.config.classes;
    let mut graph = GraphProto::new();
    graph.name = "vgg16_fcn8s".into();
    graph.node = b.nodes;
    graph.initializer = b.inits;
    graph.input = vec![value_info(
        contract::INPUT,
        tensor_type(DataType::FLOAT, &[Err("N"), Ok(3), Err("H"), Err("W")]),
    )];
    graph.output = vec![
        value_info(
            contract::OUTPUT_TRAIN_IDS,
            tensor_type(DataType::UINT8, &[Err("N"), Err("H"), Err("W")]),
        ),
        value_info(
            contract::OUTPUT_SCORES,
            tensor_type(DataType::FLOAT, &[Err("N"), Ok(c), Err("H"), Err("W")]),
        ),
    ];
    Ok(graph)
}

/// Builds the ONNX model of `net` with `meta` as its metadata (and its precision);
/// an int8 model ([`Precision::Int8`]) needs the activation parameters `quant`.
pub fn build_model(
    net: &Fcn8s,
    vs: &tch::nn::VarStore,
    meta: &ModelMeta,
) -> Result<ModelProto, ExportError> {
    build_model_quantized(net, vs, meta, None)
}

/// [`build_model`] with the activation parameters of an int8 model.
pub fn build_model_quantized(
    net: &Fcn8s,
    vs: &tch::nn::VarStore,
    meta: &ModelMeta,
    quant: Option<&crate::quantize::ActivationParams>,
) -> Result<ModelProto, ExportError> {
    let graph = build_graph(net, vs, meta, quant)?;
    let mut model = ModelProto::new();
    model.ir_version = IR_VERSION;
    let mut opset = OperatorSetIdProto::new();
    opset.domain = String::new();
    opset.version = OPSET;
    model.opset_import = vec![opset];
    model.producer_name = "lse-train".into();
    model.producer_version = lse_runtime::VERSION.into();
    model.doc_string = "VGG16-FCN8s adapted with LSE (scale-invariant self-training). Input: RGB 0..255 \
                        N x 3 x H x W; outputs: train_ids (uint8 N x H x W), scores (logits N x C x H x W)."
        .into();
    model.graph = Some(graph).into();
    model.metadata_props = meta
        .to_props()
        .into_iter()
        .map(|(k, v)| {
            let mut e = StringStringEntryProto::new();
            e.key = k;
            e.value = v;
            e
        })
        .collect();
    Ok(model)
}

/// Writes `net` to `path` atomically.
pub fn export(
    net: &Fcn8s,
    vs: &tch::nn::VarStore,
    meta: &ModelMeta,
    path: &Path,
) -> Result<(), ExportError> {
    export_quantized(net, vs, meta, None, path)
}

/// [`export`] with the activation parameters of an int8 model.
pub fn export_quantized(
    net: &Fcn8s,
    vs: &tch::nn::VarStore,
    meta: &ModelMeta,
    quant: Option<&crate::quantize::ActivationParams>,
    path: &Path,
) -> Result<(), ExportError> {
    let model = build_model_quantized(net, vs, meta, quant)?;
    let bytes = model.write_to_bytes().map_err(|e| ExportError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    lse_runtime::imageio::write_atomic(path, &bytes).map_err(|e| ExportError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// How far ONNX Runtime's logits may be from libtorch's: `max |diff| <= rtol * max
/// |logit| + atol`, where max |logit| is libtorch's largest logit on the probe.
///
/// Both runtimes compute the same float32 graph with different kernels (summation order,
/// fused multiply-adds, Winograd or GEMM convolutions), so their outputs differ by
/// rounding, and rounding scales with the magnitude of what is summed: the same correct
/// export differs by ~1e-6 on logits of order 1 and by ~5e-4 on logits of order 1e3 (a
/// reference FCN8s state dict with PyTorch's default initialisation), a relative
/// difference of 5e-7 to 9e-7 at every scale measured (logits of order 1, 1e2, 1e3,
/// 1e4). A fixed absolute bound rejects the larger ones. The default `rtol` of 1e-5 is
/// 10 to 20 times those relative differences and the order of the statistical rounding
/// bound of fc6's dot products (sqrt(25,088) x 6e-8 for the full-width network), while a
/// wrong graph moves logits by far more: integer-rounded means by 5e-3 of the largest
/// logit, swapped channels by 0.5. `atol` (1e-4) is a floor for networks whose logits
/// are all close to 0. Infinite or NaN logits always fail.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Tolerance {
    pub rtol: f64,
    pub atol: f64,
}

impl Default for Tolerance {
    fn default() -> Self {
        Self {
            rtol: 1e-5,
            atol: 1e-4,
        }
    }
}

impl Tolerance {
    /// The largest accepted |diff| for logits up to `max_abs_logit`.
    pub fn allowed(&self, max_abs_logit: f32) -> f64 {
        self.rtol * f64::from(max_abs_logit) + self.atol
    }
}

/// The result of a parity check.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Parity {
    pub shape: Vec<i64>,
    /// Largest |logit| libtorch computes on the probe.
    pub max_abs_logit: f32,
    /// Largest |ONNX Runtime logit - libtorch logit| (infinite if either is NaN).
    pub max_abs_diff: f32,
    /// `max_abs_diff / max_abs_logit`.
    pub relative_diff: f32,
    /// Share of pixels whose arg-max agrees, in percent.
    pub argmax_agreement: f64,
    /// Pixels whose arg-max differs.
    pub argmax_disagreements: usize,
    /// Among those, the largest gap between libtorch's logits of the two classes (its
    /// own choice minus ONNX Runtime's); a disagreement is a near tie when this is within
    /// the tolerance.
    pub max_disagreement_gap: f32,
    pub pixels: usize,
    pub provider: String,
    /// The gap of every disagreement.
    #[serde(skip)]
    gaps: Vec<f32>,
}

impl Parity {
    /// Disagreements that rounding within `tol` cannot explain: libtorch's logits of
    /// the two classes are more than twice the allowed difference apart.
    pub fn unexplained_disagreements(&self, tol: &Tolerance) -> usize {
        let bound = 2.0 * tol.allowed(self.max_abs_logit);
        self.gaps
            .iter()
            .filter(|&&g| f64::from(g) > bound || g.is_nan())
            .count()
    }
}

/// Runs `path` in ONNX Runtime and `net` in libtorch on the same RGB input
/// `N x 3 x H x W` (values 0..255) and compares logits and arg-max.
pub fn parity(
    net: &Fcn8s,
    path: &Path,
    rgb: &Tensor,
    engine_opts: &lse_runtime::engine::EngineOptions,
) -> Result<Parity, ExportError> {
    let run_err = |message: String| ExportError::ParityRun {
        path: path.to_path_buf(),
        message,
    };
    let rgb = rgb.to_kind(tch::Kind::Float).to_device(tch::Device::Cpu);
    let dev = net_device(net);
    let want =
        tch::no_grad(|| net.forward_t(&crate::fcn8s::preprocess_rgb(&rgb.to_device(dev)), false))
            .to_device(tch::Device::Cpu)
            .contiguous();
    let shape = rgb.size();
    let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let data: Vec<f32> =
        Vec::<f32>::try_from(rgb.flatten(0, -1)).map_err(|e| run_err(e.to_string()))?;
    let arr = ndarray::Array4::from_shape_vec((dims[0], dims[1], dims[2], dims[3]), data)
        .map_err(|e| run_err(e.to_string()))?;
    let mut engine =
        lse_runtime::engine::Engine::load(path, engine_opts).map_err(|e| run_err(e.to_string()))?;
    let out = engine.run(arr.view()).map_err(|e| run_err(e.to_string()))?;
    let want_shape: Vec<usize> = want.size().iter().map(|&d| d as usize).collect();
    if out.scores.shape() != want_shape.as_slice() {
        return Err(run_err(format!(
            "ONNX Runtime returned scores of shape {:?}, libtorch {:?}",
            out.scores.shape(),
            want_shape
        )));
    }
    let got: Vec<f32> = out.scores.iter().copied().collect();
    let want_v: Vec<f32> =
        Vec::<f32>::try_from(want.flatten(0, -1)).map_err(|e| run_err(e.to_string()))?;
    let max_abs_diff = got
        .iter()
        .zip(&want_v)
        .map(|(a, b)| nan_as_inf((a - b).abs()))
        .fold(0f32, f32::max);
    let max_abs_logit = want_v
        .iter()
        .map(|v| nan_as_inf(v.abs()))
        .fold(0f32, f32::max);
    let (n, c, hw) = (want_shape[0], want_shape[1], want_shape[2] * want_shape[3]);
    let got_ids: Vec<u8> = out.train_ids.iter().copied().collect();
    if got_ids.len() != n * hw {
        return Err(run_err(format!(
            "ONNX Runtime returned {} train ids for {} pixels",
            got_ids.len(),
            n * hw
        )));
    }
    let gaps = argmax_gaps(&want_v, &got_ids, c, hw);
    let pixels = n * hw;
    let disagreements = gaps.len();
    Ok(Parity {
        shape,
        max_abs_logit,
        max_abs_diff,
        relative_diff: max_abs_diff / max_abs_logit.max(f32::MIN_POSITIVE),
        argmax_agreement: 100.0 * (pixels - disagreements) as f64 / pixels.max(1) as f64,
        argmax_disagreements: disagreements,
        max_disagreement_gap: gaps.iter().copied().fold(0f32, f32::max),
        pixels,
        provider: engine.provider().to_string(),
        gaps,
    })
}

/// NaN anywhere is a failure, never hidden by `max()`.
fn nan_as_inf(d: f32) -> f32 {
    if d.is_nan() { f32::INFINITY } else { d }
}

/// The pixels whose arg-max differs: libtorch's from its logits `want` (`N x C x HW`),
/// ONNX Runtime's `got` from its own output. For each, libtorch's logit margin of its
/// class over ONNX Runtime's (infinite for a class id out of range).
fn argmax_gaps(want: &[f32], got: &[u8], c: usize, hw: usize) -> Vec<f32> {
    let mut gaps = Vec::new();
    for (pixel, &theirs) in got.iter().enumerate() {
        let (img, px) = (pixel / hw, pixel % hw);
        let logit = |k: usize| want[(img * c + k) * hw + px];
        let ours = (0..c).fold(0, |best, k| if logit(k) > logit(best) { k } else { best });
        let theirs = usize::from(theirs);
        if theirs != ours {
            gaps.push(if theirs < c {
                nan_as_inf(logit(ours) - logit(theirs))
            } else {
                f32::INFINITY
            });
        }
    }
    gaps
}

/// Parity check with the acceptance thresholds, as an error when they are not met:
/// `max |diff| <= tol.allowed(max |logit|)` ([`Tolerance`]), and every pixel whose
/// arg-max differs is a near tie (libtorch's logits of the two classes within twice
/// the allowed difference of each other, which rounding within the tolerance can swap).
pub fn check_parity(
    net: &Fcn8s,
    path: &Path,
    rgb: &Tensor,
    engine_opts: &lse_runtime::engine::EngineOptions,
    tol: Tolerance,
) -> Result<Parity, ExportError> {
    let p = parity(net, path, rgb, engine_opts)?;
    let allowed = tol.allowed(p.max_abs_logit);
    let unexplained = p.unexplained_disagreements(&tol);
    let finite = p.max_abs_diff.is_finite() && p.max_abs_logit.is_finite();
    if !finite || f64::from(p.max_abs_diff) > allowed || unexplained > 0 {
        return Err(ExportError::Parity {
            path: path.to_path_buf(),
            shape: p.shape,
            max_diff: p.max_abs_diff,
            max_logit: p.max_abs_logit,
            allowed,
            rtol: tol.rtol,
            atol: tol.atol,
            flips: p.argmax_disagreements,
            unexplained,
            pixels: p.pixels,
        });
    }
    Ok(p)
}

/// The least arg-max agreement with the float32 network, in percent, that a float16
/// export must reach.
pub const MIN_AGREEMENT: f64 = 99.5;

/// The check of a reduced-precision export: its arg-max agrees with the float32
/// network `net` on at least `min` percent of the probe's pixels, and every logit it
/// returns is finite (float16 overflows to infinity).
pub fn check_agreement(
    net: &Fcn8s,
    path: &Path,
    rgb: &Tensor,
    engine_opts: &lse_runtime::engine::EngineOptions,
    precision: Precision,
    min: f64,
) -> Result<Parity, ExportError> {
    let p = parity(net, path, rgb, engine_opts)?;
    let finite = p.max_abs_diff.is_finite() && p.max_abs_logit.is_finite();
    // A NaN agreement is refused too (it is not Greater or Equal).
    let enough = matches!(
        p.argmax_agreement.partial_cmp(&min),
        Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
    );
    if !finite || !enough {
        return Err(ExportError::Agreement {
            path: path.to_path_buf(),
            precision,
            shape: p.shape,
            agreement: if finite { p.argmax_agreement } else { 0.0 },
            min,
            flips: p.argmax_disagreements,
            pixels: p.pixels,
        });
    }
    Ok(p)
}

fn net_device(net: &Fcn8s) -> tch::Device {
    net.weights_and_biases()
        .0
        .first()
        .map_or(tch::Device::Cpu, |t| t.device())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_gaps_by_hand() {
        // One image, 3 classes, 2 pixels: logits (1, 3, 2) -> class 1, (5, 0, 0) -> 0.
        let want = [1.0, 5.0, 3.0, 0.0, 2.0, 0.0];
        assert_eq!(argmax_gaps(&want, &[1, 0], 3, 2), Vec::<f32>::new());
        assert_eq!(argmax_gaps(&want, &[2, 0], 3, 2), vec![1.0]);
        assert_eq!(argmax_gaps(&want, &[1, 7], 3, 2), vec![f32::INFINITY]);
        assert_eq!(nan_as_inf(f32::NAN), f32::INFINITY);
    }
}
