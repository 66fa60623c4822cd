//! Loading samples into tensors: the network's input layout, seeded shuffling, and
//! background prefetching.
//!
//! - Images become `3 x H x W` float tensors: 0..255, BGR, the configured mean
//!   subtracted (docs/method.md); labels become `H x W` int64 train ids (255 ignore).
//! - The order of samples is a function of the seed and the stream position only
//!   ([`Order`]): epoch `e` visits a permutation drawn from `(seed, salt, e)`. A run
//!   resumed at iteration `i` therefore sees exactly the batches an uninterrupted run
//!   sees, with no RNG state to save.
//! - [`Prefetch`] decodes and resizes on a background thread (and in parallel within
//!   a batch) while the training device works, through a bounded channel.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use anyhow::Context;
use image::{GrayImage, RgbImage};
use lse_runtime::datasets::Dataset;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use tch::{Kind, Tensor};

/// A batch on the CPU: images `N x 3 x H x W` (float) and labels `N x H x W` (int64).
pub struct Batch {
    pub images: Tensor,
    pub labels: Tensor,
}

/// An image as the network's input: `3 x H x W`, BGR, mean subtracted.
pub fn image_tensor(img: &RgbImage, mean_bgr: [f64; 3]) -> Tensor {
    let (w, h) = img.dimensions();
    let n = (w * h) as usize;
    let raw = img.as_raw();
    let mut out = vec![0f32; 3 * n];
    for (i, px) in raw.chunks_exact(3).enumerate() {
        // BGR order: channel 0 is blue (RGB index 2).
        out[i] = px[2] as f32 - mean_bgr[0] as f32;
        out[n + i] = px[1] as f32 - mean_bgr[1] as f32;
        out[2 * n + i] = px[0] as f32 - mean_bgr[2] as f32;
    }
    Tensor::from_slice(&out).view([3, h as i64, w as i64])
}

/// The inverse of [`image_tensor`]: a `3 x H x W` network input back to an RGB image
/// (rounded and clamped to 0..255), for pictures of what the network saw.
pub fn tensor_to_rgb(t: &Tensor, mean_bgr: [f64; 3]) -> RgbImage {
    let (_, h, w) = t.size3().expect("3 x H x W");
    let n = (h * w) as usize;
    let v: Vec<f32> =
        Vec::try_from(t.to_kind(Kind::Float).contiguous().flatten(0, -1)).expect("f32 image");
    let px = |c: usize, i: usize| {
        (v[c * n + i] + mean_bgr[c] as f32)
            .round()
            .clamp(0.0, 255.0) as u8
    };
    let raw: Vec<u8> = (0..n)
        .flat_map(|i| [px(2, i), px(1, i), px(0, i)])
        .collect();
    RgbImage::from_raw(w as u32, h as u32, raw).expect("buffer size matches")
}

/// An `H x W` tensor of train ids (any integer kind) as a grey image.
pub fn tensor_to_gray(t: &Tensor) -> GrayImage {
    let (h, w) = t.size2().expect("H x W");
    let v: Vec<u8> =
        Vec::try_from(t.to_kind(Kind::Uint8).contiguous().flatten(0, -1)).expect("u8 labels");
    GrayImage::from_raw(w as u32, h as u32, v).expect("buffer size matches")
}

/// The train-id label of sample `i` at `size` (nearest), `None` when the dataset
/// has no labels. Used only by the diagnostics, never by training on the target.
pub fn label_at(ds: &Dataset, i: usize, size: [u32; 2]) -> anyhow::Result<Option<GrayImage>> {
    let Some(path) = ds.samples()[i].label.clone() else {
        return Ok(None);
    };
    let label = ds.read_train_ids(&path)?;
    Ok(Some(lse_runtime::imageio::resize_labels(
        &label, size[0], size[1],
    )?))
}

/// A train-id label as an `H x W` int64 tensor.
pub fn label_tensor(label: &GrayImage) -> Tensor {
    let (w, h) = label.dimensions();
    Tensor::from_slice(label.as_raw())
        .to_kind(Kind::Int64)
        .view([h as i64, w as i64])
}

/// SplitMix64 of a tuple of words: decorrelated seeds for each use of the run seed.
pub fn mix_seed(parts: &[u64]) -> u64 {
    let mut z = 0x243F_6A88_85A3_08D3u64;
    for &p in parts {
        z ^= p;
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
    }
    z
}

/// A seeded permutation of `0..n`.
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    v.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    v
}

/// The sample visited at each position of an endless stream of shuffled epochs.
#[derive(Debug, Clone)]
pub struct Order {
    n: usize,
    seed: u64,
    salt: u64,
    epoch: Option<(u64, Vec<usize>)>,
}

impl Order {
    pub fn new(n: usize, seed: u64, salt: u64) -> Self {
        assert!(n > 0, "an order over no samples");
        Self {
            n,
            seed,
            salt,
            epoch: None,
        }
    }

    /// The sample index at stream position `pos`.
    pub fn index(&mut self, pos: u64) -> usize {
        let e = pos / self.n as u64;
        if self.epoch.as_ref().is_none_or(|(k, _)| *k != e) {
            self.epoch = Some((e, permutation(self.n, mix_seed(&[self.seed, self.salt, e]))));
        }
        let perm = &self.epoch.as_ref().expect("set above").1;
        perm[(pos % self.n as u64) as usize]
    }
}

/// Results produced on a background thread, in order, through a bounded channel.
pub struct Prefetch<T> {
    rx: Receiver<anyhow::Result<T>>,
    handle: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> Prefetch<T> {
    /// Runs `produce(0)`, `produce(1)`, ... on a thread until it returns `None` or the
    /// receiver goes away, keeping at most `depth` results ahead.
    pub fn spawn<F>(depth: usize, mut produce: F) -> Self
    where
        F: FnMut(u64) -> Option<anyhow::Result<T>> + Send + 'static,
    {
        let (tx, rx): (SyncSender<anyhow::Result<T>>, _) = sync_channel(depth.max(1));
        let handle = std::thread::Builder::new()
            .name("lse-prefetch".into())
            .spawn(move || {
                let mut k = 0u64;
                while let Some(item) = produce(k) {
                    let failed = item.is_err();
                    if tx.send(item).is_err() || failed {
                        break;
                    }
                    k += 1;
                }
            })
            .expect("spawning the prefetch thread");
        Self {
            rx,
            handle: Some(handle),
        }
    }

    /// The next result; an error when the producer failed or ended early.
    pub fn recv(&mut self) -> anyhow::Result<T> {
        match self.rx.recv() {
            Ok(item) => item,
            Err(_) => anyhow::bail!("the data loader stopped early"),
        }
    }
}

impl<T> Drop for Prefetch<T> {
    fn drop(&mut self) {
        // Closing the channel stops the producer at its next send.
        let (_, dead) = sync_channel::<anyhow::Result<T>>(1);
        drop(std::mem::replace(&mut self.rx, dead));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Loads labelled samples `indices` of `ds` at `size` as one batch.
pub fn load_batch(
    ds: &Dataset,
    indices: &[usize],
    size: [u32; 2],
    mean_bgr: [f64; 3],
) -> anyhow::Result<Batch> {
    let loaded: Vec<(Tensor, Tensor)> = indices
        .par_iter()
        .map(|&i| {
            let (img, label) = ds
                .load_sample(i, size)
                .with_context(|| format!("loading {} sample {i}", ds.kind()))?;
            let label = label.ok_or_else(|| {
                anyhow::anyhow!(
                    "{} dataset at {} has no labels (source training needs them)",
                    ds.kind(),
                    ds.root().display()
                )
            })?;
            Ok((image_tensor(&img, mean_bgr), label_tensor(&label)))
        })
        .collect::<anyhow::Result<_>>()?;
    let (imgs, labels): (Vec<Tensor>, Vec<Tensor>) = loaded.into_iter().unzip();
    Ok(Batch {
        images: Tensor::stack(&imgs, 0),
        labels: Tensor::stack(&labels, 0),
    })
}

/// The source batches of iterations `start..`: iteration `i` takes stream positions
/// `i * batch .. (i + 1) * batch` of the seeded [`Order`].
pub fn source_stream(
    ds: Arc<Dataset>,
    size: [u32; 2],
    batch: usize,
    mean_bgr: [f64; 3],
    seed: u64,
    start_iteration: u64,
) -> Prefetch<Batch> {
    let mut order = Order::new(ds.len(), seed, 0x534F_5552);
    Prefetch::spawn(3, move |k| {
        let it = start_iteration + k;
        let idx: Vec<usize> = (0..batch as u64)
            .map(|j| order.index(it * batch as u64 + j))
            .collect();
        Some(load_batch(&ds, &idx, size, mean_bgr))
    })
}

/// Target images `indices` (labels are never read) at `size`, as `(index, image)`.
pub fn image_stream(
    ds: Arc<Dataset>,
    indices: Vec<usize>,
    size: [u32; 2],
    mean_bgr: [f64; 3],
) -> Prefetch<(usize, Tensor)> {
    Prefetch::spawn(4, move |k| {
        let &i = indices.get(k as usize)?;
        Some(
            ds.load_image(i)
                .and_then(|img| {
                    lse_runtime::imageio::resize_rgb(&img, size[0], size[1])
                        .map_err(lse_runtime::datasets::DatasetError::from)
                })
                .map(|img| (i, image_tensor(&img, mean_bgr)))
                .with_context(|| {
                    format!("loading target image {}", ds.samples()[i].image.display())
                }),
        )
    })
}

/// Labelled images for evaluation: the image at `size` and the train-id label at its
/// original resolution.
pub fn eval_stream(
    ds: Arc<Dataset>,
    count: usize,
    size: [u32; 2],
    mean_bgr: [f64; 3],
) -> Prefetch<(Tensor, GrayImage)> {
    Prefetch::spawn(4, move |k| {
        if k as usize >= count {
            return None;
        }
        let i = k as usize;
        Some((|| {
            let (img, label) = ds.load_sample_original(i)?;
            let label = label.ok_or_else(|| {
                anyhow::anyhow!("{} has no label", ds.samples()[i].image.display())
            })?;
            let img = lse_runtime::imageio::resize_rgb(&img, size[0], size[1])?;
            Ok((image_tensor(&img, mean_bgr), label))
        })())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rgb_round_trips_through_the_network_layout() {
        let img = RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 40, y as u8 * 70, 200]));
        let mean = [104.00698793, 116.66876762, 122.67891434];
        assert_eq!(tensor_to_rgb(&image_tensor(&img, mean), mean), img);
        let g = GrayImage::from_fn(4, 2, |x, y| image::Luma([(x + 4 * y) as u8]));
        assert_eq!(tensor_to_gray(&label_tensor(&g)), g);
    }

    #[test]
    fn image_tensor_is_bgr_minus_mean() {
        let img = RgbImage::from_raw(2, 1, vec![10, 20, 30, 40, 50, 60]).unwrap();
        let t = image_tensor(&img, [1.0, 2.0, 3.0]);
        assert_eq!(t.size(), [3, 1, 2]);
        let v: Vec<f32> = t.flatten(0, -1).try_into().unwrap();
        assert_eq!(v, [29.0, 59.0, 18.0, 48.0, 7.0, 37.0]);
    }

    #[test]
    fn order_is_a_function_of_position() {
        let mut a = Order::new(5, 7, 1);
        let first: Vec<usize> = (0..15).map(|p| a.index(p)).collect();
        // every epoch is a permutation
        for e in 0..3 {
            let mut ep = first[e * 5..e * 5 + 5].to_vec();
            ep.sort();
            assert_eq!(ep, [0, 1, 2, 3, 4]);
        }
        // a fresh order started mid-way agrees
        let mut b = Order::new(5, 7, 1);
        assert_eq!(b.index(12), first[12]);
        assert_eq!(b.index(3), first[3]);
        // another seed differs somewhere
        let mut c = Order::new(5, 8, 1);
        assert!((0..15).any(|p| c.index(p) != first[p as usize]));
    }

    #[test]
    fn prefetch_yields_in_order_and_stops() {
        let mut p = Prefetch::spawn(2, |k| (k < 5).then_some(Ok(k * 10)));
        for k in 0..5 {
            assert_eq!(p.recv().unwrap(), k * 10);
        }
        assert!(p.recv().is_err());
        // dropping an unfinished endless producer does not hang
        let mut q = Prefetch::spawn(2, |k| Some(Ok(k)));
        assert_eq!(q.recv().unwrap(), 0);
        drop(q);
    }
}
