//! Size-rotated log files: `name.log`, then `name.log.1` … `name.log.{keep-1}` (oldest), mode 0600.
//!
//! Written here rather than taken from a crate: `file-rotate` and `rolling-file` pull in chrono and rotate by
//! time first; this is forty lines of std and has exactly the behaviour we document (10 MiB × 5).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Default size at which a log file is rotated.
pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Default number of files kept per log (the live one included).
pub const DEFAULT_KEEP: usize = 5;

/// An append-only log file that rotates itself when it would grow past `max_bytes`.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: File,
    size: u64,
}

impl RotatingFile {
    /// Open (creating it and its directory) `path` for appending.
    pub fn open(path: &Path, max_bytes: u64, keep: usize) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_path_buf(),
            max_bytes: max_bytes.max(1),
            keep: keep.max(1),
            file,
            size,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.keep > 1 {
            for i in (1..self.keep - 1).rev() {
                let from = numbered(&self.path, i);
                if from.exists() {
                    std::fs::rename(&from, numbered(&self.path, i + 1))?;
                }
            }
            std::fs::rename(&self.path, numbered(&self.path, 1))?;
        } else {
            std::fs::remove_file(&self.path)?;
        }
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

fn numbered(path: &Path, i: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.size > 0 && self.size + buf.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        let n = self.file.write(buf)?;
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// The last `lines` lines of `path` (reading at most its last 64 KiB). Missing file → empty.
pub fn tail_lines(path: &Path, lines: usize) -> Vec<String> {
    let Ok(mut f) = File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    let skip_partial = usize::from(start > 0 && all.len() > lines);
    all[skip_partial.max(all.len().saturating_sub(lines))..]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

/// Print what is appended to `path` from byte `from` on (default: its current end), following rotation,
/// until `out` returns false.
/// Woken by file-system notifications; a 1 s tick covers file systems that do not deliver them.
pub async fn follow(
    path: &Path,
    from: Option<u64>,
    mut out: impl FnMut(&[u8]) -> bool,
) -> io::Result<()> {
    use notify::Watcher;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
        let _ = tx.try_send(());
    })
    .map_err(io::Error::other)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        watcher
            .watch(dir, notify::RecursiveMode::NonRecursive)
            .map_err(io::Error::other)?;
    }
    let mut pos = from.unwrap_or_else(|| std::fs::metadata(path).map(|m| m.len()).unwrap_or(0));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Ok(mut f) = File::open(path) {
            let len = f.metadata()?.len();
            if len < pos {
                pos = 0; // rotated or truncated: the new file is read from its start
            }
            f.seek(SeekFrom::Start(pos))?;
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                pos += n as u64;
                if !out(&buf[..n]) {
                    return Ok(());
                }
            }
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), rx.recv()).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/x.log");
        let mut f = RotatingFile::open(&path, 10, 3).unwrap();
        for i in 0..5 {
            f.write_all(format!("line{i}...\n").as_bytes()).unwrap(); // 10 bytes each
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "line4...\n");
        assert_eq!(
            std::fs::read_to_string(numbered(&path, 1)).unwrap(),
            "line3...\n"
        );
        assert_eq!(
            std::fs::read_to_string(numbered(&path, 2)).unwrap(),
            "line2...\n"
        );
        assert!(!numbered(&path, 3).exists());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn tail_returns_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        std::fs::write(&path, "a\nb\nc\nd\n").unwrap();
        assert_eq!(tail_lines(&path, 2), vec!["c", "d"]);
        assert_eq!(tail_lines(&path, 10), vec!["a", "b", "c", "d"]);
        assert!(tail_lines(&dir.path().join("missing"), 3).is_empty());
    }
}
