//! What an image looks like: its dimensions as displayed, a tiny inline preview and a
//! thumbnail, both JPEG.
//!
//! Blocking code (decoding a large photo takes a while): callers run it in
//! `spawn_blocking`. Decoding is bounded by [`image::Limits`] (each side at most
//! [`MAX_SIDE`] pixels, at most [`MAX_ALLOC`] bytes allocated), so a decompression bomb
//! fails with [`ImageError::TooLarge`] instead of allocating. EXIF orientation is applied:
//! the dimensions and thumbnails are those of the image as displayed.

use std::io::Cursor;

use bytes::Bytes;
use image::codecs::jpeg::JpegEncoder;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

/// The longer side of the inline preview carried in the message.
pub const PREVIEW_PX: u32 = 64;
/// The longer side of the thumbnail served by `GET /v1/media/<id>/thumbnail`.
pub const THUMBNAIL_PX: u32 = 320;
/// The largest width or height natter decodes.
pub const MAX_SIDE: u32 = 16_384;
/// The most memory a decode may allocate.
pub const MAX_ALLOC: u64 = 512 * 1024 * 1024;

const THUMBNAIL_QUALITY: u8 = 70;
const PREVIEW_QUALITY: u8 = 50;

/// An image's dimensions (as displayed) and its JPEG preview and thumbnail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub width: u32,
    pub height: u32,
    /// JPEG, longer side ≤ [`PREVIEW_PX`].
    pub preview: Bytes,
    /// JPEG, longer side ≤ [`THUMBNAIL_PX`].
    pub thumbnail: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("the image cannot be decoded: {0}")]
    Undecodable(String),
    #[error("the image is too large to decode ({width}x{height})")]
    TooLarge { width: u32, height: u32 },
}

/// Decodes `data` (the whole image, bounded by the caller's image size limit) and makes
/// its preview and thumbnail. `mime` is what [`crate::sniff::sniff`] found; the content
/// must agree with it. GIF and animated WebP: the first frame.
pub fn image_info(data: &[u8], mime: &str) -> Result<ImageInfo, ImageError> {
    let expected = match mime.split(';').next().unwrap_or_default().trim() {
        "image/jpeg" => ImageFormat::Jpeg,
        "image/png" => ImageFormat::Png,
        "image/gif" => ImageFormat::Gif,
        "image/webp" => ImageFormat::WebP,
        other => {
            return Err(ImageError::Undecodable(format!(
                "not an image type: {other}"
            )));
        }
    };
    let too_large = || {
        let (width, height) = dimensions(data).unwrap_or((0, 0));
        ImageError::TooLarge { width, height }
    };
    let mut reader = ImageReader::new(Cursor::new(data))
        .with_guessed_format()
        .map_err(|e| ImageError::Undecodable(e.to_string()))?;
    if reader.format() != Some(expected) {
        return Err(ImageError::Undecodable(format!(
            "the content is not {mime} ({:?})",
            reader.format()
        )));
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| match e {
        image::ImageError::Limits(_) => too_large(),
        e => ImageError::Undecodable(e.to_string()),
    })?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(ImageError::Undecodable("empty image".into()));
    }
    if width > MAX_SIDE || height > MAX_SIDE || decoder.total_bytes() > MAX_ALLOC {
        return Err(ImageError::TooLarge { width, height });
    }
    // A broken EXIF block is no reason to refuse the picture.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| match e {
        image::ImageError::Limits(_) => ImageError::TooLarge { width, height },
        e => ImageError::Undecodable(e.to_string()),
    })?;
    image.apply_orientation(orientation);

    let thumbnail = flatten(&shrink(&image, THUMBNAIL_PX));
    let preview = {
        let (w, h) = fit(thumbnail.width(), thumbnail.height(), PREVIEW_PX);
        image::imageops::thumbnail(&thumbnail, w, h)
    };
    Ok(ImageInfo {
        width: image.width(),
        height: image.height(),
        preview: jpeg(&preview, PREVIEW_QUALITY)?,
        thumbnail: jpeg(&thumbnail, THUMBNAIL_QUALITY)?,
    })
}

/// Width and height, longer side at most `max`, aspect ratio kept, never upscaled.
fn fit(width: u32, height: u32, max: u32) -> (u32, u32) {
    if width <= max && height <= max {
        return (width, height);
    }
    let scale = |side: u32, longer: u32| {
        let scaled = (u64::from(side) * u64::from(max) + u64::from(longer) / 2) / u64::from(longer);
        u32::try_from(scaled).unwrap_or(max).clamp(1, max)
    };
    if width >= height {
        (max, scale(height, width))
    } else {
        (scale(width, height), max)
    }
}

/// The image scaled down (area averaging: fast, and no aliasing on large reductions).
fn shrink(image: &DynamicImage, max: u32) -> DynamicImage {
    let (w, h) = fit(image.width(), image.height(), max);
    if (w, h) == (image.width(), image.height()) {
        image.clone()
    } else {
        image.thumbnail_exact(w, h)
    }
}

/// RGB, transparency composited onto white.
fn flatten(image: &DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    let rgba = image.to_rgba8();
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let over_white = |c: u8| {
            let (c, a) = (u32::from(c), u32::from(a));
            ((c * a + 255 * (255 - a) + 127) / 255) as u8
        };
        image::Rgb([over_white(r), over_white(g), over_white(b)])
    })
}

fn jpeg(image: &RgbImage, quality: u8) -> Result<Bytes, ImageError> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(image)
        .map_err(|e| ImageError::Undecodable(format!("encoding the thumbnail: {e}")))?;
    Ok(Bytes::from(out))
}

/// Width and height from the first bytes of a JPEG (orientation applied when the EXIF block
/// is in `head`), PNG, GIF or WebP; `None` if the header is not (entirely) there.
pub fn dimensions(head: &[u8]) -> Option<(u32, u32)> {
    let be16 = |at: usize| Some(u16::from_be_bytes(head.get(at..at + 2)?.try_into().ok()?));
    let le16 = |at: usize| Some(u16::from_le_bytes(head.get(at..at + 2)?.try_into().ok()?));
    let be32 = |at: usize| Some(u32::from_be_bytes(head.get(at..at + 4)?.try_into().ok()?));
    let le24 = |at: usize| {
        let b = head.get(at..at + 3)?;
        Some(u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16)
    };
    let dims = if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        if head.get(12..16)? != b"IHDR" {
            return None;
        }
        (be32(16)?, be32(20)?)
    } else if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
        (u32::from(le16(6)?), u32::from(le16(8)?))
    } else if head.starts_with(b"RIFF") && head.get(8..12)? == b"WEBP" {
        match head.get(12..16)? {
            b"VP8 " => {
                if head.get(23..26)? != [0x9D, 0x01, 0x2A] {
                    return None;
                }
                (u32::from(le16(26)? & 0x3FFF), u32::from(le16(28)? & 0x3FFF))
            }
            b"VP8L" => {
                if *head.get(20)? != 0x2F {
                    return None;
                }
                let bits = u32::from_le_bytes(head.get(21..25)?.try_into().ok()?);
                ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
            }
            b"VP8X" => (le24(24)? + 1, le24(27)? + 1),
            _ => return None,
        }
    } else if head.starts_with(&[0xFF, 0xD8]) {
        return jpeg_dimensions(head, be16);
    } else {
        return None;
    };
    (dims.0 != 0 && dims.1 != 0).then_some(dims)
}

fn jpeg_dimensions(head: &[u8], be16: impl Fn(usize) -> Option<u16>) -> Option<(u32, u32)> {
    let mut pos = 2;
    let mut swap = false;
    loop {
        if *head.get(pos)? != 0xFF {
            return None;
        }
        let marker = *head.get(pos + 1)?;
        match marker {
            0xFF => {
                pos += 1; // fill byte
                continue;
            }
            0x01 | 0xD0..=0xD7 => {
                pos += 2;
                continue;
            }
            0xD9 | 0xDA => return None, // end of image, start of scan: no frame header
            _ => {}
        }
        let len = usize::from(be16(pos + 2)?);
        if len < 2 {
            return None;
        }
        let data = pos + 4;
        match marker {
            0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                let height = u32::from(be16(data + 1)?);
                let width = u32::from(be16(data + 3)?);
                if width == 0 || height == 0 {
                    return None;
                }
                return Some(if swap {
                    (height, width)
                } else {
                    (width, height)
                });
            }
            0xE1 => {
                if let Some(exif) = head.get(data..pos + 2 + len)
                    && let Some(tiff) = exif.strip_prefix(b"Exif\0\0")
                {
                    swap = matches!(exif_orientation(tiff), Some(5..=8));
                }
            }
            _ => {}
        }
        pos += 2 + len;
    }
}

/// The Orientation tag (0x0112) of IFD0 in a TIFF-structured EXIF block.
fn exif_orientation(tiff: &[u8]) -> Option<u16> {
    let little = match tiff.get(..4)? {
        b"II*\0" => true,
        b"MM\0*" => false,
        _ => return None,
    };
    let u16_at = |at: usize| {
        let b: [u8; 2] = tiff.get(at..at.checked_add(2)?)?.try_into().ok()?;
        Some(if little {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        })
    };
    let u32_at = |at: usize| {
        let b: [u8; 4] = tiff.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let ifd = usize::try_from(u32_at(4)?).ok()?;
    let count = usize::from(u16_at(ifd)?);
    (0..count.min(256)).find_map(|i| {
        let entry = ifd.checked_add(2 + 12 * i)?;
        (u16_at(entry)? == 0x0112)
            .then(|| u16_at(entry + 8))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, Rgb, Rgba, RgbaImage};

    fn gradient(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            Rgb([(x * 255 / width) as u8, (y * 255 / height) as u8, 128])
        })
    }

    fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, format).expect("encode fixture");
        out.into_inner()
    }

    fn jpeg_fixture(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        JpegEncoder::new_with_quality(&mut out, 85)
            .write_image(
                gradient(width, height).as_raw(),
                width,
                height,
                image::ExtendedColorType::Rgb8,
            )
            .expect("encode fixture");
        out
    }

    /// The JPEG with an APP1 Exif segment (big-endian TIFF, IFD0 with only Orientation)
    /// inserted right after SOI.
    fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
        let mut tiff = b"MM\0*\0\0\0\x08".to_vec();
        tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
        tiff.extend_from_slice(&0x0112u16.to_be_bytes());
        tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
        tiff.extend_from_slice(&1u32.to_be_bytes());
        tiff.extend_from_slice(&orientation.to_be_bytes());
        tiff.extend_from_slice(&[0, 0]);
        tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff);
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&app1);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    /// Decodes a produced JPEG and checks its size.
    fn decoded(jpeg: &[u8]) -> DynamicImage {
        assert!(jpeg.starts_with(&[0xFF, 0xD8, 0xFF]), "not a JPEG");
        image::load_from_memory_with_format(jpeg, ImageFormat::Jpeg).expect("decodable JPEG")
    }

    fn check(info: &ImageInfo, width: u32, height: u32, thumb: (u32, u32), preview: (u32, u32)) {
        assert_eq!((info.width, info.height), (width, height));
        let t = decoded(&info.thumbnail);
        assert_eq!((t.width(), t.height()), thumb);
        let p = decoded(&info.preview);
        assert_eq!((p.width(), p.height()), preview);
        assert!(
            info.preview.len() <= 4096,
            "preview is {} bytes",
            info.preview.len()
        );
        assert!(
            info.thumbnail.len() <= 48 * 1024,
            "thumbnail is {} bytes",
            info.thumbnail.len()
        );
    }

    #[test]
    fn png_jpeg_gif_webp() {
        let image = DynamicImage::ImageRgb8(gradient(800, 600));
        for (format, mime) in [
            (ImageFormat::Png, "image/png"),
            (ImageFormat::Gif, "image/gif"),
            (ImageFormat::WebP, "image/webp"),
        ] {
            let data = encode(&image, format);
            assert_eq!(
                dimensions(&data[..64.min(data.len())]),
                Some((800, 600)),
                "{mime}"
            );
            let info = image_info(&data, mime).unwrap_or_else(|e| panic!("{mime}: {e}"));
            check(&info, 800, 600, (320, 240), (64, 48));
        }
        let data = jpeg_fixture(800, 600);
        assert_eq!(dimensions(&data), Some((800, 600)));
        let info = image_info(&data, "image/jpeg").expect("jpeg");
        check(&info, 800, 600, (320, 240), (64, 48));
        // The thumbnail looks like the image: the gradient's corners survive.
        let t = decoded(&info.thumbnail).to_rgb8();
        let (first, last) = (t.get_pixel(2, 2).0, t.get_pixel(317, 237).0);
        assert!(first[0] < 40 && last[0] > 215, "{first:?} {last:?}");
    }

    #[test]
    fn portrait_and_tiny_images() {
        let data = encode(
            &DynamicImage::ImageRgb8(gradient(300, 1200)),
            ImageFormat::Png,
        );
        let info = image_info(&data, "image/png").expect("png");
        check(&info, 300, 1200, (80, 320), (16, 64));

        // Never upscaled.
        let data = encode(&DynamicImage::ImageRgb8(gradient(10, 10)), ImageFormat::Png);
        let info = image_info(&data, "image/png").expect("png");
        check(&info, 10, 10, (10, 10), (10, 10));

        // A one-pixel-high strip keeps at least one pixel.
        let data = encode(
            &DynamicImage::ImageRgb8(gradient(2000, 1)),
            ImageFormat::Png,
        );
        let info = image_info(&data, "image/png").expect("png");
        check(&info, 2000, 1, (320, 1), (64, 1));
    }

    #[test]
    fn transparency_is_flattened_onto_white() {
        let clear = RgbaImage::from_pixel(100, 50, Rgba([0, 0, 0, 0]));
        let data = encode(&DynamicImage::ImageRgba8(clear), ImageFormat::Png);
        let info = image_info(&data, "image/png").expect("png");
        let t = decoded(&info.thumbnail).to_rgb8();
        assert!(
            t.pixels().all(|p| p.0.iter().all(|&c| c > 245)),
            "not white"
        );
    }

    #[test]
    fn exif_orientation_swaps_dimensions() {
        let data = with_exif_orientation(&jpeg_fixture(800, 400), 6);
        assert_eq!(dimensions(&data), Some((400, 800)));
        let info = image_info(&data, "image/jpeg").expect("jpeg");
        check(&info, 400, 800, (160, 320), (32, 64));
        // Rotated 90° clockwise: the original's left edge (dark red) is now at the top.
        let t = decoded(&info.thumbnail).to_rgb8();
        let top = t.get_pixel(80, 1).0;
        let bottom = t.get_pixel(80, 318).0;
        assert!(top[0] < 40 && bottom[0] > 215, "{top:?} {bottom:?}");

        // Orientation 3 (180°) keeps the dimensions.
        let data = with_exif_orientation(&jpeg_fixture(800, 400), 3);
        assert_eq!(dimensions(&data), Some((800, 400)));
        let info = image_info(&data, "image/jpeg").expect("jpeg");
        assert_eq!((info.width, info.height), (800, 400));
    }

    #[test]
    fn garbage_and_mismatches_are_undecodable() {
        let junk: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
            .collect();
        assert!(matches!(
            image_info(&junk, "image/png"),
            Err(ImageError::Undecodable(_))
        ));
        assert!(matches!(
            image_info(&[], "image/jpeg"),
            Err(ImageError::Undecodable(_))
        ));
        let png = encode(&DynamicImage::ImageRgb8(gradient(20, 20)), ImageFormat::Png);
        assert!(matches!(
            image_info(&png, "image/jpeg"),
            Err(ImageError::Undecodable(_))
        ));
        assert!(matches!(
            image_info(&png, "application/pdf"),
            Err(ImageError::Undecodable(_))
        ));
        // A truncated file.
        let jpeg = jpeg_fixture(200, 200);
        let cut = &jpeg[..jpeg.len() / 3];
        match image_info(cut, "image/jpeg") {
            Err(ImageError::Undecodable(_)) => {}
            // zune-jpeg may decode what is there: the result must still be sane.
            Ok(info) => assert_eq!((info.width, info.height), (200, 200)),
            Err(e) => panic!("{e}"),
        }
        assert_eq!(dimensions(&junk), None);
        assert_eq!(dimensions(&jpeg[..4]), None);
        assert_eq!(dimensions(b""), None);
    }

    /// A PNG whose header claims `width`×`height` (CRCs are right; there is no pixel data).
    fn png_header(width: u32, height: u32) -> Vec<u8> {
        fn crc32(data: &[u8]) -> u32 {
            let mut crc = !0u32;
            for &b in data {
                crc ^= u32::from(b);
                for _ in 0..8 {
                    crc = if crc & 1 != 0 {
                        (crc >> 1) ^ 0xEDB8_8320
                    } else {
                        crc >> 1
                    };
                }
            }
            !crc
        }
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend_from_slice(&width.to_be_bytes());
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend_from_slice(&13u32.to_be_bytes());
        png.extend_from_slice(&ihdr);
        png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
        let idat = b"IDAT\x78\x9c\x03\x00\x00\x00\x00\x01";
        png.extend_from_slice(&8u32.to_be_bytes());
        png.extend_from_slice(idat);
        png.extend_from_slice(&crc32(idat).to_be_bytes());
        png
    }

    #[test]
    fn decompression_bombs_are_refused_without_allocating() {
        let bomb = png_header(100_000, 100_000);
        assert_eq!(dimensions(&bomb), Some((100_000, 100_000)));
        match image_info(&bomb, "image/png") {
            Err(ImageError::TooLarge { width, height }) => {
                assert_eq!((width, height), (100_000, 100_000));
            }
            other => panic!("{other:?}"),
        }
        // Within each side's limit, but 16000×16000 RGBA is 1 GiB > 512 MiB.
        let wide = png_header(16_000, 16_000);
        assert!(matches!(
            image_info(&wide, "image/png"),
            Err(ImageError::TooLarge { .. })
        ));
        // Small enough to try: the missing pixel data makes it undecodable.
        let small = png_header(100, 100);
        assert!(matches!(
            image_info(&small, "image/png"),
            Err(ImageError::Undecodable(_))
        ));
    }

    #[test]
    fn header_dimensions() {
        let webp_vp8x = {
            let mut v = b"RIFF\0\0\0\0WEBPVP8X\x0a\0\0\0\x10\0\0\0".to_vec();
            v.extend_from_slice(&[0x1F, 0x03, 0x00, 0xDF, 0x01, 0x00]); // 800x480
            v
        };
        assert_eq!(dimensions(&webp_vp8x), Some((800, 480)));
        let gif = b"GIF89a\x40\x01\xF0\x00\x00\x00\x00";
        assert_eq!(dimensions(gif), Some((320, 240)));
        // A JPEG whose SOF lies beyond the head: unknown, not a guess.
        let jpeg = with_exif_orientation(&jpeg_fixture(64, 32), 1);
        assert_eq!(dimensions(&jpeg[..40]), None);
        assert_eq!(dimensions(&jpeg), Some((64, 32)));
        // A zero-length segment does not loop.
        assert_eq!(
            dimensions(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0, 0xFF, 0xC0]),
            None
        );
    }

    /// `cargo test -p natter-media --lib thumb::tests::large_jpeg_timing -- --ignored --nocapture`
    #[test]
    #[ignore = "timing only"]
    fn large_jpeg_timing() {
        let data = jpeg_fixture(4000, 3000);
        let start = std::time::Instant::now();
        let info = image_info(&data, "image/jpeg").expect("jpeg");
        eprintln!(
            "4000x3000 JPEG ({} KiB): {:?}",
            data.len() / 1024,
            start.elapsed()
        );
        assert_eq!((info.width, info.height), (4000, 3000));
    }
}
