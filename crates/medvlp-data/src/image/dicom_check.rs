//! Checks of a DICOM file's bytes before dicom-rs reads them: dicom-rs reserves each element's
//! declared length before reading it, so a 1.7 KB file whose PixelData claims 0xFFFFFFF0 bytes
//! costs 4 GB of memory before it fails. This walk reads only tags and lengths (explicit and
//! implicit VR little endian, explicit VR big endian, deflated data sets after a bounded inflate,
//! nested sequences, encapsulated pixel data) and refuses any length beyond the bytes that follow
//! it. dicom-rs has no option for this (it trusts lengths by design),
//! hence the hand-written walk.

/// The transfer syntaxes whose data set is not explicit VR little endian.
const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_VR_BE: &str = "1.2.840.10008.1.2.2";
const DEFLATED: &str = "1.2.840.10008.1.2.1.99";

const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_END: (u16, u16) = (0xFFFE, 0xE00D);
const SEQUENCE_END: (u16, u16) = (0xFFFE, 0xE0DD);
const PIXEL_DATA: (u16, u16) = (0x7FE0, 0x0010);
/// Deeper nesting than any real file has; a hostile one would otherwise recurse without bound.
const MAX_DEPTH: usize = 32;

/// A deflated data set may inflate to at most this many bytes (a 20 M pixel 16-bit image is
/// 40 MB); a deflate bomb is refused rather than handed to dicom-rs.
const MAX_INFLATED: u64 = 256 << 20;

struct Walk<'a> {
    b: &'a [u8],
    explicit: bool,
    big_endian: bool,
}

fn u16_at(b: &[u8], p: usize) -> Option<u16> {
    u16_e(b, p, false)
}

fn u16_e(b: &[u8], p: usize, big: bool) -> Option<u16> {
    let a: [u8; 2] = b.get(p..p + 2)?.try_into().ok()?;
    Some(if big { u16::from_be_bytes(a) } else { u16::from_le_bytes(a) })
}

fn u32_e(b: &[u8], p: usize, big: bool) -> Option<u32> {
    let a: [u8; 4] = b.get(p..p + 4)?.try_into().ok()?;
    Some(if big { u32::from_be_bytes(a) } else { u32::from_le_bytes(a) })
}

/// One element header: tag, VR (explicit only), value length, header size.
struct Header {
    tag: (u16, u16),
    vr: [u8; 2],
    len: u32,
    size: usize,
}

fn header(b: &[u8], p: usize, explicit: bool, big: bool) -> Result<Header, String> {
    let short = || format!("element header cut short at byte {p}");
    let tag = (u16_e(b, p, big).ok_or_else(short)?, u16_e(b, p + 2, big).ok_or_else(short)?);
    if tag.0 == 0xFFFE || !explicit {
        // Items and delimiters always have a 4-byte length, as every implicit-VR element does.
        let len = u32_e(b, p + 4, big).ok_or_else(short)?;
        return Ok(Header { tag, vr: *b"  ", len, size: 8 });
    }
    let vr: [u8; 2] = b.get(p + 4..p + 6).ok_or_else(short)?.try_into().map_err(|_| short())?;
    const VRS: [&[u8; 2]; 34] = [
        b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB",
        b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM",
        b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV",
    ];
    // An unknown VR leaves the length's size unknown (dicom-rs then reads a 4-byte length from
    // whatever follows).
    if !VRS.contains(&&vr) {
        return Err(format!(
            "element ({:04X},{:04X}) at byte {p} has no valid VR ({:?})",
            tag.0,
            tag.1,
            String::from_utf8_lossy(&vr)
        ));
    }
    let long = matches!(
        &vr,
        b"OB"
            | b"OD"
            | b"OF"
            | b"OL"
            | b"OV"
            | b"OW"
            | b"SQ"
            | b"SV"
            | b"UC"
            | b"UN"
            | b"UR"
            | b"UT"
            | b"UV"
    );
    if long {
        Ok(Header { tag, vr, len: u32_e(b, p + 8, big).ok_or_else(short)?, size: 12 })
    } else {
        Ok(Header { tag, vr, len: u16_e(b, p + 6, big).ok_or_else(short)? as u32, size: 8 })
    }
}

impl Walk<'_> {
    /// Elements from `p` to `end` (or to the delimiter `until`); returns the position after.
    fn elements(
        &self,
        mut p: usize,
        end: usize,
        until: Option<(u16, u16)>,
        depth: usize,
    ) -> Result<usize, String> {
        if depth > MAX_DEPTH {
            return Err(format!("sequences nested deeper than {MAX_DEPTH} levels"));
        }
        while p < end {
            let h = header(self.b, p, self.explicit, self.big_endian)?;
            let value = p + h.size;
            if Some(h.tag) == until {
                return Ok(value);
            }
            if h.len == UNDEFINED {
                let fragments = h.tag == PIXEL_DATA;
                if self.explicit && &h.vr == b"UN" && !fragments {
                    // A sequence of unknown VR: its contents are implicit VR (PS3.5 6.2.2).
                    let inner = Walk { b: self.b, explicit: false, big_endian: self.big_endian };
                    p = inner.items(value, end, false, depth + 1)?;
                    continue;
                }
                let is_sequence = !self.explicit || &h.vr == b"SQ";
                if !is_sequence && !fragments {
                    return Err(format!(
                        "element ({:04X},{:04X}) at byte {p}: undefined length for VR {}",
                        h.tag.0,
                        h.tag.1,
                        String::from_utf8_lossy(&h.vr)
                    ));
                }
                p = self.items(value, end, fragments, depth + 1)?;
                continue;
            }
            let len = h.len as usize;
            if len > end.saturating_sub(value) {
                return Err(format!(
                    "element ({:04X},{:04X}) at byte {p} declares {len} bytes, {} remain",
                    h.tag.0,
                    h.tag.1,
                    end.saturating_sub(value)
                ));
            }
            if self.explicit && &h.vr == b"SQ" {
                self.items(value, value + len, false, depth + 1)?;
            }
            p = value + len;
        }
        match until {
            Some(_) => Err("a sequence or item runs past the end of the file".into()),
            None => Ok(p),
        }
    }

    /// Items of a sequence (or the fragments of encapsulated pixel data) from `p`, up to the
    /// sequence delimiter (undefined length) or `end`; returns the position after.
    fn items(
        &self,
        mut p: usize,
        end: usize,
        fragments: bool,
        depth: usize,
    ) -> Result<usize, String> {
        while p < end {
            let h = header(self.b, p, false, self.big_endian)?;
            let value = p + 8;
            match h.tag {
                SEQUENCE_END => return Ok(value),
                ITEM if h.len == UNDEFINED && !fragments => {
                    p = self.elements(value, end, Some(ITEM_END), depth)?;
                }
                ITEM => {
                    let len = h.len as usize;
                    if h.len == UNDEFINED || len > end.saturating_sub(value) {
                        return Err(format!(
                            "item at byte {p} declares {} bytes, {} remain",
                            h.len,
                            end.saturating_sub(value)
                        ));
                    }
                    if !fragments {
                        self.elements(value, value + len, None, depth)?;
                    }
                    p = value + len;
                }
                t => {
                    return Err(format!(
                        "({:04X},{:04X}) at byte {p} where a sequence item was expected",
                        t.0, t.1
                    ))
                }
            }
        }
        Ok(p)
    }
}

/// Checks every element length of a DICOM file (`bytes` from the start of the file, with or
/// without the 128-byte preamble) against the bytes that follow it.
pub fn check_lengths(bytes: &[u8]) -> Result<(), String> {
    let start = if bytes.len() >= 132 && &bytes[128..132] == b"DICM" { 132 } else { 0 };
    // File meta information: explicit VR little endian, read as dicom-rs reads it: the group
    // length (0002,0000) first, then elements (of any tag) until that many bytes are consumed.
    let mut p = start;
    let mut ts = String::new();
    if u16_at(bytes, p) != Some(0x0002) {
        return Ok(()); // no meta: dicom-rs refuses such files anyway
    }
    let gl = header(bytes, p, true, false)?;
    if gl.tag != (0x0002, 0x0000) || gl.len != 4 {
        return Err(format!(
            "file meta starts with ({:04X},{:04X}), not its group length",
            gl.tag.0, gl.tag.1
        ));
    }
    let group_length = u32_e(bytes, p + gl.size, false)
        .ok_or_else(|| "file meta group length cut short".to_string())?
        as usize;
    p += gl.size + 4;
    let meta_start = p;
    while p - meta_start < group_length {
        let h = header(bytes, p, true, false)?;
        let value = p + h.size;
        let len = h.len as usize;
        if h.len == UNDEFINED || len > bytes.len().saturating_sub(value) {
            return Err(format!("file meta element at byte {p} declares {} bytes", h.len));
        }
        if h.tag == (0x0002, 0x0010) {
            ts = String::from_utf8_lossy(&bytes[value..value + len])
                .trim_end_matches(['\0', ' '])
                .to_string();
        }
        p = value + len;
    }
    if ts.is_empty() {
        return Err("file meta has no TransferSyntaxUID (0002,0010)".into());
    }
    if ts == DEFLATED {
        use std::io::Read;
        let mut inflated = Vec::new();
        flate2::read::DeflateDecoder::new(&bytes[p..])
            .take(MAX_INFLATED + 1)
            .read_to_end(&mut inflated)
            .map_err(|e| format!("deflated data set does not inflate: {e}"))?;
        if inflated.len() as u64 > MAX_INFLATED {
            return Err(format!("deflated data set inflates beyond {MAX_INFLATED} bytes"));
        }
        let walk = Walk { b: &inflated, explicit: true, big_endian: false };
        return walk.elements(0, inflated.len(), None, 0).map(|_| ());
    }
    let walk = Walk { b: bytes, explicit: ts != IMPLICIT_VR_LE, big_endian: ts == EXPLICIT_VR_BE };
    walk.elements(p, bytes.len(), None, 0).map(|_| ())
}
