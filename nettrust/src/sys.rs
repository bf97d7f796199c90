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
