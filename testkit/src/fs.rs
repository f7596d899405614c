//! A small real file system: a tmpfs of a given size, for tests of what a full disk does.

use std::path::Path;
use std::process::Command;

/// A tmpfs of a given size mounted on a fresh temp dir (tests run as root in CI), unmounted on drop (lazily,
/// so a process still holding a file there never leaves it mounted).
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None`, after saying why, when not root: only root may mount.
    pub fn mount(size: &str) -> Option<Tmpfs> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: mounting a tmpfs needs root (CI runs the tests as root)");
            return None;
        }
        let dir = tempfile::Builder::new().prefix("og-fs").tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t tmpfs failed: {status}");
        Some(Tmpfs { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fill it with one file, written until ENOSPC; removing the file frees the space again.
    pub fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 64 * 1024];
        loop {
            match f.write_all(&block) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", self.path().display()),
            }
        }
        // The last partial block: fill to the very last byte.
        for _ in 0..64 {
            if f.write_all(&[0u8; 1024]).is_err() {
                break;
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
