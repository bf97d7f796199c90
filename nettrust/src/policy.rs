//! Domain allow-lists of the `[[policy]]` sections, shared with the blacklist: the entry syntax
//! ([`parse_pattern`]), the compiled matcher ([`Domains`]) and the domain-list file format
//! ([`parse_domains_file`]), and the sharing of compiled lists between a configuration and the
//! next ([`shared`]).
//!
//! An entry is an exact name (`example.com`, which matches only that name) or `*.` followed by a
//! name (`*.example.org`, which matches every name strictly below example.org, not example.org
//! itself). Names compare case-insensitively (ASCII only, RFC 4343 §3); a trailing dot is
//! ignored; IDNA names are compared in their `xn--` form, byte for byte.

mod domains;
mod file;
mod name_set;
mod shared;

pub use domains::Domains;
pub use file::{DomainsFileError, parse_domains, parse_domains_file};
pub use shared::{fingerprint, share, shared};

/// Longest name in presentation form without the trailing dot (RFC 1035 §2.3.4: 255 octets on
/// the wire, which is 253 characters of text).
pub const MAX_NAME_LEN: usize = 253;

/// A domain entry that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid domain pattern {pattern:?}: {reason}")]
pub struct PatternError {
    /// The entry as configured.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// An entry checked by [`parse_pattern`]: the name it covers, as written (not yet lower-cased),
/// without the `*.` prefix and without trailing dots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pattern<'a> {
    /// `*.name`: every name strictly below `name`.
    pub below: bool,
    /// The name.
    pub name: &'a str,
}

/// Checks one entry: `name` or `*.name` with RFC 1035 label rules (letters, digits, `-` not at
/// either end, at most 63 bytes per label, 253 in all), underscores allowed as in service names
/// (`_dmarc.example.com`). Surrounding spaces and trailing dots are ignored.
pub fn parse_pattern(value: &str) -> Result<Pattern<'_>, &'static str> {
    let trimmed = value.trim().trim_end_matches('.');
    let (below, name) = match trimmed.strip_prefix("*.") {
        Some(name) => (true, name),
        None => (false, trimmed),
    };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err("expected a domain like example.com or *.example.com");
    }
    for label in name.split('.') {
        let valid = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !valid {
            return Err(
                "not a valid domain name (labels of letters, digits, '-', at most 63 bytes)",
            );
        }
    }
    Ok(Pattern { below, name })
}

#[cfg(test)]
mod tests;
