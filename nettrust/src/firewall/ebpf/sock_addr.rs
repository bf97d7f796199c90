//! The socket-address programs from userspace: the connect-time verdict (`connect4`/`connect6`,
//! always, with `sock_owner`, the `cgroup/sock_create` program that records who created each
//! socket for it) and the DNS capture programs (`dns_*`, with capture on), loaded and pinned
//! (`prog-<name>`) and attached to each filtered cgroup through pinned bpf_links next to the
//! `cgroup_skb` ones (`link-<name>-<id>`).
//!
//! A program is attached exactly when it is pinned: a start with capture off unpins the capture
//! programs, and every attach (start, `nettrust attach`, a recreated cgroup) removes the links
//! of programs that are not pinned, so they follow the running daemon's choice.

use std::{fs::File, path::Path};

use aya::{
    Ebpf,
    programs::{
        CgroupAttachMode, CgroupSock, CgroupSockAddr, CgroupSockAddrAttachType as Hook,
        CgroupSockAttachType,
    },
};
use nettrust_common::{PROGRAM_SOCK_OWNER, PROGRAMS_CAPTURE, PROGRAMS_CONNECT};

use super::{
    capture::{self, CaptureTargets},
    pins,
    types::{EbpfError, program_error},
};

/// A socket-address program: its name, attach type, and whether it runs only with DNS capture.
struct SockAddrProgram {
    name: &'static str,
    attach_type: Hook,
    capture_only: bool,
}

const fn program(name: &'static str, attach_type: Hook, capture_only: bool) -> SockAddrProgram {
    SockAddrProgram {
        name,
        attach_type,
        capture_only,
    }
}

/// The capture-only connect programs of earlier versions, whose job `connect4/6` took over:
/// their pins and links are removed wherever this module attaches.
const LEGACY: [&str; 2] = ["dns_connect4", "dns_connect6"];

/// Every socket-address program (the names of `PROGRAMS_CONNECT` and `PROGRAMS_CAPTURE`).
const PROGRAMS: [SockAddrProgram; 8] = [
    program(PROGRAMS_CONNECT[0], Hook::Connect4, false),
    program(PROGRAMS_CONNECT[1], Hook::Connect6, false),
    program(PROGRAMS_CAPTURE[0], Hook::UDPSendMsg4, true),
    program(PROGRAMS_CAPTURE[1], Hook::UDPRecvMsg4, true),
    program(PROGRAMS_CAPTURE[2], Hook::GetPeerName4, true),
    program(PROGRAMS_CAPTURE[3], Hook::UDPSendMsg6, true),
    program(PROGRAMS_CAPTURE[4], Hook::UDPRecvMsg6, true),
    program(PROGRAMS_CAPTURE[5], Hook::GetPeerName6, true),
];

/// Loads the `connect` programs and, with capture `targets`, writes those into
/// `CAPTURE_TARGETS` and loads the capture programs; pins what it loaded (replacing a previous
/// run's pins) and unpins a previous run's capture programs when capture is off.
pub(super) fn load_and_pin(
    ebpf: &mut Ebpf,
    dir: &Path,
    targets: Option<&CaptureTargets>,
) -> Result<(), EbpfError> {
    // The handle stays open until the programs are loaded: their instructions refer to its fd.
    let _targets = targets
        .map(|targets| capture::write_targets(ebpf, targets))
        .transpose()?;
    for name in LEGACY {
        let _ = std::fs::remove_file(pins::program_pin(dir, name));
    }
    for p in PROGRAMS {
        if p.capture_only && targets.is_none() {
            let _ = std::fs::remove_file(pins::program_pin(dir, p.name));
            continue;
        }
        let program: &mut CgroupSockAddr = super::types::program_mut(ebpf, p.name)?;
        program.load().map_err(|source| {
            program_error(format!("{} rejected by the kernel", p.name), source)
        })?;
        pins::pin_program(dir, p.name, |tmp| program.pin(tmp))?;
    }
    let owner: &mut CgroupSock = super::types::program_mut(ebpf, PROGRAM_SOCK_OWNER)?;
    owner.load().map_err(|source| {
        program_error(
            format!("{PROGRAM_SOCK_OWNER} rejected by the kernel"),
            source,
        )
    })?;
    pins::pin_program(dir, PROGRAM_SOCK_OWNER, |tmp| owner.pin(tmp))
}

/// Attaches the socket-address programs this run loaded and pinned to `cgroup` (`path`, id
/// `id`), and removes the cgroup's links of those not pinned.
pub(super) fn attach(
    ebpf: &mut Ebpf,
    cgroup: &File,
    dir: &Path,
    path: &Path,
    id: u64,
) -> Result<(), EbpfError> {
    for p in PROGRAMS {
        if pins::program_pin(dir, p.name).exists() {
            let program: &mut CgroupSockAddr = super::types::program_mut(ebpf, p.name)?;
            attach_one(program, p.name, cgroup, dir, path, id)?;
        } else {
            unlink(dir, p.name, id);
        }
    }
    for name in LEGACY {
        unlink(dir, name, id);
    }
    let owner: &mut CgroupSock = super::types::program_mut(ebpf, PROGRAM_SOCK_OWNER)?;
    attach_owner(owner, cgroup, dir, path, id)
}

/// Attaches the pinned socket-address programs (`nettrust attach`, a recreated cgroup), and
/// removes the cgroup's stale links of those not pinned (capture off).
pub(super) fn attach_pinned(
    cgroup: &File,
    dir: &Path,
    path: &Path,
    id: u64,
) -> Result<(), EbpfError> {
    for p in PROGRAMS {
        let pin = pins::program_pin(dir, p.name);
        if !pin.exists() {
            unlink(dir, p.name, id);
            continue;
        }
        let mut program = CgroupSockAddr::from_pin(&pin, p.attach_type).map_err(|source| {
            program_error(format!("{}: cannot open {}", p.name, pin.display()), source)
        })?;
        attach_one(&mut program, p.name, cgroup, dir, path, id)?;
    }
    for name in LEGACY {
        unlink(dir, name, id);
    }
    // A directory pinned by a version without it: connects are judged by the calling task.
    let pin = pins::program_pin(dir, PROGRAM_SOCK_OWNER);
    if !pin.exists() {
        return Ok(());
    }
    let mut owner =
        CgroupSock::from_pin(&pin, CgroupSockAttachType::SockCreate).map_err(|source| {
            program_error(
                format!("{PROGRAM_SOCK_OWNER}: cannot open {}", pin.display()),
                source,
            )
        })?;
    attach_owner(&mut owner, cgroup, dir, path, id)
}

/// Detaches and unpins the link of program `name` on cgroup `id`, if any.
fn unlink(dir: &Path, name: &str, id: u64) {
    let link = pins::link_pin(dir, name, id);
    if link.exists() {
        pins::detach_link(&link);
        let _ = std::fs::remove_file(&link);
    }
}

fn attach_one(
    program: &mut CgroupSockAddr,
    name: &str,
    cgroup: &File,
    dir: &Path,
    path: &Path,
    id: u64,
) -> Result<(), EbpfError> {
    // The kernel runs every program linked to the cgroup, each seeing the address the previous
    // one wrote, and refuses the call when any of them does.
    pins::link_cgroup(dir, name, id, path, || {
        let link_id = program
            .attach(cgroup, CgroupAttachMode::Single)
            .map_err(|e| ("attach to", e))?;
        program
            .take_link(link_id)
            .map_err(|e| ("take the link of", e))
    })
}

/// Links `sock_owner` to `cgroup` (`path`, id `id`) and pins the link.
fn attach_owner(
    program: &mut CgroupSock,
    cgroup: &File,
    dir: &Path,
    path: &Path,
    id: u64,
) -> Result<(), EbpfError> {
    pins::link_cgroup(dir, PROGRAM_SOCK_OWNER, id, path, || {
        let link_id = program
            .attach(cgroup, CgroupAttachMode::Single)
            .map_err(|e| ("attach to", e))?;
        program
            .take_link(link_id)
            .map_err(|e| ("take the link of", e))
    })
}
