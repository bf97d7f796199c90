//! Domain-list files (`allow_domains_file` of a policy, `domains_file` of the blacklist): one
//! entry per line, `#` starts a comment (a whole line or the end of one), blank lines are
//! ignored and spaces around an entry trimmed. A bad entry is an error naming the file, the line
//! and the entry.

use std::{
    io::BufRead,
    path::{Path, PathBuf},
};

use super::Domains;

/// Errors of reading a domain-list file.
#[derive(Debug, thiserror::Error)]
pub enum DomainsFileError {
    /// The file could not be opened or read.
    #[error("{}: cannot read it: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause (shown in the message, which is all a SIGHUP reload logs).
        error: std::io::Error,
    },
    /// A line holds something that is not a domain entry.
    #[error("{}:{line}: invalid domain {value:?}: {reason}", path.display())]
    Entry {
        /// The file.
        path: PathBuf,
        /// Line number, from 1.
        line: usize,
        /// The entry, without comment and surrounding spaces.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Reads the domain-list file at `path` into `into`; returns the number of entries read
/// (duplicates included).
pub fn parse_domains_file(path: &Path, into: &mut Domains) -> Result<usize, DomainsFileError> {
    let read_error = |error| DomainsFileError::Read {
        path: path.to_owned(),
        error,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    // Each line's newline becomes the length byte of its entry: the file's size bounds the
    // names' bytes.
    let size = file.metadata().map_err(read_error)?.len();
    into.reserve(0, usize::try_from(size).unwrap_or(0));
    let read = parse_domains(std::io::BufReader::with_capacity(1 << 16, file), path, into);
    into.shrink_to_fit();
    read
}

/// Reads domain-list text from `reader` into `into` (`path` names it in errors); returns the
/// number of entries read (duplicates included).
pub fn parse_domains(
    mut reader: impl BufRead,
    path: &Path,
    into: &mut Domains,
) -> Result<usize, DomainsFileError> {
    let mut line = Vec::with_capacity(256);
    let mut entries = 0;
    for number in 1.. {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|error| DomainsFileError::Read {
                path: path.to_owned(),
                error,
            })?;
        if n == 0 {
            break;
        }
        let text = line.split(|&b| b == b'#').next().unwrap_or_default();
        let bad = |value: &[u8], reason| DomainsFileError::Entry {
            path: path.to_owned(),
            line: number,
            value: String::from_utf8_lossy(value).trim().to_owned(),
            reason,
        };
        let entry = std::str::from_utf8(text)
            .map_err(|_| bad(text, "not UTF-8 text"))?
            .trim();
        if entry.is_empty() {
            continue;
        }
        into.insert(entry)
            .map_err(|e| bad(entry.as_bytes(), e.reason))?;
        entries += 1;
    }
    Ok(entries)
}
