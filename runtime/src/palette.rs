//! Pictures of label maps: a colour table per train id, colour maps and overlays.
//!
//! One place for the colouring used by `lse segment --color`, the run report's
//! pictures (`lse-train`) and, in time, the server's `output=color|overlay`: a model
//! carries its own table ([`crate::contract::ModelMeta::color_lut`]); [`cityscapes`] is
//! the Cityscapes palette of [`crate::labels`].

use image::{GrayImage, RgbImage};

use crate::labels;

/// A colour for every train id (ids without a class are black).
pub type ColorLut = [[u8; 3]; 256];

/// The Cityscapes palette of the 19 train classes.
pub fn cityscapes() -> ColorLut {
    labels::train_color_lut()
}

/// The colours of `train_ids` as packed RGB bytes.
pub fn colors_rgb(train_ids: &[u8], lut: &ColorLut) -> Vec<u8> {
    let mut out = Vec::with_capacity(train_ids.len() * 3);
    for &t in train_ids {
        out.extend_from_slice(&lut[t as usize]);
    }
    out
}

/// Colours a train-id map with `lut`.
pub fn colorize_with(train_ids: &GrayImage, lut: &ColorLut) -> RgbImage {
    let (w, h) = train_ids.dimensions();
    RgbImage::from_raw(w, h, colors_rgb(train_ids.as_raw(), lut)).expect("buffer size matches")
}

/// Colours a train-id map with the Cityscapes palette.
pub fn colorize(train_ids: &GrayImage) -> RgbImage {
    colorize_with(train_ids, &cityscapes())
}

/// Blends `colors` over `image` (`alpha` = weight of the colours).
pub fn blend(image: &RgbImage, colors: &RgbImage, alpha: f32) -> RgbImage {
    let mut out = image.clone();
    for (o, c) in out.pixels_mut().zip(colors.pixels()) {
        for k in 0..3 {
            o[k] = (o[k] as f32 * (1.0 - alpha) + c[k] as f32 * alpha).round() as u8;
        }
    }
    out
}

/// Blends the Cityscapes colour map of `train_ids` over `image` (`alpha` = weight of
/// the colours).
pub fn overlay(image: &RgbImage, train_ids: &GrayImage, alpha: f32) -> RgbImage {
    blend(image, &colorize(train_ids), alpha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_and_overlay() {
        let ids = GrayImage::from_raw(3, 1, vec![0, 255, 13]).unwrap();
        assert_eq!(
            colorize(&ids).as_raw(),
            &vec![128, 64, 128, 0, 0, 0, 0, 0, 142]
        );
        let mut lut = [[0u8; 3]; 256];
        lut[13] = [1, 2, 3];
        assert_eq!(
            colorize_with(&ids, &lut).as_raw(),
            &vec![0, 0, 0, 0, 0, 0, 1, 2, 3]
        );
        let image = RgbImage::from_raw(3, 1, vec![100; 9]).unwrap();
        let o = overlay(&image, &ids, 0.5);
        assert_eq!(o.as_raw(), &vec![114, 82, 114, 50, 50, 50, 50, 50, 121]);
    }
}
