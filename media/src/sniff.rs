//! What a content is, from its first bytes, never the client's word.
//!
//! [`sniff`] looks at the head of an upload (at least [`SNIFF_BYTES`], or the whole file if
//! it is shorter) and says which kind and mime natter stores it as, or `None` for a type
//! natter refuses: executables, markup that a browser would render from natter's origin
//! (HTML, SVG, XML), unknown binary, empty input.
//!
//! The `infer` crate supplies the plain magic-byte tests where they are exact enough; the
//! containers whose classification depends on more than a signature (ISO BMFF brands, the
//! EBML DocType, the first Ogg packet, MPEG audio frame headers, OLE class ids) and the
//! refusals are natter's own. `infer::get` itself is never called: it would run every
//! matcher, including a full compound-file parse (the `cfb` crate) of untrusted bytes.

use natter_proto::v1::MediaKind;

/// Callers pass at least this many bytes of the content (or the whole file if shorter).
pub const SNIFF_BYTES: usize = 4096;

/// What a content is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detected {
    pub kind: MediaKind,
    pub mime: &'static str,
}

const fn d(kind: MediaKind, mime: &'static str) -> Option<Detected> {
    Some(Detected { kind, mime })
}

/// Classifies a content from its first bytes.
///
/// `hint_audio`: the client says this is audio (e.g. a voice note recorded by a browser as
/// WebM, or an .m4a): containers that can hold audio only (WebM/Matroska, MP4/M4A/3GPP,
/// Ogg) are then classified AUDIO with an audio mime (audio/webm, audio/mp4, audio/ogg).
/// The hint never turns anything else into audio. Without it: WebM → VIDEO video/webm,
/// MP4/QuickTime → VIDEO, M4A (`ftyp M4A `) → AUDIO audio/mp4, Ogg → AUDIO audio/ogg
/// (Opus, Vorbis, …; Theora → VIDEO video/ogg).
///
/// Returns `None` for a type natter does not accept.
pub fn sniff(head: &[u8], hint_audio: bool) -> Option<Detected> {
    use MediaKind::{Audio, Document, Image};

    if head.is_empty() || is_executable(head) {
        return None;
    }

    // Images natter can decode and thumbnail (stricter than infer's 3-4 byte tests).
    if infer::image::is_jpeg(head) {
        return d(Image, "image/jpeg");
    }
    if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        return d(Image, "image/png");
    }
    if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
        return d(Image, "image/gif");
    }
    if head.starts_with(b"RIFF") && head.len() >= 12 {
        return match &head[8..12] {
            b"WEBP" => d(Image, "image/webp"),
            b"WAVE" => d(Audio, "audio/wav"),
            _ => None, // AVI, ANI, …
        };
    }

    // Audio/video containers.
    if let Some(found) = iso_bmff(head, hint_audio) {
        return found;
    }
    if head.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]) {
        return ebml(head, hint_audio);
    }
    if infer::audio::is_ogg(head) {
        return ogg(head, hint_audio);
    }
    if infer::audio::is_flac(head) {
        return d(Audio, "audio/flac");
    }
    if head.starts_with(b"#!AMR-WB\n") {
        return d(Audio, "audio/amr-wb");
    }
    if head.starts_with(b"#!AMR\n") {
        return d(Audio, "audio/amr");
    }
    if head.starts_with(b"ID3") {
        return id3_tagged(head);
    }
    if let Some(found) = mpeg_audio(head) {
        return Some(found);
    }

    // Documents.
    if head.starts_with(b"%PDF-") {
        return d(Document, "application/pdf");
    }
    if infer::archive::is_zip(head) {
        return d(Document, zip_mime(head));
    }
    if head.starts_with(&[0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1]) {
        return ole_mime(head).map(|mime| Detected {
            kind: Document,
            mime,
        });
    }
    if infer::archive::is_rtf(head) {
        return d(Document, "application/rtf");
    }
    if infer::archive::is_gz(head) {
        return d(Document, "application/gzip");
    }
    if infer::archive::is_7z(head) {
        return d(Document, "application/x-7z-compressed");
    }
    if infer::archive::is_tar(head) {
        return d(Document, "application/x-tar");
    }

    // Text last: markup is refused, the rest must be clean UTF-8.
    if starts_with_markup(head) {
        return None;
    }
    if is_plain_text(head) {
        return d(Document, "text/plain");
    }
    None
}

/// The usual file extension (without the dot) for a mime [`sniff`] returns; "bin" for
/// anything else.
pub fn extension(mime: &str) -> &'static str {
    let mime = mime.split(';').next().unwrap_or_default().trim();
    match mime.to_ascii_lowercase().as_str() {
        "image/jpeg" => "jpg",
        "image/png" => "png",
        "image/gif" => "gif",
        "image/webp" => "webp",
        "video/mp4" => "mp4",
        "video/quicktime" => "mov",
        "video/webm" => "webm",
        "video/x-matroska" => "mkv",
        "video/3gpp" | "audio/3gpp" => "3gp",
        "video/ogg" => "ogv",
        "audio/mpeg" => "mp3",
        "audio/ogg" => "ogg",
        "audio/mp4" => "m4a",
        "audio/aac" => "aac",
        "audio/amr" => "amr",
        "audio/amr-wb" => "awb",
        "audio/wav" | "audio/x-wav" | "audio/wave" => "wav",
        "audio/flac" | "audio/x-flac" => "flac",
        "audio/webm" => "weba",
        "audio/x-matroska" => "mka",
        "application/pdf" => "pdf",
        "application/zip" => "zip",
        "application/epub+zip" => "epub",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => "docx",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" => "xlsx",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation" => "pptx",
        "application/vnd.oasis.opendocument.text" => "odt",
        "application/vnd.oasis.opendocument.spreadsheet" => "ods",
        "application/vnd.oasis.opendocument.presentation" => "odp",
        "application/msword" => "doc",
        "application/vnd.ms-excel" => "xls",
        "application/vnd.ms-powerpoint" => "ppt",
        "application/rtf" => "rtf",
        "application/gzip" => "gz",
        "application/x-7z-compressed" => "7z",
        "application/x-tar" => "tar",
        "text/plain" => "txt",
        _ => "bin",
    }
}

/// ELF, PE/MZ, Mach-O (thin and fat; Java classes share the fat magic and are refused
/// too), WebAssembly, `#!` scripts.
fn is_executable(head: &[u8]) -> bool {
    head.starts_with(b"\x7fELF")
        || head.starts_with(b"MZ")
        || head.starts_with(b"\0asm")
        || head.starts_with(&[0xCA, 0xFE, 0xBA, 0xBE])
        || infer::app::is_mach(head)
        || (head.starts_with(b"#!") && !head.starts_with(b"#!AMR"))
}

/// ISO base media files (MP4, QuickTime, M4A, 3GPP) by their `ftyp` brand. `None` when the
/// head is not one; `Some(None)` for one natter refuses (HEIF/AVIF stills, camera raw).
#[allow(clippy::option_option)]
fn iso_bmff(head: &[u8], hint_audio: bool) -> Option<Option<Detected>> {
    use MediaKind::{Audio, Video};
    let box_type = head.get(4..8)?;
    if box_type != b"ftyp" {
        // Old QuickTime files start with another atom.
        let size = u32::from_be_bytes(head.get(0..4)?.try_into().ok()?);
        let old_qt = matches!(box_type, b"moov" | b"mdat" | b"wide" | b"pnot");
        return (old_qt && (size == 1 || size >= 8)).then_some(d(Video, "video/quicktime"));
    }
    let brand = head.get(8..12)?;
    let found = match brand {
        b"M4A " | b"M4B " | b"M4P " | b"F4A " | b"F4B " => d(Audio, "audio/mp4"),
        b"qt  " => d(Video, "video/quicktime"),
        _ if brand.starts_with(b"3g") => {
            if hint_audio {
                d(Audio, "audio/3gpp")
            } else {
                d(Video, "video/3gpp")
            }
        }
        b"heic" | b"heix" | b"heim" | b"heis" | b"hevc" | b"hevx" | b"mif1" | b"msf1" | b"avif"
        | b"avis" | b"crx " | b"jp2 " | b"jpx " => None,
        _ => {
            if hint_audio {
                d(Audio, "audio/mp4")
            } else {
                d(Video, "video/mp4")
            }
        }
    };
    Some(found)
}

/// EBML (Matroska, WebM): the DocType in the EBML header says which.
fn ebml(head: &[u8], hint_audio: bool) -> Option<Detected> {
    use MediaKind::{Audio, Video};
    let size_len = vint_len(*head.get(4)?)?;
    let size = vint_value(head.get(4..4 + size_len)?)?;
    let start = 4 + size_len;
    let end = usize::try_from(size)
        .ok()
        .and_then(|s| start.checked_add(s))
        .map_or(head.len(), |e| e.min(head.len()));
    let mut pos = start;
    let mut doc_type: &[u8] = b"matroska"; // the specification's default
    while pos < end {
        let id_len = vint_len(*head.get(pos)?)?;
        let id = head.get(pos..pos + id_len)?;
        let size_len = vint_len(*head.get(pos + id_len)?)?;
        let size = vint_value(head.get(pos + id_len..pos + id_len + size_len)?)?;
        let data = pos + id_len + size_len;
        let data_end = usize::try_from(size)
            .ok()
            .and_then(|s| data.checked_add(s))?;
        if id == [0x42, 0x82] {
            doc_type = head.get(data..data_end.min(end))?;
            break;
        }
        pos = data_end;
    }
    let doc_type = doc_type.split(|&b| b == 0).next().unwrap_or_default();
    match (doc_type, hint_audio) {
        (b"webm", false) => d(Video, "video/webm"),
        (b"webm", true) => d(Audio, "audio/webm"),
        (b"matroska", false) => d(Video, "video/x-matroska"),
        (b"matroska", true) => d(Audio, "audio/x-matroska"),
        _ => None,
    }
}

/// Length of an EBML variable-size integer from its first byte (1..=8).
fn vint_len(first: u8) -> Option<usize> {
    (first != 0).then(|| first.leading_zeros() as usize + 1)
}

/// Value of an EBML size (marker bit removed); `u64::MAX` for "unknown".
fn vint_value(bytes: &[u8]) -> Option<u64> {
    let first = *bytes.first()?;
    let len = vint_len(first)?;
    if bytes.len() != len {
        return None;
    }
    let mask = if len >= 8 { 0 } else { 0xFFu8 >> len };
    let mut value = u64::from(first & mask);
    let mut all_ones = first & mask == mask;
    for &b in &bytes[1..] {
        value = (value << 8) | u64::from(b);
        all_ones &= b == 0xFF;
    }
    Some(if all_ones { u64::MAX } else { value })
}

/// Ogg: the codec is named by the first packet of the first page.
fn ogg(head: &[u8], hint_audio: bool) -> Option<Detected> {
    use MediaKind::{Audio, Video};
    let segments = usize::from(*head.get(26)?);
    let packet = head.get(27 + segments..).unwrap_or_default();
    if packet.starts_with(b"\x80theora") && !hint_audio {
        return d(Video, "video/ogg");
    }
    d(Audio, "audio/ogg")
}

/// An ID3v2 tag precedes MP3 (usually), AAC or FLAC.
fn id3_tagged(head: &[u8]) -> Option<Detected> {
    use MediaKind::Audio;
    if let Some(after) = id3_len(head).and_then(|len| head.get(len..))
        && !after.is_empty()
    {
        if after.starts_with(b"fLaC") {
            return d(Audio, "audio/flac");
        }
        if adts_header(after) {
            return d(Audio, "audio/aac");
        }
    }
    d(Audio, "audio/mpeg")
}

/// The whole length of an ID3v2 tag at the start (header, body and footer).
pub(crate) fn id3_len(head: &[u8]) -> Option<usize> {
    if !head.starts_with(b"ID3") {
        return None;
    }
    let flags = *head.get(5)?;
    let size = head.get(6..10)?.iter().try_fold(0usize, |acc, &b| {
        (b & 0x80 == 0).then_some((acc << 7) | usize::from(b))
    })?;
    let footer = if flags & 0x10 != 0 { 10 } else { 0 };
    Some(10 + size + footer)
}

fn adts_header(b: &[u8]) -> bool {
    // 12-bit sync, layer 00; sampling frequency index ≤ 12.
    b.len() >= 7 && b[0] == 0xFF && b[1] & 0xF6 == 0xF0 && (b[2] >> 2) & 0x0F <= 12
}

/// A bare MPEG audio stream: ADTS AAC or an MPEG-1/2/2.5 Layer I-III frame (MP3), checked
/// against the next frame header when the head holds it.
fn mpeg_audio(head: &[u8]) -> Option<Detected> {
    use MediaKind::Audio;
    if adts_header(head) {
        return d(Audio, "audio/aac");
    }
    let frame = MpegFrame::parse(head)?;
    match head.get(frame.len..) {
        Some(next) if next.len() >= 4 => {
            MpegFrame::parse(next)?;
        }
        _ => {}
    }
    d(Audio, "audio/mpeg")
}

/// An MPEG audio frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MpegFrame {
    /// 1 = MPEG-1, 2 = MPEG-2, 25 = MPEG-2.5.
    pub version: u8,
    /// 1, 2 or 3.
    pub layer: u8,
    pub bitrate_kbps: u32,
    pub sample_rate: u32,
    pub mono: bool,
    /// The whole frame, header included, in bytes.
    pub len: usize,
    pub samples: u32,
}

impl MpegFrame {
    pub(crate) fn parse(b: &[u8]) -> Option<Self> {
        let [b0, b1, b2, b3] = *b.get(..4)? else {
            return None;
        };
        if b0 != 0xFF || b1 & 0xE0 != 0xE0 {
            return None;
        }
        let version = match (b1 >> 3) & 3 {
            0 => 25,
            2 => 2,
            3 => 1,
            _ => return None,
        };
        let layer = match (b1 >> 1) & 3 {
            1 => 3,
            2 => 2,
            3 => 1,
            _ => return None,
        };
        let bitrate_index = usize::from(b2 >> 4);
        if bitrate_index == 0 || bitrate_index == 15 {
            return None; // free format or invalid
        }
        const V1L1: [u32; 15] = [
            0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448,
        ];
        const V1L2: [u32; 15] = [
            0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384,
        ];
        const V1L3: [u32; 15] = [
            0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
        ];
        const V2L1: [u32; 15] = [
            0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256,
        ];
        const V2L23: [u32; 15] = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
        let table = match (version, layer) {
            (1, 1) => &V1L1,
            (1, 2) => &V1L2,
            (1, _) => &V1L3,
            (_, 1) => &V2L1,
            _ => &V2L23,
        };
        let bitrate_kbps = *table.get(bitrate_index)?;
        let base_rate = match (b2 >> 2) & 3 {
            0 => 44100,
            1 => 48000,
            2 => 32000,
            _ => return None,
        };
        let sample_rate = match version {
            1 => base_rate,
            2 => base_rate / 2,
            _ => base_rate / 4,
        };
        let padding = u32::from((b2 >> 1) & 1);
        let samples = match (version, layer) {
            (_, 1) => 384,
            (1, _) | (_, 2) => 1152,
            _ => 576,
        };
        let len = if layer == 1 {
            (12 * bitrate_kbps * 1000 / sample_rate + padding) * 4
        } else {
            samples / 8 * bitrate_kbps * 1000 / sample_rate + padding
        };
        Some(MpegFrame {
            version,
            layer,
            bitrate_kbps,
            sample_rate,
            mono: b3 >> 6 == 3,
            len: usize::try_from(len).ok()?,
            samples,
        })
    }
}

/// Zip-based formats infer distinguishes (EPUB, OOXML, ODF), else plain zip.
fn zip_mime(head: &[u8]) -> &'static str {
    if infer::book::is_epub(head) {
        "application/epub+zip"
    } else if infer::doc::is_docx(head) {
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    } else if infer::doc::is_xlsx(head) {
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    } else if infer::doc::is_pptx(head) {
        "application/vnd.openxmlformats-officedocument.presentationml.presentation"
    } else if infer::odf::is_odt(head) {
        "application/vnd.oasis.opendocument.text"
    } else if infer::odf::is_ods(head) {
        "application/vnd.oasis.opendocument.spreadsheet"
    } else if infer::odf::is_odp(head) {
        "application/vnd.oasis.opendocument.presentation"
    } else {
        "application/zip"
    }
}

/// OLE compound files (legacy Office documents, MSI installers): the root directory
/// entry's class id says which, when the directory lies within the head. Installers are
/// refused.
fn ole_mime(head: &[u8]) -> Option<&'static str> {
    const GENERIC: &str = "application/x-ole-storage";
    let le16 = |at: usize| {
        head.get(at..at + 2)
            .and_then(|b| b.try_into().ok())
            .map(u16::from_le_bytes)
    };
    let le32 = |at: usize| {
        head.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let (Some(shift), Some(dir_sector)) = (le16(0x1E), le32(0x30)) else {
        return Some(GENERIC);
    };
    if !(shift == 9 || shift == 12) {
        return Some(GENERIC);
    }
    let root = u64::from(dir_sector)
        .checked_add(1)
        .and_then(|s| s.checked_shl(u32::from(shift)))
        .and_then(|o| usize::try_from(o).ok());
    let Some(clsid) = root.and_then(|r| head.get(r + 0x50..r + 0x60)) else {
        return Some(GENERIC);
    };
    const OLE_TAIL: [u8; 8] = [0xC0, 0, 0, 0, 0, 0, 0, 0x46];
    let (data1, rest) = clsid.split_at(4);
    let data1 = u32::from_le_bytes([data1[0], data1[1], data1[2], data1[3]]);
    let office_tail = rest[..4] == [0, 0, 0, 0] && rest[4..] == OLE_TAIL;
    match data1 {
        0x0002_0906 if office_tail => Some("application/msword"),
        0x0002_0810 | 0x0002_0820 if office_tail => Some("application/vnd.ms-excel"),
        0x6481_8D10
            if rest
                == [
                    0x9B, 0x4F, 0xCF, 0x11, 0x86, 0xEA, 0x00, 0xAA, 0x00, 0xB9, 0x29, 0xE8,
                ] =>
        {
            Some("application/vnd.ms-powerpoint")
        }
        // Windows Installer packages, patches and transforms.
        0x000C_1080..=0x000C_108F if office_tail => None,
        _ => Some(GENERIC),
    }
}

/// Text starting (after a BOM and whitespace) with `<`: HTML, SVG, XML. Served from
/// natter's origin, a browser could render it.
fn starts_with_markup(head: &[u8]) -> bool {
    let mut rest = head;
    loop {
        if let Some(r) = rest.strip_prefix(b"\xEF\xBB\xBF") {
            rest = r;
        } else if let Some(r) = rest
            .strip_prefix(b"\xFE\xFF")
            .or_else(|| rest.strip_prefix(b"\xFF\xFE"))
        {
            // UTF-16: skip the NULs around ASCII too.
            return r
                .iter()
                .find(|&&b| !matches!(b, 0 | b' ' | b'\t' | b'\n' | b'\r' | 0x0C))
                == Some(&b'<');
        } else if let Some((&first, r)) = rest.split_first()
            && matches!(first, b' ' | b'\t' | b'\n' | b'\r' | 0x0C)
        {
            rest = r;
        } else {
            return rest.first() == Some(&b'<');
        }
    }
}

/// Valid UTF-8 (a multi-byte character may be cut at the end of the head), no NUL, no
/// control characters but tab, newline, carriage return and form feed.
fn is_plain_text(head: &[u8]) -> bool {
    let text = match std::str::from_utf8(head) {
        Ok(text) => text,
        // Only an incomplete character at the very end (error_len None) is allowed.
        Err(e) if e.error_len().is_none() && head.len() - e.valid_up_to() < 4 => {
            match std::str::from_utf8(&head[..e.valid_up_to()]) {
                Ok(text) => text,
                Err(_) => return false,
            }
        }
        Err(_) => return false,
    };
    !text.is_empty()
        && text
            .chars()
            .all(|c| !c.is_control() || matches!(c, '\t' | '\n' | '\r' | '\x0c'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use MediaKind::{Audio, Document, Image, Video};

    fn is(head: &[u8], kind: MediaKind, mime: &str) {
        let got = sniff(head, false);
        assert_eq!(
            got.map(|d| (d.kind, d.mime)),
            Some((kind, mime)),
            "head {:02x?}",
            &head[..head.len().min(16)]
        );
    }

    fn refused(head: &[u8]) {
        assert_eq!(
            sniff(head, false),
            None,
            "head {:02x?}",
            &head[..head.len().min(16)]
        );
        assert_eq!(sniff(head, true), None);
    }

    fn padded(prefix: &[u8]) -> Vec<u8> {
        let mut v = prefix.to_vec();
        v.resize(SNIFF_BYTES, 0);
        v
    }

    /// A pseudo-random byte stream (xorshift), the same on every run.
    fn noise(len: usize, mut seed: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 24) as u8
            })
            .collect()
    }

    fn ftyp(brand: &[u8; 4]) -> Vec<u8> {
        let mut v = vec![0, 0, 0, 0x18];
        v.extend_from_slice(b"ftyp");
        v.extend_from_slice(brand);
        v.extend_from_slice(&[0, 0, 2, 0]);
        v.extend_from_slice(b"isomiso2");
        v.extend_from_slice(&[0, 0, 0, 8]);
        v.extend_from_slice(b"mdat");
        padded(&v)
    }

    fn ebml_head(doc_type: &[u8]) -> Vec<u8> {
        let mut body = vec![0x42, 0x86, 0x81, 0x01]; // EBMLVersion 1
        body.extend_from_slice(&[0x42, 0x82, 0x80 | doc_type.len() as u8]);
        body.extend_from_slice(doc_type);
        body.extend_from_slice(&[0x42, 0x87, 0x81, 0x04]); // DocTypeVersion 4
        let mut v = vec![0x1A, 0x45, 0xDF, 0xA3, 0x80 | body.len() as u8];
        v.extend_from_slice(&body);
        v.extend_from_slice(&[
            0x18, 0x53, 0x80, 0x67, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
        ]);
        v
    }

    fn ogg_page(packet: &[u8]) -> Vec<u8> {
        let mut v = b"OggS\0\x02".to_vec();
        v.extend_from_slice(&[0; 8]); // granule
        v.extend_from_slice(&[1, 0, 0, 0]); // serial
        v.extend_from_slice(&[0; 8]); // sequence, crc
        v.push(1);
        v.push(packet.len() as u8);
        v.extend_from_slice(packet);
        v
    }

    /// An MPEG-1 Layer III 128 kb/s 44.1 kHz frame header (417 bytes per frame).
    fn mp3_frames(count: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for _ in 0..count {
            let mut frame = vec![0xFF, 0xFB, 0x90, 0x44];
            frame.resize(417, 0x55);
            v.extend_from_slice(&frame);
        }
        v
    }

    #[test]
    fn images() {
        is(
            &padded(&[
                0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0,
            ]),
            Image,
            "image/jpeg",
        );
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        png.extend_from_slice(&[0, 0, 1, 0, 0, 0, 1, 0, 8, 6, 0, 0, 0]);
        is(&png, Image, "image/png");
        is(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", Image, "image/gif");
        is(b"GIF87a\x01\x00\x01\x00\x00\x00\x00;", Image, "image/gif");
        is(b"RIFF\x24\0\0\0WEBPVP8 \x18\0\0\0", Image, "image/webp");
        // infer's GIF test is only "GIF": a text starting with it is text.
        is(b"GIFs are fun", Document, "text/plain");
        // AVI is RIFF but not accepted.
        refused(b"RIFF\x24\0\0\0AVI LIST");
    }

    #[test]
    fn iso_media() {
        is(&ftyp(b"isom"), Video, "video/mp4");
        is(&ftyp(b"mp42"), Video, "video/mp4");
        is(&ftyp(b"qt  "), Video, "video/quicktime");
        is(&ftyp(b"M4A "), Audio, "audio/mp4");
        is(&ftyp(b"3gp4"), Video, "video/3gpp");
        // The hint turns MP4/3GP into audio, never QuickTime or other kinds.
        let hinted = |head: &[u8]| sniff(head, true).map(|d| (d.kind, d.mime));
        assert_eq!(hinted(&ftyp(b"isom")), Some((Audio, "audio/mp4")));
        assert_eq!(hinted(&ftyp(b"M4A ")), Some((Audio, "audio/mp4")));
        assert_eq!(hinted(&ftyp(b"3gp5")), Some((Audio, "audio/3gpp")));
        assert_eq!(hinted(&ftyp(b"qt  ")), Some((Video, "video/quicktime")));
        assert_eq!(
            hinted(&padded(&[0xFF, 0xD8, 0xFF, 0xE0])),
            Some((Image, "image/jpeg"))
        );
        // Old QuickTime without ftyp.
        is(
            &padded(b"\0\0\0\x10moov\0\0\0\x08mvhd"),
            Video,
            "video/quicktime",
        );
        // HEIF stills are not accepted.
        refused(&ftyp(b"heic"));
        refused(&ftyp(b"avif"));
    }

    #[test]
    fn ebml_doc_types() {
        is(&ebml_head(b"webm"), Video, "video/webm");
        is(&ebml_head(b"matroska"), Video, "video/x-matroska");
        assert_eq!(
            sniff(&ebml_head(b"webm"), true),
            Some(Detected {
                kind: Audio,
                mime: "audio/webm"
            })
        );
        assert_eq!(
            sniff(&ebml_head(b"matroska"), true),
            Some(Detected {
                kind: Audio,
                mime: "audio/x-matroska"
            })
        );
        refused(&ebml_head(b"something"));
        // Truncated inside the header.
        refused(&[0x1A, 0x45, 0xDF, 0xA3, 0x9F, 0x42]);
        refused(&[0x1A, 0x45, 0xDF, 0xA3]);
    }

    #[test]
    fn audio() {
        let mut opus = b"OpusHead\x01\x02\x38\x01\x80\xBB\0\0\0\0\0".to_vec();
        opus = ogg_page(&opus);
        is(&opus, Audio, "audio/ogg");
        assert_eq!(sniff(&opus, true).map(|d| d.mime), Some("audio/ogg"));
        is(
            &ogg_page(b"\x01vorbis\0\0\0\0\x02\x44\xAC\0\0"),
            Audio,
            "audio/ogg",
        );
        is(&ogg_page(b"\x80theora\x03\x02\x01"), Video, "video/ogg");

        let mut id3 = b"ID3\x04\0\0\0\0\x01\x00".to_vec(); // 128-byte tag
        id3.resize(10 + 128, 0);
        id3.extend_from_slice(&mp3_frames(2));
        is(&id3, Audio, "audio/mpeg");
        is(&mp3_frames(3), Audio, "audio/mpeg");
        // A frame header followed by garbage where the next frame should be.
        let mut bad = mp3_frames(1);
        bad.extend_from_slice(&[0x12; 64]);
        refused(&bad);

        is(
            &padded(&[0xFF, 0xF1, 0x50, 0x80, 0x02, 0x1F, 0xFC]),
            Audio,
            "audio/aac",
        );
        is(
            b"#!AMR\n\x3c\x48\xf5\x1f\x96\x66\x79\xe1",
            Audio,
            "audio/amr",
        );
        is(b"#!AMR-WB\n\x04\x10\x20", Audio, "audio/amr-wb");
        is(b"RIFF\x24\0\0\0WAVEfmt \x10\0\0\0", Audio, "audio/wav");
        is(b"fLaC\0\0\0\x22\x10\x00\x10\x00", Audio, "audio/flac");
        let mut id3_flac = b"ID3\x03\0\0\0\0\0\x04".to_vec();
        id3_flac.resize(14, 0);
        id3_flac.extend_from_slice(b"fLaC\0\0\0\x22");
        is(&id3_flac, Audio, "audio/flac");
    }

    #[test]
    fn documents() {
        is(
            b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n",
            Document,
            "application/pdf",
        );
        is(
            &padded(b"PK\x03\x04\x14\0\0\0\x08\0"),
            Document,
            "application/zip",
        );
        let mut docx = b"PK\x03\x04\x14\0\x06\0\x08\0\0\0!\0".to_vec();
        docx.resize(0x1E, 0);
        docx.extend_from_slice(b"word/document.xml");
        is(
            &padded(&docx),
            Document,
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        );
        let mut odt = b"PK\x03\x04\x14\0\0\0\0\0".to_vec();
        odt.resize(0x1E, 0);
        odt.extend_from_slice(b"mimetypeapplication/vnd.oasis.opendocument.text");
        is(
            &padded(&odt),
            Document,
            "application/vnd.oasis.opendocument.text",
        );

        let mut ole = vec![0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1];
        ole.resize(0x1E, 0);
        ole.extend_from_slice(&[9, 0]); // 512-byte sectors
        ole.resize(0x30, 0);
        ole.extend_from_slice(&[0, 0, 0, 0]); // directory in sector 0 (offset 512)
        let generic = padded(&ole);
        is(&generic, Document, "application/x-ole-storage");
        let with_clsid = |clsid: [u8; 16]| {
            let mut v = generic.clone();
            v[512 + 0x50..512 + 0x60].copy_from_slice(&clsid);
            v
        };
        let tail = [0, 0, 0, 0, 0xC0, 0, 0, 0, 0, 0, 0, 0x46];
        let mut word = [0u8; 16];
        word[..4].copy_from_slice(&[0x06, 0x09, 0x02, 0x00]);
        word[4..].copy_from_slice(&tail);
        is(&with_clsid(word), Document, "application/msword");
        let mut msi = word;
        msi[..4].copy_from_slice(&[0x84, 0x10, 0x0C, 0x00]);
        refused(&with_clsid(msi));

        is(b"{\\rtf1\\ansi hello}", Document, "application/rtf");
        is(
            &[0x1F, 0x8B, 0x08, 0, 0, 0, 0, 0, 0, 3],
            Document,
            "application/gzip",
        );
        is(
            &[0x37, 0x7A, 0xBC, 0xAF, 0x27, 0x1C, 0, 4],
            Document,
            "application/x-7z-compressed",
        );
        let mut tar = b"notes.txt".to_vec();
        tar.resize(257, 0);
        tar.extend_from_slice(b"ustar\x0000");
        tar.resize(512, 0);
        is(&tar, Document, "application/x-tar");
    }

    #[test]
    fn text() {
        is(
            b"hello, world\r\n\tindented\x0cnext page\n",
            Document,
            "text/plain",
        );
        // An emoji (4 bytes) cut after 2 at the end of the head.
        let mut cut = "caf\u{e9} ".repeat(10).into_bytes();
        cut.extend_from_slice(&"\u{1F600}".as_bytes()[..2]);
        is(&cut, Document, "text/plain");
        // … but not in the middle.
        let mut broken = cut.clone();
        broken.extend_from_slice(b" more");
        refused(&broken);
        refused(b"text with a \0 NUL");
        refused(b"text with an escape \x1b[31m");
        refused("C1 control \u{85} inside".as_bytes());
        // PostScript-like and certificate text is still text.
        is(
            b"-----BEGIN CERTIFICATE-----\nMIIB\n",
            Document,
            "text/plain",
        );
        is(b"\xEF\xBB\xBFwith a BOM", Document, "text/plain");
    }

    #[test]
    fn markup_is_refused() {
        refused(b"<html><body>hi</body></html>");
        refused(b"  \n<!DOCTYPE html><html>");
        refused(b"<?xml version=\"1.0\"?><svg xmlns=\"http://www.w3.org/2000/svg\"/>");
        refused(b"<svg onload=alert(1)>");
        refused(b"\xEF\xBB\xBF\r\n <script>alert(1)</script>");
        refused(b"\xFF\xFE<\0h\0t\0m\0l\0>\0");
        // `<` later in the text is fine (served as text/plain).
        is(b"a < b and b > c", Document, "text/plain");
    }

    #[test]
    fn executables_and_junk_are_refused() {
        refused(&[]);
        let mut elf = b"\x7fELF\x02\x01\x01\0".to_vec();
        elf.resize(64, 0);
        refused(&elf);
        refused(&padded(b"MZ\x90\0\x03\0\0\0\x04\0\0\0\xFF\xFF"));
        refused(&padded(&[0xCF, 0xFA, 0xED, 0xFE, 0x07, 0, 0, 0x01]));
        refused(&padded(&[0xCA, 0xFE, 0xBA, 0xBE, 0, 0, 0, 2]));
        refused(b"#!/bin/sh\nrm -rf /\n");
        refused(b"#!/usr/bin/env python3\nprint(1)\n");
        refused(b"\0asm\x01\0\0\0");
        for seed in 1..50 {
            let junk = noise(SNIFF_BYTES, seed);
            assert_eq!(
                sniff(&junk, false),
                None,
                "seed {seed}: {:02x?}",
                &junk[..8]
            );
        }
        refused(&[0u8; SNIFF_BYTES]);
        refused(&[0xFF; 16]);
    }

    #[test]
    fn extensions() {
        assert_eq!(extension("image/jpeg"), "jpg");
        assert_eq!(extension("video/mp4"), "mp4");
        assert_eq!(extension("audio/webm; codecs=opus"), "weba");
        assert_eq!(extension("application/pdf"), "pdf");
        assert_eq!(extension("TEXT/PLAIN"), "txt");
        assert_eq!(extension("application/x-whatever"), "bin");
        assert_eq!(extension(""), "bin");
    }

    #[test]
    fn every_mime_sniff_returns_has_an_extension() {
        let heads: Vec<Vec<u8>> = vec![
            padded(&[0xFF, 0xD8, 0xFF, 0xE0]),
            ftyp(b"isom"),
            ftyp(b"qt  "),
            ftyp(b"M4A "),
            ftyp(b"3gp4"),
            ebml_head(b"webm"),
            ebml_head(b"matroska"),
            mp3_frames(2),
            b"fLaC\0\0\0\x22".to_vec(),
            b"%PDF-1.4".to_vec(),
            b"plain".to_vec(),
        ];
        for head in heads {
            for hint in [false, true] {
                let found = sniff(&head, hint).expect("accepted");
                assert_ne!(extension(found.mime), "bin", "{}", found.mime);
            }
        }
    }
}
