//! Arg-max agreement between two exported models on fixed inputs, shared by the fp16
//! and int8 export tests.

use std::path::Path;

use lse_runtime::contract::Precision;
use lse_runtime::engine::{Engine, EngineOptions, Provider};
use lse_runtime::synth::{Part, SynthSettings, generate};

/// Loads a model on the CPU provider with one thread and checks its precision.
fn load(path: &Path, precision: Precision) -> Engine {
    let opts = EngineOptions {
        provider: Provider::Cpu,
        threads: 1,
        ..Default::default()
    };
    let engine = Engine::load(path, &opts).unwrap();
    assert_eq!(engine.meta().precision, precision, "{}", path.display());
    engine
}

/// Share of pixels (percent) where the train ids of `a` (float32) and `b` (of
/// `precision`) agree on the first `images` synthetic target-val images of the
/// built-in generator, at `size` (width, height). Every score of `b` must be finite.
pub fn arg_max_agreement(
    a: &Path,
    b: &Path,
    precision: Precision,
    size: [usize; 2],
    images: usize,
) -> f64 {
    let (mut ea, mut eb) = (load(a, Precision::Fp32), load(b, precision));
    let settings = SynthSettings::default();
    let (mut same, mut total) = (0usize, 0usize);
    for i in 0..images {
        let scene = generate(&settings, Part::TargetVal, i);
        let input =
            lse_runtime::predict::prepare(&scene.image, [size[0] as u32, size[1] as u32]).unwrap();
        let x = ndarray::Array4::from_shape_vec((1, 3, size[1], size[0]), input).unwrap();
        let (ya, yb) = (ea.run(x.view()).unwrap(), eb.run(x.view()).unwrap());
        assert!(yb.scores.iter().all(|v| v.is_finite()));
        same += ya
            .train_ids
            .iter()
            .zip(yb.train_ids.iter())
            .filter(|(p, q)| p == q)
            .count();
        total += ya.train_ids.shape().iter().product::<usize>();
    }
    100.0 * same as f64 / total as f64
}
