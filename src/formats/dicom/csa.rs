//! The Siemens CSA header (private element (0029,xx10) "CSA Image Header
//! Info", and its series twin).
//!
//! In: the element's bytes. Out: [`Csa`], its named elements as lists of
//! strings, with accessors for the numbers the mosaic reader needs
//! (`NumberOfImagesInMosaic`, `SliceNormalVector`, `MosaicRefAcqTimes`,
//! `ProtocolSliceNumber`).
//!
//! Layout (little endian whatever the transfer syntax): version 2 starts
//! with `SV10`, 4 bytes, then the element count and 4 unused bytes; version
//! 1 starts with the count. Each element: a 64-byte NUL-terminated name,
//! VM (i32), VR (4 bytes), SyngoDT, item count, 4 unused bytes; each item: 4
//! i32s whose second is the value length, then the value padded to 4 bytes.
//! Every count and length is checked against the bytes left; a header that
//! does not add up is an error, never a panic or an oversized allocation.

use std::collections::HashMap;

/// More elements than this is not a CSA header (real ones have ~100).
const MAX_ELEMENTS: u32 = 10_000;

/// A parsed CSA header: element name → item strings.
#[derive(Debug, Clone, Default)]
pub struct Csa {
    elements: HashMap<String, Vec<String>>,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).trim().to_string()
}

impl Csa {
    /// Parse the bytes of a CSA header element.
    pub fn parse(b: &[u8]) -> Result<Csa, String> {
        let mut at = if b.starts_with(b"SV10") { 8 } else { 0 };
        let n = u32_at(b, at).ok_or_else(|| format!("{} bytes: too short", b.len()))?;
        if n == 0 || n > MAX_ELEMENTS {
            return Err(format!("claims {n} elements"));
        }
        at += 8;
        let mut elements = HashMap::with_capacity(n as usize);
        for e in 0..n {
            let name_bytes = b
                .get(at..at + 64)
                .ok_or_else(|| format!("ends inside element {e} of {n}"))?;
            let name = c_string(name_bytes);
            let nitems = u32_at(b, at + 76)
                .ok_or_else(|| format!("ends inside element {e} ({name}) of {n}"))?;
            at += 84;
            // Each item takes at least 16 bytes: a count beyond what is
            // left is corrupt, and bounding it here bounds the allocation.
            if nitems as usize > b.len().saturating_sub(at) / 16 {
                return Err(format!("element {name} claims {nitems} items"));
            }
            let mut items = Vec::with_capacity(nitems as usize);
            for i in 0..nitems {
                let len = u32_at(b, at + 4)
                    .ok_or_else(|| format!("ends inside item {i} of {name}"))?
                    as usize;
                at += 16;
                let value = b
                    .get(at..at.saturating_add(len))
                    .ok_or_else(|| format!("item {i} of {name} runs past the end"))?;
                items.push(c_string(value));
                at += len.div_ceil(4) * 4;
            }
            // Empty trailing items carry no information.
            while items.last().is_some_and(|s| s.is_empty()) {
                items.pop();
            }
            elements.insert(name, items);
        }
        Ok(Csa { elements })
    }

    /// The items of element `name` (empty when absent).
    pub fn items(&self, name: &str) -> &[String] {
        self.elements.get(name).map_or(&[], |v| v.as_slice())
    }

    /// The items of `name` as numbers, `None` when absent or not numeric.
    pub fn floats(&self, name: &str) -> Option<Vec<f64>> {
        let items = self.items(name);
        if items.is_empty() {
            return None;
        }
        items
            .iter()
            .map(|s| s.parse::<f64>().ok().filter(|v| v.is_finite()))
            .collect()
    }

    /// The first item of `name` as a number.
    pub fn float(&self, name: &str) -> Option<f64> {
        self.items(name)
            .first()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|v| v.is_finite())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version-2 header with the given elements.
    pub(crate) fn build(elements: &[(&str, &[&str])]) -> Vec<u8> {
        let mut b = b"SV10\x04\x03\x02\x01".to_vec();
        b.extend_from_slice(&(elements.len() as u32).to_le_bytes());
        b.extend_from_slice(&77u32.to_le_bytes());
        for (name, items) in elements {
            let mut n = [0u8; 64];
            n[..name.len()].copy_from_slice(name.as_bytes());
            b.extend_from_slice(&n);
            b.extend_from_slice(&1i32.to_le_bytes());
            b.extend_from_slice(b"FD\0\0");
            b.extend_from_slice(&4i32.to_le_bytes());
            b.extend_from_slice(&(items.len() as u32).to_le_bytes());
            b.extend_from_slice(&77u32.to_le_bytes());
            for it in *items {
                let len = it.len() as u32 + 1;
                for x in [len, len, 77, len] {
                    b.extend_from_slice(&x.to_le_bytes());
                }
                b.extend_from_slice(it.as_bytes());
                b.push(0);
                while !b.len().is_multiple_of(4) {
                    b.push(0);
                }
            }
        }
        b
    }

    #[test]
    fn reads_numbers_and_lists() {
        let b = build(&[
            ("NumberOfImagesInMosaic", &["36"]),
            ("SliceNormalVector", &["0.0", "0.12", "0.99"]),
            ("Empty", &[]),
        ]);
        let csa = Csa::parse(&b).unwrap();
        assert_eq!(csa.float("NumberOfImagesInMosaic"), Some(36.0));
        assert_eq!(csa.floats("SliceNormalVector"), Some(vec![0.0, 0.12, 0.99]));
        assert_eq!(csa.floats("Empty"), None);
        assert_eq!(csa.float("Missing"), None);
    }

    #[test]
    fn every_truncation_and_bad_count_is_an_error() {
        let b = build(&[("A", &["1", "2"]), ("B", &["3"])]);
        for cut in 0..b.len() - 4 {
            assert!(Csa::parse(&b[..cut]).is_err(), "cut {cut}");
        }
        let mut huge = b.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Csa::parse(&huge).is_err());
        let mut items = b.clone();
        // Item count of the first element.
        items[16 + 76..16 + 80].copy_from_slice(&1_000_000u32.to_le_bytes());
        assert!(Csa::parse(&items).unwrap_err().contains("claims"));
    }
}
