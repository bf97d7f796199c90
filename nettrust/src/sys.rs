//! Thin wrappers around the few raw syscalls nettrust needs.

use std::{io, path::Path};

/// `statfs(2).f_type` of the filesystem holding `path` (compare with linux/magic.h constants).
pub fn fs_magic(path: &Path) -> io::Result<i64> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: statfs writes only into the zeroed struct we pass; the path is NUL-terminated.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &raw mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[expect(
        clippy::useless_conversion,
        reason = "f_type is i64 on x86_64 but i32 on some other targets"
    )]
    Ok(i64::from(stat.f_type))
}

/// Marks `socket` as one of the daemon's upstream sockets (`SO_MARK` =
/// [`nettrust_common::UPSTREAM_MARK`]): the firewall opens the upstream servers to these only.
/// Without `CAP_NET_ADMIN` (a test run as a user) the socket stays unmarked: such a process
/// enforces nothing, and its upstream is not behind its own firewall.
pub fn mark_upstream(socket: &impl std::os::fd::AsRawFd) {
    let mark = nettrust_common::UPSTREAM_MARK;
    // SAFETY: setsockopt reads `size_of::<u32>()` bytes from a valid u32 on a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&raw const mark).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(
            "cannot mark an upstream socket: {}",
            io::Error::last_os_error()
        );
    }
}
