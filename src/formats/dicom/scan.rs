//! A bounds-checking walk over the element stream of a DICOM file.
//!
//! In: the bytes of a file. Out: its transfer syntax, where the header ends
//! and where the native pixel data lies ([`Layout`]); or why the bytes cannot
//! be a complete DICOM file ([`DicomError`]), saying whether more bytes could
//! help.
//!
//! The walk runs before dicom-rs sees the file, for two reasons. dicom-rs
//! sizes each value buffer from the element's declared length, so a corrupt
//! or half-written length could make it zero-fill gigabytes; here every
//! declared length (nested ones included) is compared with the bytes
//! actually present first. And knowing where the pixel data starts lets the
//! header be parsed without it and the pixels be read in place, with
//! messages that say exactly how far a half-written file got.

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;

use super::DicomError;

const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: Tag = Tag(0xFFFE, 0xE000);
const ITEM_END: Tag = Tag(0xFFFE, 0xE00D);
const SEQUENCE_END: Tag = Tag(0xFFFE, 0xE0DD);
const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);
const TRANSFER_SYNTAX: Tag = Tag(0x0002, 0x0010);
/// Nesting of sequences deeper than this is not met in scanner files; a
/// deeper one is treated as corrupt rather than recursed into.
const MAX_DEPTH: usize = 24;

/// Where things are in a complete file.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Transfer syntax UID from the file meta group.
    pub transfer_syntax: String,
    /// End of the last element before the pixel data (the header parsed by
    /// dicom-rs is `bytes[..header_end]`).
    pub header_end: usize,
    /// The native pixel data value, when the file has one.
    pub pixels: Option<std::ops::Range<usize>>,
}

/// How the data set after the meta group is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Explicit VR little endian (also the meta group's encoding).
    Explicit,
    /// Implicit VR little endian.
    Implicit,
}

/// Offset of the first meta element: after the 128-byte preamble and
/// `DICM`, or after a bare `DICM` for files written without a preamble.
pub fn meta_start(b: &[u8]) -> Result<usize, DicomError> {
    if b.is_empty() {
        return Err(DicomError::Empty);
    }
    let head = &b[..b.len().min(132)];
    if head.iter().all(|&x| x == 0) {
        return Err(DicomError::HeaderAllZero { len: head.len() });
    }
    if b.len() >= 132 && &b[128..132] == b"DICM" {
        return Ok(132);
    }
    if b.starts_with(b"DICM") {
        return Ok(4);
    }
    if b.len() < 132 && b[..b.len().min(128)].iter().all(|&x| x == 0) {
        // Preamble so far, magic not yet written.
        return Err(DicomError::Truncated {
            what: format!(
                "file ends after {} bytes, before the 'DICM' magic at byte 128",
                b.len()
            ),
        });
    }
    Err(DicomError::NotDicom {
        found: if b.len() < 132 {
            format!("{} bytes without the 'DICM' magic", b.len())
        } else {
            format!("bytes 128..132 are {:?}, not 'DICM'", escape(&b[128..132]))
        },
    })
}

fn escape(b: &[u8]) -> String {
    b.iter()
        .flat_map(|&c| std::ascii::escape_default(c))
        .map(char::from)
        .collect()
}

struct Cursor<'a> {
    b: &'a [u8],
}

impl Cursor<'_> {
    fn u16(&self, at: usize) -> Option<u16> {
        let s = self.b.get(at..at.checked_add(2)?)?;
        Some(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&self, at: usize) -> Option<u32> {
        let s = self.b.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn cut(&self, needed: usize, inside: &str) -> DicomError {
        DicomError::Truncated {
            what: format!(
                "file ends after {} bytes, inside {inside} (needs at least {needed})",
                self.b.len()
            ),
        }
    }
}

/// One element header: tag, VR (when explicit), value length, header size.
struct Header {
    tag: Tag,
    vr: Option<VR>,
    len: u32,
    size: usize,
}

fn read_header(c: &Cursor, at: usize, enc: Encoding) -> Result<Header, DicomError> {
    let (Some(group), Some(element)) = (c.u16(at), c.u16(at + 2)) else {
        return Err(c.cut(at + 8, &format!("an element header at byte {at}")));
    };
    let tag = Tag(group, element);
    let explicit = enc == Encoding::Explicit || group == 0x0002;
    // Item and delimiter headers are tag + length in every encoding.
    if group == 0xFFFE || !explicit {
        let len = c
            .u32(at + 4)
            .ok_or_else(|| c.cut(at + 8, &format!("the header of {tag} at byte {at}")))?;
        return Ok(Header {
            tag,
            vr: None,
            len,
            size: 8,
        });
    }
    let vr_bytes =
        c.b.get(at + 4..at + 6)
            .ok_or_else(|| c.cut(at + 8, &format!("the header of {tag} at byte {at}")))?;
    let vr = VR::from_binary([vr_bytes[0], vr_bytes[1]]).ok_or_else(|| DicomError::Invalid {
        what: format!(
            "element {tag} at byte {at} has no valid value representation ({:?})",
            escape(vr_bytes)
        ),
    })?;
    if long_length(vr) {
        let len = c
            .u32(at + 8)
            .ok_or_else(|| c.cut(at + 12, &format!("the header of {tag} at byte {at}")))?;
        Ok(Header {
            tag,
            vr: Some(vr),
            len,
            size: 12,
        })
    } else {
        let len = c
            .u16(at + 6)
            .ok_or_else(|| c.cut(at + 8, &format!("the header of {tag} at byte {at}")))?;
        Ok(Header {
            tag,
            vr: Some(vr),
            len: u32::from(len),
            size: 8,
        })
    }
}

/// VRs whose explicit header has two reserved bytes and a 4-byte length.
fn long_length(vr: VR) -> bool {
    matches!(
        vr,
        VR::OB
            | VR::OD
            | VR::OF
            | VR::OL
            | VR::OV
            | VR::OW
            | VR::SQ
            | VR::SV
            | VR::UC
            | VR::UN
            | VR::UR
            | VR::UT
            | VR::UV
    )
}

fn is_sequence(h: &Header, enc: Encoding) -> bool {
    match h.vr {
        Some(VR::SQ) => true,
        // Explicit UN of undefined length holds an implicit-VR sequence.
        Some(VR::UN) => h.len == UNDEFINED,
        Some(_) => false,
        None => {
            h.len == UNDEFINED
                || (enc == Encoding::Implicit
                    && StandardDataDictionary
                        .by_tag(h.tag)
                        .is_some_and(|e| matches!(e.vr(), VirtualVr::Exact(VR::SQ))))
        }
    }
}

/// Walk the whole file. `Ok` means every element and nested item lies
/// within the bytes present and the stream ends on an element boundary.
pub fn scan(b: &[u8]) -> Result<Layout, DicomError> {
    let start = meta_start(b)?;
    let c = Cursor { b };
    // The meta group: explicit VR little endian whatever the data set uses.
    let mut at = start;
    let mut ts: Option<String> = None;
    while at < b.len() {
        match c.u16(at) {
            None => return Err(c.cut(at + 8, &format!("an element header at byte {at}"))),
            Some(0x0002) => {}
            Some(_) => break,
        }
        let h = read_header(&c, at, Encoding::Explicit)?;
        let end = value_end(&c, &h, at)?;
        if h.tag == TRANSFER_SYNTAX {
            let raw = &b[at + h.size..end];
            let uid: String = String::from_utf8_lossy(raw)
                .trim_matches(|ch: char| ch == '\0' || ch.is_whitespace())
                .to_string();
            ts = Some(uid);
        }
        at = end;
    }
    let ts = match ts {
        Some(ts) => ts,
        None if at >= b.len() => return Err(c.cut(at + 8, "the file meta group")),
        None => {
            return Err(DicomError::Invalid {
                what: "the file meta group has no transfer syntax UID (0002,0010)".into(),
            });
        }
    };
    // A compressed file is refused as soon as its meta group says so.
    let enc = encoding_of(&ts)?;
    if at >= b.len() {
        return Err(c.cut(at + 8, "the file meta group, before the data set"));
    }
    let mut header_end = at;
    let mut pixels = None;
    while at < b.len() {
        let h = read_header(&c, at, enc)?;
        if h.tag == PIXEL_DATA {
            if h.len == UNDEFINED {
                return Err(DicomError::Invalid {
                    what: format!(
                        "pixel data is encapsulated (compressed) although the transfer syntax {ts} is native"
                    ),
                });
            }
            let end = value_end(&c, &h, at)?;
            if pixels.is_none() {
                header_end = at;
                pixels = Some(at + h.size..end);
            }
            at = end;
            continue;
        }
        at = skip_element(&c, &h, at, enc, 0)?;
        if pixels.is_none() {
            header_end = at;
        }
    }
    Ok(Layout {
        transfer_syntax: ts,
        header_end,
        pixels,
    })
}

/// The encodings this reader handles; everything else is named.
pub fn encoding_of(ts: &str) -> Result<Encoding, DicomError> {
    match ts {
        "1.2.840.10008.1.2.1" => Ok(Encoding::Explicit),
        "1.2.840.10008.1.2" => Ok(Encoding::Implicit),
        other => Err(DicomError::UnsupportedTransferSyntax {
            uid: other.to_string(),
            name: transfer_syntax_name(other).to_string(),
        }),
    }
}

/// A readable name for the transfer syntaxes scanners use.
pub fn transfer_syntax_name(uid: &str) -> &'static str {
    match uid {
        "1.2.840.10008.1.2" => "Implicit VR Little Endian",
        "1.2.840.10008.1.2.1" => "Explicit VR Little Endian",
        "1.2.840.10008.1.2.1.99" => "Deflated Explicit VR Little Endian",
        "1.2.840.10008.1.2.2" => "Explicit VR Big Endian (retired)",
        "1.2.840.10008.1.2.4.50" => "JPEG Baseline",
        "1.2.840.10008.1.2.4.51" => "JPEG Extended",
        "1.2.840.10008.1.2.4.57" => "JPEG Lossless",
        "1.2.840.10008.1.2.4.70" => "JPEG Lossless, first-order prediction",
        "1.2.840.10008.1.2.4.80" => "JPEG-LS Lossless",
        "1.2.840.10008.1.2.4.81" => "JPEG-LS Near-Lossless",
        "1.2.840.10008.1.2.4.90" => "JPEG 2000 Lossless",
        "1.2.840.10008.1.2.4.91" => "JPEG 2000",
        "1.2.840.10008.1.2.4.201" => "HTJ2K Lossless",
        "1.2.840.10008.1.2.4.203" => "HTJ2K",
        "1.2.840.10008.1.2.5" => "RLE Lossless",
        _ => "unknown",
    }
}

/// End of a defined-length value, checked against the bytes present.
fn value_end(c: &Cursor, h: &Header, at: usize) -> Result<usize, DicomError> {
    if h.len == UNDEFINED {
        return Err(DicomError::Invalid {
            what: format!("element {} at byte {at} has an undefined length", h.tag),
        });
    }
    let end = at + h.size + h.len as usize;
    if end > c.b.len() {
        return Err(DicomError::Truncated {
            what: format!(
                "file ends after {} bytes; element {} at byte {at} runs to byte {end}",
                c.b.len(),
                h.tag
            ),
        });
    }
    Ok(end)
}

/// Past one element (descending into sequences); returns where the next begins.
fn skip_element(
    c: &Cursor,
    h: &Header,
    at: usize,
    enc: Encoding,
    depth: usize,
) -> Result<usize, DicomError> {
    if !is_sequence(h, enc) {
        return value_end(c, h, at);
    }
    if depth >= MAX_DEPTH {
        return Err(DicomError::Invalid {
            what: format!("sequences nested more than {MAX_DEPTH} deep at byte {at}"),
        });
    }
    // An undefined-length UN sequence is encoded implicit VR.
    let inner = if h.vr == Some(VR::UN) {
        Encoding::Implicit
    } else {
        enc
    };
    let body = at + h.size;
    if h.len == UNDEFINED {
        let mut p = body;
        loop {
            let ih = read_header(c, p, inner)?;
            if ih.tag == SEQUENCE_END {
                return Ok(p + 8);
            }
            p = skip_item(c, &ih, p, inner, depth)?;
        }
    }
    let end = value_end(c, h, at)?;
    let mut p = body;
    while p < end {
        let ih = read_header(c, p, inner)?;
        p = skip_item(c, &ih, p, inner, depth)?;
    }
    if p != end {
        return Err(DicomError::Invalid {
            what: format!("the items of sequence {} overrun its length", h.tag),
        });
    }
    Ok(end)
}

fn skip_item(
    c: &Cursor,
    ih: &Header,
    at: usize,
    enc: Encoding,
    depth: usize,
) -> Result<usize, DicomError> {
    if ih.tag != ITEM {
        return Err(DicomError::Invalid {
            what: format!("expected a sequence item at byte {at}, found {}", ih.tag),
        });
    }
    let body = at + 8;
    if ih.len == UNDEFINED {
        let mut p = body;
        loop {
            let eh = read_header(c, p, enc)?;
            if eh.tag == ITEM_END {
                return Ok(p + 8);
            }
            p = skip_element(c, &eh, p, enc, depth + 1)?;
        }
    }
    let end = value_end(c, ih, at)?;
    let mut p = body;
    while p < end {
        let eh = read_header(c, p, enc)?;
        p = skip_element(c, &eh, p, enc, depth + 1)?;
    }
    if p != end {
        return Err(DicomError::Invalid {
            what: format!("the elements of an item at byte {at} overrun its length"),
        });
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explicit(tag: (u16, u16), vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&tag.0.to_le_bytes());
        v.extend_from_slice(&tag.1.to_le_bytes());
        v.extend_from_slice(vr);
        let long = matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT");
        if long {
            v.extend_from_slice(&[0, 0]);
            v.extend_from_slice(&(value.len() as u32).to_le_bytes());
        } else {
            v.extend_from_slice(&(value.len() as u16).to_le_bytes());
        }
        v.extend_from_slice(value);
        v
    }

    fn file(ts: &str, body: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 128];
        b.extend_from_slice(b"DICM");
        let mut uid = ts.as_bytes().to_vec();
        if uid.len() % 2 == 1 {
            uid.push(0);
        }
        b.extend(explicit((0x0002, 0x0010), b"UI", &uid));
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn finds_pixels_and_the_header_end() {
        let mut body = explicit((0x0028, 0x0010), b"US", &2u16.to_le_bytes());
        let header_len = body.len();
        body.extend(explicit((0x7FE0, 0x0010), b"OW", &[1, 0, 2, 0]));
        let b = file("1.2.840.10008.1.2.1", &body);
        let l = scan(&b).unwrap();
        assert_eq!(l.transfer_syntax, "1.2.840.10008.1.2.1");
        assert_eq!(l.header_end, b.len() - 16);
        assert_eq!(l.header_end - header_len, 132 + 8 + 20);
        assert_eq!(&b[l.pixels.unwrap()], &[1, 0, 2, 0]);
    }

    #[test]
    fn every_cut_is_reported_as_incomplete() {
        let mut seq_item = explicit((0x0020, 0x0013), b"IS", b"1 ");
        let mut item = vec![0xFE, 0xFF, 0x00, 0xE0];
        item.extend_from_slice(&(seq_item.len() as u32).to_le_bytes());
        item.append(&mut seq_item);
        let mut body = explicit((0x5200, 0x9230), b"SQ", &item);
        body.extend(explicit((0x7FE0, 0x0010), b"OW", &[7; 64]));
        let b = file("1.2.840.10008.1.2.1", &body);
        assert!(scan(&b).is_ok());
        for cut in 1..b.len() {
            match scan(&b[..cut]) {
                Err(e) => assert!(e.may_be_incomplete(), "cut at {cut}: {e}"),
                Ok(l) => assert!(l.pixels.is_none(), "cut at {cut} gave pixels"),
            }
        }
    }

    #[test]
    fn absurd_lengths_and_compressed_syntaxes_are_named() {
        let mut body = explicit((0x0029, 0x1010), b"OB", &[]);
        let n = body.len();
        body[n - 4..].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        let e = scan(&file("1.2.840.10008.1.2.1", &body)).unwrap_err();
        assert!(e.to_string().contains("runs to byte"), "{e}");
        let e = scan(&file("1.2.840.10008.1.2.4.90", &[])).unwrap_err();
        assert!(!e.may_be_incomplete());
        assert!(e.to_string().contains("JPEG 2000 Lossless"), "{e}");
        let e = meta_start(&[1u8; 200]).unwrap_err();
        assert!(matches!(e, DicomError::NotDicom { .. }), "{e}");
        assert!(matches!(
            meta_start(&[0u8; 50]),
            Err(DicomError::HeaderAllZero { .. })
        ));
    }
}
