//! A small generated street-like picture (sky, buildings, vegetation, road, a car),
//! served at `GET /v1/sample.png` so that the web page's self-test, the benchmark and
//! people trying the API have an image at hand.

use image::{Rgb, RgbImage};

/// Width and height limits of the sample.
pub const MAX_SIDE: u32 = 4096;

/// Draws the sample at `width x height` (deterministic).
pub fn sample_image(width: u32, height: u32) -> RgbImage {
    let (w, h) = (width.clamp(1, MAX_SIDE), height.clamp(1, MAX_SIDE));
    let (wf, hf) = (w as f32, h as f32);
    RgbImage::from_fn(w, h, |x, y| {
        let (u, v) = (x as f32 / wf, y as f32 / hf);
        // A little texture so the picture is not flat.
        let n = (((x * 7919) ^ (y * 104_729)) % 17) as f32 - 8.0;
        let px = |r: f32, g: f32, b: f32| {
            Rgb([
                (r + n).clamp(0.0, 255.0) as u8,
                (g + n).clamp(0.0, 255.0) as u8,
                (b + n).clamp(0.0, 255.0) as u8,
            ])
        };
        let car = (0.55..0.8).contains(&u) && (0.58..0.75).contains(&v);
        let wheel = car && v > 0.7 && ((0.58..0.63).contains(&u) || (0.71..0.76).contains(&u));
        if wheel {
            px(20.0, 20.0, 20.0)
        } else if car {
            px(10.0, 20.0, 150.0)
        } else if v > 0.62 + 0.05 * (u - 0.5).abs() {
            px(128.0, 64.0 + 20.0 * v, 128.0)
        } else if v > 0.55 && !(0.12..=0.9).contains(&u) {
            px(244.0, 35.0, 232.0)
        } else if (0.08..0.3).contains(&u) && v > 0.25 {
            px(107.0, 142.0, 35.0)
        } else if ((0.3..0.55).contains(&u) && v > 0.15) || (u >= 0.8 && v > 0.3) {
            let window = (x / 4 + y / 4) % 3 == 0;
            if window {
                px(40.0, 40.0, 60.0)
            } else {
                px(70.0, 70.0, 70.0)
            }
        } else {
            px(70.0 + 60.0 * v, 130.0 + 60.0 * v, 180.0 + 40.0 * v)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_is_deterministic_and_sized() {
        let a = sample_image(64, 48);
        assert_eq!(a.dimensions(), (64, 48));
        assert_eq!(a, sample_image(64, 48));
        assert_eq!(sample_image(0, 100_000).dimensions(), (1, MAX_SIDE));
        // Not a flat picture.
        let first = a.get_pixel(0, 0);
        assert!(a.pixels().any(|p| p != first));
    }
}
