//! Image decoding, resizing, label-map PNGs, colouring, and atomic file writes.
//!
//! Resizing follows docs/method.md: images bicubic (Catmull-Rom, the kernel of PIL's
//! `BICUBIC`), label maps nearest neighbour. Everything that writes a file writes a
//! temporary file beside it and renames it into place, so an interrupted run never
//! leaves a half-written output.

use std::io::Write;
use std::path::{Path, PathBuf};

use fast_image_resize as fr;
use image::{GrayImage, RgbImage};

use crate::labels;

/// The Caffe VGG mean the network subtracts, in (B, G, R) order.
pub const MEAN_BGR: [f32; 3] = [104.006_99, 116.668_77, 122.678_92];

/// Errors of image I/O; each names the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read image {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot decode image {path}: {message}")]
    Decode { path: PathBuf, message: String },
    #[error("cannot write {path}: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot encode PNG {path}: {message}")]
    Encode { path: PathBuf, message: String },
    #[error("invalid image size {width}x{height}")]
    Size { width: u32, height: u32 },
}

/// Decodes an 8-bit RGB image (PNG or JPEG; alpha dropped, grey expanded) from memory.
/// `name` only serves the error message.
pub fn decode_rgb(bytes: &[u8], name: &Path) -> Result<RgbImage, ImageError> {
    let img = image::load_from_memory(bytes).map_err(|e| ImageError::Decode {
        path: name.to_path_buf(),
        message: e.to_string(),
    })?;
    // No copy when the file is RGB already.
    Ok(img.into_rgb8())
}

/// Reads and decodes an 8-bit RGB image file.
pub fn read_rgb(path: &Path) -> Result<RgbImage, ImageError> {
    let bytes = std::fs::read(path).map_err(|error| ImageError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    decode_rgb(&bytes, path)
}

/// Reads a single-channel 8-bit label PNG (label ids or train ids).
pub fn read_gray(path: &Path) -> Result<GrayImage, ImageError> {
    let bytes = std::fs::read(path).map_err(|error| ImageError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let img = image::load_from_memory(&bytes).map_err(|e| ImageError::Decode {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    match img {
        image::DynamicImage::ImageLuma8(g) => Ok(g),
        other => Err(ImageError::Decode {
            path: path.to_path_buf(),
            message: format!(
                "expected a single-channel 8-bit label PNG, found {:?}",
                other.color()
            ),
        }),
    }
}

/// Width and height from the file header only (no pixel decoding).
pub fn dimensions(path: &Path) -> Result<(u32, u32), ImageError> {
    image::image_dimensions(path).map_err(|e| ImageError::Decode {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn resize_u8(
    src: &[u8],
    (sw, sh): (u32, u32),
    (dw, dh): (u32, u32),
    pixel: fr::PixelType,
    alg: fr::ResizeAlg,
) -> Result<Vec<u8>, ImageError> {
    if sw == 0 || sh == 0 {
        return Err(ImageError::Size {
            width: sw,
            height: sh,
        });
    }
    if dw == 0 || dh == 0 {
        return Err(ImageError::Size {
            width: dw,
            height: dh,
        });
    }
    let src_img = fr::images::ImageRef::new(sw, sh, src, pixel).map_err(|_| ImageError::Size {
        width: sw,
        height: sh,
    })?;
    let mut dst = fr::images::Image::new(dw, dh, pixel);
    let mut resizer = fr::Resizer::new();
    resizer
        .resize(
            &src_img,
            &mut dst,
            &fr::ResizeOptions::new().resize_alg(alg),
        )
        .map_err(|_| ImageError::Size {
            width: dw,
            height: dh,
        })?;
    Ok(dst.into_vec())
}

/// Bicubic (Catmull-Rom) resize of an RGB image; a no-op copy when the size matches.
pub fn resize_rgb(img: &RgbImage, width: u32, height: u32) -> Result<RgbImage, ImageError> {
    if img.dimensions() == (width, height) {
        return Ok(img.clone());
    }
    let data = resize_u8(
        img.as_raw(),
        img.dimensions(),
        (width, height),
        fr::PixelType::U8x3,
        fr::ResizeAlg::Convolution(fr::FilterType::CatmullRom),
    )?;
    Ok(RgbImage::from_raw(width, height, data).expect("buffer size matches"))
}

/// Nearest-neighbour resize of a label map (pixel centres, as PIL's NEAREST).
pub fn resize_labels(img: &GrayImage, width: u32, height: u32) -> Result<GrayImage, ImageError> {
    if img.dimensions() == (width, height) {
        return Ok(img.clone());
    }
    let data = resize_u8(
        img.as_raw(),
        img.dimensions(),
        (width, height),
        fr::PixelType::U8,
        fr::ResizeAlg::Nearest,
    )?;
    Ok(GrayImage::from_raw(width, height, data).expect("buffer size matches"))
}

/// The network's input convention for the trainer: CHW float32, BGR, mean subtracted.
pub fn to_bgr_chw_minus_mean(img: &RgbImage) -> Vec<f32> {
    let (w, h) = img.dimensions();
    let plane = (w * h) as usize;
    let mut out = vec![0f32; 3 * plane];
    for (i, p) in img.pixels().enumerate() {
        out[i] = p[2] as f32 - MEAN_BGR[0];
        out[plane + i] = p[1] as f32 - MEAN_BGR[1];
        out[2 * plane + i] = p[0] as f32 - MEAN_BGR[2];
    }
    out
}

/// The model contract's input convention: CHW float32, RGB, 0..255.
pub fn to_rgb_chw(img: &RgbImage) -> Vec<f32> {
    let (w, h) = img.dimensions();
    let plane = (w * h) as usize;
    let mut out = vec![0f32; 3 * plane];
    for (i, p) in img.pixels().enumerate() {
        out[i] = p[0] as f32;
        out[plane + i] = p[1] as f32;
        out[2 * plane + i] = p[2] as f32;
    }
    out
}

/// Colour maps and overlays live in [`crate::palette`].
pub use crate::palette::{colorize, overlay};

/// Maps a train-id map to Cityscapes label ids (ignore -> 0).
pub fn train_to_label_ids(train_ids: &GrayImage) -> GrayImage {
    let lut = labels::train_to_label_lut();
    let mut out = train_ids.clone();
    for p in out.iter_mut() {
        *p = lut[*p as usize];
    }
    out
}

/// Encodes 8-bit pixels as PNG into memory (`channels` 1 or 3).
///
/// Label maps (`channels` 1) use the fastest settings (the "up" filter and fdeflate's
/// ultra-fast mode): much faster than adaptive filtering, for files only slightly
/// larger, as label maps are large uniform regions (`lse label` writes one per image;
/// `scripts/bench-label.sh` times it).
/// Colour maps and overlays keep adaptive filtering.
pub fn encode_png(
    data: &[u8],
    width: u32,
    height: u32,
    channels: u8,
) -> Result<Vec<u8>, png::EncodingError> {
    let mut buf = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut buf, width, height);
        enc.set_color(if channels == 1 {
            png::ColorType::Grayscale
        } else {
            png::ColorType::Rgb
        });
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(if channels == 1 {
            png::Compression::Fastest
        } else {
            png::Compression::Fast
        });
        let mut w = enc.write_header()?;
        w.write_image_data(data)?;
    }
    Ok(buf)
}

/// Writes bytes to `path` atomically: a temporary file in the same folder, fsync'd
/// and renamed into place. Creates missing parent folders.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let err = |error| ImageError::Write {
        path: path.to_path_buf(),
        error,
    };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        file_name.unwrap_or_default(),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

/// Writes a single-channel PNG atomically.
pub fn write_gray_png(path: &Path, img: &GrayImage) -> Result<(), ImageError> {
    let bytes =
        encode_png(img.as_raw(), img.width(), img.height(), 1).map_err(|e| ImageError::Encode {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    write_atomic(path, &bytes)
}

/// Writes an RGB PNG atomically.
pub fn write_rgb_png(path: &Path, img: &RgbImage) -> Result<(), ImageError> {
    let bytes =
        encode_png(img.as_raw(), img.width(), img.height(), 3).map_err(|e| ImageError::Encode {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bgr_mean_layout() {
        let img = RgbImage::from_raw(2, 1, vec![10, 20, 30, 40, 50, 60]).unwrap();
        let v = to_bgr_chw_minus_mean(&img);
        assert!((v[0] - (30.0 - MEAN_BGR[0])).abs() < 1e-4);
        assert!((v[1] - (60.0 - MEAN_BGR[0])).abs() < 1e-4);
        assert!((v[2] - (20.0 - MEAN_BGR[1])).abs() < 1e-4);
        assert!((v[5] - (40.0 - MEAN_BGR[2])).abs() < 1e-4);
    }

    #[test]
    fn nearest_keeps_label_values() {
        let img = GrayImage::from_raw(2, 2, vec![7, 8, 26, 255]).unwrap();
        let up = resize_labels(&img, 4, 4).unwrap();
        assert_eq!(up.get_pixel(0, 0)[0], 7);
        assert_eq!(up.get_pixel(3, 0)[0], 8);
        assert_eq!(up.get_pixel(0, 3)[0], 26);
        assert_eq!(up.get_pixel(3, 3)[0], 255);
    }

    #[test]
    fn atomic_png_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/x.png");
        let img = GrayImage::from_raw(3, 2, vec![0, 7, 26, 33, 255, 1]).unwrap();
        write_gray_png(&p, &img).unwrap();
        assert_eq!(read_gray(&p).unwrap(), img);
        let left: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn colours_and_ids() {
        let t = GrayImage::from_raw(2, 1, vec![0, 255]).unwrap();
        assert_eq!(colorize(&t).as_raw(), &vec![128, 64, 128, 0, 0, 0]);
        assert_eq!(train_to_label_ids(&t).as_raw(), &vec![7, 0]);
    }
}
