//! Sharing compiled domain lists between configurations. A SIGHUP reload resolves the whole
//! configuration again while the running one stays in force: without sharing, every big list
//! would be compiled a second time and held twice until the switch, even when its file did not
//! change (about 9 MB per million entries). A list is found again by a fingerprint of its
//! inline entries and its file's content, and shared (`Arc`) while any configuration holds it.

use std::{
    hash::{BuildHasher as _, Hasher as _, RandomState},
    io::Read as _,
    path::Path,
    sync::{Arc, Mutex, OnceLock, Weak},
};

use super::Domains;

/// Lists compiled from a file that some configuration may still hold, by fingerprint.
static LISTS: Mutex<Vec<(u64, Weak<Domains>)>> = Mutex::new(Vec::new());

/// The fingerprint's key, random per process: without it a file cannot be crafted to collide
/// with another.
fn key() -> &'static RandomState {
    static KEY: OnceLock<RandomState> = OnceLock::new();
    KEY.get_or_init(RandomState::new)
}

/// A fingerprint of a list made of `inline` entries and the content of `file` (SipHash over the
/// entries with their lengths, the path and every byte of the file). Reading the file is the cost: about 20 ms for
/// a million lines.
pub fn fingerprint(inline: &[String], file: &Path) -> std::io::Result<u64> {
    let mut hasher = key().build_hasher();
    for entry in inline {
        hasher.write_usize(entry.len());
        hasher.write(entry.as_bytes());
    }
    hasher.write(file.as_os_str().as_encoded_bytes());
    hasher.write_u8(0);
    let mut reader = std::fs::File::open(file)?;
    let mut buffer = vec![0; 1 << 16];
    loop {
        match reader.read(&mut buffer)? {
            0 => return Ok(hasher.finish()),
            n => hasher.write(&buffer[..n]),
        }
    }
}

/// The list with this fingerprint, if a configuration still holds it.
pub fn shared(fingerprint: u64) -> Option<Arc<Domains>> {
    let lists = LISTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    lists
        .iter()
        .find(|(f, _)| *f == fingerprint)
        .and_then(|(_, list)| list.upgrade())
}

/// Records `list` under `fingerprint`, and forgets lists no configuration holds any more.
pub fn share(fingerprint: u64, list: &Arc<Domains>) {
    let mut lists = LISTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    lists.retain(|(f, l)| *f != fingerprint && l.strong_count() > 0);
    lists.push((fingerprint, Arc::downgrade(list)));
}
