//! Image previews, made on the sender's device (the server never sees an image): a
//! small JPEG of at most [`THUMBNAIL_MAX_SIDE`] pixels on its longest side, and the
//! original's dimensions.
//!
//! Decoding is hostile-input work: [`DecodeLimits`] bound the dimensions and the memory
//! the decoder may allocate, so a decompression bomb (a tiny file declaring a huge
//! image) is refused with [`ThumbnailError::TooLarge`] before anything big is allocated.
//! A file without a preview is still sent.

use std::io::{BufRead, Cursor, Seek};

use image::codecs::jpeg::JpegEncoder;
use image::{DynamicImage, ImageDecoder, ImageReader, Limits};

/// Longest side of a thumbnail, in pixels.
pub const THUMBNAIL_MAX_SIDE: u32 = 96;
/// A thumbnail is re-encoded at lower quality until it fits this many bytes.
pub const THUMBNAIL_MAX_BYTES: usize = 16 * 1024;

/// MIME types a thumbnail is made for (the image formats this build decodes).
pub const THUMBNAIL_MIME_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/webp", "image/gif"];

/// Whether a thumbnail can be made for `mime`.
pub fn can_thumbnail(mime: &str) -> bool {
    THUMBNAIL_MIME_TYPES.contains(&mime)
}

/// Bounds on decoding an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest width or height accepted.
    pub max_side: u32,
    /// Most bytes the decoder may allocate (the decoded image included).
    pub max_alloc: u64,
}

impl Default for DecodeLimits {
    /// 16384 px per side and 128 MiB: a 32-megapixel photo decodes, a bomb does not.
    fn default() -> Self {
        Self {
            max_side: 16_384,
            max_alloc: 128 * 1024 * 1024,
        }
    }
}

/// An image's preview.
#[derive(Clone, PartialEq, Eq)]
pub struct Preview {
    /// Width of the original as displayed (EXIF orientation applied).
    pub width: u32,
    /// Height of the original as displayed.
    pub height: u32,
    /// The thumbnail, a baseline JPEG.
    pub jpeg: Vec<u8>,
}

impl std::fmt::Debug for Preview {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preview")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("jpeg_bytes", &self.jpeg.len())
            .finish()
    }
}

/// Why no thumbnail was made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ThumbnailError {
    /// Not an image format this build decodes.
    #[error("not a supported image format")]
    Unsupported,
    /// The image exceeds the decoding limits (a decompression bomb, or just huge). Its
    /// declared dimensions are kept when the header could be read.
    #[error("image too large to preview ({width}x{height} declared): {reason}")]
    TooLarge {
        /// Declared width (0 if unknown).
        width: u32,
        /// Declared height (0 if unknown).
        height: u32,
        /// Which limit.
        reason: String,
    },
    /// The image data is malformed.
    #[error("the image does not decode: {0}")]
    Malformed(String),
    /// Reading failed.
    #[error("reading the image: {0}")]
    Io(#[from] std::io::Error),
}

fn map_image_error(e: image::ImageError, width: u32, height: u32) -> ThumbnailError {
    match e {
        image::ImageError::Limits(l) => ThumbnailError::TooLarge {
            width,
            height,
            reason: l.to_string(),
        },
        image::ImageError::Unsupported(_) => ThumbnailError::Unsupported,
        image::ImageError::IoError(e) => ThumbnailError::Io(e),
        other => ThumbnailError::Malformed(other.to_string()),
    }
}

/// Makes the preview of the image `reader` holds (format from its magic bytes).
pub fn make_preview<R: BufRead + Seek>(
    mut reader: R,
    limits: DecodeLimits,
) -> Result<Preview, ThumbnailError> {
    let start = reader.stream_position()?;
    // First the header alone, without limits (nothing large is allocated for it), so a
    // refused image still reports its dimensions.
    let (w, h) = {
        let mut probe = ImageReader::new(&mut reader).with_guessed_format()?;
        if probe.format().is_none() {
            return Err(ThumbnailError::Unsupported);
        }
        probe.no_limits();
        probe
            .into_dimensions()
            .map_err(|e| map_image_error(e, 0, 0))?
    };
    if w == 0 || h == 0 {
        return Err(ThumbnailError::Malformed("zero-sized image".into()));
    }
    let pixels = u64::from(w) * u64::from(h);
    if w > limits.max_side || h > limits.max_side || pixels.saturating_mul(4) > limits.max_alloc {
        return Err(ThumbnailError::TooLarge {
            width: w,
            height: h,
            reason: format!(
                "limits are {} px per side and {} bytes",
                limits.max_side, limits.max_alloc
            ),
        });
    }
    reader.seek(std::io::SeekFrom::Start(start))?;
    let mut reader = ImageReader::new(reader).with_guessed_format()?;
    let mut l = Limits::default();
    l.max_image_width = Some(limits.max_side);
    l.max_image_height = Some(limits.max_side);
    l.max_alloc = Some(limits.max_alloc);
    reader.limits(l);
    // The decoder checks the limits again (and its own allocations) while decoding.
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| map_image_error(e, w, h))?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| map_image_error(e, w, h))?;
    img.apply_orientation(orientation);
    let (width, height) = (img.width(), img.height());
    let thumb = img.thumbnail(THUMBNAIL_MAX_SIDE, THUMBNAIL_MAX_SIDE);
    drop(img);
    let rgb = flatten_on_white(thumb);
    let mut jpeg = Vec::new();
    for quality in [70u8, 50, 35, 20] {
        jpeg.clear();
        JpegEncoder::new_with_quality(Cursor::new(&mut jpeg), quality)
            .encode_image(&rgb)
            .map_err(|e| ThumbnailError::Malformed(format!("encoding the thumbnail: {e}")))?;
        if jpeg.len() <= THUMBNAIL_MAX_BYTES {
            break;
        }
    }
    Ok(Preview {
        width,
        height,
        jpeg,
    })
}

/// RGB for JPEG: transparent pixels are composed onto white (as viewers show them).
fn flatten_on_white(img: DynamicImage) -> DynamicImage {
    if !img.color().has_alpha() {
        return DynamicImage::ImageRgb8(img.to_rgb8());
    }
    let rgba = img.to_rgba8();
    let mut rgb = image::RgbImage::new(rgba.width(), rgba.height());
    for (dst, src) in rgb.pixels_mut().zip(rgba.pixels()) {
        let a = u16::from(src[3]);
        for c in 0..3 {
            let v = (u16::from(src[c]) * a + 255 * (255 - a)) / 255;
            dst[c] = u8::try_from(v).unwrap_or(u8::MAX);
        }
    }
    DynamicImage::ImageRgb8(rgb)
}
