//! Domain allow-lists of `[[policy]]` sections: exact names and `*.` suffixes.

use std::collections::HashSet;

/// A compiled allow-list: exact names and suffixes (`*.example.org` matches every name strictly
/// below `example.org`), lowercase, without the trailing dot.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Domains {
    exact: HashSet<String>,
    below: HashSet<String>,
}

impl Domains {
    /// The allow-list of `entries` (already validated domain patterns).
    pub fn new<'a>(entries: impl IntoIterator<Item = &'a str>) -> Self {
        let mut domains = Self::default();
        for entry in entries {
            let entry = entry.trim_end_matches('.').to_ascii_lowercase();
            match entry.strip_prefix("*.") {
                Some(parent) => domains.below.insert(parent.to_owned()),
                None => domains.exact.insert(entry),
            };
        }
        domains
    }

    /// Whether `name` (any case, trailing dot or not) is allowed.
    pub fn allows(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if self.exact.contains(&name) {
            return true;
        }
        let mut rest = name.as_str();
        while let Some((_, parent)) = rest.split_once('.') {
            if self.below.contains(parent) {
                return true;
            }
            rest = parent;
        }
        false
    }
}
