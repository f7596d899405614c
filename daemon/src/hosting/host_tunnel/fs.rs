//! The filesystem requests of the host tunnel (`host.stat`, `host.list_dir`, `host.create_dir`), on the real
//! filesystem. Every failure becomes `status: "failed"` with the error text; nothing here can end the tunnel.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use omnigent_proto::host_frames::{
    CreateDirResult, DirEntry, ListDir, ListDirResult, PathRequest, StatResult,
};

/// Largest page of a `host.list_dir` (the server clamps to this too).
const MAX_LIST_LIMIT: u32 = 1000;

/// `~` and `~/…` expanded against `$HOME`; relative paths are refused (the daemon's cwd means nothing to
/// the server).
fn resolve(path: &str) -> Result<PathBuf, String> {
    let home = || {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .ok_or_else(|| format!("cannot expand {path:?}: HOME is not set"))
    };
    let resolved = if path == "~" {
        home()?
    } else if let Some(rest) = path.strip_prefix("~/") {
        home()?.join(rest)
    } else {
        PathBuf::from(path)
    };
    if resolved.is_absolute() {
        Ok(resolved)
    } else {
        Err(format!(
            "path {path:?} is relative; send an absolute path (or one starting with ~)"
        ))
    }
}

fn file_type(meta: &std::fs::Metadata) -> &'static str {
    if meta.is_dir() {
        "directory"
    } else if meta.is_file() {
        "file"
    } else {
        "other"
    }
}

fn modified_at(meta: &std::fs::Metadata) -> Option<f64> {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64())
}

/// `host.stat`: a missing path is `status: "ok", exists: false`; `type` follows symlinks.
pub(super) async fn stat(req: PathRequest) -> StatResult {
    let mut result = StatResult {
        request_id: req.request_id,
        status: "ok".to_owned(),
        exists: false,
        file_type: None,
        canonical_path: None,
        error: None,
        extra: Default::default(),
    };
    let path = match resolve(&req.path) {
        Ok(path) => path,
        Err(error) => {
            result.status = "failed".to_owned();
            result.error = Some(error);
            return result;
        }
    };
    match tokio::fs::metadata(&path).await {
        Ok(meta) => {
            result.exists = true;
            result.file_type = Some(file_type(&meta).to_owned());
            result.canonical_path = Some(
                tokio::fs::canonicalize(&path)
                    .await
                    .unwrap_or(path)
                    .display()
                    .to_string(),
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            result.status = "failed".to_owned();
            result.error = Some(format!("cannot stat {}: {e}", path.display()));
        }
    }
    result
}

/// `host.list_dir`: entries sorted by name; `after` pages forward (names strictly greater), `before` pages
/// backward (the last `limit` names strictly smaller).
pub(super) async fn list_dir(req: ListDir) -> ListDirResult {
    let mut result = ListDirResult {
        request_id: req.request_id.clone(),
        status: "ok".to_owned(),
        entries: Vec::new(),
        has_more: false,
        error: None,
        extra: Default::default(),
    };
    match list(&req).await {
        Ok((entries, has_more)) => {
            result.entries = entries;
            result.has_more = has_more;
        }
        Err(error) => {
            result.status = "failed".to_owned();
            result.error = Some(error);
        }
    }
    result
}

async fn list(req: &ListDir) -> Result<(Vec<DirEntry>, bool), String> {
    let dir = resolve(&req.path)?;
    let mut reader = tokio::fs::read_dir(&dir)
        .await
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut names: Vec<(String, PathBuf)> = Vec::new();
    loop {
        match reader.next_entry().await {
            Ok(Some(entry)) => {
                let name = entry.file_name().to_string_lossy().into_owned();
                let in_window = req.after.as_deref().is_none_or(|a| name.as_str() > a)
                    && req.before.as_deref().is_none_or(|b| name.as_str() < b);
                if in_window {
                    names.push((name, entry.path()));
                }
            }
            Ok(None) => break,
            Err(e) => return Err(format!("cannot list {}: {e}", dir.display())),
        }
    }
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let limit = req.limit.clamp(1, MAX_LIST_LIMIT) as usize;
    let has_more = names.len() > limit;
    let page: Vec<(String, PathBuf)> = if req.before.is_some() && req.after.is_none() {
        let skip = names.len().saturating_sub(limit);
        names.into_iter().skip(skip).collect()
    } else {
        names.into_iter().take(limit).collect()
    };
    let mut entries = Vec::with_capacity(page.len());
    for (name, path) in page {
        // Follow symlinks for the type, like `host.stat`; a dangling link is still listed, as "other".
        let meta = match tokio::fs::metadata(&path).await {
            Ok(meta) => Some(meta),
            Err(_) => tokio::fs::symlink_metadata(&path).await.ok(),
        };
        let (kind, bytes, modified) = match &meta {
            Some(meta) => (
                if meta.file_type().is_symlink() {
                    "other"
                } else {
                    file_type(meta)
                },
                meta.is_file().then_some(meta.len()),
                modified_at(meta),
            ),
            None => ("other", None, None),
        };
        entries.push(DirEntry {
            name,
            path: path.display().to_string(),
            file_type: kind.to_owned(),
            bytes,
            modified_at: modified,
        });
    }
    Ok((entries, has_more))
}

/// `host.create_dir`: create the directory and its parents; an existing directory is fine.
pub(super) async fn create_dir(req: PathRequest) -> CreateDirResult {
    let mut result = CreateDirResult {
        request_id: req.request_id,
        status: "ok".to_owned(),
        path: None,
        error: None,
        extra: Default::default(),
    };
    let outcome = match resolve(&req.path) {
        Ok(path) => create(&path).await,
        Err(error) => Err(error),
    };
    match outcome {
        Ok(path) => result.path = Some(path),
        Err(error) => {
            result.status = "failed".to_owned();
            result.error = Some(error);
        }
    }
    result
}

async fn create(path: &Path) -> Result<String, String> {
    tokio::fs::create_dir_all(path)
        .await
        .map_err(|e| format!("cannot create directory {}: {e}", path.display()))?;
    let canonical = tokio::fs::canonicalize(path)
        .await
        .unwrap_or_else(|_| path.to_path_buf());
    Ok(canonical.display().to_string())
}
