//! The per-namespace lock of the nftables backend: one daemon owns the table of a network
//! namespace, and `nettrust flush` refuses while it runs.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use super::NftablesError;

/// Where the per-namespace lock files live: created by root with mode 0700, so no other user
/// can create, open or lock them.
pub const LOCK_DIR: &str = "/run/nettrust";

/// The lock a daemon holds while it owns the table of its network namespace: an exclusive
/// `flock` on `LOCK_DIR/nftables-<netns inode>.lock` (mode 0600). The kernel releases it when
/// the process dies (also after `kill -9`), so it cannot go stale; unlike a name any user can
/// bind (an abstract unix socket), only root can take it.
#[derive(Debug)]
pub(super) struct NsLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl Drop for NsLock {
    fn drop(&mut self) {
        // Removed while still locked: a process that opened the old file meanwhile sees on
        // locking that the path no longer names its file and opens it again (see `take`).
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The lock file of the calling thread's network namespace.
fn lock_path() -> std::io::Result<PathBuf> {
    let ns = std::fs::metadata("/proc/thread-self/ns/net")?.ino();
    Ok(Path::new(LOCK_DIR).join(format!("nftables-net{ns}.lock")))
}

/// Checks that `meta` (of `path`, not followed) is owned by this process's user and writable by
/// nobody else, and is a directory (`dir`) or a regular file.
fn check_owner(path: &Path, meta: &std::fs::Metadata, dir: bool) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let kind_ok = if dir {
        meta.file_type().is_dir()
    } else {
        meta.file_type().is_file()
    };
    let mode = meta.permissions().mode() & 0o7777;
    if !kind_ok || meta.uid() != euid || mode & 0o022 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} must be a {} owned by uid {euid} and writable by nobody else (found uid {}, mode {mode:o}); remove it and start again",
                path.display(),
                if dir { "directory" } else { "regular file" },
                meta.uid(),
            ),
        ));
    }
    Ok(())
}

fn try_flock(file: &std::fs::File, op: i32) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Takes the lock of the calling thread's network namespace: `Ok(None)` when another daemon
/// holds it.
pub(super) fn take_lock() -> std::io::Result<Option<NsLock>> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let dir = Path::new(LOCK_DIR);
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    check_owner(dir, &std::fs::symlink_metadata(dir)?, true)?;
    let path = lock_path()?;
    loop {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)?;
        check_owner(&path, &file.metadata()?, false)?;
        if !try_flock(&file, libc::LOCK_EX)? {
            return Ok(None);
        }
        // The previous holder may have removed the file between our open and our lock: then
        // the lock is on a file nobody else will find; open the path again.
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.ino() == file.metadata()?.ino() => {
                return Ok(Some(NsLock { _file: file, path }));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
}

/// Whether a nettrust daemon with the nftables backend runs in the caller's network namespace
/// (its lock is held); false also when that cannot be told (see [`ensure_no_daemon`]).
pub fn daemon_running() -> bool {
    lock_held().unwrap_or(false)
}

/// Fails with [`NftablesError::Busy`] while a daemon holds the lock of the caller's network
/// namespace, and with [`NftablesError::Lock`] when the lock file exists but cannot be checked
/// (a user other than root cannot open it): a lock it cannot read is not "no daemon", so nothing
/// may delete the table on that basis.
pub fn ensure_no_daemon() -> Result<(), NftablesError> {
    match lock_held() {
        Ok(false) => Ok(()),
        Ok(true) => Err(NftablesError::Busy),
        Err(e) => Err(NftablesError::Lock(e)),
    }
}

/// Whether the lock of the caller's network namespace is held; false when there is no lock file.
fn lock_held() -> std::io::Result<bool> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = lock_path()?;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!("cannot check {}: {e}", path.display()),
            ));
        }
    };
    if try_flock(&file, libc::LOCK_SH)? {
        use std::os::fd::AsRawFd as _;
        // SAFETY: unlocking our own descriptor.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
        Ok(false)
    } else {
        Ok(true)
    }
}
