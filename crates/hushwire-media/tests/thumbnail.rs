//! Image previews: real images of each supported format, a decompression bomb, and
//! non-images.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Cursor;

use hushwire_media::thumbnail::{THUMBNAIL_MAX_BYTES, THUMBNAIL_MAX_SIDE};
use hushwire_media::{DecodeLimits, ThumbnailError, detect_mime, make_preview};
use image::{ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};

fn encoded(width: u32, height: u32, format: ImageFormat) -> Vec<u8> {
    let img = RgbImage::from_fn(width, height, |x, y| {
        Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y) % 256) as u8])
    });
    let mut out = Cursor::new(Vec::new());
    match format {
        ImageFormat::Gif | ImageFormat::WebP => {
            image::DynamicImage::ImageRgba8(image::DynamicImage::ImageRgb8(img).to_rgba8())
                .write_to(&mut out, format)
                .unwrap();
        }
        _ => img.write_to(&mut out, format).unwrap(),
    }
    out.into_inner()
}

#[test]
fn previews_of_every_supported_format() {
    for (format, mime) in [
        (ImageFormat::Jpeg, "image/jpeg"),
        (ImageFormat::Png, "image/png"),
        (ImageFormat::Gif, "image/gif"),
        (ImageFormat::WebP, "image/webp"),
    ] {
        let bytes = encoded(640, 480, format);
        assert_eq!(detect_mime(&bytes, "x.bin"), mime);
        let p = make_preview(Cursor::new(&bytes), DecodeLimits::default()).unwrap();
        assert_eq!((p.width, p.height), (640, 480), "{mime}");
        assert!(
            p.jpeg.len() <= THUMBNAIL_MAX_BYTES,
            "{mime}: {}",
            p.jpeg.len()
        );
        let thumb = image::load_from_memory(&p.jpeg).unwrap();
        assert_eq!(thumb.width(), THUMBNAIL_MAX_SIDE, "{mime}");
        assert_eq!(thumb.height(), 72, "{mime}: aspect ratio kept");
        assert_eq!(detect_mime(&p.jpeg, ""), "image/jpeg");
    }
}

#[test]
fn transparent_pixels_become_white() {
    let img = RgbaImage::from_pixel(50, 50, Rgba([0, 0, 0, 0]));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png).unwrap();
    let p = make_preview(Cursor::new(out.into_inner()), DecodeLimits::default()).unwrap();
    let thumb = image::load_from_memory(&p.jpeg).unwrap().to_rgb8();
    let px = thumb.get_pixel(10, 10);
    assert!(px.0.iter().all(|&c| c > 240), "{px:?}");
}

/// A PNG whose header declares 60000 x 60000 pixels (10.8 GB of RGB) in a few KB.
fn png_bomb() -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    {
        let mut enc = png::Encoder::new(&mut out, 60_000, 60_000);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().unwrap();
        // Only a little of the data: the header is what a bomb needs.
        let mut stream = writer.stream_writer().unwrap();
        use std::io::Write;
        let row = vec![0u8; 60_000 * 3 + 1];
        for _ in 0..4 {
            stream.write_all(&row).unwrap();
        }
        drop(stream);
        drop(writer);
    }
    out.into_inner()
}

#[test]
fn decompression_bombs_are_refused_with_their_dimensions() {
    let bomb = png_bomb();
    assert!(bomb.len() < 100_000, "{}", bomb.len());
    let err = make_preview(Cursor::new(&bomb), DecodeLimits::default()).unwrap_err();
    match err {
        ThumbnailError::TooLarge { width, height, .. } => {
            assert_eq!((width, height), (60_000, 60_000));
        }
        other => panic!("expected TooLarge, got {other}"),
    }
    // Tighter limits refuse an ordinary image too, without decoding it.
    let normal = encoded(2000, 1000, ImageFormat::Png);
    let limits = DecodeLimits {
        max_side: 4096,
        max_alloc: 1024 * 1024,
    };
    assert!(matches!(
        make_preview(Cursor::new(&normal), limits),
        Err(ThumbnailError::TooLarge {
            width: 2000,
            height: 1000,
            ..
        })
    ));
}

#[test]
fn non_images_and_broken_images() {
    assert!(matches!(
        make_preview(Cursor::new(b"just some text"), DecodeLimits::default()),
        Err(ThumbnailError::Unsupported)
    ));
    let mut jpeg = encoded(300, 200, ImageFormat::Jpeg);
    jpeg.truncate(jpeg.len() / 3);
    let err = make_preview(Cursor::new(&jpeg), DecodeLimits::default());
    // A truncated JPEG either fails or decodes partially (zune-jpeg fills the rest);
    // it must never panic or exceed the limits.
    if let Ok(p) = err {
        assert_eq!((p.width, p.height), (300, 200));
    }
}
