//! File checks of `config::load`: who may change (or read) the config file, the DoT listener's
//! key, the upstream CA bundle and the domain lists, and the directories on their paths.

use std::path::Path;

use super::{ConfigError, invalid};

/// What a file checked by [`check_file_mode`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// The config file: whoever can write it decides what the firewall allows.
    Config,
    /// The DoT listener's private key: whoever can write it can swap it, whoever can read it can
    /// impersonate the listener.
    PrivateKey,
    /// The CA bundle the DoT upstream is verified against: whoever can write it can add a CA and
    /// answer in the upstream's name (and so authorize anything).
    Trusted,
    /// A domain list (a policy's `allow_domains_file`, the blacklist's `domains_file`): whoever
    /// can write it decides which names are allowed or blocked.
    DomainList,
}

/// Refuses a file others could change (group or other write bit, or, when nettrust runs as
/// root, an owner other than root) and a private key others could read (other read bit); the
/// error names the file and the command that fixes it. Symbolic links are followed: the mode of
/// the file read is the one that matters; the directories on the way are checked as well
/// (`check_directories`).
pub fn check_file_mode(
    key: &str,
    path: &Path,
    kind: FileKind,
    running_as_root: bool,
) -> Result<(), ConfigError> {
    use std::os::unix::fs::MetadataExt as _;
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path)
        .map_err(|e| invalid(key, &shown, format!("cannot read it: {e}")))?;
    let mode = meta.mode() & 0o7777;
    let (fixed_mode, what) = match kind {
        FileKind::Config => (0o644, "the config file"),
        FileKind::PrivateKey => (0o600, "the private key"),
        FileKind::Trusted => (0o644, "the CA bundle"),
        FileKind::DomainList => (0o644, "the domain list"),
    };
    if mode & 0o022 != 0 {
        return Err(invalid(
            key,
            &shown,
            format!(
                "{what} is writable by other users (mode {mode:04o}); fix: chmod {fixed_mode:o} {shown}"
            ),
        ));
    }
    if kind == FileKind::PrivateKey && mode & 0o004 != 0 {
        return Err(invalid(
            key,
            &shown,
            format!(
                "{what} is readable by other users (mode {mode:04o}); fix: chmod {fixed_mode:o} {shown}"
            ),
        ));
    }
    if running_as_root && meta.uid() != 0 {
        return Err(invalid(
            key,
            &shown,
            format!(
                "{what} is owned by uid {} while nettrust runs as root, so that user can change it; fix: chown root:root {shown}",
                meta.uid()
            ),
        ));
    }
    check_directories(key, path, what, running_as_root)
}

/// Refuses a file in a directory others could change: whoever can write a directory on the way
/// to the file (group or other write bit without the sticky bit, or, when nettrust runs as
/// root, a directory owned by another user) can rename another file over it after the check
/// (before the read, or before the next SIGHUP). The directories of the path as given (where its
/// symbolic links live) and of the file it leads to are checked.
fn check_directories(
    key: &str,
    path: &Path,
    what: &str,
    running_as_root: bool,
) -> Result<(), ConfigError> {
    use std::os::unix::fs::MetadataExt as _;
    let shown = path.display().to_string();
    let unreadable = |e: std::io::Error| invalid(key, &shown, format!("cannot read it: {e}"));
    let given = std::path::absolute(path).map_err(unreadable)?;
    let target = std::fs::canonicalize(path).map_err(unreadable)?;
    for file in [&given, &target] {
        for dir in file.ancestors().skip(1) {
            let meta = std::fs::symlink_metadata(dir).map_err(|e| {
                invalid(
                    key,
                    &shown,
                    format!("cannot read its directory {}: {e}", dir.display()),
                )
            })?;
            let (mode, dir) = (meta.mode() & 0o7777, dir.display());
            if mode & 0o022 != 0 && mode & 0o1000 == 0 {
                return Err(invalid(
                    key,
                    &shown,
                    format!(
                        "{what} is in a directory other users can write ({dir}, mode {mode:04o}), so they can replace it; fix: chmod go-w {dir}, or move the file to a directory only root can change (e.g. /etc/nettrust)"
                    ),
                ));
            }
            if running_as_root && meta.uid() != 0 {
                return Err(invalid(
                    key,
                    &shown,
                    format!(
                        "{what} is in a directory owned by uid {} ({dir}) while nettrust runs as root, so that user can replace it; fix: move the file to a directory only root can change (e.g. /etc/nettrust), or chown root:root {dir}",
                        meta.uid()
                    ),
                ));
            }
        }
    }
    Ok(())
}
