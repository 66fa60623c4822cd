//! libtorch's random generator is one per process. Code that seeds it and then draws
//! from it (a network's initialisation, random test inputs) gets the same numbers only
//! if nothing else draws in between, which threads running beside it (tests of one
//! test binary run in parallel) do. [`with_seed`] makes the seed and the draws one step.
//! It protects only callers that all use it: a draw outside it, even one whose numbers
//! do not matter, can fall between another caller's seed and its draws.

use std::sync::Mutex;

static GLOBAL_GENERATOR: Mutex<()> = Mutex::new(());

/// Seeds libtorch's global generator with `seed` and runs `draw`, while no other
/// caller of this function can seed or draw. The same `seed` and `draw` give the same
/// tensors whatever else runs in the process through this function.
pub fn with_seed<T>(seed: i64, draw: impl FnOnce() -> T) -> T {
    let _guard = GLOBAL_GENERATOR
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    tch::manual_seed(seed);
    draw()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn same_seed_same_draws_across_threads() {
        let draw = || with_seed(3, || Tensor::rand([64], (Kind::Float, tch::Device::Cpu)));
        let reference = Vec::<f32>::try_from(draw()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(move || Vec::<f32>::try_from(draw()).unwrap()))
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), reference);
        }
    }
}
