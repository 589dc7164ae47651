//! How long a video or audio is (and how large a video), from its container headers: no
//! decoding, no transcoding, only a bounded number of ranged reads.
//!
//! [`probe`] never fails: what it cannot read or does not understand is `None`/0. It reads
//! at most [`MAX_READS`] ranges of at most [`MAX_READ`] bytes each, skips over large boxes
//! and chunks by their declared sizes (an MP4 `mdat` is never read), and uses checked
//! arithmetic throughout: a hostile header stops the walk instead of panicking or looping.
//!
//! Supported: MP4/QuickTime/M4A/3GP (`moov/mvhd`, `trak/tkhd`, `mvex/mehd`), Ogg (Opus,
//! Vorbis), WebM/Matroska (`Info`, `Tracks`), MP3 (Xing/Info/VBRI, else CBR), ADTS AAC and
//! AMR (estimates), WAV, FLAC.

use std::ops::Range;

use bytes::Bytes;

/// Where the bytes come from (the object store, a file, memory).
#[async_trait::async_trait]
pub trait RangeSource: Send + Sync {
    /// The bytes of `range`; fewer at the end of the object.
    async fn read(&self, range: Range<u64>) -> std::io::Result<Bytes>;
}

/// What a probe found. `width`/`height` are 0 when unknown (or audio).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub duration_ms: Option<u32>,
    pub width: u32,
    pub height: u32,
}

/// At most this many reads per probe.
pub const MAX_READS: u32 = 16;
/// At most this many bytes per read.
pub const MAX_READ: u64 = 64 * 1024;

/// Probes a content of `size` bytes whose type [`crate::sniff::sniff`] found to be `mime`.
pub async fn probe(src: &dyn RangeSource, size: u64, mime: &str) -> Probe {
    let mime = mime
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let mut r = Reader::new(src, size);
    let found = match mime.as_str() {
        "video/mp4" | "audio/mp4" | "video/quicktime" | "video/3gpp" | "audio/3gpp"
        | "video/3gpp2" | "audio/3gpp2" | "audio/m4a" | "audio/x-m4a" => mp4(&mut r).await,
        "audio/ogg" | "video/ogg" | "audio/opus" => ogg(&mut r).await,
        "video/webm" | "audio/webm" | "video/x-matroska" | "audio/x-matroska" => {
            matroska(&mut r).await
        }
        "audio/mpeg" | "audio/mp3" => mp3(&mut r).await,
        "audio/aac" => adts(&mut r).await,
        "audio/amr" | "audio/amr-wb" => amr(&mut r).await,
        "audio/wav" | "audio/x-wav" | "audio/wave" => wav(&mut r).await,
        "audio/flac" | "audio/x-flac" => flac(&mut r).await,
        _ => None,
    };
    found.unwrap_or_default()
}

/// Bounded ranged reads with a one-window cache.
struct Reader<'a> {
    src: &'a dyn RangeSource,
    size: u64,
    reads: u32,
    window_start: u64,
    window: Bytes,
}

impl<'a> Reader<'a> {
    fn new(src: &'a dyn RangeSource, size: u64) -> Self {
        Reader {
            src,
            size,
            reads: 0,
            window_start: 0,
            window: Bytes::new(),
        }
    }

    /// The bytes from `pos` on: at least `want` of them if the object has them (and
    /// `want` ≤ [`MAX_READ`]), more if the cached window has more. A new read covers
    /// `pos..limit` (clamped to [`MAX_READ`] and the object's size), so callers can keep
    /// it from running into data they must not read.
    async fn at(&mut self, pos: u64, want: u64, limit: u64) -> Option<Bytes> {
        let window_end = self.window_start + self.window.len() as u64;
        let want_end = pos.checked_add(want)?.min(self.size);
        if pos >= self.window_start && want_end <= window_end && pos < window_end {
            let offset = usize::try_from(pos - self.window_start).ok()?;
            return Some(self.window.slice(offset..));
        }
        if pos >= self.size || self.reads >= MAX_READS {
            return None;
        }
        let end = limit
            .max(want_end)
            .min(pos.saturating_add(MAX_READ))
            .min(self.size);
        self.reads += 1;
        let mut data = self.src.read(pos..end).await.ok()?;
        let len = usize::try_from(end - pos).ok()?;
        if data.len() > len {
            data.truncate(len);
        }
        self.window_start = pos;
        self.window = data.clone();
        Some(data)
    }
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}
fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// `units` of `1/per_second` seconds in milliseconds, if it fits a u32.
fn to_ms(units: u64, per_second: u64) -> Option<u32> {
    if per_second == 0 {
        return None;
    }
    let ms = u128::from(units) * 1000 / u128::from(per_second);
    u32::try_from(ms).ok()
}

fn duration_only(duration_ms: Option<u32>) -> Option<Probe> {
    Some(Probe {
        duration_ms,
        ..Probe::default()
    })
}

// ---------------------------------------------------------------------------------------
// ISO base media (MP4, QuickTime, M4A, 3GP)

/// A box header at the start of `b` (the box starts at `pos`, its parent ends at
/// `parent_end`): type, header length, end. `None` for an invalid size.
fn box_header(b: &[u8], pos: u64, parent_end: u64) -> Option<([u8; 4], u64, u64)> {
    let size = be32(b, 0)?;
    let kind: [u8; 4] = b.get(4..8)?.try_into().ok()?;
    let (header, end) = match size {
        0 => (8, parent_end),
        1 => {
            let large = be64(b, 8)?;
            (16, pos.checked_add(large)?)
        }
        n => (8, pos.checked_add(u64::from(n))?),
    };
    if end < pos.checked_add(header)? {
        return None;
    }
    Some((kind, header, end))
}

/// Upper bound on boxes visited in one probe (a moov full of empty boxes).
const MAX_BOXES: u32 = 4096;

async fn mp4(r: &mut Reader<'_>) -> Option<Probe> {
    let mut pos = 0u64;
    let mut boxes = 0;
    while pos < r.size && boxes < MAX_BOXES {
        boxes += 1;
        // Only the header: the box may be a multi-gigabyte mdat. 8 bytes, and 8 more for
        // a 64-bit size.
        let mut head = r.at(pos, 8, pos.checked_add(8)?).await?;
        if be32(&head, 0)? == 1 {
            head = r.at(pos, 16, pos.checked_add(16)?).await?;
        }
        let (kind, header, end) = box_header(&head, pos, r.size)?;
        if &kind == b"moov" {
            return moov(r, pos + header, end.min(r.size)).await;
        }
        if end > r.size {
            return None; // a box claiming more than the file holds
        }
        pos = end;
    }
    None
}

async fn moov(r: &mut Reader<'_>, start: u64, end: u64) -> Option<Probe> {
    let mut probe = Probe::default();
    let mut duration_units: Option<(u64, u32)> = None; // (duration, timescale)
    let mut fragment_duration: Option<u64> = None;
    let mut pos = start;
    let mut boxes = 0;
    while pos.checked_add(8)? <= end && boxes < MAX_BOXES {
        boxes += 1;
        let Some(head) = r.at(pos, 16, end).await else {
            break;
        };
        let Some((kind, header, box_end)) = box_header(&head, pos, end) else {
            break;
        };
        let box_end = box_end.min(end); // a truncated file: parse what is there
        let content = pos + header;
        match &kind {
            b"mvhd" => {
                if let Some(b) = r.at(content, 32, box_end).await {
                    duration_units = mvhd(&b);
                }
            }
            b"mvex" => fragment_duration = mvex(r, content, box_end).await.or(fragment_duration),
            b"trak" if probe.width == 0 => {
                if let Some((w, h)) = trak(r, content, box_end).await {
                    probe.width = w;
                    probe.height = h;
                }
            }
            _ => {}
        }
        if duration_units.is_some_and(|(d, _)| d != 0) && probe.width != 0 {
            break;
        }
        pos = box_end;
    }
    if let Some((duration, timescale)) = duration_units {
        // A fragmented file has 0 here and the total in mvex/mehd.
        let duration = if duration == 0 {
            fragment_duration.unwrap_or(0)
        } else {
            duration
        };
        if duration != 0 {
            probe.duration_ms = to_ms(duration, u64::from(timescale));
        }
    }
    Some(probe)
}

/// (duration, timescale) from an mvhd's content; `None` if unknown.
fn mvhd(b: &[u8]) -> Option<(u64, u32)> {
    let (timescale, duration, unknown) = match *b.first()? {
        0 => (be32(b, 12)?, u64::from(be32(b, 16)?), u64::from(u32::MAX)),
        1 => (be32(b, 20)?, be64(b, 24)?, u64::MAX),
        _ => return None,
    };
    (timescale != 0 && duration != unknown).then_some((duration, timescale))
}

async fn mvex(r: &mut Reader<'_>, start: u64, end: u64) -> Option<u64> {
    let mut pos = start;
    let mut boxes = 0;
    while pos.checked_add(8)? <= end && boxes < 64 {
        boxes += 1;
        let head = r.at(pos, 16, end).await?;
        let (kind, header, box_end) = box_header(&head, pos, end)?;
        if &kind == b"mehd" {
            let b = r.at(pos + header, 12, box_end).await?;
            return match *b.first()? {
                0 => be32(&b, 4).map(u64::from),
                1 => be64(&b, 4),
                _ => None,
            };
        }
        pos = box_end;
    }
    None
}

/// Width and height of a track (0x0 for audio), as displayed (a 90° rotation in the
/// matrix swaps them).
async fn trak(r: &mut Reader<'_>, start: u64, end: u64) -> Option<(u32, u32)> {
    let mut pos = start;
    let mut boxes = 0;
    while pos.checked_add(8)? <= end && boxes < 64 {
        boxes += 1;
        let head = r.at(pos, 16, end).await?;
        let (kind, header, box_end) = box_header(&head, pos, end)?;
        if &kind == b"tkhd" {
            let b = r.at(pos + header, 96, box_end).await?;
            let (matrix, dims) = match *b.first()? {
                0 => (40, 76),
                1 => (52, 88),
                _ => return None,
            };
            let width = be32(&b, dims)? >> 16;
            let height = be32(&b, dims + 4)? >> 16;
            if width == 0 || height == 0 {
                return None;
            }
            let (a, d) = (be32(&b, matrix)?, be32(&b, matrix + 16)?);
            return Some(if a == 0 && d == 0 {
                (height, width)
            } else {
                (width, height)
            });
        }
        pos = box_end;
    }
    None
}

// ---------------------------------------------------------------------------------------
// Ogg

/// An Ogg page header at `at` in `b`: (granule position, serial).
fn ogg_page(b: &[u8], at: usize) -> Option<(u64, u32)> {
    if b.get(at..at.checked_add(4)?)? != b"OggS" || *b.get(at + 4)? != 0 {
        return None;
    }
    Some((le64(b, at + 6)?, le32(b, at + 14)?))
}

async fn ogg(r: &mut Reader<'_>) -> Option<Probe> {
    let first = r.at(0, 4096, 4096).await?;
    let (_, serial) = ogg_page(&first, 0)?;
    let segments = usize::from(*first.get(26)?);
    let packet = first.get(27 + segments..)?;
    // Samples per second of the granule position, and samples to subtract.
    let (rate, pre_skip) = if packet.starts_with(b"OpusHead") {
        (48_000u64, u64::from(le16(packet, 10)?))
    } else if packet.starts_with(b"\x01vorbis") {
        (u64::from(le32(packet, 12)?), 0)
    } else if packet.starts_with(b"Speex   ") {
        (u64::from(le32(packet, 36)?), 0)
    } else if packet.starts_with(b"\x7fFLAC") {
        // Ogg FLAC: a STREAMINFO follows the 13-byte mapping header and "fLaC" + 4.
        let info = be64(packet, 13 + 4 + 10)?;
        (info >> 44, 0)
    } else {
        return None;
    };
    if rate == 0 {
        return None;
    }
    let tail_len = r.size.min(MAX_READ);
    let tail_start = r.size - tail_len;
    let tail = r.at(tail_start, tail_len, r.size).await?;
    // The last page of the stream whose granule position is set.
    let mut end = tail.len();
    while let Some(at) = tail.get(..end)?.windows(4).rposition(|w| w == b"OggS") {
        if let Some((granule, page_serial)) = ogg_page(&tail, at)
            && page_serial == serial
            && granule != u64::MAX
            && granule < 1 << 62
        {
            let samples = granule.checked_sub(pre_skip).filter(|&s| s != 0)?;
            return duration_only(to_ms(samples, rate));
        }
        end = at;
    }
    duration_only(None)
}

// ---------------------------------------------------------------------------------------
// EBML (WebM, Matroska)

/// An element at `pos` in `b`: (id with its marker bits, data start, data size; `None` for
/// an unknown size).
fn ebml_element(b: &[u8], pos: usize) -> Option<(u32, usize, Option<u64>)> {
    let first = *b.get(pos)?;
    let id_len = ebml_len(first)?;
    if id_len > 4 {
        return None;
    }
    let id = b
        .get(pos..pos.checked_add(id_len)?)?
        .iter()
        .fold(0u32, |acc, &x| (acc << 8) | u32::from(x));
    let size_at = pos + id_len;
    let size_len = ebml_len(*b.get(size_at)?)?;
    let size_bytes = b.get(size_at..size_at.checked_add(size_len)?)?;
    let mask = 0xFFu8.checked_shr(size_len as u32).unwrap_or(0);
    let mut value = u64::from(size_bytes[0] & mask);
    let mut all_ones = size_bytes[0] & mask == mask;
    for &x in &size_bytes[1..] {
        value = (value << 8) | u64::from(x);
        all_ones &= x == 0xFF;
    }
    Some((id, size_at + size_len, (!all_ones).then_some(value)))
}

fn ebml_len(first: u8) -> Option<usize> {
    (first != 0).then(|| first.leading_zeros() as usize + 1)
}

fn ebml_uint(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 8 {
        return None;
    }
    Some(b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
}

/// The whole data of a leaf element (a number, a string), `None` if cut by the buffer.
fn ebml_leaf(b: &[u8], data: usize, size: Option<u64>) -> Option<&[u8]> {
    b.get(data..data.checked_add(usize::try_from(size?).ok()?)?)
}

/// The data of a master element, clamped to the buffer, and where it ends.
fn ebml_data(b: &[u8], data: usize, size: Option<u64>) -> (&[u8], Option<usize>) {
    let end = size
        .and_then(|s| usize::try_from(s).ok())
        .and_then(|s| data.checked_add(s));
    let clamped = end.map_or(b.len(), |e| e.min(b.len()));
    (b.get(data..clamped).unwrap_or_default(), end)
}

const EBML_HEADER: u32 = 0x1A45_DFA3;
const SEGMENT: u32 = 0x1853_8067;
const SEEK_HEAD: u32 = 0x114D_9B74;
const SEEK: u32 = 0x4DBB;
const SEEK_ID: u32 = 0x53AB;
const SEEK_POSITION: u32 = 0x53AC;
const INFO: u32 = 0x1549_A966;
const TIMECODE_SCALE: u32 = 0x2A_D7B1;
const DURATION: u32 = 0x4489;
const TRACKS: u32 = 0x1654_AE6B;
const TRACK_ENTRY: u32 = 0xAE;
const VIDEO: u32 = 0xE0;
const PIXEL_WIDTH: u32 = 0xB0;
const PIXEL_HEIGHT: u32 = 0xBA;
const CLUSTER: u32 = 0x1F43_B675;

async fn matroska(r: &mut Reader<'_>) -> Option<Probe> {
    let head = r.at(0, MAX_READ, MAX_READ).await?;
    let (id, data, size) = ebml_element(&head, 0)?;
    if id != EBML_HEADER {
        return None;
    }
    let pos = data.checked_add(usize::try_from(size?).ok()?)?;
    let (id, segment_data, _) = ebml_element(&head, pos)?;
    if id != SEGMENT {
        return None;
    }
    let mut probe = Probe::default();
    let mut info_found = false;
    let mut info_at: Option<u64> = None; // from the SeekHead, relative to segment data
    let mut pos = segment_data;
    let mut elements = 0;
    while let Some((id, data, size)) = ebml_element(&head, pos) {
        elements += 1;
        if id == CLUSTER || elements > 256 {
            break;
        }
        let (body, end) = ebml_data(&head, data, size);
        match id {
            INFO => {
                info_found = true;
                probe.duration_ms = matroska_info(body);
            }
            TRACKS => {
                if let Some((w, h)) = matroska_tracks(body) {
                    probe.width = w;
                    probe.height = h;
                }
            }
            SEEK_HEAD => info_at = seek_position(body, INFO),
            _ => {}
        }
        let Some(end) = end else { break };
        pos = end;
    }
    // Info beyond the first window: one more read where the SeekHead says it is.
    if !info_found
        && let Some(at) = info_at.and_then(|a| a.checked_add(segment_data as u64))
        && at >= head.len() as u64
        && let Some(b) = r.at(at, 4096, at.saturating_add(4096)).await
        && let Some((INFO, data, size)) = ebml_element(&b, 0)
    {
        probe.duration_ms = matroska_info(ebml_data(&b, data, size).0);
    }
    Some(probe)
}

fn matroska_info(b: &[u8]) -> Option<u32> {
    let mut scale = 1_000_000u64;
    let mut duration: Option<f64> = None;
    let mut pos = 0;
    while let Some((id, data, size)) = ebml_element(b, pos) {
        let Some(body) = ebml_leaf(b, data, size) else {
            break;
        };
        match id {
            TIMECODE_SCALE => scale = ebml_uint(body).filter(|&s| s != 0)?,
            DURATION => {
                duration = match body.len() {
                    4 => Some(f64::from(f32::from_be_bytes(body.try_into().ok()?))),
                    8 => Some(f64::from_be_bytes(body.try_into().ok()?)),
                    _ => None,
                }
            }
            _ => {}
        }
        pos = data + body.len();
    }
    let ms = duration? * scale as f64 / 1e6;
    (ms.is_finite() && ms >= 0.0 && ms < f64::from(u32::MAX)).then(|| ms.round() as u32)
}

fn matroska_tracks(b: &[u8]) -> Option<(u32, u32)> {
    let mut pos = 0;
    while let Some((id, data, size)) = ebml_element(b, pos) {
        let (body, end) = ebml_data(b, data, size);
        if id == TRACK_ENTRY
            && let Some(dims) = matroska_video(body)
        {
            return Some(dims);
        }
        pos = end?;
    }
    None
}

fn matroska_video(entry: &[u8]) -> Option<(u32, u32)> {
    let mut pos = 0;
    while let Some((id, data, size)) = ebml_element(entry, pos) {
        let (body, end) = ebml_data(entry, data, size);
        if id == VIDEO {
            let (mut w, mut h) = (0u32, 0u32);
            let mut p = 0;
            while let Some((id, data, size)) = ebml_element(body, p) {
                let Some(v) = ebml_leaf(body, data, size) else {
                    break;
                };
                match id {
                    PIXEL_WIDTH => w = u32::try_from(ebml_uint(v)?).ok()?,
                    PIXEL_HEIGHT => h = u32::try_from(ebml_uint(v)?).ok()?,
                    _ => {}
                }
                p = data + v.len();
            }
            return (w != 0 && h != 0).then_some((w, h));
        }
        pos = end?;
    }
    None
}

/// The SeekPosition of `target` in a SeekHead.
fn seek_position(b: &[u8], target: u32) -> Option<u64> {
    let mut pos = 0;
    while let Some((id, data, size)) = ebml_element(b, pos) {
        let (body, end) = ebml_data(b, data, size);
        if id == SEEK {
            let (mut seek_id, mut at) = (None, None);
            let mut p = 0;
            while let Some((id, data, size)) = ebml_element(body, p) {
                let Some(v) = ebml_leaf(body, data, size) else {
                    break;
                };
                match id {
                    SEEK_ID => seek_id = ebml_uint(v),
                    SEEK_POSITION => at = ebml_uint(v),
                    _ => {}
                }
                p = data + v.len();
            }
            if seek_id == Some(u64::from(target)) {
                return at;
            }
        }
        pos = end?;
    }
    None
}

// ---------------------------------------------------------------------------------------
// MPEG audio, ADTS, AMR

/// The first bytes after an ID3v2 tag, and where they are.
async fn skip_id3(r: &mut Reader<'_>) -> Option<(u64, Bytes)> {
    let head = r.at(0, MAX_READ, MAX_READ).await?;
    let Some(tag) = crate::sniff::id3_len(&head) else {
        return Some((0, head));
    };
    let start = tag as u64;
    let audio = r
        .at(start, MAX_READ, start.saturating_add(MAX_READ))
        .await?;
    Some((start, audio))
}

async fn mp3(r: &mut Reader<'_>) -> Option<Probe> {
    use crate::sniff::MpegFrame;
    let (start, audio) = skip_id3(r).await?;
    // The first frame header followed by another one (junk and padding may come first).
    let scan = audio.len().min(8192);
    let (at, frame) = (0..scan).find_map(|at| {
        let frame = MpegFrame::parse(audio.get(at..)?)?;
        let next = at.checked_add(frame.len)?;
        let confirmed = audio.len() < next + 4 || MpegFrame::parse(&audio[next..]).is_some();
        confirmed.then_some((at, frame))
    })?;
    let side_info = match (frame.version, frame.mono) {
        (1, false) => 32,
        (1, true) | (_, false) => 17,
        (_, true) => 9,
    };
    let xing = at + 4 + side_info;
    let frames = match audio.get(xing..xing + 4) {
        Some(b"Xing" | b"Info") => be32(&audio, xing + 4)
            .filter(|flags| flags & 1 != 0)
            .and_then(|_| be32(&audio, xing + 8)),
        _ if audio.get(at + 36..at + 40) == Some(b"VBRI") => be32(&audio, at + 36 + 14),
        _ => None,
    };
    if let Some(frames) = frames.filter(|&f| f != 0) {
        let samples = u64::from(frames) * u64::from(frame.samples);
        return duration_only(to_ms(samples, u64::from(frame.sample_rate)));
    }
    // Constant bit rate: the bytes after the tag at the first frame's rate.
    let bytes = r.size.checked_sub(start + at as u64)?;
    duration_only(to_ms(bytes * 8, u64::from(frame.bitrate_kbps) * 1000))
}

/// ADTS AAC: an estimate from the average frame size in the first window.
async fn adts(r: &mut Reader<'_>) -> Option<Probe> {
    const RATES: [u32; 13] = [
        96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
    ];
    let (start, audio) = skip_id3(r).await?;
    let (mut pos, mut frames, mut rate) = (0usize, 0u64, 0u32);
    while let Some(h) = audio.get(pos..pos + 7) {
        if h[0] != 0xFF || h[1] & 0xF6 != 0xF0 {
            break;
        }
        rate = *RATES.get(usize::from((h[2] >> 2) & 0x0F))?;
        let len = (usize::from(h[3] & 3) << 11) | (usize::from(h[4]) << 3) | usize::from(h[5] >> 5);
        if len < 7 {
            break;
        }
        frames += 1 + u64::from(h[6] & 3); // raw data blocks in this frame
        pos += len;
    }
    if frames == 0 || pos == 0 {
        return duration_only(None);
    }
    let total = r.size.checked_sub(start)?;
    // samples = total bytes × (frames × 1024 / bytes seen)
    let samples = u128::from(total) * u128::from(frames) * 1024 / pos as u128;
    duration_only(to_ms(u64::try_from(samples).ok()?, u64::from(rate)))
}

/// AMR-NB/WB storage format: 20 ms frames whose size the first frame's mode gives
/// (constant unless the encoder changes modes, then an estimate).
async fn amr(r: &mut Reader<'_>) -> Option<Probe> {
    const NB: [u64; 9] = [13, 14, 16, 18, 20, 21, 27, 32, 6];
    const WB: [u64; 10] = [18, 24, 33, 37, 41, 47, 51, 59, 61, 6];
    let head = r.at(0, 16, 16).await?;
    let (header, sizes): (u64, &[u64]) = if head.starts_with(b"#!AMR-WB\n") {
        (9, &WB)
    } else if head.starts_with(b"#!AMR\n") {
        (6, &NB)
    } else {
        return None;
    };
    let mode = usize::from((*head.get(usize::try_from(header).ok()?)? >> 3) & 0x0F);
    let frame = *sizes.get(mode)?;
    let frames = r.size.checked_sub(header)? / frame;
    duration_only(to_ms(frames * 20, 1000))
}

// ---------------------------------------------------------------------------------------
// WAV, FLAC

async fn wav(r: &mut Reader<'_>) -> Option<Probe> {
    let head = r.at(0, 12, MAX_READ).await?;
    if head.get(..4)? != b"RIFF" || head.get(8..12)? != b"WAVE" {
        return None;
    }
    let mut byte_rate: Option<u32> = None;
    let mut pos = 12u64;
    let mut chunks = 0;
    while pos.checked_add(8)? <= r.size && chunks < 64 {
        chunks += 1;
        let b = r.at(pos, 24, pos.saturating_add(MAX_READ)).await?;
        let id = b.get(..4)?;
        let len = u64::from(le32(&b, 4)?);
        let data = pos + 8;
        match id {
            b"fmt " => byte_rate = le32(&b, 16),
            b"data" => {
                let available = r.size - data;
                let len = if len == 0 || len == u64::from(u32::MAX) || len > available {
                    available // streamed or truncated
                } else {
                    len
                };
                return duration_only(to_ms(len, u64::from(byte_rate?)));
            }
            _ => {}
        }
        pos = data.checked_add(len)?.checked_add(len & 1)?;
    }
    duration_only(None)
}

async fn flac(r: &mut Reader<'_>) -> Option<Probe> {
    let (_, b) = skip_id3(r).await?;
    // "fLaC", then the STREAMINFO block (always first): 4-byte block header, 10 bytes of
    // block/frame sizes, then 20 bits rate, 3 channels, 5 bits per sample, 36 samples.
    if b.get(..4)? != b"fLaC" || b.get(4)? & 0x7F != 0 {
        return None;
    }
    let packed = be64(&b, 18)?;
    let rate = packed >> 44;
    let samples = packed & 0x000F_FFFF_FFFF;
    if samples == 0 {
        return duration_only(None);
    }
    duration_only(to_ms(samples, rate))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A `RangeSource` over memory that records every read.
    struct Mem {
        data: Vec<u8>,
        reads: Mutex<Vec<Range<u64>>>,
    }

    impl Mem {
        fn new(data: Vec<u8>) -> Self {
            Mem {
                data,
                reads: Mutex::new(Vec::new()),
            }
        }
        fn reads(&self) -> Vec<Range<u64>> {
            self.reads.lock().map(|r| r.clone()).unwrap_or_default()
        }
        fn bytes_read(&self) -> u64 {
            self.reads().iter().map(|r| r.end - r.start).sum()
        }
        async fn probe(&self, mime: &str) -> Probe {
            let found = probe(self, self.data.len() as u64, mime).await;
            let reads = self.reads();
            assert!(reads.len() as u32 <= MAX_READS, "{} reads", reads.len());
            for r in &reads {
                assert!(r.end - r.start <= MAX_READ, "read {r:?}");
                assert!(r.end <= self.data.len() as u64, "read {r:?} past the end");
            }
            found
        }
    }

    #[async_trait::async_trait]
    impl RangeSource for Mem {
        async fn read(&self, range: Range<u64>) -> std::io::Result<Bytes> {
            if let Ok(mut reads) = self.reads.lock() {
                reads.push(range.clone());
            }
            let start = (range.start as usize).min(self.data.len());
            let end = (range.end as usize).min(self.data.len());
            Ok(Bytes::copy_from_slice(&self.data[start..end]))
        }
    }

    fn mp4_box(kind: &[u8; 4], content: &[u8]) -> Vec<u8> {
        let mut v = ((content.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(kind);
        v.extend_from_slice(content);
        v
    }

    fn mvhd_v0(timescale: u32, duration: u32) -> Vec<u8> {
        let mut c = vec![0u8; 4 + 8]; // version, flags, creation, modification
        c.extend_from_slice(&timescale.to_be_bytes());
        c.extend_from_slice(&duration.to_be_bytes());
        c.resize(100, 0);
        mp4_box(b"mvhd", &c)
    }

    fn mvhd_v1(timescale: u32, duration: u64) -> Vec<u8> {
        let mut c = vec![1, 0, 0, 0];
        c.extend_from_slice(&[0; 16]);
        c.extend_from_slice(&timescale.to_be_bytes());
        c.extend_from_slice(&duration.to_be_bytes());
        c.resize(112, 0);
        mp4_box(b"mvhd", &c)
    }

    const IDENTITY: [u32; 9] = [0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x4000_0000];
    const ROTATE_90: [u32; 9] = [0, 0x10000, 0, 0xFFFF_0000, 0, 0, 0, 0, 0x4000_0000];

    fn tkhd_v0(width: u32, height: u32, matrix: [u32; 9]) -> Vec<u8> {
        let mut c = vec![0u8; 40];
        for m in matrix {
            c.extend_from_slice(&m.to_be_bytes());
        }
        c.extend_from_slice(&(width << 16).to_be_bytes());
        c.extend_from_slice(&(height << 16).to_be_bytes());
        mp4_box(b"tkhd", &c)
    }

    fn trak(tkhd: Vec<u8>) -> Vec<u8> {
        let mut c = tkhd;
        c.extend_from_slice(&mp4_box(b"mdia", &[0; 200]));
        mp4_box(b"trak", &c)
    }

    fn ftyp() -> Vec<u8> {
        mp4_box(b"ftyp", b"isom\0\0\x02\0isomiso2avc1mp41")
    }

    fn mdat(len: usize) -> Vec<u8> {
        mp4_box(b"mdat", &vec![0u8; len])
    }

    /// ftyp, 1 MiB mdat, moov(mvhd, audio trak, video trak).
    fn mp4_file(mvhd: Vec<u8>, video_tkhd: Vec<u8>) -> Vec<u8> {
        let mut moov = mvhd;
        moov.extend_from_slice(&trak(tkhd_v0(0, 0, IDENTITY)));
        moov.extend_from_slice(&trak(video_tkhd));
        let mut file = ftyp();
        file.extend_from_slice(&mdat(1 << 20));
        file.extend_from_slice(&mp4_box(b"moov", &moov));
        file
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn mp4_moov_after_mdat_is_found_without_reading_the_mdat() {
        let src = Mem::new(mp4_file(mvhd_v0(1000, 12345), tkhd_v0(640, 480, IDENTITY)));
        let found = block_on(src.probe("video/mp4"));
        assert_eq!(
            found,
            Probe {
                duration_ms: Some(12345),
                width: 640,
                height: 480
            }
        );
        let mdat_start = ftyp().len() as u64;
        let mdat_end = mdat_start + 8 + (1 << 20);
        for r in src.reads() {
            let inside = r.start.max(mdat_start + 8) < r.end.min(mdat_end);
            assert!(!inside, "read {r:?} of the mdat ({mdat_start}..{mdat_end})");
        }
        assert!(src.bytes_read() < 2048, "{} bytes read", src.bytes_read());
    }

    #[test]
    fn mp4_mvhd_v1_largesize_and_rotation() {
        // mdat with a 64-bit largesize, mvhd v1, a portrait video (rotated 90°).
        let mut file = ftyp();
        let mdat_len: u64 = 16 + 4096;
        file.extend_from_slice(&1u32.to_be_bytes());
        file.extend_from_slice(b"mdat");
        file.extend_from_slice(&mdat_len.to_be_bytes());
        file.extend_from_slice(&[0u8; 4096]);
        let mut moov = mvhd_v1(90_000, 90_000 * 61 + 45_000);
        moov.extend_from_slice(&trak(tkhd_v0(1920, 1080, ROTATE_90)));
        file.extend_from_slice(&mp4_box(b"moov", &moov));
        let src = Mem::new(file);
        let found = block_on(src.probe("video/quicktime"));
        assert_eq!(
            found,
            Probe {
                duration_ms: Some(61_500),
                width: 1080,
                height: 1920
            }
        );
        assert!(src.bytes_read() < 4096);
    }

    #[test]
    fn mp4_moov_last_with_size_zero_and_audio_only() {
        let mut file = ftyp();
        file.extend_from_slice(&mdat(100));
        let mut moov = mvhd_v0(44_100, 44_100 * 3);
        moov.extend_from_slice(&trak(tkhd_v0(0, 0, IDENTITY)));
        let moov = mp4_box(b"moov", &moov);
        file.extend_from_slice(&0u32.to_be_bytes()); // size 0: to the end of the file
        file.extend_from_slice(&moov[4..]);
        let found = block_on(Mem::new(file).probe("audio/mp4"));
        assert_eq!(
            found,
            Probe {
                duration_ms: Some(3000),
                width: 0,
                height: 0
            }
        );
    }

    #[test]
    fn mp4_fragmented_duration_from_mehd() {
        let mut mvex = vec![0u8; 4];
        mvex.extend_from_slice(&7_500u32.to_be_bytes());
        let mut moov = mvhd_v0(1000, 0);
        moov.extend_from_slice(&mp4_box(b"mvex", &mp4_box(b"mehd", &mvex)));
        let mut file = ftyp();
        file.extend_from_slice(&mp4_box(b"moov", &moov));
        file.extend_from_slice(&mdat(64));
        let found = block_on(Mem::new(file).probe("video/mp4"));
        assert_eq!(found.duration_ms, Some(7500));
    }

    #[test]
    fn mp4_hostile_inputs() {
        // A box claiming 0xFFFFFFFF bytes.
        let mut file = ftyp();
        file.extend_from_slice(&u32::MAX.to_be_bytes());
        file.extend_from_slice(b"free");
        file.extend_from_slice(&[0; 64]);
        assert_eq!(
            block_on(Mem::new(file).probe("video/mp4")),
            Probe::default()
        );

        // A largesize near u64::MAX (overflow).
        let mut file = ftyp();
        file.extend_from_slice(&1u32.to_be_bytes());
        file.extend_from_slice(b"mdat");
        file.extend_from_slice(&(u64::MAX - 3).to_be_bytes());
        assert_eq!(
            block_on(Mem::new(file).probe("video/mp4")),
            Probe::default()
        );

        // A box shorter than its header.
        let mut file = ftyp();
        file.extend_from_slice(&4u32.to_be_bytes());
        file.extend_from_slice(b"moov");
        assert_eq!(
            block_on(Mem::new(file).probe("video/mp4")),
            Probe::default()
        );

        // Zero timescale, children claiming sizes beyond moov.
        let mut moov = mvhd_v0(0, 12345);
        let mut bad_trak = 5000u32.to_be_bytes().to_vec();
        bad_trak.extend_from_slice(b"trak");
        bad_trak.extend_from_slice(&1000u32.to_be_bytes());
        bad_trak.extend_from_slice(b"tkhd");
        moov.extend_from_slice(&bad_trak);
        let mut file = ftyp();
        file.extend_from_slice(&mp4_box(b"moov", &moov));
        assert_eq!(
            block_on(Mem::new(file).probe("video/mp4")),
            Probe::default()
        );

        // Unknown duration (all ones), truncated moov.
        let mut file = ftyp();
        let moov = mp4_box(b"moov", &mvhd_v0(1000, u32::MAX));
        file.extend_from_slice(&moov[..moov.len() - 50]);
        assert_eq!(
            block_on(Mem::new(file).probe("video/mp4")).duration_ms,
            None
        );

        // Many empty boxes: the read budget ends the walk.
        let mut file = ftyp();
        for _ in 0..10_000 {
            file.extend_from_slice(&mp4_box(b"free", &[]));
        }
        let src = Mem::new(file);
        assert_eq!(block_on(src.probe("video/mp4")), Probe::default());
        assert_eq!(src.reads().len() as u32, MAX_READS);

        for len in 0..40 {
            let file = mp4_file(mvhd_v0(1000, 1), tkhd_v0(1, 1, IDENTITY));
            let truncated = file[..len].to_vec();
            assert_eq!(
                block_on(Mem::new(truncated).probe("video/mp4")),
                Probe::default()
            );
        }
    }

    fn ogg_page_bytes(granule: u64, serial: u32, seq: u32, packet: &[u8]) -> Vec<u8> {
        let mut v = b"OggS\0\0".to_vec();
        v.extend_from_slice(&granule.to_le_bytes());
        v.extend_from_slice(&serial.to_le_bytes());
        v.extend_from_slice(&seq.to_le_bytes());
        v.extend_from_slice(&[0; 4]); // CRC, not checked
        let mut lacing = vec![255u8; packet.len() / 255];
        lacing.push((packet.len() % 255) as u8);
        v.push(lacing.len() as u8);
        v.extend_from_slice(&lacing);
        v.extend_from_slice(packet);
        v
    }

    fn opus_file(pre_skip: u16, last_granule: u64, filler_pages: usize) -> Vec<u8> {
        let mut head = b"OpusHead\x01\x02".to_vec();
        head.extend_from_slice(&pre_skip.to_le_bytes());
        head.extend_from_slice(&48_000u32.to_le_bytes());
        head.extend_from_slice(&[0, 0, 0]);
        let mut file = ogg_page_bytes(0, 7, 0, &head);
        file.extend_from_slice(&ogg_page_bytes(0, 7, 1, b"OpusTags\0\0\0\0\0\0\0\0"));
        for i in 0..filler_pages {
            file.extend_from_slice(&ogg_page_bytes(
                960 * (i as u64 + 1),
                7,
                2 + i as u32,
                &[0x55; 200],
            ));
        }
        // A page of another stream after ours, and one with no packet end.
        file.extend_from_slice(&ogg_page_bytes(last_granule, 7, 999, &[0x66; 100]));
        file.extend_from_slice(&ogg_page_bytes(u64::MAX, 7, 1000, &[0x66; 10]));
        file.extend_from_slice(&ogg_page_bytes(999_999_999, 8, 0, &[0x77; 10]));
        file
    }

    #[test]
    fn ogg_opus_and_vorbis() {
        let src = Mem::new(opus_file(312, 48_000 * 3 + 312, 1000));
        assert_eq!(block_on(src.probe("audio/ogg")).duration_ms, Some(3000));
        assert!(src.reads().len() <= 2);

        let mut id = b"\x01vorbis\0\0\0\0\x02".to_vec();
        id.extend_from_slice(&44_100u32.to_le_bytes());
        id.extend_from_slice(&[0; 16]);
        let mut file = ogg_page_bytes(0, 1, 0, &id);
        file.extend_from_slice(&ogg_page_bytes(44_100 * 10 + 22_050, 1, 1, &[0; 50]));
        assert_eq!(
            block_on(Mem::new(file).probe("audio/ogg")).duration_ms,
            Some(10_500)
        );
    }

    #[test]
    fn ogg_hostile() {
        // Granule below pre-skip, zero vorbis rate, truncation, no pages at all.
        assert_eq!(
            block_on(Mem::new(opus_file(312, 100, 2)).probe("audio/ogg")),
            Probe::default()
        );
        let mut id = b"\x01vorbis\0\0\0\0\x02".to_vec();
        id.extend_from_slice(&[0; 20]);
        let file = ogg_page_bytes(1000, 1, 0, &id);
        assert_eq!(
            block_on(Mem::new(file).probe("audio/ogg")),
            Probe::default()
        );
        let file = opus_file(0, 48_000, 0);
        for len in [0, 4, 27, 30, 40] {
            let truncated = file[..len].to_vec();
            assert_eq!(
                block_on(Mem::new(truncated).probe("audio/ogg")),
                Probe::default()
            );
        }
        let mut file = b"OggS\0\0".to_vec();
        file.extend_from_slice(&[0xFF; 21]);
        assert_eq!(
            block_on(Mem::new(file).probe("audio/ogg")),
            Probe::default()
        );
    }

    fn ebml(id: &[u8], body: &[u8]) -> Vec<u8> {
        let mut v = id.to_vec();
        // 8-byte size, like many muxers write.
        v.push(0x01);
        v.extend_from_slice(&(body.len() as u64).to_be_bytes()[1..]);
        v.extend_from_slice(body);
        v
    }

    fn webm(info: Vec<u8>, unknown_segment_size: bool) -> Vec<u8> {
        let header = ebml(
            &[0x1A, 0x45, 0xDF, 0xA3],
            &[ebml(&[0x42, 0x82], b"webm"), ebml(&[0x42, 0x87], &[4])].concat(),
        );
        let video = ebml(
            &[0xE0],
            &[ebml(&[0xB0], &[0x05, 0x00]), ebml(&[0xBA], &[0x02, 0xD0])].concat(),
        );
        let audio_entry = ebml(&[0xAE], &ebml(&[0xD7], &[1]));
        let video_entry = ebml(&[0xAE], &[ebml(&[0xD7], &[2]), video].concat());
        let tracks = ebml(
            &[0x16, 0x54, 0xAE, 0x6B],
            &[audio_entry, video_entry].concat(),
        );
        let cluster = [
            &[0x1F, 0x43, 0xB6, 0x75, 0xFF][..],
            &[0xE7, 0x81, 0x00],
            &[0; 1000],
        ]
        .concat();
        let segment_body = [ebml(&[0x15, 0x49, 0xA9, 0x66], &info), tracks, cluster].concat();
        let segment = if unknown_segment_size {
            [
                &[
                    0x18, 0x53, 0x80, 0x67, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                ][..],
                &segment_body,
            ]
            .concat()
        } else {
            ebml(&[0x18, 0x53, 0x80, 0x67], &segment_body)
        };
        [header, segment].concat()
    }

    #[test]
    fn webm_duration_and_dimensions() {
        let info = [
            ebml(&[0x2A, 0xD7, 0xB1], &[0x0F, 0x42, 0x40]),
            ebml(&[0x44, 0x89], &4500.0f32.to_be_bytes()),
            ebml(&[0x4D, 0x80], b"natter-test"),
        ]
        .concat();
        let found = block_on(Mem::new(webm(info, false)).probe("video/webm"));
        assert_eq!(
            found,
            Probe {
                duration_ms: Some(4500),
                width: 1280,
                height: 720
            }
        );

        // A float64 duration with a 1 ms … scale of 10 µs: 123456 × 0.01 ms.
        let info = [
            ebml(&[0x2A, 0xD7, 0xB1], &[0x27, 0x10]),
            ebml(&[0x44, 0x89], &123_456.0f64.to_be_bytes()),
        ]
        .concat();
        let found = block_on(Mem::new(webm(info, true)).probe("audio/webm"));
        assert_eq!(found.duration_ms, Some(1235));
    }

    #[test]
    fn live_recorded_webm_has_no_duration() {
        let info = [
            ebml(&[0x2A, 0xD7, 0xB1], &[0x0F, 0x42, 0x40]),
            ebml(&[0x4D, 0x80], b"Chrome"),
        ]
        .concat();
        let found = block_on(Mem::new(webm(info, true)).probe("video/webm"));
        assert_eq!(
            found,
            Probe {
                duration_ms: None,
                width: 1280,
                height: 720
            }
        );
    }

    #[test]
    fn webm_hostile() {
        let nan = [ebml(&[0x44, 0x89], &f64::NAN.to_be_bytes())].concat();
        assert_eq!(
            block_on(Mem::new(webm(nan, false)).probe("video/webm")).duration_ms,
            None
        );
        let huge = [ebml(&[0x44, 0x89], &1e300f64.to_be_bytes())].concat();
        assert_eq!(
            block_on(Mem::new(webm(huge, false)).probe("video/webm")).duration_ms,
            None
        );
        let zero_scale = [
            ebml(&[0x2A, 0xD7, 0xB1], &[0]),
            ebml(&[0x44, 0x89], &4500.0f32.to_be_bytes()),
        ]
        .concat();
        assert_eq!(
            block_on(Mem::new(webm(zero_scale, false)).probe("video/webm")).duration_ms,
            None
        );
        let file = webm(ebml(&[0x44, 0x89], &4500.0f32.to_be_bytes()), false);
        for len in 0..file.len() {
            let found = block_on(Mem::new(file[..len].to_vec()).probe("video/webm"));
            // Cut values are never read as smaller numbers.
            assert!(
                found.width == 0 || (found.width, found.height) == (1280, 720),
                "len {len}: {found:?}"
            );
            assert!(
                matches!(found.duration_ms, None | Some(4500)),
                "len {len}: {found:?}"
            );
        }
        // Sizes beyond the end and zero bytes where IDs belong.
        let mut junk = file.clone();
        junk[60..80].fill(0);
        let _ = block_on(Mem::new(junk).probe("video/webm"));
        let mut junk = file;
        junk[40..48].fill(0xFF);
        let _ = block_on(Mem::new(junk).probe("video/webm"));
    }

    /// MPEG-1 Layer III, 128 kb/s, 44.1 kHz, stereo: 417-byte frames of 1152 samples.
    fn mp3_frame(payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0xFF, 0xFB, 0x90, 0x44];
        frame.extend_from_slice(payload);
        frame.resize(417, 0);
        frame
    }

    fn id3_tag(body_len: usize) -> Vec<u8> {
        let mut tag = b"ID3\x04\x00\x00".to_vec();
        let n = body_len as u32;
        tag.extend_from_slice(&[
            (n >> 21) as u8 & 0x7F,
            (n >> 14) as u8 & 0x7F,
            (n >> 7) as u8 & 0x7F,
            n as u8 & 0x7F,
        ]);
        tag.resize(10 + body_len, 0);
        tag
    }

    #[test]
    fn mp3_xing_and_cbr() {
        // Xing: 1000 frames × 1152 samples / 44100 Hz = 26122 ms, whatever the file size.
        let mut xing = vec![0u8; 32];
        xing.extend_from_slice(b"Xing");
        xing.extend_from_slice(&1u32.to_be_bytes());
        xing.extend_from_slice(&1000u32.to_be_bytes());
        let mut file = id3_tag(100_000); // a tag with cover art, beyond the first read
        file.extend_from_slice(&mp3_frame(&xing));
        for _ in 0..20 {
            file.extend_from_slice(&mp3_frame(&[]));
        }
        let src = Mem::new(file);
        assert_eq!(block_on(src.probe("audio/mpeg")).duration_ms, Some(26_122));
        assert!(src.reads().len() <= 2);

        // CBR: 300 frames of 417 bytes at 128 kb/s = 125100 bytes × 8 / 128 = 7818 ms.
        let mut file = id3_tag(500);
        for _ in 0..300 {
            file.extend_from_slice(&mp3_frame(&[]));
        }
        assert_eq!(
            block_on(Mem::new(file).probe("audio/mpeg")).duration_ms,
            Some(7818)
        );
    }

    #[test]
    fn mp3_hostile() {
        let mut tag = id3_tag(0);
        tag[6..10].copy_from_slice(&[0x7F; 4]); // 256 MiB tag, the file is 10 bytes
        assert_eq!(
            block_on(Mem::new(tag).probe("audio/mpeg")),
            Probe::default()
        );
        assert_eq!(
            block_on(Mem::new(vec![0xFF; 5000]).probe("audio/mpeg")),
            Probe::default()
        );
        let mut xing = vec![0u8; 32];
        xing.extend_from_slice(b"Xing\0\0\0\x01");
        let file = mp3_frame(&xing)[..40].to_vec(); // cut inside the Xing header
        // No frame count: the CBR estimate of what is there.
        assert_eq!(
            block_on(Mem::new(file).probe("audio/mpeg")).duration_ms,
            Some(2)
        );
        assert_eq!(
            block_on(Mem::new(Vec::new()).probe("audio/mpeg")),
            Probe::default()
        );
    }

    #[test]
    fn adts_and_amr_estimates() {
        // 44.1 kHz ADTS frames of 372 bytes, 1 raw block each: 1024 samples per frame.
        let mut file = Vec::new();
        for _ in 0..431 {
            let len = 372u32;
            let mut f = vec![
                0xFF,
                0xF1,
                0x50,
                0x80 | (len >> 11) as u8,
                (len >> 3) as u8,
                ((len & 7) << 5) as u8 | 0x1F,
                0xFC,
            ];
            f.resize(len as usize, 0);
            file.extend_from_slice(&f);
        }
        // 431 × 1024 / 44100 = 10.0078 s
        assert_eq!(
            block_on(Mem::new(file).probe("audio/aac")).duration_ms,
            Some(10_007)
        );

        // AMR-NB 12.2 kb/s (mode 7, 32-byte frames): 250 frames = 5 s.
        let mut file = b"#!AMR\n".to_vec();
        for _ in 0..250 {
            let mut f = vec![0x3C];
            f.resize(32, 0);
            file.extend_from_slice(&f);
        }
        assert_eq!(
            block_on(Mem::new(file).probe("audio/amr")).duration_ms,
            Some(5000)
        );
        assert_eq!(
            block_on(Mem::new(b"#!AMR\n\x7c".to_vec()).probe("audio/amr")),
            Probe::default()
        );
    }

    fn wav_file(byte_rate: u32, data_len: u32, actual: usize) -> Vec<u8> {
        let mut fmt = Vec::new();
        fmt.extend_from_slice(&1u16.to_le_bytes());
        fmt.extend_from_slice(&2u16.to_le_bytes());
        fmt.extend_from_slice(&44_100u32.to_le_bytes());
        fmt.extend_from_slice(&byte_rate.to_le_bytes());
        fmt.extend_from_slice(&4u16.to_le_bytes());
        fmt.extend_from_slice(&16u16.to_le_bytes());
        let mut v = b"RIFF\0\0\0\0WAVEfmt ".to_vec();
        v.extend_from_slice(&(fmt.len() as u32).to_le_bytes());
        v.extend_from_slice(&fmt);
        v.extend_from_slice(b"LIST");
        v.extend_from_slice(&5u32.to_le_bytes()); // odd: padded
        v.extend_from_slice(b"INFO\0\0");
        v.extend_from_slice(b"data");
        v.extend_from_slice(&data_len.to_le_bytes());
        v.resize(v.len() + actual, 0);
        v
    }

    #[test]
    fn wav_duration() {
        let found = block_on(Mem::new(wav_file(176_400, 352_800, 352_800)).probe("audio/wav"));
        assert_eq!(found.duration_ms, Some(2000));
        // Streamed WAV (size 0xFFFFFFFF) and a truncated one: what the file holds.
        let found = block_on(Mem::new(wav_file(176_400, u32::MAX, 88_200)).probe("audio/wav"));
        assert_eq!(found.duration_ms, Some(500));
        let found = block_on(Mem::new(wav_file(0, 1000, 1000)).probe("audio/wav"));
        assert_eq!(found, Probe::default());
        let found =
            block_on(Mem::new(wav_file(176_400, 100, 100)[..30].to_vec()).probe("audio/wav"));
        assert_eq!(found, Probe::default());
    }

    fn flac_file(rate: u64, samples: u64) -> Vec<u8> {
        let mut v = b"fLaC\x80\0\0\x22".to_vec();
        v.extend_from_slice(&[0x10, 0x00, 0x10, 0x00, 0, 0, 0, 0, 0, 0]);
        let packed = (rate << 44) | (1 << 41) | (15 << 36) | samples;
        v.extend_from_slice(&packed.to_be_bytes());
        v.extend_from_slice(&[0; 16]);
        v
    }

    #[test]
    fn flac_duration() {
        let found = block_on(Mem::new(flac_file(44_100, 44_100 * 90 + 4410)).probe("audio/flac"));
        assert_eq!(found.duration_ms, Some(90_100));
        let found = block_on(Mem::new(flac_file(0, 1000)).probe("audio/flac"));
        assert_eq!(found, Probe::default());
        let found = block_on(Mem::new(flac_file(48_000, 0)).probe("audio/flac"));
        assert_eq!(found, Probe::default());
    }

    #[test]
    fn other_types_and_empty_sources() {
        let src = Mem::new(b"%PDF-1.4 whatever".to_vec());
        assert_eq!(block_on(src.probe("application/pdf")), Probe::default());
        assert!(src.reads().is_empty());
        for mime in [
            "video/mp4",
            "audio/ogg",
            "video/webm",
            "audio/mpeg",
            "audio/wav",
            "audio/flac",
        ] {
            assert_eq!(
                block_on(Mem::new(Vec::new()).probe(mime)),
                Probe::default(),
                "{mime}"
            );
            let noise: Vec<u8> = (0..70_000u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect();
            assert_eq!(
                block_on(Mem::new(noise).probe(mime)).duration_ms,
                None,
                "{mime}"
            );
        }
    }

    #[test]
    fn read_errors_are_not_fatal() {
        struct Failing;
        #[async_trait::async_trait]
        impl RangeSource for Failing {
            async fn read(&self, _: Range<u64>) -> std::io::Result<Bytes> {
                Err(std::io::Error::other("gone"))
            }
        }
        for mime in [
            "video/mp4",
            "audio/ogg",
            "video/webm",
            "audio/mpeg",
            "audio/wav",
        ] {
            assert_eq!(block_on(probe(&Failing, 1 << 30, mime)), Probe::default());
        }
    }
}
