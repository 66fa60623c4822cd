//! VGG16-FCN8s, the Caffe-style "at once" variant of docs/method.md, in one readable file.
//!
//! The network is described once, by [`Fcn8sSpec`]: the VGG16 stages as a table of
//! convolutions, then the FCN-8s head (fc6, fc7, score layers, three frozen bilinear
//! transposed convolutions, the skip scales and crop offsets). [`Fcn8s::forward`]
//! (libtorch) and the ONNX writer ([`crate::onnx`]) both walk this description, so
//! the graph exists in one place. Parameter names are those of the reference
//! checkpoints (`conv1_1.weight`, ..., `fc6.weight`, `score_fr.bias`,
//! `upscore8.weight`), so weights load by name.
//!
//! ```text
//! image ─ conv1 (pad 100) ─ pool ─ conv2 ─ pool ─ conv3 ─ pool3 ─ conv4 ─ pool4 ─ conv5 ─ pool
//!       ─ fc6 (7x7) ─ fc7 ─ score_fr ─ upscore2 ──────────────┐
//!   pool4 * 0.01 ─ score_pool4 ─ crop@5 ───────────────────── + ─ upscore_pool4 ─┐
//!   pool3 * 0.0001 ─ score_pool3 ─ crop@9 ─────────────────────────────────────── + ─ upscore8 ─ crop@31 ─ logits
//! ```

use serde::{Deserialize, Serialize};
use tch::nn::{self, Init};
use tch::{Kind, Tensor};

/// One 3x3 (or 7x7, 1x1) convolution of the description.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvSpec {
    pub name: &'static str,
    pub cin: i64,
    pub cout: i64,
    pub kernel: i64,
    pub pad: i64,
}

/// One frozen bilinear transposed convolution.
#[derive(Debug, Clone, PartialEq)]
pub struct UpSpec {
    pub name: &'static str,
    pub kernel: i64,
    pub stride: i64,
}

/// How a freshly created network is initialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitScheme {
    /// The reference implementation's: every convolution zero (to be overwritten by
    /// ImageNet VGG16 weights), score layers zero.
    Reference,
    /// For training from scratch (no ImageNet weights): He/Kaiming normal for every
    /// convolution (conv1_1 further divided by 64, the spread of mean-subtracted
    /// pixels, so activations start at unit scale); score_pool4 / score_pool3 scaled up
    /// by 1/0.01 and 1/0.0001 so the skips contribute from the first iteration; biases
    /// zero.
    #[default]
    Scratch,
}

lse_runtime::choice!(InitScheme, "initialisation" {
    Reference => "reference",
        "the reference code's: convolutions zero, to be overwritten by ImageNet VGG16";
    Scratch => "scratch", "for training from scratch: He-normal convolutions, strong skips";
});

/// The network's shape: class count and channel width multiplier.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fcn8sConfig {
    /// Channel width multiplier; 1.0 is the paper's VGG16-FCN8s.
    pub width: f64,
    /// Number of output classes.
    pub classes: i64,
}

impl Default for Fcn8sConfig {
    fn default() -> Self {
        Self {
            width: 1.0,
            classes: 19,
        }
    }
}

/// The full description of the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Fcn8sSpec {
    pub config: Fcn8sConfig,
    /// The five VGG16 stages, each followed by a 2x2 ceil-mode max-pool.
    pub stages: Vec<Vec<ConvSpec>>,
    pub fc6: ConvSpec,
    pub fc7: ConvSpec,
    pub score_fr: ConvSpec,
    pub score_pool4: ConvSpec,
    pub score_pool3: ConvSpec,
    pub upscore2: UpSpec,
    pub upscore_pool4: UpSpec,
    pub upscore8: UpSpec,
    /// pool4 is multiplied by this before score_pool4.
    pub pool4_scale: f64,
    /// pool3 is multiplied by this before score_pool3.
    pub pool3_scale: f64,
    /// Crop offsets of score_pool4, score_pool3 and the final output.
    pub crop_pool4: i64,
    pub crop_pool3: i64,
    pub crop_out: i64,
    /// Padding of conv1_1.
    pub input_pad: i64,
    /// Dropout probability after fc6 and fc7.
    pub dropout: f64,
}

/// Scales a channel count by the width multiplier (at least 1).
fn scaled(c: i64, width: f64) -> i64 {
    ((c as f64 * width).round() as i64).max(1)
}

impl Fcn8sSpec {
    pub fn new(config: Fcn8sConfig) -> Self {
        let w = config.width;
        let c = config.classes;
        const STAGES: [(&[&str], i64); 5] = [
            (&["conv1_1", "conv1_2"], 64),
            (&["conv2_1", "conv2_2"], 128),
            (&["conv3_1", "conv3_2", "conv3_3"], 256),
            (&["conv4_1", "conv4_2", "conv4_3"], 512),
            (&["conv5_1", "conv5_2", "conv5_3"], 512),
        ];
        let mut cin = 3;
        let mut stages = Vec::new();
        for (names, ch) in STAGES {
            let cout = scaled(ch, w);
            let mut convs = Vec::new();
            for &name in names {
                let pad = if name == "conv1_1" { 100 } else { 1 };
                convs.push(ConvSpec {
                    name,
                    cin,
                    cout,
                    kernel: 3,
                    pad,
                });
                cin = cout;
            }
            stages.push(convs);
        }
        let c256 = scaled(256, w);
        let c512 = scaled(512, w);
        let c4096 = scaled(4096, w);
        let conv = |name, cin, cout, kernel| ConvSpec {
            name,
            cin,
            cout,
            kernel,
            pad: 0,
        };
        let up = |name, kernel, stride| UpSpec {
            name,
            kernel,
            stride,
        };
        Self {
            config,
            stages,
            fc6: conv("fc6", c512, c4096, 7),
            fc7: conv("fc7", c4096, c4096, 1),
            score_fr: conv("score_fr", c4096, c, 1),
            score_pool4: conv("score_pool4", c512, c, 1),
            score_pool3: conv("score_pool3", c256, c, 1),
            upscore2: up("upscore2", 4, 2),
            upscore_pool4: up("upscore_pool4", 4, 2),
            upscore8: up("upscore8", 16, 8),
            pool4_scale: 0.01,
            pool3_scale: 0.0001,
            crop_pool4: 5,
            crop_pool3: 9,
            crop_out: 31,
            input_pad: 100,
            dropout: 0.5,
        }
    }

    /// Every convolution, in order (the trainable layers).
    pub fn convs(&self) -> Vec<&ConvSpec> {
        let mut v: Vec<&ConvSpec> = self.stages.iter().flatten().collect();
        v.extend([
            &self.fc6,
            &self.fc7,
            &self.score_fr,
            &self.score_pool4,
            &self.score_pool3,
        ]);
        v
    }

    /// The frozen upsampling layers, in order.
    pub fn ups(&self) -> [&UpSpec; 3] {
        [&self.upscore2, &self.upscore_pool4, &self.upscore8]
    }

    /// `(name, shape)` of every parameter, in the reference checkpoint's order.
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<i64>)> {
        let mut v = Vec::new();
        for c in self.convs() {
            v.push((
                format!("{}.weight", c.name),
                vec![c.cout, c.cin, c.kernel, c.kernel],
            ));
            v.push((format!("{}.bias", c.name), vec![c.cout]));
        }
        let n = self.config.classes;
        for u in self.ups() {
            v.push((format!("{}.weight", u.name), vec![n, n, u.kernel, u.kernel]));
        }
        v
    }
}

/// The bilinear upsampling kernel of a `channels -> channels` transposed convolution
/// (diagonal: channel i maps to channel i only), as in the reference
/// (`get_upsampling_weight`), laid out `channels x channels x k x k`.
pub fn bilinear_kernel(channels: i64, k: i64) -> Vec<f32> {
    let factor = (k + 1) / 2;
    let center = if k % 2 == 1 {
        factor as f64 - 1.0
    } else {
        factor as f64 - 0.5
    };
    let f = |i: i64| 1.0 - ((i as f64 - center).abs() / factor as f64);
    let (c, k) = (channels as usize, k as usize);
    let mut w = vec![0f32; c * c * k * k];
    for ch in 0..c {
        for y in 0..k {
            for x in 0..k {
                w[((ch * c + ch) * k + y) * k + x] = (f(y as i64) * f(x as i64)) as f32;
            }
        }
    }
    w
}

/// VGG16-FCN8s with its parameters in a [`nn::VarStore`].
#[derive(Debug)]
pub struct Fcn8s {
    pub spec: Fcn8sSpec,
    convs: Vec<(ConvSpec, Tensor, Tensor)>,
    ups: Vec<(UpSpec, Tensor)>,
}

impl Fcn8s {
    /// Creates the parameters under `root` (names `conv1_1.weight`, ...), initialised
    /// with `init`; the upsampling kernels are bilinear and not trainable.
    pub fn new(root: &nn::Path, config: Fcn8sConfig, init: InitScheme) -> Self {
        let spec = Fcn8sSpec::new(config);
        let mut convs = Vec::new();
        for c in spec.convs() {
            let p = root / c.name;
            let fan_in = (c.cin * c.kernel * c.kernel) as f64;
            let ws_init = match init {
                InitScheme::Reference => Init::Const(0.0),
                InitScheme::Scratch => {
                    let boost = match c.name {
                        "score_pool4" => 1.0 / spec.pool4_scale,
                        "score_pool3" => 1.0 / spec.pool3_scale,
                        _ => 1.0,
                    };
                    // Kaiming normal (fan_in, ReLU gain); score layers get gain 1.
                    let gain = if c.name.starts_with("score") {
                        1.0
                    } else {
                        2f64.sqrt()
                    };
                    // Pixels minus the mean have a spread of about 64: conv1_1 divides
                    // it out so activations start at unit scale and logits at O(1).
                    let boost = if c.name == "conv1_1" {
                        boost / 64.0
                    } else {
                        boost
                    };
                    Init::Randn {
                        mean: 0.0,
                        stdev: gain / fan_in.sqrt() * boost,
                    }
                }
            };
            let w = p.var("weight", &[c.cout, c.cin, c.kernel, c.kernel], ws_init);
            let b = p.var("bias", &[c.cout], Init::Const(0.0));
            convs.push((c.clone(), w, b));
        }
        let n = config.classes;
        let mut ups = Vec::new();
        for u in spec.ups() {
            let p = root / u.name;
            let mut w = p.zeros_no_train("weight", &[n, n, u.kernel, u.kernel]);
            let kernel = Tensor::from_slice(&bilinear_kernel(n, u.kernel))
                .view([n, n, u.kernel, u.kernel])
                .to_device(w.device());
            tch::no_grad(|| w.copy_(&kernel));
            ups.push((u.clone(), w));
        }
        Self { spec, convs, ups }
    }

    fn conv(&self, i: usize, xs: &Tensor) -> Tensor {
        let (c, w, b) = &self.convs[i];
        xs.conv2d(w, Some(b), [1, 1], [c.pad, c.pad], [1, 1], 1)
    }

    fn up(&self, i: usize, xs: &Tensor) -> Tensor {
        let (u, w) = &self.ups[i];
        xs.conv_transpose2d(
            w,
            None::<Tensor>,
            [u.stride, u.stride],
            [0, 0],
            [0, 0],
            1,
            [1, 1],
        )
    }

    /// Logits `N x C x H x W` for a BGR, mean-subtracted input `N x 3 x H x W`.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.forward_inner(xs, train, &mut |_, _| {})
    }

    /// The evaluation forward pass ([`Fcn8s::forward_t`] without dropout) that also
    /// shows `observe` every activation an int8 model quantizes, under the names the
    /// ONNX writer gives them ([`crate::quantize`]): `input`, each convolution's output
    /// (after its ReLU, if any), and `score_pool4.input` and `score_pool3.input` (the
    /// scaled skips).
    pub fn forward_observed(&self, xs: &Tensor, observe: &mut dyn FnMut(&str, &Tensor)) -> Tensor {
        self.forward_inner(xs, false, observe)
    }

    fn forward_inner(
        &self,
        xs: &Tensor,
        train: bool,
        observe: &mut dyn FnMut(&str, &Tensor),
    ) -> Tensor {
        let s = &self.spec;
        let (h, w) = (xs.size()[2], xs.size()[3]);
        let mut x = xs.shallow_clone();
        observe("input", &x);
        let mut i = 0;
        let mut pools = Vec::new();
        for stage in &s.stages {
            for c in stage {
                x = self.conv(i, &x).relu();
                observe(c.name, &x);
                i += 1;
            }
            x = x.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], true);
            pools.push(x.shallow_clone());
        }
        let (pool3, pool4) = (&pools[2], &pools[3]);
        x = self.conv(i, &x).relu(); // fc6
        observe(s.fc6.name, &x);
        x = self
            .conv(i + 1, &x.feature_dropout(s.dropout, train))
            .relu(); // fc7
        observe(s.fc7.name, &x);
        x = self.conv(i + 2, &x.feature_dropout(s.dropout, train)); // score_fr
        observe(s.score_fr.name, &x);
        let upscore2 = self.up(0, &x);
        let p4 = pool4 * s.pool4_scale;
        observe("score_pool4.input", &p4);
        let sp4 = self.conv(i + 3, &p4);
        observe(s.score_pool4.name, &sp4);
        let fuse4 = &upscore2 + crop(&sp4, s.crop_pool4, &upscore2);
        let upscore_pool4 = self.up(1, &fuse4);
        let p3 = pool3 * s.pool3_scale;
        observe("score_pool3.input", &p3);
        let sp3 = self.conv(i + 4, &p3);
        observe(s.score_pool3.name, &sp3);
        let fuse3 = &upscore_pool4 + crop(&sp3, s.crop_pool3, &upscore_pool4);
        let out = self.up(2, &fuse3);
        out.narrow(2, s.crop_out, h).narrow(3, s.crop_out, w)
    }

    /// Trainable weights and biases (the upsampling kernels are excluded), for the
    /// optimiser's two learning-rate groups.
    pub fn weights_and_biases(&self) -> (Vec<Tensor>, Vec<Tensor>) {
        let ws = self
            .convs
            .iter()
            .map(|(_, w, _)| w.shallow_clone())
            .collect();
        let bs = self
            .convs
            .iter()
            .map(|(_, _, b)| b.shallow_clone())
            .collect();
        (ws, bs)
    }
}

/// Crops `xs` at `offset` in H and W to the spatial size of `like`.
fn crop(xs: &Tensor, offset: i64, like: &Tensor) -> Tensor {
    let (h, w) = (like.size()[2], like.size()[3]);
    xs.narrow(2, offset, h).narrow(3, offset, w)
}

/// Converts a batch of RGB 0..255 images (`N x 3 x H x W`, the model contract's
/// input) into the network's input: BGR with the mean subtracted.
pub fn preprocess_rgb(rgb: &Tensor) -> Tensor {
    let m = lse_runtime::imageio::MEAN_BGR;
    let bgr = rgb.flip([1]);
    let mean = Tensor::from_slice(&m)
        .view([1, 3, 1, 1])
        .to_kind(Kind::Float)
        .to_device(rgb.device());
    bgr - mean
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bilinear_kernel_matches_hand_values() {
        // k = 4: factor 2, centre 1.5, 1-D weights [0.25, 0.75, 0.75, 0.25].
        let k = bilinear_kernel(2, 4);
        let w1 = [0.25f32, 0.75, 0.75, 0.25];
        for y in 0..4 {
            for x in 0..4 {
                assert!((k[y * 4 + x] - w1[y] * w1[x]).abs() < 1e-7);
                assert_eq!(k[16 + y * 4 + x], 0.0, "off-diagonal is zero");
            }
        }
    }

    #[test]
    fn output_size_equals_input_size() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let net = Fcn8s::new(
            &vs.root(),
            Fcn8sConfig {
                width: 0.0625,
                classes: 5,
            },
            InitScheme::Scratch,
        );
        for (h, w) in [(37, 53), (64, 96), (1, 1), (100, 7)] {
            let x = Tensor::randn([2, 3, h, w], (Kind::Float, tch::Device::Cpu));
            let y = net.forward_t(&x, false);
            assert_eq!(y.size(), [2, 5, h, w]);
        }
    }

    #[test]
    fn parameter_names_and_counts() {
        let spec = Fcn8sSpec::new(Fcn8sConfig::default());
        let shapes = spec.parameter_shapes();
        assert_eq!(shapes.len(), 18 * 2 + 3);
        assert_eq!(shapes[0], ("conv1_1.weight".into(), vec![64, 3, 3, 3]));
        let fc6 = shapes.iter().find(|(n, _)| n == "fc6.weight").unwrap();
        assert_eq!(fc6.1, vec![4096, 512, 7, 7]);
        let total: i64 = shapes
            .iter()
            .filter(|(n, _)| !n.starts_with("upscore"))
            .map(|(_, s)| s.iter().product::<i64>())
            .sum();
        // The reference FCN8s (19 classes) has 134.4 M trainable parameters.
        assert!((134_000_000..135_000_000).contains(&total), "{total}");
    }
}
