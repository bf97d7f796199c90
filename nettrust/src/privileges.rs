//! Drops what the daemon no longer needs once it is set up: every capability except those the
//! running firewall uses, in every thread of the process, and sets no-new-privs.
//!
//! Kept ([`needed`]): `CAP_NET_ADMIN` (nf_tables batches, the ctnetlink dump, `BPF_LINK_DETACH`
//! of the cgroup links at exit) and `CAP_BPF` (every `bpf(2)` command on the maps and pins while
//! `kernel.unprivileged_bpf_disabled` is set: authorizations, sweeps, reloads, metrics, exit;
//! `CAP_SYS_ADMIN` instead on kernels older than 5.8, which have no `CAP_BPF`). Dropped, among
//! others: `CAP_NET_BIND_SERVICE` (the listeners are bound), `CAP_PERFMON` and `CAP_SYS_RESOURCE`
//! (only loading needs them), `CAP_SYS_ADMIN`, `CAP_DAC_OVERRIDE`, `CAP_SETPCAP`. The bounding set
//! is reduced to the same set and no-new-privs is set (`PR_SET_NO_NEW_PRIVS`), so nothing the
//! daemon could be tricked into executing regains a capability.
//!
//! Capabilities and no-new-privs are per thread in Linux (capset(2) changes the calling thread
//! only), and the runtime's threads exist already: like glibc's `setuid` broadcast, a real-time
//! signal makes every thread apply the change to itself, and `/proc/self/task/*/status` is read
//! back until every thread shows the reduced set (threads started later inherit it).

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// `CAP_NET_ADMIN` (linux/capability.h).
pub const CAP_NET_ADMIN: u32 = 12;
/// `CAP_SETPCAP`.
const CAP_SETPCAP: u32 = 8;
/// `CAP_SYS_ADMIN`.
pub const CAP_SYS_ADMIN: u32 = 21;
/// `CAP_BPF` (Linux 5.8).
pub const CAP_BPF: u32 = 39;
/// `_LINUX_CAPABILITY_VERSION_3`.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Why privileges could not be dropped.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// A system call or a /proc read failed.
    #[error("cannot drop privileges: {what}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Some thread still shows other capabilities after every attempt.
    #[error("thread {tid} kept capabilities {cap_eff:#x} (wanted {wanted:#x})")]
    Thread {
        /// The thread id.
        tid: u32,
        /// Its effective set.
        cap_eff: u64,
        /// The set it should have.
        wanted: u64,
    },
}

/// The capability mask the running daemon needs on a kernel whose highest capability is
/// `last_cap` (`/proc/sys/kernel/cap_last_cap`).
pub fn needed(last_cap: u32) -> u64 {
    let bpf = if last_cap >= CAP_BPF {
        CAP_BPF
    } else {
        CAP_SYS_ADMIN
    };
    1 << CAP_NET_ADMIN | 1 << bpf
}

/// What each thread applies to itself (set before the signal is sent).
static KEEP: AtomicU64 = AtomicU64::new(0);
/// Highest capability number of the kernel.
static LAST_CAP: AtomicU64 = AtomicU64::new(0);

/// Raw system calls only: runs in a signal handler.
fn drop_in_this_thread() {
    let keep = KEEP.load(Ordering::SeqCst);
    let last = LAST_CAP.load(Ordering::SeqCst);
    // SAFETY: plain prctl/capset system calls with valid arguments; async-signal-safe.
    unsafe {
        for cap in 0..=last {
            if keep & (1 << cap) == 0 && libc::prctl(libc::PR_CAPBSET_READ, cap) == 1 {
                // Needs CAP_SETPCAP, still effective at this point; without it (an unprivileged
                // service manager already bounded the set) the bounding set stays as it was.
                libc::prctl(libc::PR_CAPBSET_DROP, cap);
            }
        }
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        let header = [CAPABILITY_VERSION_3, 0u32];
        // Two 32-bit halves of (effective, permitted, inheritable).
        let (lo, hi) = (keep as u32, (keep >> 32) as u32);
        let data = [lo, lo, 0u32, hi, hi, 0u32];
        libc::syscall(libc::SYS_capset, header.as_ptr(), data.as_ptr());
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    }
}

extern "C" fn on_signal(_: libc::c_int) {
    drop_in_this_thread();
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> PrivilegeError {
    move |source| PrivilegeError::Io { what, source }
}

/// A thread's effective, permitted and bounding sets and its no-new-privs flag, from
/// `/proc/.../status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadCaps {
    /// `CapEff`.
    pub effective: u64,
    /// `CapPrm`.
    pub permitted: u64,
    /// `CapBnd`.
    pub bounding: u64,
    /// `NoNewPrivs`.
    pub no_new_privs: bool,
}

/// Parses the capability lines of a `/proc/<pid>/status` (or task) file.
pub fn parse_status(status: &str) -> Option<ThreadCaps> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let hex = |name: &str| field(name).and_then(|v| u64::from_str_radix(v, 16).ok());
    Some(ThreadCaps {
        effective: hex("CapEff:")?,
        permitted: hex("CapPrm:")?,
        bounding: hex("CapBnd:")?,
        no_new_privs: field("NoNewPrivs:")? == "1",
    })
}

/// Reduces every thread of the process to [`needed`] capabilities and sets no-new-privs.
pub fn drop_privileges() -> Result<u64, PrivilegeError> {
    let last_cap: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .map_err(io("reading /proc/sys/kernel/cap_last_cap"))?
        .trim()
        .parse()
        .map_err(|_| PrivilegeError::Io {
            what: "parsing /proc/sys/kernel/cap_last_cap",
            source: std::io::ErrorKind::InvalidData.into(),
        })?;
    let own = std::fs::read_to_string("/proc/thread-self/status")
        .ok()
        .and_then(|s| parse_status(&s))
        .ok_or_else(|| PrivilegeError::Io {
            what: "reading /proc/thread-self/status",
            source: std::io::ErrorKind::InvalidData.into(),
        })?;
    // Never more than the process has (capset(2) refuses to raise): a service manager may have
    // granted less.
    let keep = needed(last_cap) & own.permitted;
    KEEP.store(keep, Ordering::SeqCst);
    LAST_CAP.store(u64::from(last_cap.min(63)), Ordering::SeqCst);
    // Whether the bounding set can be reduced (CAP_SETPCAP effective in this thread now).
    let can_bound = own.effective & (1 << CAP_SETPCAP) != 0;
    let signal = libc::SIGRTMIN() + 7;
    install_handler(signal)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        drop_in_this_thread();
        let Some((tid, cap_eff)) = signal_pending_threads(signal, keep, can_bound)? else {
            return Ok(keep);
        };
        if Instant::now() > deadline {
            return Err(PrivilegeError::Thread {
                tid,
                cap_eff,
                wanted: keep,
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Installs [`on_signal`] as the handler of `signal`.
fn install_handler(signal: libc::c_int) -> Result<(), PrivilegeError> {
    // SAFETY: installs a handler that only makes async-signal-safe system calls.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&raw mut action.sa_mask);
        if libc::sigaction(signal, &raw const action, std::ptr::null_mut()) != 0 {
            return Err(io("installing the signal handler")(
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

/// One pass over the threads of this process: sends `signal` to every thread that still holds
/// more than `keep` (or lacks `no_new_privs`, or, when `can_bound`, a reduced bounding set).
/// Returns the last such thread and its effective set, `None` when every thread is done.
fn signal_pending_threads(
    signal: libc::c_int,
    keep: u64,
    can_bound: bool,
) -> Result<Option<(u32, u64)>, PrivilegeError> {
    let pid = std::process::id();
    let mut pending = None;
    for task in std::fs::read_dir("/proc/self/task").map_err(io("listing threads"))? {
        let task = task.map_err(io("listing threads"))?;
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // A thread that exited meanwhile has nothing left to drop.
        let Some(caps) = std::fs::read_to_string(task.path().join("status"))
            .ok()
            .and_then(|s| parse_status(&s))
        else {
            continue;
        };
        let done = caps.effective == keep
            && caps.permitted == keep
            && caps.no_new_privs
            && (!can_bound || caps.bounding & !keep == 0);
        if !done {
            // SAFETY: tgkill to a thread of this process; the handler is installed.
            unsafe {
                libc::syscall(libc::SYS_tgkill, pid, tid, signal);
            }
            pending = Some((tid, caps.effective));
        }
    }
    Ok(pending)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needed_capabilities() {
        assert_eq!(needed(40), 1 << 12 | 1 << 39);
        assert_eq!(needed(37), 1 << 12 | 1 << 21);
    }

    #[test]
    fn status_lines() {
        let status = "Name:\tnettrust\nCapInh:\t0000000000000000\nCapPrm:\t0000008000001000\n\
                      CapEff:\t0000008000001000\nCapBnd:\t0000008000001000\n\
                      CapAmb:\t0000000000000000\nNoNewPrivs:\t1\n";
        assert_eq!(
            parse_status(status),
            Some(ThreadCaps {
                effective: 0x80_0000_1000,
                permitted: 0x80_0000_1000,
                bounding: 0x80_0000_1000,
                no_new_privs: true,
            })
        );
        assert_eq!(parse_status("CapEff:\tzz\n"), None);
    }
}
