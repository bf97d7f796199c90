//! Domain-list file bytes → compiled allow-list. Must never panic; an accepted file must match
//! exactly what a plain reference model of its entries matches, through both the text and the
//! DNS-name lookups; a refused one must name the file and a line of it.
#![no_main]

use std::{collections::HashSet, path::Path};

use hickory_proto::rr::Name;
use libfuzzer_sys::fuzz_target;
use nettrust::policy::{Domains, DomainsFileError, parse_domains, parse_pattern};

/// What the reference model says about `query`: an exact entry, or an entry it is strictly below;
/// never a name longer than DNS allows (253 characters without the trailing dot).
fn expected(exact: &HashSet<String>, below: &HashSet<String>, query: &str) -> bool {
    let query = query.strip_suffix('.').unwrap_or(query).to_ascii_lowercase();
    let listed = exact.contains(&query)
        || query
            .match_indices('.')
            .any(|(i, _)| below.contains(&query[i + 1..]));
    query.len() <= 253 && listed
}

fuzz_target!(|data: &[u8]| {
    let mut domains = Domains::new();
    let lines = data.split(|&b| b == b'\n').count();
    let read = match parse_domains(data, Path::new("fuzz.domains"), &mut domains) {
        Ok(read) => read,
        Err(e @ DomainsFileError::Entry { line, .. }) => {
            assert!((1..=lines).contains(&line), "line {line} of {lines}");
            assert!(e.to_string().starts_with(&format!("fuzz.domains:{line}: invalid domain ")));
            return;
        }
        Err(e) => panic!("reading from memory failed: {e}"),
    };
    assert!(domains.len() <= read);
    // The reference: the same lines, parsed the obvious way.
    let (mut exact, mut below) = (HashSet::new(), HashSet::new());
    let mut queries = vec!["com".to_owned(), "a.b".to_owned()];
    for line in data.split(|&b| b == b'\n') {
        // Comments may hold any bytes; what precedes them must be text.
        let before = line.split(|&b| b == b'#').next().unwrap_or_default();
        let entry = std::str::from_utf8(before).expect("accepted entry is UTF-8").trim();
        if entry.is_empty() {
            continue;
        }
        let pattern = parse_pattern(entry).expect("accepted entry parses");
        let name = pattern.name.to_ascii_lowercase();
        let set = if pattern.below { &mut below } else { &mut exact };
        set.insert(name.clone());
        queries.push(format!("x.{}", pattern.name));
        queries.push(format!("{}.", pattern.name.to_ascii_uppercase()));
        if let Some((_, parent)) = name.split_once('.') {
            queries.push(parent.to_owned());
        }
        queries.push(name);
    }
    assert_eq!(domains.len(), exact.len() + below.len());
    for query in &queries {
        let want = expected(&exact, &below, query);
        assert_eq!(domains.allows(query), want, "{query}");
        if let Ok(name) = Name::from_ascii(query) {
            assert_eq!(domains.allows_name(&name), want, "{query} as a name");
        }
    }
});
