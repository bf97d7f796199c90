//! `[[policy]]` sections and the `[blacklist] domains_file`.

use super::*;

/// A policy section named `name` on cgroup `cgroup`, with `extra` lines.
fn policy(name: &str, cgroup: &str, extra: &str) -> String {
    format!("[[policy]]\nname = \"{name}\"\ncgroups = [\"{cgroup}\"]\n{extra}\n")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn policies_are_resolved_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "ci.domains",
        "# CI\ncrates.io\n*.githubusercontent.com # raw\n",
    );
    let toml = policy(
        "ci",
        "/sys/fs/cgroup/ci.slice",
        &format!(
            "allow_domains = [\"Example.com.\", \"*.example.org\"]\nallow_domains_file = \"{}\"\nallow_networks = [\"192.0.2.7/24\", \"2001:db8::/32\"]",
            file.display()
        ),
    ) + &policy("web_1", "/sys/fs/cgroup/web.slice", "mode = \"Audit\"");
    let s = ok(&args(), &toml, &[]);
    let [ci, web] = &s.policies[..] else {
        panic!("{:?}", s.policies)
    };
    assert_eq!(ci.name, "ci");
    assert_eq!(ci.mode, PolicyMode::Enforce);
    assert_eq!(ci.cgroups, [PathBuf::from("/sys/fs/cgroup/ci.slice")]);
    assert_eq!(ci.domains.len(), 4);
    for (name, allowed) in [
        ("example.com", true),
        ("www.example.org", true),
        ("crates.io", true),
        ("raw.githubusercontent.com", true),
        ("example.org", false),
        ("static.crates.io", false),
    ] {
        assert_eq!(ci.domains.allows(name), allowed, "{name}");
    }
    assert_eq!(ci.domains_file.as_deref(), Some(file.as_path()));
    assert_eq!(
        ci.networks,
        [
            "192.0.2.0/24".parse::<IpNet>().unwrap(),
            "2001:db8::/32".parse().unwrap()
        ]
    );
    assert_eq!(web.name, "web_1");
    assert_eq!(web.mode, PolicyMode::Audit);
    assert!(web.domains.is_empty() && web.networks.is_empty() && web.domains_file.is_none());
}

/// Flags, config file, the expected `Settings.cgroups` and `filtered_cgroups()`.
type CgroupCase<'a> = (&'a [&'a str], String, &'a [&'a str], &'a [&'a str]);

/// Without top-level cgroups the cgroup v2 root is filtered only when there is no policy;
/// policies' cgroups are filtered in addition to the top-level ones.
#[test]
fn filtered_cgroups_follow_the_policies() {
    let root = PathBuf::from("/sys/fs/cgroup");
    let (a, b, c) = ("/sys/fs/cgroup/a", "/sys/fs/cgroup/b", "/sys/fs/cgroup/c");
    let two = policy("one", a, "") + &policy("two", b, "");
    #[rustfmt::skip]
    let cases: &[CgroupCase] = &[
        (&[UP], String::new(), &["/sys/fs/cgroup"], &["/sys/fs/cgroup"]),
        (&[UP], format!("cgroups = [\"{c}\"]"), &[c], &[c]),
        (&[UP], two.clone(), &[], &[a, b]),
        (&[UP], format!("cgroups = [\"{c}\"]\n{two}"), &[c], &[c, a, b]),
        (&[UP, "--cgroup", c], two.clone(), &[c], &[c, a, b]),
        // The root is filtered in a policy only when listed.
        (&[UP], policy("all", "/sys/fs/cgroup", ""), &[], &["/sys/fs/cgroup"]),
    ];
    for (argv, toml, cgroups, filtered) in cases {
        let s = ok(&flags(argv), toml, &[]);
        let paths = |p: &[&str]| p.iter().map(PathBuf::from).collect::<Vec<_>>();
        assert_eq!(s.cgroups, paths(cgroups), "{argv:?} {toml}");
        assert_eq!(s.filtered_cgroups(), paths(filtered), "{argv:?} {toml}");
    }
    assert!(ok(&args(), "", &[]).policies.is_empty());
    assert_eq!(ok(&args(), "", &[]).filtered_cgroups(), [root]);
}

/// One case per validation rule of `[[policy]]`: each error names the key and the value.
#[test]
fn bad_policies_are_rejected_with_key_and_value() {
    let a = "/sys/fs/cgroup/a";
    let long = "p".repeat(33);
    #[rustfmt::skip]
    let cases: Vec<(Vec<&str>, String, &str, &str)> = vec![
        (vec![UP], policy("CI", a, ""), "policy.name", "CI"),
        (vec![UP], policy("c i", a, ""), "policy.name", "c i"),
        (vec![UP], policy("", a, ""), "policy.name", "\"\""),
        (vec![UP], policy(&long, a, ""), "policy.name", &long),
        (vec![UP], policy("ci.x", a, ""), "policy.name", "ci.x"),
        (vec![UP], policy("ci", a, "") + &policy("ci", "/sys/fs/cgroup/b", ""), "policy.name", "ci"),
        (vec![UP], policy("one", a, "") + &policy("two", a, ""), "policy.two.cgroups", a),
        (vec![UP], format!("[[policy]]\nname = \"ci\"\ncgroups = [\"{a}\", \"{a}/\"]"), "policy.ci.cgroups", a),
        (vec![UP], format!("cgroups = [\"{a}\"]\n{}", policy("ci", a, "")), "policy.ci.cgroups", a),
        (vec![UP, "--cgroup", a], policy("ci", a, ""), "policy.ci.cgroups", a),
        (vec![UP], "[[policy]]\nname = \"ci\"\ncgroups = []".into(), "policy.ci.cgroups", "[]"),
        (vec![UP], "[[policy]]\nname = \"ci\"".into(), "policy.ci.cgroups", "[]"),
        (vec![UP], "[[policy]]\ncgroups = [\"/sys/fs/cgroup/a\"]".into(), "name", "missing"),
        (vec![UP], policy("ci", a, "allow = []"), "allow", "unknown field"),
        (vec![UP], policy("ci", a, "allow_domains = [\"ok.test\", \"bad..test\"]"), "policy.ci.allow_domains", "bad..test"),
        (vec![UP], policy("ci", a, "allow_domains = [\"*\"]"), "policy.ci.allow_domains", "\"*\""),
        (vec![UP], policy("ci", a, "allow_networks = [\"192.0.2.0/33\"]"), "policy.ci.allow_networks", "192.0.2.0/33"),
        (vec![UP], policy("ci", a, "mode = \"block\""), "policy.ci.mode", "block"),
        (vec![UP], policy("ci", a, "allow_domains_file = \"/nonexistent/ci.domains\""), "policy.ci.allow_domains_file", "/nonexistent/ci.domains: cannot read it"),
        (vec![UP], "[blacklist]\ndomains_file = \"/nonexistent/bl\"".into(), "blacklist.domains_file", "/nonexistent/bl: cannot read it"),
    ];
    for (argv, toml, key, value) in cases {
        err_names(resolve(&flags(&argv), &toml, &[]), key, value);
    }
}

#[test]
fn domain_file_errors_name_the_key_the_file_and_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "list",
        "good.test\n\n# comment\nbad_.-x.test # why\n",
    );
    let shown = file.display();
    let expected = format!("{shown}:4: invalid domain \"bad_.-x.test\": not a valid domain name");
    let toml = policy(
        "ci",
        "/sys/fs/cgroup/a",
        &format!("allow_domains_file = \"{shown}\""),
    );
    let e = resolve(&args(), &toml, &[])
        .expect_err("bad line")
        .to_string();
    assert!(
        e.starts_with(&format!("policy.ci.allow_domains_file: {expected}")),
        "{e}"
    );
    let toml = format!("[blacklist]\ndomains_file = \"{shown}\"");
    let e = resolve(&args(), &toml, &[])
        .expect_err("bad line")
        .to_string();
    assert!(
        e.starts_with(&format!("blacklist.domains_file: {expected}")),
        "{e}"
    );
}

#[test]
fn blacklist_domains_file_adds_to_the_domains() {
    use std::str::FromStr as _;
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "blocked",
        "# feed\nmalware.test\n*.tracker.test\n",
    );
    let toml = format!(
        "[blacklist]\ndomains = [\"ads.test\"]\ndomains_file = \"{}\"",
        file.display()
    );
    let s = ok(&args(), &toml, &[]);
    assert_eq!(s.blacklist.domains, ["ads.test"]);
    assert_eq!(s.blacklist.domains_file.as_deref(), Some(file.as_path()));
    assert_eq!(s.blacklist.matcher.len(), 3);
    let proxy = crate::reload::blacklist(&s).unwrap();
    for (name, blocked) in [
        ("ads.test.", true),
        ("malware.test.", true),
        ("a.tracker.test.", true),
        ("tracker.test.", false),
        ("ok.test.", false),
    ] {
        let name = hickory_proto::rr::Name::from_str(name).unwrap();
        assert_eq!(proxy.blocks_domain(&name), blocked, "{name}");
    }
    // A changed file is a changed blacklist (what a reload compares).
    std::fs::write(&file, "malware.test\n").unwrap();
    assert_ne!(ok(&args(), &toml, &[]).blacklist, s.blacklist);
    // No file, no inline domains: nothing blocked, as before.
    assert!(ok(&args(), "", &[]).blacklist.matcher.is_empty());
}

/// A reload resolves the configuration while the running one is in force: a list whose entries
/// and file did not change is the running one (not a second copy); any change builds a new one.
#[test]
fn unchanged_domain_lists_are_shared_between_resolutions() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "list", "a.test\n*.b.test\n");
    let toml = |inline: &str| {
        format!(
            "[blacklist]\ndomains = [{inline}]\ndomains_file = \"{}\"\n{}",
            file.display(),
            policy(
                "ci",
                "/sys/fs/cgroup/a",
                &format!("allow_domains_file = \"{}\"", file.display())
            )
        )
    };
    let first = ok(&args(), &toml(""), &[]);
    let again = ok(&args(), &toml(""), &[]);
    assert!(Arc::ptr_eq(
        &first.blacklist.matcher,
        &again.blacklist.matcher
    ));
    assert!(Arc::ptr_eq(
        &first.policies[0].domains,
        &again.policies[0].domains
    ));
    // The same file with other inline entries is another list.
    let inline = ok(&args(), &toml("\"c.test\""), &[]);
    assert!(!Arc::ptr_eq(
        &first.blacklist.matcher,
        &inline.blacklist.matcher
    ));
    assert!(inline.blacklist.matcher.allows("c.test"));
    let other = ok(&args(), &toml("\"d.test\""), &[]);
    assert!(other.blacklist.matcher.allows("d.test") && !other.blacklist.matcher.allows("c.test"));
    // A changed file is read again, even at the same size.
    std::fs::write(&file, "x.test\n*.b.test\n").unwrap();
    let changed = ok(&args(), &toml(""), &[]);
    assert!(!Arc::ptr_eq(
        &first.blacklist.matcher,
        &changed.blacklist.matcher
    ));
    assert!(changed.policies[0].domains.allows("x.test"));
    assert!(!changed.policies[0].domains.allows("a.test"));
    // A bad inline entry is refused even when the file is known.
    err_names(
        resolve(&args(), &toml("\"bad..x\""), &[]),
        "blacklist.domains",
        "bad..x",
    );
}

#[test]
fn check_config_prints_the_policies() {
    let toml = policy(
        "ci",
        "/sys/fs/cgroup/a",
        "mode = \"audit\"\nallow_domains = [\"a.test\", \"*.b.test\"]\nallow_networks = [\"192.0.2.0/24\"]",
    );
    let text = ok(&args(), &toml, &[]).to_toml();
    let section = text
        .split("[[policy]]")
        .nth(1)
        .unwrap_or_else(|| panic!("no [[policy]] in\n{text}"));
    for line in [
        "name = \"ci\"",
        "mode = \"audit\"",
        "cgroups = [\"/sys/fs/cgroup/a\"]",
        "domain_entries = 2",
        "networks = [\"192.0.2.0/24\"]",
    ] {
        assert!(section.contains(line), "{line} missing in\n{text}");
    }
    assert!(!ok(&args(), "", &[]).to_toml().contains("[[policy]]"));
}

/// `load` refuses domain lists others can write, as it refuses such a config file, and checks
/// that every policy cgroup is a cgroup v2 directory.
#[test]
fn load_checks_domain_lists_and_policy_cgroups() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let list = write(dir.path(), "ci.domains", "a.test\n");
    let config = dir.path().join("nettrust.toml");
    let load_with = |toml: &str| {
        std::fs::write(&config, format!("fwd_addr = \"192.0.2.53:53\"\n{toml}")).unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
        load(&RunArgs {
            config: Some(config.clone()),
            ..RunArgs::default()
        })
    };
    let not_a_cgroup = dir.path().display().to_string();
    let with_list = policy(
        "ci",
        &not_a_cgroup,
        &format!("allow_domains_file = \"{}\"", list.display()),
    );
    let blacklist = format!("[blacklist]\ndomains_file = \"{}\"\n", list.display());
    for (toml, key) in [
        (with_list.clone(), "policy.ci.allow_domains_file"),
        (blacklist.clone(), "blacklist.domains_file"),
    ] {
        std::fs::set_permissions(&list, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = load_with(&toml)
            .expect_err("a list others can write")
            .to_string();
        assert!(e.starts_with(key), "{e}");
        assert!(e.contains(&format!("chmod 644 {}", list.display())), "{e}");
        std::fs::set_permissions(&list, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_with(&toml).map(|_| ()).err().map(|e| e.to_string());
        assert!(!e.as_deref().unwrap_or_default().contains("chmod"), "{e:?}");
    }
    let e = load_with(&with_list).expect_err("not a cgroup").to_string();
    assert!(
        e.starts_with("policy.ci.cgroups") && e.contains(&not_a_cgroup),
        "{e}"
    );
}
