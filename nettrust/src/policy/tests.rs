use std::{path::Path, str::FromStr as _};

use hickory_proto::rr::Name;

use super::*;

fn domains(entries: &[&str]) -> Domains {
    Domains::from_patterns(entries).unwrap()
}

#[test]
fn matching_follows_the_entry_rules() {
    let list = domains(&[
        "example.com",
        "*.example.org",
        "Mixed.Case.Test.",
        "xn--bcher-kva.example",
    ]);
    let table: &[(&str, bool)] = &[
        // Exact: only that name.
        ("example.com", true),
        ("www.example.com", false),
        ("com", false),
        ("example.co", false),
        // Suffix: every name strictly below, not the apex.
        ("a.example.org", true),
        ("deep.a.example.org", true),
        ("example.org", false),
        ("org", false),
        // Label boundary: a name ending in the suffix's text is not below it.
        ("badexample.org", false),
        ("a.badexample.org", false),
        ("example.org.evil.test", false),
        // Case, on both sides.
        ("EXAMPLE.com", true),
        ("A.Example.ORG", true),
        ("mixed.case.test", true),
        ("MIXED.CASE.TEST", true),
        // Trailing dot on the query.
        ("example.com.", true),
        ("a.example.org.", true),
        ("example.org.", false),
        // IDNA left as is: compared in its punycode form, byte for byte.
        ("xn--bcher-kva.example", true),
        ("XN--BCHER-KVA.example.", true),
        ("bücher.example", false),
        ("xn--bcher-kvb.example", false),
        // Not names at all.
        ("", false),
        (".", false),
        ("..", false),
    ];
    for &(name, allowed) in table {
        assert_eq!(list.allows(name), allowed, "allows({name:?})");
        if let Ok(parsed) = Name::from_ascii(name) {
            assert_eq!(list.allows_name(&parsed), allowed, "allows_name({name:?})");
        }
    }
}

#[test]
fn a_dot_inside_a_label_is_not_a_label_boundary() {
    let list = domains(&["*.example.org", "x.example.org"]);
    // One label `a.example` below `org`: not below example.org.
    let name = Name::from_labels([&b"a.example"[..], b"org"]).unwrap();
    assert!(!list.allows_name(&name), "{name}");
    assert!(!list.allows(&name.to_ascii()), "{name}");
    // Two labels below example.org, the first holding a dot: below it.
    let name = Name::from_labels([&b"a.b"[..], b"example", b"org"]).unwrap();
    assert!(list.allows_name(&name), "{name}");
    assert!(list.allows(&name.to_ascii()), "{name}");
    // The exact entry x.example.org is not the single label `x.example.org`.
    let name = Name::from_labels([&b"x.example.org"[..]]).unwrap();
    assert!(!list.allows_name(&name), "{name}");
}

#[test]
fn an_empty_list_allows_nothing() {
    let list = Domains::new();
    assert!(list.is_empty());
    assert!(!list.allows("example.com"));
    assert!(!list.allows_name(&Name::from_str("example.com.").unwrap()));
}

#[test]
fn duplicates_are_stored_once_and_len_counts_both_kinds() {
    let mut list = domains(&["example.com", "EXAMPLE.com.", "*.example.com"]);
    assert_eq!(list.len(), 2);
    assert!(!list.insert("example.com").unwrap());
    assert!(list.insert("*.example.net").unwrap());
    assert_eq!(list.len(), 3);
    assert_eq!(
        list,
        domains(&["*.example.com", "*.example.net", "example.com"])
    );
}

#[test]
fn lists_compare_by_their_entries() {
    assert_eq!(
        domains(&["a.test", "*.b.test"]),
        domains(&["*.B.test", "a.test."])
    );
    assert_ne!(domains(&["a.test"]), domains(&["*.a.test"]));
    assert_ne!(domains(&["a.test"]), domains(&["a.test", "b.test"]));
    assert_eq!(Domains::new(), domains(&[]));
}

#[test]
fn bad_entries_are_refused_with_a_reason() {
    for bad in [
        "",
        " ",
        "*",
        "*.",
        "a.*.example",
        "**.example",
        "a..example",
        "-a.example",
        "a-.example",
        "a b.example",
        "bücher.example",
        "a.example/",
        &"a".repeat(64),
        &format!("{}.com", "a.".repeat(130)),
    ] {
        let e = Domains::from_patterns([bad]).expect_err(bad);
        assert_eq!(e.pattern, bad);
        assert!(!e.reason.is_empty());
    }
    for good in [
        "_dmarc.example.com",
        "*.com",
        "a-b.example",
        "1.2.3.example",
        &"a".repeat(63),
    ] {
        assert!(Domains::from_patterns([good]).is_ok(), "{good}");
    }
}

#[test]
fn many_entries_keep_matching() {
    let mut list = Domains::new();
    for i in 0..50_000 {
        list.insert(&format!("host{i}.example")).unwrap();
        list.insert(&format!("*.zone{i}.example")).unwrap();
    }
    assert_eq!(list.len(), 100_000);
    for i in (0..50_000).step_by(997) {
        assert!(list.allows(&format!("host{i}.example")));
        assert!(list.allows(&format!("www.zone{i}.example")));
        assert!(!list.allows(&format!("zone{i}.example")));
        assert!(!list.allows(&format!("x.host{i}.example")));
    }
    assert!(!list.allows("host50000.example"));
}

fn parse(text: &str) -> Result<Domains, DomainsFileError> {
    let mut list = Domains::new();
    parse_domains(
        text.as_bytes(),
        Path::new("/etc/nettrust/ci.domains"),
        &mut list,
    )?;
    Ok(list)
}

#[test]
fn domain_files_take_comments_blank_lines_and_spaces() {
    let list = parse(
        "# allowed for CI\n\nexample.com\n  *.example.org   # mirrors\n\t\n# end\r\ncrates.io.\r\nlast.test",
    )
    .unwrap();
    assert_eq!(
        list,
        domains(&["example.com", "*.example.org", "crates.io", "last.test"])
    );
    assert_eq!(parse("").unwrap().len(), 0);
    assert_eq!(parse("# only a comment\n\n").unwrap().len(), 0);
}

#[test]
fn domain_file_errors_name_file_line_and_entry() {
    let table: &[(&str, &str)] = &[
        (
            "ok.test\nbad..test\n",
            "/etc/nettrust/ci.domains:2: invalid domain \"bad..test\": ",
        ),
        (
            "\n\n\n  a.*.test # comment\n",
            "/etc/nettrust/ci.domains:4: invalid domain \"a.*.test\": ",
        ),
        ("*\n", "/etc/nettrust/ci.domains:1: invalid domain \"*\": "),
        (
            "a.test b.test\n",
            "/etc/nettrust/ci.domains:1: invalid domain \"a.test b.test\": ",
        ),
        (
            "ok.test\n\u{fffd}x.test",
            "/etc/nettrust/ci.domains:2: invalid domain \"\u{fffd}x.test\": ",
        ),
    ];
    for &(text, expected) in table {
        let e = parse(text).expect_err(text).to_string();
        assert!(e.starts_with(expected), "{e:?} for {text:?}");
    }
    let mut list = Domains::new();
    let e = parse_domains(&b"ok.test\n\xff.test\n"[..], Path::new("f"), &mut list)
        .expect_err("not UTF-8")
        .to_string();
    assert!(
        e.starts_with("f:2: invalid domain \"\u{fffd}.test\": not UTF-8"),
        "{e}"
    );
}

#[test]
fn domain_files_are_read_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("list");
    std::fs::write(&path, "a.test\n*.b.test\na.test\n").unwrap();
    let mut list = Domains::new();
    assert_eq!(parse_domains_file(&path, &mut list).unwrap(), 3);
    assert_eq!(list.len(), 2);
    let missing = dir.path().join("missing");
    let e = parse_domains_file(&missing, &mut list)
        .expect_err("missing")
        .to_string();
    assert!(
        e.starts_with(&format!("{}: cannot read it: ", missing.display())),
        "{e}"
    );
}

#[test]
fn a_big_file_matches_exact_suffix_case_and_trailing_dot() {
    let mut text = String::new();
    for i in 0..100_000 {
        // Mixed case and trailing dots in the file; every tenth entry twice.
        text.push_str(&format!("Host{i}.Example.\n*.zone{i}.example\n"));
        if i % 10 == 0 {
            text.push_str(&format!("host{i}.example\n*.ZONE{i}.example.\n"));
        }
    }
    let list = parse(&text).unwrap();
    assert_eq!(list.len(), 200_000);
    for i in (0..100_000).step_by(101) {
        assert!(list.allows(&format!("host{i}.example")), "{i}");
        assert!(list.allows(&format!("HOST{i}.example.")), "{i}");
        assert!(list.allows(&format!("a.b.Zone{i}.example.")), "{i}");
        assert!(!list.allows(&format!("zone{i}.example")), "{i}");
        assert!(!list.allows(&format!("x.host{i}.example")), "{i}");
        assert!(!list.allows(&format!("host{i}.example.test")), "{i}");
    }
    assert!(!list.allows("host100000.example") && !list.allows("example"));
    // The same entries one at a time make the same list.
    let mut one = Domains::new();
    for i in 0..100_000 {
        assert!(one.insert(&format!("*.zone{i}.example")).unwrap());
        assert!(one.insert(&format!("host{i}.example")).unwrap());
    }
    assert_eq!(one, list);
}

#[test]
fn a_bad_line_leaves_the_list_as_it_was() {
    let before = domains(&["a.test", "*.b.test"]);
    let mut list = before.clone();
    assert!(list.insert("c.test").unwrap());
    let mark = list.clone();
    parse_domains(
        &b"d.test\n*.e.test\nbad..test\n"[..],
        Path::new("f"),
        &mut list,
    )
    .expect_err("line 3");
    assert_eq!(list, mark);
    assert!(list.allows("c.test") && list.allows("x.b.test"));
    assert!(!list.allows("d.test") && !list.allows("x.e.test"));
    // A good file then adds to what was there.
    parse_domains(&b"d.test\n*.e.test\n"[..], Path::new("f"), &mut list).unwrap();
    assert_eq!(
        list,
        domains(&["a.test", "*.b.test", "c.test", "d.test", "*.e.test"])
    );
    assert_ne!(list, before);
}

#[test]
fn a_list_read_from_a_file_costs_about_nine_bytes_an_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("list");
    let mut text = String::new();
    for i in 0..100_000 {
        // Long names cost what short ones do; every other entry comes twice.
        let label = "n".repeat(i % 60 + 1);
        text.push_str(&format!("{label}.{label}.{label}.h{i}.example\n"));
        if i % 2 == 0 {
            text.push_str(&format!("*.zone{i}.example\n*.zone{i}.example\n"));
        }
    }
    std::fs::write(&path, text).unwrap();
    let mut list = Domains::new();
    assert_eq!(parse_domains_file(&path, &mut list).unwrap(), 200_000);
    assert_eq!(list.len(), 150_000);
    assert!(list.memory() <= list.len() * 9, "{} bytes", list.memory());
    let label = "n".repeat(99_999 % 60 + 1);
    assert!(list.allows(&format!("{label}.{label}.{label}.h99999.example")));
    assert!(list.allows("a.zone99998.example") && !list.allows("a.zone99999.example"));
}
