//! Decoding uploaded images safely: format sniffing, the pixel limit checked on the
//! header before any pixel is decoded, and truncated files refused.
//!
//! These functions are blocking (CPU work): call them from `spawn_blocking` or a worker.

use std::io::Cursor;

use axum::http::StatusCode;
use image::{ImageFormat, ImageReader, RgbImage};

use crate::error::ApiError;

/// Sniffs the format from the first bytes; only PNG and JPEG are accepted.
fn sniff(bytes: &[u8]) -> Result<ImageFormat, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "empty_body",
            "the request has no image: send PNG or JPEG bytes as the body, or a multipart form with one file field",
        ));
    }
    match image::guess_format(bytes) {
        Ok(f @ (ImageFormat::Png | ImageFormat::Jpeg)) => Ok(f),
        Ok(other) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_format",
            format!(
                "{} images are not supported: send PNG or JPEG",
                other
                    .extensions_str()
                    .first()
                    .unwrap_or(&"these")
                    .to_uppercase()
            ),
        )),
        Err(_) => Err(ApiError::bad_request(
            "not_an_image",
            format!(
                "the body ({} bytes) is not a PNG or JPEG image",
                bytes.len()
            ),
        )),
    }
}

/// Width and height from the header alone.
pub fn header_dimensions(bytes: &[u8]) -> Result<(ImageFormat, u32, u32), ApiError> {
    let format = sniff(bytes)?;
    let mut reader = ImageReader::new(Cursor::new(bytes));
    reader.set_format(format);
    let (w, h) = reader.into_dimensions().map_err(|e| {
        ApiError::bad_request(
            "bad_image",
            format!("cannot read the {format:?} header: {e}"),
        )
    })?;
    if w == 0 || h == 0 {
        return Err(ApiError::bad_request(
            "bad_image",
            format!("the image is {w}x{h} pixels"),
        ));
    }
    Ok((format, w, h))
}

/// Whether the entropy-coded data of a JPEG ends with an EOI marker: the marker
/// segments before the first scan are walked by their lengths (so an embedded EXIF
/// thumbnail cannot fool it), then an EOI must follow the scan.
fn jpeg_complete(b: &[u8]) -> bool {
    if b.len() < 4 || b[0] != 0xFF || b[1] != 0xD8 {
        return false;
    }
    let mut i = 2;
    loop {
        // Skip fill bytes before a marker.
        while i < b.len() && b[i] == 0xFF && i + 1 < b.len() && b[i + 1] == 0xFF {
            i += 1;
        }
        if i + 4 > b.len() || b[i] != 0xFF {
            return false;
        }
        let marker = b[i + 1];
        match marker {
            // Standalone markers without a length.
            0x01 | 0xD0..=0xD7 => {
                i += 2;
                continue;
            }
            0xD9 => return false, // EOI before any scan
            _ => {}
        }
        let len = u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize;
        if len < 2 {
            return false;
        }
        let end = i + 2 + len;
        if marker == 0xDA {
            return end <= b.len() && b[end..].windows(2).any(|w| w == [0xFF, 0xD9]);
        }
        i = end;
    }
}

/// Decodes an uploaded PNG or JPEG to 8-bit RGB (alpha dropped, grey expanded), as
/// `lse segment` does. Refuses empty bodies, non-images, unsupported formats, images
/// over `max_pixels` (from the header, before decoding) and truncated files.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, ApiError> {
    let (format, w, h) = header_dimensions(bytes)?;
    let pixels = w as u64 * h as u64;
    if pixels > max_pixels {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_pixels",
            format!("the image is {w}x{h} = {pixels} pixels, more than the limit of {max_pixels}"),
        ));
    }
    if format == ImageFormat::Jpeg && !jpeg_complete(bytes) {
        return Err(ApiError::bad_request(
            "bad_image",
            "the JPEG is truncated (no end-of-image marker after its scan data)",
        ));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes));
    reader.set_format(format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    // Room for a 16-bit RGBA decode of the declared size plus decoder state.
    limits.max_alloc = Some(pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(limits);
    let img = reader.decode().map_err(|e| {
        ApiError::bad_request(
            "bad_image",
            format!("cannot decode the {format:?} image: {e}"),
        )
    })?;
    Ok(img.to_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 99]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 99]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Jpeg)
            .unwrap();
        out
    }

    fn code(r: Result<RgbImage, ApiError>) -> (u16, &'static str) {
        let e = r.unwrap_err();
        (e.status.as_u16(), e.code)
    }

    #[test]
    fn good_images_decode() {
        let p = decode(&png(13, 7), 1000).unwrap();
        assert_eq!(p.dimensions(), (13, 7));
        assert_eq!(p.get_pixel(2, 3).0, [14, 15, 99]);
        let j = decode(&jpeg(16, 8), 1000).unwrap();
        assert_eq!(j.dimensions(), (16, 8));
    }

    #[test]
    fn bad_inputs_are_4xx() {
        assert_eq!(code(decode(b"", 100)), (400, "empty_body"));
        assert_eq!(code(decode(b"hello, world", 100)), (400, "not_an_image"));
        assert_eq!(
            code(decode(b"GIF89a\x01\x00\x01\x00", 100)),
            (415, "unsupported_format")
        );
        let p = png(40, 30);
        assert_eq!(code(decode(&p[..p.len() / 2], 10_000)), (400, "bad_image"));
        assert_eq!(code(decode(&p[..20], 10_000)), (400, "bad_image"));
        let j = jpeg(40, 30);
        assert_eq!(code(decode(&j[..j.len() - 40], 10_000)), (400, "bad_image"));
        assert_eq!(code(decode(&j[..j.len() - 2], 10_000)), (400, "bad_image"));
        assert_eq!(code(decode(&p, 40 * 30 - 1)), (413, "too_many_pixels"));
    }

    #[test]
    fn huge_header_is_refused_before_decoding() {
        // A PNG whose header declares 100000 x 100000 pixels and has no pixel data.
        let mut p = png(1, 1);
        p[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        p[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        // Fix the IHDR CRC so the header itself is valid.
        let crc = crc32(&p[12..29]);
        p[29..33].copy_from_slice(&crc.to_be_bytes());
        let e = decode(&p, 40_000_000).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (413, "too_many_pixels"), "{e}");
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    #[test]
    fn jpeg_marker_walk() {
        let j = jpeg(8, 8);
        assert!(jpeg_complete(&j));
        let mut trailing = j.clone();
        trailing.extend_from_slice(&[0, 0, 0]);
        assert!(jpeg_complete(&trailing));
        assert!(!jpeg_complete(&j[..j.len() - 10]));
        assert!(!jpeg_complete(b"\xFF\xD8\xFF"));
    }
}
