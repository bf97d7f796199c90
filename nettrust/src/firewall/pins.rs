//! The layout of nettrust's state in its bpffs directory, and the checks that make it safe to
//! adopt what a previous run left there.
//!
//! ```text
//! <bpffs-dir>/                 owned by root, mode 0700, flock'd by the running daemon
//!   HOSTS_V4 HOSTS_V6 NETS_V4 NETS_V6 STATS CONFIG OUTBOUND INBOUND_FLOWS
//!   DENIED DENIED_RATE DROPS ALLOWS NAMES CGROUPS
//!   SERVICES BLOCKED_V4 BLOCKED_V6                the maps (nettrust_common::MAP_*)
//!   LIVE_TCP                                    the live_tcp program's connections
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
        fd::AsRawFd as _,
        unix::fs::{DirBuilderExt as _, MetadataExt as _},
    },
    path::{Path, PathBuf},
};

use aya::maps::{MapInfo, MapType};
use nettrust_common::{
    CGROUP_PATH_LEN, FlowKey, HOST_NAME_LEN, HostSlot, HostValue, InboundKey, InboundValue,
    MAP_ALLOWS, MAP_BLOCKED_V4, MAP_BLOCKED_V6, MAP_CGROUPS, MAP_CONFIG, MAP_DENIED,
    MAP_DENIED_RATE, MAP_DROPS, MAP_HOSTS_V4, MAP_HOSTS_V6, MAP_INBOUND, MAP_LIVE_TCP, MAP_NAMES,
    MAP_NETS_V4, MAP_NETS_V6, MAP_OUTBOUND, MAP_SERVICES, MAP_STATS, RateState, ServiceKey,
};

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where bpffs is conventionally mounted; nettrust mounts it there when absent.
const BPFFS_MOUNT: &str = "/sys/fs/bpf";

/// What a pinned map must look like to be adopted: name, type, key size, value size.
pub struct MapSpec {
    /// Map (and pin file) name.
    pub name: &'static str,
    /// Kernel map type.
    pub map_type: MapType,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes.
    pub value_size: u32,
}

const fn spec(
    name: &'static str,
    map_type: MapType,
    key_size: usize,
    value_size: usize,
) -> MapSpec {
    MapSpec {
        name,
        map_type,
        key_size: key_size as u32,
        value_size: value_size as u32,
    }
}

const HOST_VALUE: usize = size_of::<HostValue>();
const FLOW_KEY: usize = size_of::<FlowKey>();

/// The pin of the inbound flow map of earlier versions (another key), removed at start.
pub const LEGACY_INBOUND: &str = "INBOUND";

/// Every map nettrust pins, with the shape the eBPF object gives it.
pub const MAPS: [MapSpec; 18] = [
    spec(MAP_HOSTS_V4, MapType::Array, 4, size_of::<HostSlot>()),
    spec(MAP_HOSTS_V6, MapType::Hash, 16, HOST_VALUE),
    // LPM trie keys are `{prefix_len: u32, data}`.
    spec(MAP_NETS_V4, MapType::LpmTrie, 8, 4),
    spec(MAP_NETS_V6, MapType::LpmTrie, 20, 4),
    spec(MAP_STATS, MapType::PerCpuArray, 4, 8),
    spec(MAP_CONFIG, MapType::Array, 4, 4),
    spec(MAP_OUTBOUND, MapType::LruHash, FLOW_KEY, 8),
    spec(
        MAP_INBOUND,
        MapType::LruHash,
        size_of::<InboundKey>(),
        size_of::<InboundValue>(),
    ),
    spec(MAP_DENIED, MapType::RingBuf, 0, 0),
    spec(
        MAP_DENIED_RATE,
        MapType::PerCpuArray,
        4,
        size_of::<RateState>(),
    ),
    spec(MAP_DROPS, MapType::PerCpuHash, 8, 8),
    spec(MAP_ALLOWS, MapType::PerCpuHash, 8, 8),
    spec(MAP_NAMES, MapType::Hash, 16, HOST_NAME_LEN),
    spec(MAP_CGROUPS, MapType::Hash, 8, CGROUP_PATH_LEN),
    spec(MAP_LIVE_TCP, MapType::Hash, 8, 24),
    spec(MAP_SERVICES, MapType::Hash, size_of::<ServiceKey>(), 4),
    spec(MAP_BLOCKED_V4, MapType::LpmTrie, 8, 4),
    spec(MAP_BLOCKED_V6, MapType::LpmTrie, 20, 4),
];

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
            let rest = name
                .strip_prefix("link-egress-")
                .or_else(|| name.strip_prefix("link-ingress-"))
                .or_else(|| name.strip_prefix("link-live_tcp-"))?;
            rest.parse().ok()
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The cgroup v2 id of a cgroup directory: its inode number (what `bpf_skb_cgroup_id` returns).
pub fn cgroup_id(path: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(path)?.ino())
}

/// Errors about the bpffs directory and what is pinned in it.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The directory cannot be used.
    #[error("bpffs directory {path}: {what}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        what: String,
        /// The cause, if any.
        #[source]
        source: Option<io::Error>,
    },
    /// A pinned map is not one nettrust would have created.
    #[error(
        "{path} is not a nettrust map (found {found}, expected {expected}); remove it with `nettrust flush --bpffs-dir {dir}` if it is a leftover"
    )]
    Foreign {
        /// The pin.
        path: PathBuf,
        /// The directory, for the hint.
        dir: String,
        /// What was found.
        found: String,
        /// What nettrust expects.
        expected: String,
    },
    /// A pinned map has another capacity than the configuration asks for. aya would adopt it as
    /// it is, so the configured size would silently not apply.
    #[error(
        "{path} was sized for {key} = {found_setting} ({found} entries) but {key} is now {asked} ({expected} entries): start with {key} = {found_setting} to keep the pinned state, or remove it with `nettrust flush --bpffs-dir {dir}` (this drops the pinned authorizations) so the maps are rebuilt"
    )]
    Capacity {
        /// The pin.
        path: PathBuf,
        /// The directory, for the hint.
        dir: String,
        /// The configuration key.
        key: &'static str,
        /// The pinned map's max_entries.
        found: u32,
        /// The max_entries the configuration gives this map.
        expected: u32,
        /// The configured setting.
        asked: u32,
        /// The setting that would match the pinned map.
        found_setting: u32,
    },
    /// A daemon holds the directory.
    #[error("bpffs directory {0} is in use by a running nettrust daemon")]
    Busy(PathBuf),
}

fn dir_err(path: &Path, what: impl Into<String>, source: Option<io::Error>) -> PinError {
    PinError::Dir {
        path: path.to_owned(),
        what: what.into(),
        source,
    }
}

/// Makes sure `dir` exists on bpffs, belongs to us and is not writable by others, and takes the
/// daemon's exclusive lock on it (one daemon per directory). bpffs is mounted at /sys/fs/bpf when
/// nothing is mounted there yet.
pub fn prepare_dir(dir: &Path) -> Result<File, PinError> {
    let parent = dir
        .parent()
        .ok_or_else(|| dir_err(dir, "has no parent directory", None))?;
    if !is_bpffs(parent) {
        if parent == Path::new(BPFFS_MOUNT) {
            mount_bpffs(parent).map_err(|e| {
                dir_err(
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
            return Err(dir_err(
                dir,
                "its parent is not on a bpf filesystem (mount -t bpf bpf DIR)",
                None,
            ));
        }
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(dir_err(dir, "cannot create it", Some(e))),
    }
    check_owner(dir)?;
    let file = File::open(dir).map_err(|e| dir_err(dir, "cannot open it", Some(e)))?;
    if !try_lock(&file, libc::LOCK_EX) {
        return Err(PinError::Busy(dir.to_owned()));
    }
    Ok(file)
}

/// A directory we adopt must be a directory owned by our user and not writable by group or
/// others: anyone who can replace a pin there could replace the policy.
pub fn check_owner(dir: &Path) -> Result<(), PinError> {
    let meta =
        std::fs::symlink_metadata(dir).map_err(|e| dir_err(dir, "cannot stat it", Some(e)))?;
    if !meta.is_dir() {
        return Err(dir_err(dir, "is not a directory", None));
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return Err(dir_err(
            dir,
            format!("is owned by uid {}, not by us (uid {euid})", meta.uid()),
            None,
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(dir_err(
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

/// Most names `NAMES` keeps (2 × the default `max_hosts`): with more hosts, the addresses
/// authorized once it is full are listed without a name.
pub const NAMES_MAX: u32 = 131_072;

/// The setting (`max_hosts`, ...) a map of a given max_entries was created for.
pub type SettingOf = fn(u32) -> u32;

/// The configurable map capacities (`max_hosts`, `max_networks`), per address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacities {
    /// max_entries of `HOSTS_V4` and `HOSTS_V6` (`NAMES` holds twice as many, at most
    /// [`NAMES_MAX`]).
    pub hosts: u32,
    /// max_entries of `NETS_V4` and `NETS_V6`.
    pub networks: u32,
}

impl Default for Capacities {
    fn default() -> Self {
        Self {
            hosts: nettrust_common::DEFAULT_MAX_HOSTS,
            networks: nettrust_common::DEFAULT_MAX_NETS,
        }
    }
}

impl Capacities {
    /// The max_entries `map` gets, its config key and the setting a given max_entries stands
    /// for, for the maps whose size is configurable.
    pub fn of(&self, map: &str) -> Option<(u32, &'static str, SettingOf)> {
        match map {
            // The IPv4 table has spare slots (kept at most 3/4 full, plus the probe window).
            MAP_HOSTS_V4 => Some((
                nettrust_common::host_table::slots(self.hosts),
                "max_hosts",
                nettrust_common::host_table::capacity_of,
            )),
            MAP_HOSTS_V6 => Some((self.hosts, "max_hosts", |n| n)),
            // One name per host of either family, at most NAMES_MAX: names are best effort and
            // 128 bytes each, they must not dominate kernel memory on large host maps.
            MAP_NAMES => Some((
                self.hosts.saturating_mul(2).min(NAMES_MAX),
                "max_hosts",
                |n| n / 2,
            )),
            MAP_NETS_V4 | MAP_NETS_V6 => Some((self.networks, "max_networks", |n| n)),
            _ => None,
        }
    }
}

/// Checks every map already pinned in `dir` against [`MAPS`] and the configured capacities;
/// returns how many were found.
pub fn check_pinned_maps(dir: &Path, capacities: Capacities) -> Result<usize, PinError> {
    let mut found = 0;
    for spec in &MAPS {
        let path = dir.join(spec.name);
        if !path.exists() {
            continue;
        }
        let foreign = |found: String| PinError::Foreign {
            path: path.clone(),
            dir: dir.display().to_string(),
            found,
            expected: format!(
                "{:?} key {} value {}",
                spec.map_type, spec.key_size, spec.value_size
            ),
        };
        let info = MapInfo::from_pin(&path).map_err(|e| foreign(format!("not a map ({e})")))?;
        let map_type = info
            .map_type()
            .map_err(|e| foreign(format!("an unknown map type ({e})")))?;
        // Ring buffers have no key/value; their size is max_entries.
        let shape_ok = map_type == spec.map_type
            && (spec.map_type == MapType::RingBuf
                || (info.key_size() == spec.key_size && info.value_size() == spec.value_size));
        if !shape_ok {
            return Err(foreign(format!(
                "{map_type:?} key {} value {}",
                info.key_size(),
                info.value_size()
            )));
        }
        if let Some((expected, key, setting)) = capacities.of(spec.name)
            && info.max_entries() != expected
        {
            return Err(PinError::Capacity {
                path: path.clone(),
                dir: dir.display().to_string(),
                key,
                found: info.max_entries(),
                expected,
                asked: if key == "max_hosts" {
                    capacities.hosts
                } else {
                    capacities.networks
                },
                found_setting: setting(info.max_entries()),
            });
        }
        found += 1;
    }
    Ok(found)
}

/// Removes everything nettrust pinned in `dir` and the directory itself. Unpinning a link detaches
/// its program; unpinning maps and programs frees them once no process holds them. Missing files
/// are fine (idempotent). Keeps going after an error and returns all of them.
pub fn remove_all(dir: &Path) -> Result<(), Vec<PinError>> {
    let mut errors = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(vec![dir_err(dir, "cannot list it", Some(e))]),
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
            Err(e) => errors.push(dir_err(
                dir,
                format!("cannot unpin {}", path.display()),
                Some(e),
            )),
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => errors.push(dir_err(dir, "cannot remove it", Some(e))),
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
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let Ok(name) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // `union bpf_attr`, obj variant: pathname @0 (u64), bpf_fd @8, file_flags @12.
    let mut attr = [0u8; 16];
    attr[0..8].copy_from_slice(&(name.as_ptr() as u64).to_ne_bytes());
    // SAFETY: bpf(2) reads the attr and the NUL-terminated path, both alive during the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, attr.as_ptr(), attr.len() as u32) };
    let Ok(fd) = i32::try_from(fd) else {
        return;
    };
    if fd < 0 {
        return;
    }
    // `union bpf_attr`, link_detach variant: link_fd @0.
    let attr = (fd as u32).to_ne_bytes();
    // SAFETY: bpf(2) reads the 4-byte attr; then we close the descriptor we got.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            attr.as_ptr(),
            attr.len() as u32,
        );
        libc::close(fd);
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
