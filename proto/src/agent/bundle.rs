//! Agent bundles: a `.tar.gz` holding `config.yaml` at its root and the files it names.
//!
//! [`pack_dir`] and [`pack`] build one deterministically (entries sorted by path, mtime 0, uid/gid 0, no user
//! names, modes 0644/0755, a gzip header without name or time), so the same directory always gives the same
//! bytes. [`inspect`] reads one under [`Limits`] without writing anything: the server's upload check.
//! [`unpack`] writes one into a directory that must not exist yet, after the whole bundle has passed
//! [`inspect`]'s checks, so a refused bundle leaves nothing behind and nothing is ever written outside it.
//!
//! Refused, whatever the caps: a path with `..`, an absolute path, a non-UTF-8 path, a symlink or hard link
//! (a bundle has no use for one, so none is followed or created), a device file, a fifo, any other entry type
//! but a regular file or a directory, the same path twice, a file used as another entry's directory, a bundle
//! without `config.yaml`. A PAX global header (`git archive` writes one) describes no file and is skipped.
//! Empty directories are not packed.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::read::GzDecoder;
use tar::EntryType;

use super::SPEC_FILE;

/// Caps on a bundle, checked before allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The `.tar.gz` itself.
    pub max_bundle_bytes: u64,
    /// The uncompressed tar stream (headers included).
    pub max_unpacked_bytes: u64,
    /// Entries (files and directories).
    pub max_entries: usize,
    /// Uncompressed bytes per compressed byte, for bundles larger than [`Limits::ratio_floor_bytes`].
    pub max_expansion_ratio: u64,
    /// Below this many uncompressed bytes the ratio is not checked (a tar's zero padding compresses a lot).
    pub ratio_floor_bytes: u64,
    /// `config.yaml`.
    pub max_spec_bytes: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_bundle_bytes: 10 * 1024 * 1024,
            max_unpacked_bytes: 64 * 1024 * 1024,
            max_entries: 1000,
            max_expansion_ratio: 100,
            ratio_floor_bytes: 1024 * 1024,
            max_spec_bytes: 256 * 1024,
        }
    }
}

/// Why a bundle was refused or could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle is {size} bytes; the limit is {limit}")]
    TooLarge { size: u64, limit: u64 },
    #[error("bundle unpacks to more than {limit} bytes")]
    UnpackedTooLarge { limit: u64 },
    #[error("bundle expands more than {ratio}x (a compression bomb?)")]
    ExpansionRatio { ratio: u64 },
    #[error("bundle has more than {limit} entries")]
    TooManyEntries { limit: usize },
    #[error("config.yaml is {size} bytes; the limit is {limit}")]
    SpecTooLarge { size: u64, limit: u64 },
    #[error("bundle has no config.yaml at its root")]
    NoSpec,
    #[error("bundle entry {path:?}: {reason}")]
    UnsafeEntry { path: String, reason: &'static str },
    #[error("bundle entry {path:?} appears twice")]
    Duplicate { path: String },
    #[error("bundle entry {path:?} is inside {parent:?}, which is a file")]
    FileAsDirectory { path: String, parent: String },
    #[error("not a .tar.gz bundle: {0}")]
    Corrupt(io::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// One file of a bundle, as [`inspect`] read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleFile {
    pub contents: Vec<u8>,
    /// Whether any execute bit was set (unpacked as 0755, else 0644).
    pub executable: bool,
}

/// A bundle that passed every check: `config.yaml`'s text, and every file and directory by its relative,
/// `/`-separated path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub spec_text: String,
    pub files: BTreeMap<String, BundleFile>,
    pub dirs: Vec<String>,
}

impl Bundle {
    /// Whether the bundle holds the file `rel` (for [`super::spec::AgentSpec::validate`]).
    pub fn has_file(&self, rel: &str) -> bool {
        self.files.contains_key(rel)
    }
}

/// Packs an agent directory holding `config.yaml` (every regular file under it; a symlink or special file is
/// an error). The result passes [`inspect`] with `limits`.
pub fn pack_dir(dir: &Path, limits: &Limits) -> Result<Vec<u8>, BundleError> {
    let mut files = BTreeMap::new();
    collect(dir, dir, &mut files)?;
    if !files.contains_key(SPEC_FILE) {
        return Err(BundleError::NoSpec);
    }
    pack(&files, limits)
}

/// Packs files given by relative `/`-separated path (e.g. a lone agent YAML as `config.yaml` and the
/// instructions file it names). Directories are implied by the paths.
pub fn pack(files: &BTreeMap<String, BundleFile>, limits: &Limits) -> Result<Vec<u8>, BundleError> {
    if files.len() > limits.max_entries {
        return Err(BundleError::TooManyEntries {
            limit: limits.max_entries,
        });
    }
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    for (path, file) in files {
        check_path(path)?;
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(EntryType::Regular);
        header.set_size(file.contents.len() as u64);
        header.set_mode(if file.executable { 0o755 } else { 0o644 });
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        tar.append_data(&mut header, path, file.contents.as_slice())
            .map_err(|source| BundleError::Io {
                path: PathBuf::from(path),
                source,
            })?;
    }
    let bytes = tar
        .into_inner()
        .and_then(|gz| gz.finish())
        .map_err(|source| BundleError::Io {
            path: PathBuf::from("<bundle>"),
            source,
        })?;
    inspect(&bytes, limits)?;
    Ok(bytes)
}

fn collect(
    root: &Path,
    dir: &Path,
    files: &mut BTreeMap<String, BundleFile>,
) -> Result<(), BundleError> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io_err(&path))?;
        let rel = path
            .strip_prefix(root)
            .ok()
            .and_then(Path::to_str)
            .map(|rel| rel.replace('\\', "/"))
            .ok_or_else(|| BundleError::UnsafeEntry {
                path: path.display().to_string(),
                reason: "path is not UTF-8",
            })?;
        if kind.is_dir() {
            collect(root, &path, files)?;
        } else if kind.is_file() {
            let contents = fs::read(&path).map_err(io_err(&path))?;
            let executable = is_executable(&entry.metadata().map_err(io_err(&path))?);
            files.insert(
                rel,
                BundleFile {
                    contents,
                    executable,
                },
            );
        } else {
            return Err(BundleError::UnsafeEntry {
                path: rel,
                reason: "only regular files and directories can be bundled (symlinks are not followed)",
            });
        }
    }
    Ok(())
}

#[cfg(unix)]
fn is_executable(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_meta: &fs::Metadata) -> bool {
    false
}

/// Reads and checks a whole bundle in memory, writing nothing.
pub fn inspect(bytes: &[u8], limits: &Limits) -> Result<Bundle, BundleError> {
    let size = bytes.len() as u64;
    if size > limits.max_bundle_bytes {
        return Err(BundleError::TooLarge {
            size,
            limit: limits.max_bundle_bytes,
        });
    }
    let by_ratio = size
        .saturating_mul(limits.max_expansion_ratio)
        .max(limits.ratio_floor_bytes);
    let budget = by_ratio.min(limits.max_unpacked_bytes);
    let tripped = Cell::new(None);
    let capped = Capped {
        inner: GzDecoder::new(bytes),
        left: budget,
        tripped: &tripped,
        cap: if by_ratio < limits.max_unpacked_bytes {
            Cap::Ratio(limits.max_expansion_ratio)
        } else {
            Cap::Size(limits.max_unpacked_bytes)
        },
    };
    let mut archive = tar::Archive::new(capped);
    let mut files = BTreeMap::new();
    let mut dirs = Vec::new();
    let mut count = 0usize;
    let entries = archive.entries().map_err(|e| read_error(e, &tripped))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| read_error(e, &tripped))?;
        count += 1;
        if count > limits.max_entries {
            return Err(BundleError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        if entry.header().entry_type() == EntryType::XGlobalHeader {
            // Archive-wide metadata (`git archive` writes the commit id here): describes no file.
            continue;
        }
        let raw = entry.path_bytes();
        let path = std::str::from_utf8(&raw)
            .map_err(|_| BundleError::UnsafeEntry {
                path: String::from_utf8_lossy(&raw).into_owned(),
                reason: "path is not UTF-8",
            })?
            .to_owned();
        let rel = check_path(&path)?;
        let kind = entry.header().entry_type();
        match kind {
            EntryType::Directory => {
                if !rel.is_empty() {
                    dirs.push(rel);
                }
            }
            EntryType::Regular | EntryType::Continuous => {
                if rel.is_empty() {
                    return Err(unsafe_entry(&path, "a file needs a name"));
                }
                let size = entry.size();
                if rel == SPEC_FILE && size > limits.max_spec_bytes {
                    return Err(BundleError::SpecTooLarge {
                        size,
                        limit: limits.max_spec_bytes,
                    });
                }
                if size > limits.max_unpacked_bytes {
                    return Err(BundleError::UnpackedTooLarge {
                        limit: limits.max_unpacked_bytes,
                    });
                }
                let mut contents = Vec::new();
                (&mut entry)
                    .take(size)
                    .read_to_end(&mut contents)
                    .map_err(|e| read_error(e, &tripped))?;
                let executable = entry
                    .header()
                    .mode()
                    .map(|m| m & 0o111 != 0)
                    .unwrap_or(false);
                if files
                    .insert(
                        rel.clone(),
                        BundleFile {
                            contents,
                            executable,
                        },
                    )
                    .is_some()
                {
                    return Err(BundleError::Duplicate { path: rel });
                }
            }
            EntryType::Symlink | EntryType::Link => {
                return Err(unsafe_entry(&path, "links are not allowed in a bundle"));
            }
            EntryType::Char | EntryType::Block => {
                return Err(unsafe_entry(
                    &path,
                    "device files are not allowed in a bundle",
                ));
            }
            EntryType::Fifo => {
                return Err(unsafe_entry(&path, "fifos are not allowed in a bundle"));
            }
            _ => {
                return Err(unsafe_entry(
                    &path,
                    "only regular files and directories are allowed",
                ));
            }
        }
    }
    for dir in &dirs {
        if files.contains_key(dir) {
            return Err(BundleError::Duplicate { path: dir.clone() });
        }
    }
    for path in files.keys().chain(&dirs) {
        let mut ancestors = path.match_indices('/').map(|(at, _)| &path[..at]);
        if let Some(parent) = ancestors.find(|parent| files.contains_key(*parent)) {
            return Err(BundleError::FileAsDirectory {
                path: path.clone(),
                parent: parent.to_owned(),
            });
        }
    }
    let spec = files.get(SPEC_FILE).ok_or(BundleError::NoSpec)?;
    let spec_text =
        String::from_utf8(spec.contents.clone()).map_err(|_| BundleError::UnsafeEntry {
            path: SPEC_FILE.to_owned(),
            reason: "config.yaml is not UTF-8",
        })?;
    Ok(Bundle {
        spec_text,
        files,
        dirs,
    })
}

/// Checks a bundle and writes it into `target`, which must not exist (its parent must). On any error,
/// `target` is removed again: a refused or half-written bundle leaves nothing behind.
pub fn unpack(bytes: &[u8], target: &Path, limits: &Limits) -> Result<Bundle, BundleError> {
    let bundle = inspect(bytes, limits)?;
    fs::create_dir(target).map_err(io_err(target))?;
    match write(&bundle, target) {
        Ok(()) => Ok(bundle),
        Err(e) => {
            // Best effort: the directory is ours (created above), and the error to report is `e`.
            let _ = fs::remove_dir_all(target);
            Err(e)
        }
    }
}

fn write(bundle: &Bundle, target: &Path) -> Result<(), BundleError> {
    for dir in &bundle.dirs {
        let path = target.join(dir);
        fs::create_dir_all(&path).map_err(io_err(&path))?;
    }
    for (rel, file) in &bundle.files {
        let path = target.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(if file.executable { 0o755 } else { 0o644 });
        }
        let mut out = options.open(&path).map_err(io_err(&path))?;
        out.write_all(&file.contents).map_err(io_err(&path))?;
    }
    Ok(())
}

/// An I/O error on `path`, for `map_err`.
fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BundleError + use<> {
    let path = path.to_path_buf();
    move |source| BundleError::Io { path, source }
}

/// A bundle path made safe by [`super::relative_path`].
fn check_path(path: &str) -> Result<String, BundleError> {
    super::relative_path(path).map_err(|reason| unsafe_entry(path, reason))
}

fn unsafe_entry(path: &str, reason: &'static str) -> BundleError {
    BundleError::UnsafeEntry {
        path: path.to_owned(),
        reason,
    }
}

/// Maps a read error, naming the cap when the decompressed stream hit one (`tripped`).
fn read_error(e: io::Error, tripped: &Cell<Option<Cap>>) -> BundleError {
    match tripped.get() {
        Some(Cap::Ratio(ratio)) => BundleError::ExpansionRatio { ratio },
        Some(Cap::Size(limit)) => BundleError::UnpackedTooLarge { limit },
        None => BundleError::Corrupt(e),
    }
}

#[derive(Debug, Clone, Copy)]
enum Cap {
    Ratio(u64),
    Size(u64),
}

/// The decompressed stream, failing once it exceeds its budget (and saying which cap in `tripped`, which
/// survives however the tar reader wraps the error).
struct Capped<'a, R> {
    inner: R,
    left: u64,
    cap: Cap,
    tripped: &'a Cell<Option<Cap>>,
}

impl<R: Read> Read for Capped<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // One more byte tells a stream that ends exactly at the budget from one that goes on.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    self.tripped.set(Some(self.cap));
                    Err(io::Error::other("bundle decompression cap exceeded"))
                }
            };
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}
