//! Loading nettrust-ebpf's object: the loader is told where the maps are pinned (adopting those a
//! previous run left) and their configured sizes, the IPv4 table's hash seed and the log level
//! are set as globals, and the programs are loaded and pinned. The egress program's aya-log
//! records are forwarded to tracing by a task.

use std::{io, path::Path};

use aya::{Ebpf, EbpfLoader};
use nettrust_common::EBPF_LOG_TARGET;

use super::{
    adopt::{Capacities, MAPS},
    capture::CaptureTargets,
    live_tcp, pins, sock_addr,
    types::{EbpfError, PROGRAMS, program_error, program_mut},
};

/// The eBPF object built from nettrust-ebpf by build.rs (empty when built with
/// `NETTRUST_EBPF_STUB=1`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nettrust"));

/// Whether this binary carries its eBPF object.
pub(super) fn has_object() -> bool {
    !OBJECT.is_empty()
}

/// Loads the object with its maps pinned in `dir` (adopted when present, created and pinned
/// otherwise) and sized for `capacities`, and the IPv4 table's hash `seed`.
pub(super) fn load(dir: &Path, capacities: Capacities, seed: u64) -> Result<Ebpf, EbpfError> {
    let home_slots = nettrust_common::host_table::home_slots(capacities.hosts);
    let log_level = ebpf_log_level();
    let mut loader = EbpfLoader::new();
    loader
        .override_global("HOST_SEED", &seed, true)
        .override_global("HOST_HOME_SLOTS", &home_slots, true)
        .override_global(aya_log::LEVEL, &log_level, true);
    let pin_paths: Vec<_> = MAPS
        .iter()
        .map(|spec| (spec.name, dir.join(spec.name)))
        .collect();
    for (name, path) in &pin_paths {
        loader.map_pin_path(name, path.as_path());
        if let Some((max_entries, _, _)) = capacities.of(name) {
            loader.map_max_entries(name, max_entries);
        }
    }
    loader
        .load(OBJECT)
        .map_err(|e| EbpfError::Load(Box::new(e)))
}

/// Loads the programs into the kernel and pins them in `dir` (`prog-<name>`), replacing a
/// previous run's pins; the socket-address programs' DNS capture only with `capture` targets.
pub(super) fn load_programs(
    ebpf: &mut Ebpf,
    dir: &Path,
    capture: Option<&CaptureTargets>,
) -> Result<(), EbpfError> {
    for (name, _) in PROGRAMS {
        let program: &mut aya::programs::CgroupSkb = program_mut(ebpf, name)?;
        program
            .load()
            .map_err(|source| program_error(format!("{name} rejected by the kernel"), source))?;
        pins::pin_program(dir, name, |tmp| program.pin(tmp))?;
    }
    live_tcp::load_and_pin(ebpf, dir)?;
    super::patterns::load_and_pin(ebpf, dir)?;
    sock_addr::load_and_pin(ebpf, dir, capture)
}

/// Lifts RLIMIT_MEMLOCK for kernels that still charge BPF maps to it (before 5.11).
pub(super) fn raise_memlock_limit() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const limit) } != 0 {
        tracing::debug!(
            "cannot raise RLIMIT_MEMLOCK: {}",
            io::Error::last_os_error()
        );
    }
}

/// The level of the egress program's aya-log records (`AYA_LOG_LEVEL`, fixed at load): the most
/// verbose level the daemon's tracing filter enables for [`EBPF_LOG_TARGET`], 0 (nothing) when
/// it enables none. The program writes only debug records, so without debug it writes nothing.
fn ebpf_log_level() -> u8 {
    use aya_log::Level;
    use tracing::{Level as T, enabled};
    let level = if enabled!(target: EBPF_LOG_TARGET, T::TRACE) {
        Level::Trace
    } else if enabled!(target: EBPF_LOG_TARGET, T::DEBUG) {
        Level::Debug
    } else if enabled!(target: EBPF_LOG_TARGET, T::INFO) {
        Level::Info
    } else if enabled!(target: EBPF_LOG_TARGET, T::WARN) {
        Level::Warn
    } else if enabled!(target: EBPF_LOG_TARGET, T::ERROR) {
        Level::Error
    } else {
        return 0;
    };
    level as u8
}

/// Forwards the egress program's aya-log records (rate-limited in the kernel) to tracing through
/// its `log` bridge, from a task woken by the ring buffer's fd (opened before the privilege drop,
/// so reading it needs no capability). The logger must stay alive: dropping it closes the
/// `AYA_LOGS` map, and the programs, loaded after this, would reference a closed fd.
pub(super) fn start_logger(ebpf: &mut Ebpf) -> Option<tokio::task::JoinHandle<()>> {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(e) => {
            tracing::warn!("eBPF debug log unavailable: {e}");
            return None;
        }
    };
    // SAFETY: the logger owns its ring buffer's fd and keeps it open until the AsyncFd (which
    // owns the logger) is dropped.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut logger = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!("eBPF debug log unavailable: {e}");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = logger.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}
