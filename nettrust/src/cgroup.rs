//! cgroup v2 discovery and validation.
//!
//! The cgroup2 hierarchy is not always at /sys/fs/cgroup: hybrid systems mount it at
//! /sys/fs/cgroup/unified. Its location is read from /proc/mounts, never assumed.

use std::path::{Path, PathBuf};

pub mod patterns;

/// `CGROUP2_SUPER_MAGIC` from linux/magic.h: `statfs(2).f_type` of a cgroup v2 filesystem.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Errors of cgroup discovery and validation.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// /proc/mounts could not be read.
    #[error("cannot read /proc/mounts")]
    Mounts(#[source] std::io::Error),
    /// No cgroup2 filesystem is mounted.
    #[error("no cgroup v2 filesystem is mounted (see /proc/mounts); nettrust needs cgroup v2")]
    NoCgroup2,
    /// The path does not exist or cannot be inspected.
    #[error("cgroup {path}: cannot access it")]
    Access {
        /// The offending path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The path exists but is not a directory of a cgroup v2 filesystem.
    #[error("cgroup {path}: not a cgroup v2 directory")]
    NotCgroup2 {
        /// The offending path.
        path: PathBuf,
    },
}

/// Returns the mount point of the first cgroup2 filesystem listed in `mounts` (the text of
/// /proc/mounts: `device mountpoint fstype options dump pass`, with spaces in paths escaped as
/// `\040`, see proc_pid_mounts(5)).
pub fn cgroup2_mount_from(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_device, mountpoint, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(mountpoint)))
    })
}

/// Undoes the octal escapes (`\040` space, `\011` tab, `\012` newline, `\134` backslash) of
/// /proc/mounts.
fn unescape_mount_path(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup2 mount point of this machine.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(CgroupError::Mounts)?;
    cgroup2_mount_from(&mounts).ok_or(CgroupError::NoCgroup2)
}

/// Checks that `path` is a directory on a cgroup v2 filesystem.
pub fn validate(path: &Path) -> Result<(), CgroupError> {
    let meta = std::fs::metadata(path).map_err(|source| CgroupError::Access {
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(CgroupError::NotCgroup2 {
            path: path.to_owned(),
        });
    }
    let magic = crate::sys::fs_magic(path).map_err(|source| CgroupError::Access {
        path: path.to_owned(),
        source,
    })?;
    if magic != CGROUP2_SUPER_MAGIC {
        return Err(CgroupError::NotCgroup2 {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// Checks a configured `cgroups` entry: a pattern ([`patterns::is_pattern`]) must parse below
/// the cgroup v2 mount (it may match nothing yet), a literal path must be a cgroup v2 directory.
pub fn validate_entry(path: &Path) -> Result<(), String> {
    if patterns::is_pattern(path) {
        let mount = cgroup2_mount().map_err(|e| e.to_string())?;
        patterns::CgroupPattern::parse(path, &mount)
            .map(drop)
            .map_err(|e| e.to_string())
    } else {
        validate(path).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";

    #[test]
    fn finds_hybrid_mount() {
        assert_eq!(
            cgroup2_mount_from(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn finds_unified_mount() {
        let mounts = "proc /proc proc rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(
            cgroup2_mount_from(mounts),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn v1_only_has_no_cgroup2() {
        let mounts = "cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\nnone /cgroup2 tmpfs rw 0 0\n";
        assert_eq!(cgroup2_mount_from(mounts), None);
    }

    #[test]
    fn escaped_spaces_are_decoded() {
        let mounts = "none /mnt/my\\040cgroups cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_mount_from(mounts),
            Some(PathBuf::from("/mnt/my cgroups"))
        );
    }

    #[test]
    fn regular_directory_is_not_a_cgroup() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            validate(dir.path()),
            Err(CgroupError::NotCgroup2 { .. })
        ));
        assert!(matches!(
            validate(&dir.path().join("missing")),
            Err(CgroupError::Access { .. })
        ));
    }
}
