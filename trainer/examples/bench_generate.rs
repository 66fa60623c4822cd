//! Times the generation of the scale-invariant examples of one image with
//! `lse_trainer::lse` (the LSE round's step 3): normalised entropy and reliable mask
//! from the probabilities and thresholds, K random windows, crop + bilinear
//! upsampling (aligned corners) of image, P and M, arg-max and ignore.
//!
//! `cargo run -p lse-trainer --release --example bench_generate -- [--size 1024x512]
//! [--classes 19] [--k 4] [--scale 0.5] [--threads 2] [--runs 7] [--warmup 2]
//! [--device cpu|cuda]`
//!
//! Prints the median over `--runs` timed runs after `--warmup` runs, and a final
//! machine-readable line `RESULT rust_generate_ms=<median> mask_ms=<..> crop_ms=<..>`
//! that `scripts/bench_generate.py --rust-ms` / `--rust-exe` reads.

use std::time::Instant;

use lse_trainer::lse::{DegenerateGroups, generate, random_windows, reliable_mask, thresholds};
use rand::SeedableRng;
use tch::{Device, Kind, Tensor};

struct Args {
    w: i64,
    h: i64,
    classes: i64,
    k: usize,
    scale: f64,
    threads: i32,
    runs: usize,
    warmup: usize,
    device: Device,
}

fn parse() -> Args {
    let mut a = Args {
        w: 1024,
        h: 512,
        classes: 19,
        k: 4,
        scale: 0.5,
        threads: 2,
        runs: 7,
        warmup: 2,
        device: Device::Cpu,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next()
                .unwrap_or_else(|| panic!("{flag} needs a value"))
                .clone()
        };
        match flag.as_str() {
            "--size" => {
                let v = val();
                let (w, h) = v.split_once('x').expect("--size WxH");
                a.w = w.parse().expect("width");
                a.h = h.parse().expect("height");
            }
            "--classes" => a.classes = val().parse().expect("--classes"),
            "--k" => a.k = val().parse().expect("--k"),
            "--scale" => a.scale = val().parse().expect("--scale"),
            "--threads" => a.threads = val().parse().expect("--threads"),
            "--runs" => a.runs = val().parse().expect("--runs"),
            "--warmup" => a.warmup = val().parse().expect("--warmup"),
            "--device" => {
                a.device = match val().as_str() {
                    "cpu" => Device::Cpu,
                    "cuda" => Device::Cuda(0),
                    d => panic!("unknown device {d}"),
                }
            }
            "-h" | "--help" => {
                println!(
                    "bench_generate [--size WxH] [--classes C] [--k K] [--scale S] \
                     [--threads N] [--runs R] [--warmup W] [--device cpu|cuda]"
                );
                std::process::exit(0);
            }
            f => panic!("unknown flag {f}"),
        }
    }
    a
}

fn sync(d: Device) {
    if let Device::Cuda(i) = d {
        tch::Cuda::synchronize(i as i64);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    let a = parse();
    tch::set_num_threads(a.threads);
    tch::manual_seed(0);
    let opts = (Kind::Float, a.device);
    let (c, h, w) = (a.classes, a.h, a.w);
    // Peaked, spatially varying probabilities like a segmentation network's.
    let probs = (Tensor::randn([c, h, w], opts) * 3.0).softmax(0, Kind::Float);
    let image = Tensor::randn([3, h, w], opts) * 50.0;
    let boundary = (Tensor::randn([c, h, w], opts) * 3.0).softmax(0, Kind::Float);
    let bp: Vec<Option<Tensor>> = (0..c).map(|_| Some(boundary.shallow_clone())).collect();
    let t0 = Instant::now();
    let taus = thresholds(&bp, DegenerateGroups::default());
    let thr_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);

    let (mut total, mut mask_t, mut crop_t) = (Vec::new(), Vec::new(), Vec::new());
    let mut share = 0.0;
    for r in 0..a.warmup + a.runs {
        sync(a.device);
        let t0 = Instant::now();
        let mask = reliable_mask(&probs, &taus, DegenerateGroups::default());
        sync(a.device);
        let t1 = Instant::now();
        let windows = random_windows(&mut rng, h, w, a.k, a.scale);
        let g = generate(&image, &probs, &mask, &windows);
        sync(a.device);
        let t2 = Instant::now();
        share = g.ignored_share;
        if r >= a.warmup {
            total.push((t2 - t0).as_secs_f64() * 1e3);
            mask_t.push((t1 - t0).as_secs_f64() * 1e3);
            crop_t.push((t2 - t1).as_secs_f64() * 1e3);
        }
    }
    let (tm, mm, cm) = (median(total), median(mask_t), median(crop_t));
    println!(
        "lse_trainer::lse generate: {w}x{h}, C={c}, K={}, scale {}, {} thread(s), {:?}: \
         median of {} runs {tm:.1} ms (mask {mm:.1} ms, crop+upsample+labels {cm:.1} ms); \
         thresholds of one boundary image {thr_ms:.1} ms; ignored share {share:.3}",
        a.k, a.scale, a.threads, a.device, a.runs
    );
    println!("RESULT rust_generate_ms={tm:.3} mask_ms={mm:.3} crop_ms={cm:.3}");
}
