//! Every file format boldstream reads or writes, and nothing else.
//!
//! In: bytes of a file (or values to write). Out: typed values, or a typed
//! error naming the file and what is wrong with it.
//!
//! - [`nifti`], [`dicom`]: scanner images → [`Volume`](crate::types::volume::Volume)s;
//! - [`npy`]: numpy arrays (appended row by row, read back);
//! - [`png`]: reconstructions and stimuli;
//! - [`par`]: MCFLIRT's `.par` motion parameters;
//! - [`events_tsv`]: BIDS `events.tsv` task events.

pub mod dicom;
pub mod events_tsv;
pub mod nifti;
pub mod npy;
pub mod par;
pub mod png;

/// Write `bytes` to `path` through a temporary file in the same folder,
/// synced, then renamed over `path`: a reader (or a crash) never sees half a
/// file, and a failed write leaves any earlier file intact. Every file the
/// daemon and its tools publish for others to read goes through here.
pub fn atomic_write(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    let tmp = path.with_file_name(name);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    // The rename is durable once the folder is synced; some filesystems
    // refuse to sync a folder, and the file is in place either way.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}
