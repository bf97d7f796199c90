//! Domain-list files (`allow_domains_file` of a policy, `domains_file` of the blacklist): one
//! entry per line, `#` starts a comment (a whole line or the end of one), blank lines are
//! ignored and spaces around an entry trimmed. A bad entry is an error naming the file, the line
//! and the entry.

use std::{
    io::{BufRead, Seek as _},
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
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    // A first pass counts the entries of each kind, so the sets are filled at their final size.
    let (exact, below) =
        count_entries(std::io::BufReader::with_capacity(1 << 16, &file)).map_err(read_error)?;
    file.seek(std::io::SeekFrom::Start(0)).map_err(read_error)?;
    into.reserve(exact, below);
    parse_domains(std::io::BufReader::with_capacity(1 << 16, file), path, into)
}

/// The lines of domain-list text that hold an exact entry and a `*.` entry (at most: the
/// second pass validates them and drops duplicates).
fn count_entries(mut reader: impl BufRead) -> std::io::Result<(usize, usize)> {
    let (mut exact, mut below) = (0, 0);
    let mut line = Vec::with_capacity(256);
    while {
        line.clear();
        reader.read_until(b'\n', &mut line)? > 0
    } {
        match line.iter().find(|b| !b.is_ascii_whitespace()) {
            None | Some(b'#') => {}
            Some(b'*') => below += 1,
            Some(_) => exact += 1,
        }
    }
    Ok((exact, below))
}

/// Reads domain-list text from `reader` into `into` (`path` names it in errors); returns the
/// number of entries read (duplicates included). On an error `into` is left as it was.
pub fn parse_domains(
    mut reader: impl BufRead,
    path: &Path,
    into: &mut Domains,
) -> Result<usize, DomainsFileError> {
    let mut line = Vec::with_capacity(256);
    let mut entries = 0;
    let mut adding = into.adding();
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
        adding
            .add(entry)
            .map_err(|e| bad(entry.as_bytes(), e.reason))?;
        entries += 1;
    }
    adding.finish();
    Ok(entries)
}
