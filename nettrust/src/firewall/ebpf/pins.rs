//! The bpffs directory that holds nettrust's state: its layout, its safety checks (bpffs mount,
//! owner and mode, the daemon's flock), and the pin operations (atomic replacement, removal links
//! first). What makes a pinned map adoptable is in [`super::adopt`].
//!
//! ```text
//! <bpffs-dir>/                 owned by root, mode 0700, flock'd by the running daemon
//!   HOSTS_V4 HOSTS_V6 NETS_V4 NETS_V6 STATS CONFIG OUTBOUND INBOUND_FLOWS
//!   DENIED DENIED_RATE DROPS ALLOWS NAMES CGROUPS
//!   SERVICES BLOCKED_V4 BLOCKED_V6 AUDITS
//!   POLICY_OF GRANTS POLICY_NETS_V4 POLICY_NETS_V6
//!   LISTENERS CLIENTS                           the maps (nettrust_common::MAP_*)
//!   LIVE_TCP_SCOPED                             the live_tcp program's connections
//!   prog-egress prog-ingress prog-live_tcp      the programs of the last start
//!   link-egress-<ino> link-ingress-<ino>        one bpf_link per cgroup and program,
//!   link-live_tcp-<ino>                         <ino> = the cgroup directory's inode (= cgroup id)
//! ```
//!
//! A pinned bpf_link keeps its program attached after the process that created it died, so
//! enforcement survives `kill -9`. Replacing a pin is an atomic `rename(2)` on bpffs: a restart
//! attaches the new link first, then renames its pin over the old one, which drops the old link.

use std::{
    fs::File,
    io,
    os::{
        fd::{AsFd as _, AsRawFd as _},
        unix::fs::{DirBuilderExt as _, MetadataExt as _},
    },
    path::{Path, PathBuf},
};

use aya::{
    pin::PinError as AyaPinError,
    programs::{ProgramError, links::FdLink},
};

use super::{
    syscalls,
    types::{EbpfError, LINKED, PinError, dir_error, program_error},
};

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where bpffs is conventionally mounted; nettrust mounts it there when absent.
const BPFFS_MOUNT: &str = "/sys/fs/bpf";

/// Pin name of a program (`egress` or `ingress`).
pub fn program_pin(dir: &Path, program: &str) -> PathBuf {
    dir.join(format!("prog-{program}"))
}

/// Pin name of the link attaching `program` to the cgroup with id `cgroup_id`.
pub fn link_pin(dir: &Path, program: &str, cgroup_id: u64) -> PathBuf {
    dir.join(format!("link-{program}-{cgroup_id}"))
}

/// The cgroup ids that have a link pinned in `dir`.
pub fn linked_cgroups(dir: &Path) -> Vec<u64> {
    let mut ids: Vec<u64> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let rest = name.strip_prefix("link-")?;
            LINKED
                .iter()
                .find_map(|program| rest.strip_prefix(program)?.strip_prefix('-')?.parse().ok())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Unpins every link of the cgroup with id `cgroup_id` (best effort: a missing pin is fine).
pub fn remove_links(dir: &Path, cgroup_id: u64) {
    for name in LINKED {
        let _ = std::fs::remove_file(link_pin(dir, name, cgroup_id));
    }
}

/// The cgroup v2 id of a cgroup directory: its inode number (what `bpf_skb_cgroup_id` returns).
pub fn cgroup_id(path: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(path)?.ino())
}

/// Makes sure `dir` exists on bpffs, belongs to us and is not writable by others, and takes the
/// daemon's exclusive lock on it (one daemon per directory). bpffs is mounted at /sys/fs/bpf when
/// nothing is mounted there yet.
pub fn prepare_dir(dir: &Path) -> Result<File, PinError> {
    let parent = dir
        .parent()
        .ok_or_else(|| dir_error(dir, "has no parent directory", None))?;
    if !is_bpffs(parent) {
        if parent == Path::new(BPFFS_MOUNT) {
            mount_bpffs(parent).map_err(|e| {
                dir_error(
                    dir,
                    "bpffs is not mounted at /sys/fs/bpf and mounting it failed",
                    Some(e),
                )
            })?;
            if in_private_mount_namespace() {
                tracing::warn!(
                    "bpffs was not mounted at /sys/fs/bpf: mounted it in nettrust's own mount namespace, where the pins (and enforcement after a crash or kill -9) last only as long as this process; mount bpffs on the host (mount -t bpf bpf /sys/fs/bpf) for fail-closed pinning"
                );
            } else {
                tracing::info!("bpffs was not mounted at /sys/fs/bpf: mounted it");
            }
        } else {
            return Err(dir_error(
                dir,
                "its parent is not on a bpf filesystem (mount -t bpf bpf DIR)",
                None,
            ));
        }
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(dir_error(dir, "cannot create it", Some(e))),
    }
    check_owner(dir)?;
    let file = File::open(dir).map_err(|e| dir_error(dir, "cannot open it", Some(e)))?;
    if !try_lock(&file, libc::LOCK_EX) {
        return Err(PinError::Busy(dir.to_owned()));
    }
    Ok(file)
}

/// A directory we adopt must be a directory owned by our user and not writable by group or
/// others: anyone who can replace a pin there could replace the policy.
pub fn check_owner(dir: &Path) -> Result<(), PinError> {
    let meta =
        std::fs::symlink_metadata(dir).map_err(|e| dir_error(dir, "cannot stat it", Some(e)))?;
    if !meta.is_dir() {
        return Err(dir_error(dir, "is not a directory", None));
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return Err(dir_error(
            dir,
            format!("is owned by uid {}, not by us (uid {euid})", meta.uid()),
            None,
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(dir_error(
            dir,
            format!(
                "has mode {:o}: writable by group or others",
                meta.mode() & 0o777
            ),
            None,
        ));
    }
    Ok(())
}

/// Whether a daemon holds `dir` (its flock is released by the kernel when the daemon dies, so
/// this is also right after `kill -9`).
pub fn daemon_running(dir: &Path) -> bool {
    let Ok(file) = File::open(dir) else {
        return false;
    };
    if try_lock(&file, libc::LOCK_SH) {
        // SAFETY: unlocking our own descriptor.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
        false
    } else {
        true
    }
}

fn try_lock(file: &File, op: i32) -> bool {
    // SAFETY: flock on a file descriptor we own.
    unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) == 0 }
}

/// Removes everything nettrust pinned in `dir` and the directory itself. Unpinning a link detaches
/// its program; unpinning maps and programs frees them once no process holds them. Missing files
/// are fine (idempotent). Keeps going after an error and returns all of them.
pub fn remove_all(dir: &Path) -> Result<(), Vec<PinError>> {
    let mut errors = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(vec![dir_error(dir, "cannot list it", Some(e))]),
    };
    // Links first, so enforcement goes away before the maps it reads.
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort_by_key(|p| !is_link_pin(p));
    for path in paths {
        if is_link_pin(&path) {
            detach_link(&path);
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => errors.push(dir_error(
                dir,
                format!("cannot unpin {}", path.display()),
                Some(e),
            )),
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => errors.push(dir_error(dir, "cannot remove it", Some(e))),
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn is_link_pin(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("link-"))
}

/// Detaches the bpf_link pinned at `path` right away (`BPF_LINK_DETACH`). Unpinning alone would
/// also detach it, but only once the kernel's work queue frees the link (`bpf_link_put` defers
/// it): detaching first makes `flush`, `detach` and a flushing exit take effect before they
/// return. Best effort: the unpin that follows is the fallback.
pub fn detach_link(path: &Path) {
    if let Ok(link) = syscalls::obj_get(path) {
        let _ = syscalls::link_detach(link.as_fd());
    }
}

/// Removes temporary pins a run killed between pinning and renaming left behind (a leftover
/// temporary link pin would keep an old program attached).
pub fn remove_temporaries(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with("tmp-") {
            detach_link(&path);
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Pins through a temporary name, then renames over `path`: an existing pin (an old link or
/// program) is replaced atomically.
pub fn replace_pin(
    path: &Path,
    pin: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<(), String> {
    // bpffs refuses names with a dot.
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!("tmp-{name}"));
    let _ = std::fs::remove_file(&tmp);
    pin(&tmp).map_err(|e| format!("cannot pin {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot rename {} to {}: {e}", tmp.display(), path.display())
    })
}

/// Pins the bpf_link `link` of program `name` on cgroup `path` (id `id`) in `dir`, replacing the
/// previous run's pin atomically (the cgroup is never left unfiltered).
pub(super) fn pin_link<L>(
    link: L,
    dir: &Path,
    name: &str,
    id: u64,
    path: &Path,
) -> Result<(), EbpfError>
where
    FdLink: TryFrom<L>,
    <FdLink as TryFrom<L>>::Error: std::fmt::Display,
{
    let link = FdLink::try_from(link).map_err(|e| EbpfError::LinkPin {
        cgroup: path.to_owned(),
        what: e.to_string(),
    })?;
    replace_pin(&link_pin(dir, name, id), |tmp| {
        link.pin(tmp).map(drop).map_err(|e| crate::error_chain(&e))
    })
    .map_err(|what| EbpfError::LinkPin {
        cgroup: path.to_owned(),
        what,
    })
}

/// Attaches a program to the cgroup `path` (id `id`) with `attach` (the program's own attach
/// and `take_link`), and pins the link as `link-<name>-<id>`, replacing a previous run's link
/// only once the new one is attached. A bpf_link coexists with the other programs on the
/// cgroup (systemd's, a container runtime's, our previous run's); the kernel runs them all.
pub(super) fn link_cgroup<L>(
    dir: &Path,
    name: &str,
    id: u64,
    path: &Path,
    attach: impl FnOnce() -> Result<L, (&'static str, ProgramError)>,
) -> Result<(), EbpfError>
where
    FdLink: TryFrom<L>,
    <FdLink as TryFrom<L>>::Error: std::fmt::Display,
{
    let link = attach().map_err(|(what, source)| {
        program_error(format!("{name}: cannot {what} {}", path.display()), source)
    })?;
    pin_link(link, dir, name, id, path)
}

/// Pins the loaded program `name` as `prog-<name>` with `pin` (the program's own `pin`),
/// replacing a previous run's pin.
pub(super) fn pin_program(
    dir: &Path,
    name: &str,
    pin: impl FnOnce(&Path) -> Result<(), AyaPinError>,
) -> Result<(), EbpfError> {
    let path = program_pin(dir, name);
    replace_pin(&path, |tmp| pin(tmp).map_err(|e| crate::error_chain(&e)))
        .map_err(|what| EbpfError::LinkPin { cgroup: path, what })
}

fn is_bpffs(path: &Path) -> bool {
    crate::sys::fs_magic(path).is_ok_and(|magic| magic == BPF_FS_MAGIC)
}

/// Whether this process runs in another mount namespace than init (pid 1), e.g. a private one
/// made by systemd or `unshare -m`: a bpffs mounted there vanishes with the namespace. Unknown
/// (unreadable) counts as private.
fn in_private_mount_namespace() -> bool {
    let ns = |pid: &str| std::fs::metadata(format!("/proc/{pid}/ns/mnt")).map(|m| m.ino());
    match (ns("self"), ns("1")) {
        (Ok(own), Ok(init)) => own != init,
        _ => true,
    }
}

fn mount_bpffs(path: &Path) -> io::Result<()> {
    let target = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: all strings are NUL-terminated and outlive the call.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// NUL-padded bytes of `text`, truncated to `N` bytes at a character boundary.
pub fn padded<const N: usize>(text: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let mut end = text.len().min(N);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out[..end].copy_from_slice(&text.as_bytes()[..end]);
    out
}

/// The text of NUL-padded bytes.
pub fn unpadded(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_round_trips_and_truncates() {
        let p: [u8; 8] = padded("a.test");
        assert_eq!(unpadded(&p), "a.test");
        let p: [u8; 4] = padded("abcdef");
        assert_eq!(unpadded(&p), "abcd");
        let p: [u8; 3] = padded("aé");
        assert_eq!(unpadded(&p), "aé");
        let p: [u8; 2] = padded("aé");
        assert_eq!(unpadded(&p), "a");
    }

    #[test]
    fn link_names_carry_the_cgroup_id() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "link-egress-42",
            "link-ingress-42",
            "link-egress-7",
            "HOSTS_V4",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        assert_eq!(linked_cgroups(dir.path()), vec![7, 42]);
        assert_eq!(
            link_pin(dir.path(), "egress", 42),
            dir.path().join("link-egress-42")
        );
    }

    #[test]
    fn group_writable_directory_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        check_owner(dir.path()).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o770)).unwrap();
        let err = check_owner(dir.path()).unwrap_err().to_string();
        assert!(err.contains("writable by group or others"), "{err}");
    }

    #[test]
    fn remove_all_is_idempotent() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("pins");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("link-egress-1"), b"").unwrap();
        std::fs::write(dir.join("HOSTS_V4"), b"").unwrap();
        remove_all(&dir).unwrap();
        assert!(!dir.exists());
        remove_all(&dir).unwrap();
    }

    #[test]
    fn temporaries_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tmp-link-egress-1"), b"").unwrap();
        std::fs::write(dir.path().join("link-egress-1"), b"").unwrap();
        remove_temporaries(dir.path());
        assert!(!dir.path().join("tmp-link-egress-1").exists());
        assert!(dir.path().join("link-egress-1").exists());
    }
}
