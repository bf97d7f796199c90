//! Domain entries in the configuration: one entry validated for its key, and inline lists plus
//! domain-list files compiled into the matcher the blacklist and the policies use.

use std::{path::Path, sync::Arc};

use super::{ConfigError, invalid};
use crate::policy::{self, Domains};

/// Validates a domain entry (`name` or `*.name`, see [`crate::policy::parse_pattern`]). Returns it
/// lower-cased without trailing dot.
pub(super) fn parse_domain(key: &str, value: &str) -> Result<String, ConfigError> {
    policy::parse_pattern(value).map_err(|reason| invalid(key, value, reason))?;
    Ok(value.trim().trim_end_matches('.').to_ascii_lowercase())
}

/// Compiles a domain list: the entries given inline under `key`, then those of the file under
/// `file_key`, if any. A list with a file is shared with the configuration in force when its
/// entries and its file's content did not change (see [`crate::policy::shared`]).
pub(super) fn domain_list(
    (key, inline): (&str, &[String]),
    (file_key, file): (&str, Option<&Path>),
) -> Result<Arc<Domains>, ConfigError> {
    let mut domains =
        Domains::from_patterns(inline).map_err(|e| invalid(key, e.pattern, e.reason))?;
    // Unreadable: no fingerprint, and the parse below reports the error.
    let fingerprint = file.and_then(|path| policy::fingerprint(inline, path).ok());
    if let Some(list) = fingerprint.and_then(policy::shared) {
        return Ok(list);
    }
    if let Some(path) = file {
        policy::parse_domains_file(path, &mut domains).map_err(|error| {
            ConfigError::DomainsFile {
                key: file_key.to_owned(),
                error,
            }
        })?;
    }
    let domains = Arc::new(domains);
    if let Some(fingerprint) = fingerprint {
        policy::share(fingerprint, &domains);
    }
    Ok(domains)
}
