//! Who listens on a TCP port: Linux `/proc` first, `lsof` where there is no `/proc` (macOS).

use std::path::Path;

use omnigent_proto::control::ForeignListener;

/// Describe the listener on `port` (pid and command where the OS tells).
pub fn listener_owner(port: u16) -> ForeignListener {
    let pid = proc_listener_pid(port).or_else(|| lsof_listener_pid(port));
    let command = pid
        .and_then(crate::supervise::process::command_line)
        .or_else(|| pid.and_then(ps_command));
    ForeignListener { port, pid, command }
}

fn proc_listener_pid(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if cols.len() < 10 || cols[3] != "0A" {
                continue;
            }
            let local_port = cols[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                inodes.push(format!("socket:[{}]", cols[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && inodes.iter().any(|i| Path::new(i) == target)
            {
                return Some(pid);
            }
        }
    }
    None
}

fn lsof_listener_pid(port: u16) -> Option<u32> {
    if Path::new("/proc/net/tcp").exists() {
        return None;
    }
    let _pause = crate::supervise::reaper::pause();
    let out = std::process::Command::new("lsof")
        .args(["-nP", &format!("-iTCP:{port}"), "-sTCP:LISTEN", "-t"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

fn ps_command(pid: u32) -> Option<String> {
    let _pause = crate::supervise::reaper::pause();
    let out = std::process::Command::new("ps")
        .args(["-o", "command=", "-p", &pid.to_string()])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if s.is_empty() { None } else { Some(s) }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn finds_our_own_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let owner = listener_owner(port);
        assert_eq!(owner.pid, Some(std::process::id()));
        assert!(owner.command.is_some());
        drop(l);
        assert_eq!(listener_owner(port).pid, None);
    }
}
