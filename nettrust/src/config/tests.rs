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

#[test]
fn dns_defaults() {
    let s = resolve(&args(), "", &[]).unwrap();
    assert_eq!(s.fwd_proto, FwdProto::Udp);
    assert_eq!(s.fwd_tls, None);
    assert_eq!(s.fwd_udp_buffer_size, 1232);
    assert_eq!(s.fwd_timeout, DEFAULT_FWD_TIMEOUT);
    assert_eq!(s.listen_tls, None);
    assert_eq!(
        s.dns_ttl_cache, None,
        "the cache is off by default, as in the original"
    );
    assert_eq!(s.blacklist, BlacklistSettings::default());
    assert_eq!(s.blacklist.response, BlockResponse::Refused);
    assert!(!s.authorize_ptr);
}

#[test]
fn several_upstreams_are_all_whitelisted() {
    let s = resolve(
        &RunArgs::default(),
        "fwd_addr = \"192.0.2.1\"\nfwd_addrs = [\"192.0.2.2:5353\", \"[2001:db8::53]:53\", \"192.0.2.1:53\"]",
        &[],
    )
    .unwrap();
    let expected: Vec<SocketAddr> = ["192.0.2.1:53", "192.0.2.2:5353", "[2001:db8::53]:53"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    assert_eq!(s.fwd_addrs, expected);
    for a in &expected {
        assert!(s.whitelist_hosts.contains(&a.ip()), "{a} not whitelisted");
    }
    // Flags replace the file's list.
    let a = RunArgs {
        fwd_addr: vec!["192.0.2.9".into(), "192.0.2.10".into()],
        ..RunArgs::default()
    };
    let s = resolve(&a, "fwd_addrs = [\"192.0.2.2\"]", &[]).unwrap();
    assert_eq!(s.fwd_addrs.len(), 2);
    assert!(!s.whitelist_hosts.contains(&"192.0.2.2".parse().unwrap()));
}

#[test]
fn tls_options() {
    let s = resolve(
        &args(),
        "fwd_tls = true\nfwd_tls_cert = \"/etc/ca.pem\"\nfwd_tls_name = \"dns.example\"\nfwd_addrs = [\"192.0.2.7\"]",
        &[],
    )
    .unwrap();
    assert_eq!(s.fwd_proto, FwdProto::Tcp, "DoT implies tcp");
    assert_eq!(
        s.fwd_tls,
        Some(FwdTls {
            ca_bundle: Some("/etc/ca.pem".into()),
            name: Some("dns.example".into())
        })
    );
    // The flag's address keeps its port; a bare IP gets 853 with TLS.
    let a = RunArgs {
        fwd_addr: vec!["192.0.2.7".into()],
        fwd_tls: Some(true),
        ..RunArgs::default()
    };
    assert_eq!(
        resolve(&a, "", &[]).unwrap().fwd_addrs,
        ["192.0.2.7:853".parse().unwrap()]
    );
    let e = err(resolve(&args(), "fwd_tls = true\nfwd_proto = \"udp\"", &[]));
    assert!(e.contains("fwd_proto") && e.contains("udp"), "{e}");
    let e = err(resolve(&args(), "fwd_proto = \"quic\"", &[]));
    assert!(e.contains("fwd_proto") && e.contains("quic"), "{e}");

    let e = err(resolve(&args(), "listen_tls = true", &[]));
    assert!(e.contains("listen_cert"), "{e}");
    let s = resolve(
        &args(),
        "listen_tls_addr = \"127.0.0.1\"\nlisten_cert = \"/c.pem\"\nlisten_cert_key = \"/k.pem\"",
        &[],
    )
    .unwrap();
    let tls = s.listen_tls.unwrap();
    assert!(!tls.on_listen_addr);
    assert_eq!(tls.addr, Some("127.0.0.1:853".parse().unwrap()));
}

#[test]
fn cache_and_upstream_numbers() {
    let s = resolve(
        &args(),
        "dns_ttl_cache = 30\nfwd_udp_buffer_size = 4096\nfwd_timeout_ms = 250",
        &[],
    )
    .unwrap();
    assert_eq!(s.dns_ttl_cache, Some(std::time::Duration::from_secs(30)));
    assert_eq!(s.fwd_udp_buffer_size, 4096);
    assert_eq!(s.fwd_timeout, std::time::Duration::from_millis(250));
    // The original's -1 (and 0) mean off; the flag overrides the file.
    let a = RunArgs {
        dns_ttl_cache: Some(-1),
        ..args()
    };
    assert_eq!(
        resolve(&a, "dns_ttl_cache = 30", &[])
            .unwrap()
            .dns_ttl_cache,
        None
    );
    let e = err(resolve(&args(), "fwd_udp_buffer_size = 100", &[]));
    assert!(
        e.contains("fwd_udp_buffer_size") && e.contains("100"),
        "{e}"
    );
    let e = err(resolve(&args(), "fwd_timeout_ms = 0", &[]));
    assert!(e.contains("fwd_timeout_ms"), "{e}");
}

#[test]
fn blacklist_from_file_env_and_flag() {
    let s = resolve(
        &RunArgs {
            blacklist_response: Some("servfail".into()),
            ..args()
        },
        "[blacklist]\nhosts = [\"192.0.2.66\"]\nnetworks = [\"2001:db8:bad::1/48\"]\ndomains = [\"*.ads.example\", \"evil.example\"]\nresponse = \"nxdomain\"",
        &[
            ("NET_TRUST_BLACKLIST_HOSTS_A", "2001:db8::66"),
            ("NET_TRUST_BLACKLIST_NETWORKS_B", "203.0.113.0/24"),
        ],
    )
    .unwrap();
    let bl = s.blacklist;
    assert_eq!(bl.response, BlockResponse::ServFail, "the flag wins");
    assert_eq!(
        bl.hosts,
        [
            "2001:db8::66".parse::<IpAddr>().unwrap(),
            "192.0.2.66".parse().unwrap()
        ]
    );
    assert_eq!(
        bl.networks,
        [
            "203.0.113.0/24".parse::<IpNet>().unwrap(),
            "2001:db8:bad::/48".parse().unwrap()
        ]
    );
    assert_eq!(bl.domains, ["*.ads.example", "evil.example"]);

    for (toml, needle) in [
        ("[blacklist]\ndomains = [\"a.*.example\"]", "a.*.example"),
        ("[blacklist]\nhosts = [\"nope\"]", "nope"),
        ("[blacklist]\nresponse = \"drop\"", "drop"),
        ("[blacklist]\nnetworks = [\"10.0.0.0/99\"]", "10.0.0.0/99"),
    ] {
        let e = err(resolve(&args(), toml, &[]));
        assert!(
            e.contains("blacklist.") && e.contains(needle),
            "{toml}: {e}"
        );
    }
    let e = err(resolve(
        &args(),
        "",
        &[("NET_TRUST_BLACKLIST_HOST_X", "192.0.2.1")],
    ));
    assert!(e.contains("NET_TRUST_BLACKLIST_HOST_X"), "{e}");
    let e = err(resolve(
        &args(),
        "",
        &[("NET_TRUST_BLACKLIST_NETWORKS_X", "192.0.2.1/40")],
    ));
    assert!(
        e.contains("NET_TRUST_BLACKLIST_NETWORKS_X") && e.contains("192.0.2.1/40"),
        "{e}"
    );
}
