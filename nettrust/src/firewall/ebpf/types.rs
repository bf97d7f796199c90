//! The bottom of the eBPF backend: its errors, the handles of the maps the daemon writes, and the
//! programs it links to each cgroup. Every other module of the backend builds on these.

use std::{io, path::PathBuf};

use aya::{
    Ebpf,
    maps::{HashMap as AyaHashMap, LpmTrie, Map, MapData, MapError},
    programs::{CgroupSkbAttachType, ProgramError},
};
use nettrust_common::{
    CgroupPath, GrantKey, HostName, HostValue, PROGRAM_EGRESS, PROGRAM_INGRESS, PROGRAM_SOCK_OWNER,
    PROGRAM_SOCKOPS, PROGRAMS_CAPTURE, PROGRAMS_CONNECT,
};

/// The two `cgroup_skb` programs and their attach types.
pub(super) const PROGRAMS: [(&str, CgroupSkbAttachType); 2] = [
    (PROGRAM_EGRESS, CgroupSkbAttachType::Egress),
    (PROGRAM_INGRESS, CgroupSkbAttachType::Ingress),
];

/// Every program linked to each filtered cgroup (one pinned link per cgroup and program): the two
/// above, `live_tcp` ([`super::live_tcp`]), `sock_owner`, the `connect` programs and, with DNS
/// capture on, the capture programs ([`super::sock_addr`]).
pub(super) const LINKED: [&str; 12] = [
    PROGRAM_EGRESS,
    PROGRAM_INGRESS,
    PROGRAM_SOCKOPS,
    PROGRAM_SOCK_OWNER,
    PROGRAMS_CONNECT[0],
    PROGRAMS_CONNECT[1],
    PROGRAMS_CAPTURE[0],
    PROGRAMS_CAPTURE[1],
    PROGRAMS_CAPTURE[2],
    PROGRAMS_CAPTURE[3],
    PROGRAMS_CAPTURE[4],
    PROGRAMS_CAPTURE[5],
];

/// `HOSTS_V6` (N = 16) from userspace: address → [`HostValue`].
pub(super) type HostMap<const N: usize> = AyaHashMap<MapData, [u8; N], HostValue>;
/// `NAMES`: an address as IPv6 (IPv4-mapped for IPv4) → the name that authorized it.
pub(super) type NameMap = AyaHashMap<MapData, [u8; 16], HostName>;
/// `GRANT_NAMES`: a policy grant (as keyed in `GRANTS`) → the name that authorized it.
pub(super) type GrantNameMap = AyaHashMap<MapData, GrantKey, HostName>;
/// `CGROUPS`: cgroup id → the cgroup's path, for `nettrust status` and the denied events.
pub(super) type CgroupMap = AyaHashMap<MapData, u64, CgroupPath>;
/// An LPM trie of networks (`NETS_V4/V6`, `BLOCKED_V4/V6`), N address bytes → flags.
pub(super) type NetTrie<const N: usize> = LpmTrie<MapData, [u8; N], u32>;

/// Errors of the eBPF backend.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    /// The binary was built without its eBPF object.
    #[error(
        "this nettrust binary was built without its eBPF object (NETTRUST_EBPF_STUB=1); rebuild with `cargo xtask build`"
    )]
    NoObject,
    /// The eBPF object could not be loaded.
    #[error("cannot load the eBPF object")]
    Load(#[source] Box<aya::EbpfError>),
    /// A program could not be loaded, pinned or attached.
    #[error("eBPF program {what}")]
    Program {
        /// What failed, naming the cgroup when attaching.
        what: String,
        /// The cause.
        #[source]
        source: ProgramError,
    },
    /// A map could not be opened, read or written.
    #[error("eBPF map {name}: {what}")]
    Map {
        /// The map's name.
        name: &'static str,
        /// What failed.
        what: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The bpffs directory or a pin in it cannot be used.
    #[error(transparent)]
    Pin(#[from] PinError),
    /// A link or program could not be pinned.
    #[error("cannot pin {cgroup}: {what}")]
    LinkPin {
        /// The cgroup or program.
        cgroup: PathBuf,
        /// What failed.
        what: String,
    },
    /// A cgroup could not be opened.
    #[error("cgroup {path}: cannot open it")]
    Cgroup {
        /// The cgroup directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Nothing is pinned in the directory.
    #[error("nothing pinned in {0}: nettrust has not run with this --bpffs-dir")]
    NotPinned(PathBuf),
}

/// An [`EbpfError::Map`] for map `name`.
pub(super) fn map_error(
    name: &'static str,
    what: impl Into<String>,
    source: impl std::error::Error + Send + Sync + 'static,
) -> EbpfError {
    EbpfError::Map {
        name,
        what: what.into(),
        source: Box::new(source),
    }
}

/// An [`EbpfError::Program`].
pub(super) fn program_error(what: impl Into<String>, source: ProgramError) -> EbpfError {
    EbpfError::Program {
        what: what.into(),
        source,
    }
}

/// An [`EbpfError::Cgroup`] for the cgroup at `path`.
pub(super) fn cgroup_error(path: &std::path::Path, source: io::Error) -> EbpfError {
    EbpfError::Cgroup {
        path: path.to_owned(),
        source,
    }
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

/// A [`PinError::Dir`] about `path`.
pub(super) fn dir_error(
    path: &std::path::Path,
    what: impl Into<String>,
    source: Option<io::Error>,
) -> PinError {
    PinError::Dir {
        path: path.to_owned(),
        what: what.into(),
        source,
    }
}

/// Takes the map `name` out of the loaded object as the aya handle `T`.
pub(super) fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, EbpfError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| {
        map_error(
            name,
            "missing from the object",
            io::Error::from(io::ErrorKind::NotFound),
        )
    })?;
    T::try_from(map).map_err(|e| map_error(name, "unexpected type", e))
}

/// The loaded program `name` of `ebpf` as the aya program type `P`.
pub(super) fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P, EbpfError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| {
            program_error(
                format!("{name} missing from the object"),
                ProgramError::NotLoaded,
            )
        })?
        .try_into()
        .map_err(|source| program_error(format!("{name} has the wrong type"), source))
}
