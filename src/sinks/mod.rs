//! Sinks: where pipeline results go.
//!
//! In: [`PipelineEvent`]s, fanned out by the pipeline to each sink on its
//! own thread. Out: the session store on disk ([`store`]), the operator's
//! terminal ([`console`]); later the dashboard and feedback sockets.

pub mod console;
pub mod image;
pub mod npy;
pub mod store;

/// Write `bytes` to `path` through a temporary file in the same folder and a
/// rename, so a reader (or a crash) never sees half a file.
pub fn atomic_write(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    let tmp = path.with_file_name(name);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
