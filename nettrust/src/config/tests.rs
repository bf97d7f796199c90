use super::*;

fn resolve(args: &RunArgs, toml: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let file = FileConfig::parse(toml, Path::new("test.toml"))?;
    let env = EnvLists::from_vars(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))?;
    Settings::resolve(args, file, env, || Ok(PathBuf::from("/sys/fs/cgroup")))
}

fn args() -> RunArgs {
    RunArgs {
        fwd_addr: vec!["192.0.2.53:53".into()],
        ..RunArgs::default()
    }
}

fn err(result: Result<Settings, ConfigError>) -> String {
    result.expect_err("expected an error").to_string()
}

#[test]
fn repository_config_toml_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.toml");
    let file = FileConfig::load(&path).unwrap();
    let settings = Settings::resolve(&RunArgs::default(), file, EnvLists::default(), || {
        Ok("/cg".into())
    })
    .unwrap();
    assert_eq!(settings.listen_addr, "127.0.0.1:53".parse().unwrap());
    assert_eq!(settings.backend, Backend::Ebpf);
}

#[test]
fn empty_file_gives_defaults() {
    let s = resolve(&args(), "", &[]).unwrap();
    assert_eq!(s.listen_addr, "127.0.0.1:53".parse().unwrap());
    assert_eq!(s.cgroups, vec![PathBuf::from("/sys/fs/cgroup")]);
    assert_eq!(s.bpffs_dir, PathBuf::from(DEFAULT_BPFFS_DIR));
    for net in loopback_networks().into_iter().chain(private_networks()) {
        assert!(s.whitelist_networks.contains(&net), "{net} missing");
    }
    // Listen and forward addresses are always whitelisted.
    assert!(s.whitelist_hosts.contains(&"127.0.0.1".parse().unwrap()));
    assert!(s.whitelist_hosts.contains(&"192.0.2.53".parse().unwrap()));
}

#[test]
fn private_networks_match_the_original() {
    let nets: Vec<String> = private_networks().iter().map(ToString::to_string).collect();
    for expected in [
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "fc00::/7",
        "fe80::/10",
    ] {
        assert!(nets.contains(&expected.to_string()), "{expected}");
    }
}

#[test]
fn flags_override_config_including_false() {
    let toml =
        "whitelist_loopback = true\nwhitelist_private = true\nlisten_addr = \"127.0.0.1:5353\"\n";
    let a = RunArgs {
        whitelist_loopback: Some(false),
        whitelist_private: Some(false),
        listen_addr: Some("[::1]:53".into()),
        ..args()
    };
    let s = resolve(&a, toml, &[]).unwrap();
    assert_eq!(s.listen_addr, "[::1]:53".parse().unwrap());
    assert!(
        !s.whitelist_networks
            .contains(&"127.0.0.0/8".parse().unwrap())
    );
    assert!(
        !s.whitelist_networks
            .contains(&"10.0.0.0/8".parse().unwrap())
    );
}

#[test]
fn config_can_disable_whitelists() {
    let s = resolve(&args(), "whitelist_private = false", &[]).unwrap();
    assert!(
        !s.whitelist_networks
            .contains(&"192.168.0.0/16".parse().unwrap())
    );
    assert!(
        s.whitelist_networks
            .contains(&"127.0.0.0/8".parse().unwrap())
    );
}

#[test]
fn config_values_are_used_without_flags() {
    let toml = r#"
fwd_addr = "2001:db8::53"
cgroups = ["/sys/fs/cgroup/a", "/sys/fs/cgroup/b"]
[whitelist]
hosts = ["203.0.113.9", "2001:db8::9"]
networks = ["198.51.100.0/24", "2001:db8:1::/48"]
"#;
    let s = resolve(&RunArgs::default(), toml, &[]).unwrap();
    assert_eq!(s.fwd_addrs, ["[2001:db8::53]:53".parse().unwrap()]);
    assert_eq!(s.cgroups.len(), 2);
    assert!(s.whitelist_hosts.contains(&"2001:db8::9".parse().unwrap()));
    assert!(
        s.whitelist_networks
            .contains(&"2001:db8:1::/48".parse().unwrap())
    );
}

#[test]
fn env_lists_add_to_config_lists() {
    let env = [
        ("NET_TRUST_WHITELIST_HOSTS_B", "203.0.113.2"),
        ("NET_TRUST_WHITELIST_HOSTS_A", "203.0.113.1"),
        ("NET_TRUST_WHITELIST_NETWORKS_X", "198.51.100.0/24"),
        ("NET_TRUST_WHITELIST_NETWORK_LEGACY", "2001:db8:2::/48"),
        ("UNRELATED", "x"),
    ];
    let s = resolve(&args(), "[whitelist]\nhosts = [\"203.0.113.3\"]", &env).unwrap();
    let hosts: Vec<String> = s.whitelist_hosts.iter().map(ToString::to_string).collect();
    assert_eq!(hosts[2..], ["203.0.113.1", "203.0.113.2", "203.0.113.3"]);
    assert!(
        s.whitelist_networks
            .contains(&"198.51.100.0/24".parse().unwrap())
    );
    assert!(
        s.whitelist_networks
            .contains(&"2001:db8:2::/48".parse().unwrap())
    );
}

#[test]
fn network_host_bits_are_cleared() {
    let s = resolve(
        &args(),
        "[whitelist]\nnetworks = [\"198.51.100.7/24\"]",
        &[],
    )
    .unwrap();
    assert!(
        s.whitelist_networks
            .contains(&"198.51.100.0/24".parse().unwrap())
    );
}

#[test]
fn bad_values_name_key_and_value() {
    let e = err(resolve(
        &args(),
        "",
        &[("NET_TRUST_WHITELIST_HOSTS_X", "1.2.3")],
    ));
    assert!(
        e.contains("NET_TRUST_WHITELIST_HOSTS_X") && e.contains("1.2.3"),
        "{e}"
    );
    let e = err(resolve(
        &args(),
        "",
        &[("NET_TRUST_WHITELIST_NETWORKS_X", "10.0.0.1")],
    ));
    assert!(
        e.contains("NET_TRUST_WHITELIST_NETWORKS_X") && e.contains("10.0.0.1"),
        "{e}"
    );
    let e = err(resolve(
        &args(),
        "[whitelist]\nnetworks = [\"192.0.2.0/33\"]",
        &[],
    ));
    assert!(
        e.contains("whitelist.networks") && e.contains("192.0.2.0/33"),
        "{e}"
    );
    let e = err(resolve(
        &args(),
        "[whitelist]\nhosts = [\"example.com\"]",
        &[],
    ));
    assert!(
        e.contains("whitelist.hosts") && e.contains("example.com"),
        "{e}"
    );
    let a = RunArgs {
        listen_addr: Some("127.0.0.1:99999".into()),
        ..args()
    };
    let e = err(resolve(&a, "", &[]));
    assert!(
        e.contains("--listen-addr") && e.contains("127.0.0.1:99999"),
        "{e}"
    );
    let a = RunArgs {
        firewall_backend: Some("iptables".into()),
        ..args()
    };
    let e = err(resolve(&a, "", &[]));
    assert!(
        e.contains("--firewall-backend") && e.contains("iptables"),
        "{e}"
    );
    let e = err(resolve(
        &RunArgs::default(),
        "fwd_addr = \"192.0.2.1:0\"",
        &[],
    ));
    assert!(e.contains("fwd_addr") && e.contains("192.0.2.1:0"), "{e}");
    let e = err(resolve(
        &args(),
        "",
        &[("NET_TRUST_WHITELIST_HOST_TYPO", "192.0.2.1")],
    ));
    assert!(e.contains("NET_TRUST_WHITELIST_HOST_TYPO"), "{e}");
    let e = err(resolve(&args(), "bpffs_dir = \"relative/dir\"", &[]));
    assert!(e.contains("bpffs_dir") && e.contains("relative/dir"), "{e}");
}

#[test]
fn missing_upstream_is_an_error() {
    let e = err(resolve(&RunArgs::default(), "", &[]));
    assert!(e.contains("--fwd-addr"), "{e}");
}

#[test]
fn listen_equal_to_forward_is_rejected() {
    let a = RunArgs {
        listen_addr: Some("192.0.2.53:53".into()),
        ..args()
    };
    let e = err(resolve(&a, "", &[]));
    assert!(e.contains("192.0.2.53:53"), "{e}");
}

#[test]
fn bad_files_are_rejected_with_the_key() {
    let corpus = [
        ("listen_adr = \"127.0.0.1:53\"", "listen_adr"),
        ("whitelist_private = \"yes\"", "whitelist_private"),
        ("[whitelist]\nhost = []", "host"),
        ("[blacklistt]", "blacklistt"),
        ("cgroups = \"/sys/fs/cgroup\"", "cgroups"),
        ("listen_addr = ", "listen_addr"),
    ];
    for (text, needle) in corpus {
        let e = FileConfig::parse(text, Path::new("bad.toml"))
            .expect_err(text)
            .to_string();
        assert!(
            e.contains("bad.toml") && e.contains(needle),
            "{text:?} gave {e}"
        );
    }
}
