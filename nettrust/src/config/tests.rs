use super::*;
use std::path::Path;

use crate::{blacklist::BlockResponse, cli::RunArgs};

fn env(vars: &[(&str, &str)]) -> Env {
    Env::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap()
}

fn resolve(args: &RunArgs, toml: &str, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let file = FileConfig::parse(toml, Path::new("test.toml"))?;
    let env = Env::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))?;
    Settings::resolve(args, file, &env, || Ok(PathBuf::from("/sys/fs/cgroup")))
}

fn args() -> RunArgs {
    RunArgs {
        fwd_addrs: vec!["192.0.2.53:53".into()],
        ..RunArgs::default()
    }
}

fn ok(args: &RunArgs, toml: &str, vars: &[(&str, &str)]) -> Settings {
    resolve(args, toml, vars).unwrap_or_else(|e| panic!("unexpected error: {e}"))
}

/// Asserts the error names both the key and the value.
#[track_caller]
fn err_names(result: Result<Settings, ConfigError>, key: &str, value: &str) {
    let e = result.expect_err("expected an error").to_string();
    assert!(e.contains(key), "error {e:?} does not name {key:?}");
    assert!(e.contains(value), "error {e:?} does not name {value:?}");
}

fn pem(dir: &Path, name: &str, label: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!("-----BEGIN {label}-----\nAAAA\n-----END {label}-----\n"),
    )
    .unwrap();
    path
}

#[test]
fn repository_config_toml_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.toml");
    let file = FileConfig::load(&path).unwrap();
    let s = Settings::resolve(&RunArgs::default(), file, &Env::default(), || {
        Ok("/cg".into())
    })
    .unwrap();
    assert_eq!(s.listen_addr, "127.0.0.1:53".parse().unwrap());
    assert_eq!(s.backend, Backend::Auto);
    assert_eq!(s.cgroups, [PathBuf::from("/cg")]);
}

#[test]
fn config_toml_documents_every_key() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.toml"))
            .unwrap();
    let settings = toml::to_string(&ok(&args(), "", &[])).unwrap();
    for line in settings.lines() {
        let Some((key, _)) = line.split_once(" = ") else {
            continue;
        };
        let documented = match key {
            "fwd_addrs" => "fwd_addr",
            "fwd_timeout" => "fwd_timeout_ms",
            "backend" => "firewall_backend",
            "whitelist_hosts" | "whitelist_networks" => "[whitelist]",
            _ => key,
        };
        assert!(
            text.contains(documented),
            "config.toml does not document {documented}"
        );
    }
    for key in [
        "listen_tls",
        "listen_cert",
        "listen_cert_key",
        "fwd_tls_cert",
        "fwd_tls_name",
        "[blacklist]",
        "domains",
        "response",
    ] {
        assert!(text.contains(key), "config.toml does not document {key}");
    }
}

#[test]
fn empty_file_gives_defaults() {
    let s = ok(&args(), "", &[]);
    assert_eq!(s.listen_addr, "127.0.0.1:53".parse().unwrap());
    assert_eq!(s.cgroups, vec![PathBuf::from("/sys/fs/cgroup")]);
    assert_eq!(s.bpffs_dir, PathBuf::from(DEFAULT_BPFFS_DIR));
    assert_eq!(s.fwd_proto, FwdProto::Udp);
    assert_eq!(s.fwd_udp_buffer_size, 1232);
    assert_eq!(s.fwd_timeout, Duration::from_millis(2000));
    assert_eq!(s.backend, Backend::Auto);
    assert_eq!(s.firewall_type, FirewallType::Output);
    assert_eq!(s.dns_ttl_cache, None);
    assert_eq!(s.authorized_ttl, None);
    assert_eq!(s.ttl_check_interval, Duration::from_secs(30));
    assert!(!s.do_not_flush_table && !s.do_not_flush_authorized_hosts && !s.firewall_drop_input);
    assert!(s.listen_tls.is_none() && s.fwd_tls.is_none() && s.metrics_addr.is_none());
    assert_eq!(s.blacklist.response, BlockResponse::Refused);
    assert_eq!(s.log_format, LogFormat::Text);
    assert!(!s.authorize_ptr);
    for net in loopback_networks().into_iter().chain(private_networks()) {
        assert!(s.whitelist_networks.contains(&net), "{net} missing");
    }
    // The listen address is always whitelisted; the forward address only on its DNS port, over
    // UDP and TCP.
    assert!(s.whitelist_hosts.contains(&"127.0.0.1".parse().unwrap()));
    assert!(!s.whitelist_hosts.contains(&"192.0.2.53".parse().unwrap()));
    let services = crate::reload::policy(&s).services;
    assert_eq!(
        services,
        [
            crate::firewall::Service {
                addr: "192.0.2.53:53".parse().unwrap(),
                transport: crate::firewall::Transport::Tcp
            },
            crate::firewall::Service {
                addr: "192.0.2.53:53".parse().unwrap(),
                transport: crate::firewall::Transport::Udp
            },
        ]
    );
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

// Precedence matrix: flag > env > file > default, for a string, an integer (incl. 0-like edge
// values) and a boolean set to false.

#[test]
fn precedence_for_a_string_scalar() {
    let file = "listen_addr = \"127.0.0.1:1053\"";
    let env_var = [("NET_TRUST_LISTEN_ADDR", "127.0.0.1:2053")];
    let flag = RunArgs {
        listen_addr: Some("127.0.0.1:3053".into()),
        ..args()
    };
    assert_eq!(ok(&args(), "", &[]).listen_addr.port(), 53);
    assert_eq!(ok(&args(), file, &[]).listen_addr.port(), 1053);
    assert_eq!(ok(&args(), file, &env_var).listen_addr.port(), 2053);
    assert_eq!(ok(&flag, file, &env_var).listen_addr.port(), 3053);
}

#[test]
fn precedence_for_an_integer_scalar() {
    let file = "authorized_ttl = 60";
    let env_var = [("NET_TRUST_AUTHORIZED_TTL", "-1")];
    let flag = RunArgs {
        authorized_ttl: Some(5),
        ..args()
    };
    assert_eq!(ok(&args(), "", &[]).authorized_ttl, None);
    assert_eq!(
        ok(&args(), file, &[]).authorized_ttl,
        Some(Duration::from_secs(60))
    );
    assert_eq!(
        ok(&args(), file, &env_var).authorized_ttl,
        None,
        "env -1 beats the file"
    );
    assert_eq!(
        ok(&flag, file, &env_var).authorized_ttl,
        Some(Duration::from_secs(5))
    );
    // dns_ttl_cache 0 from a flag disables a cache the file enabled.
    let flag0 = RunArgs {
        dns_ttl_cache: Some(0),
        ..args()
    };
    assert_eq!(
        ok(&args(), "dns_ttl_cache = 300", &[]).dns_ttl_cache,
        Some(Duration::from_secs(300))
    );
    assert_eq!(ok(&flag0, "dns_ttl_cache = 300", &[]).dns_ttl_cache, None);
}

#[test]
fn precedence_for_a_boolean_set_false() {
    let file = "whitelist_private = true\ndo_not_flush_table = true";
    let env_var = [("NET_TRUST_WHITELIST_PRIVATE", "false")];
    let ten: IpNet = "10.0.0.0/8".parse().unwrap();
    assert!(ok(&args(), file, &[]).whitelist_networks.contains(&ten));
    assert!(
        !ok(&args(), file, &env_var)
            .whitelist_networks
            .contains(&ten),
        "env false beats file true"
    );
    let flag_true = RunArgs {
        whitelist_private: Some(true),
        ..args()
    };
    assert!(
        ok(&flag_true, file, &env_var)
            .whitelist_networks
            .contains(&ten),
        "flag beats env"
    );
    let flag_false = RunArgs {
        do_not_flush_table: Some(false),
        ..args()
    };
    assert!(ok(&args(), file, &[]).do_not_flush_table);
    assert!(
        !ok(&flag_false, file, &[]).do_not_flush_table,
        "a flag turns a config true off"
    );
}

#[test]
fn config_can_disable_whitelists() {
    let s = ok(
        &args(),
        "whitelist_private = false\nwhitelist_loopback = false",
        &[],
    );
    assert!(
        !s.whitelist_networks
            .contains(&"192.168.0.0/16".parse().unwrap())
    );
    assert!(
        !s.whitelist_networks
            .contains(&"127.0.0.0/8".parse().unwrap())
    );
}

#[test]
fn every_file_key_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let cert = pem(dir.path(), "c.pem", "CERTIFICATE");
    let key = pem(dir.path(), "k.pem", "PRIVATE KEY");
    let toml = format!(
        r#"
listen_addr = "[::1]:5353"
listen_tls = true
listen_cert = "{cert}"
listen_cert_key = "{key}"
allow_clients = ["192.0.2.0/24", "2001:db8::7"]
fwd_addr = "2001:db8::53"
fwd_addrs = ["192.0.2.1:853", "2001:db8::53"]
fwd_proto = "tcp"
fwd_tls = true
fwd_tls_cert = "{cert}"
fwd_tls_name = "dns.example.net"
fwd_udp_buffer_size = 4096
fwd_timeout_ms = 500
firewall_backend = "ebpf"
firewall_type = "output"
firewall_drop_input = true
cgroups = ["/sys/fs/cgroup/a", "/sys/fs/cgroup/b"]
dns_ttl_cache = 120
whitelist_loopback = true
whitelist_private = false
authorized_ttl = 3600
ttl_check_interval = 10
do_not_flush_table = true
do_not_flush_authorized_hosts = true
authorize_ptr = true
bpffs_dir = "/sys/fs/bpf/nt"
metrics_addr = "127.0.0.1:9153"
log_format = "json"
[whitelist]
hosts = ["203.0.113.9", "2001:db8::9"]
networks = ["198.51.100.0/24", "2001:db8:1::/48"]
[blacklist]
hosts = ["203.0.113.66"]
networks = ["2001:db8:66::/48"]
domains = ["Tracker.Example.", "*.ads.example"]
response = "nxdomain"
"#,
        cert = cert.display(),
        key = key.display()
    );
    let s = ok(&RunArgs::default(), &toml, &[]);
    assert_eq!(s.listen_addr, "[::1]:5353".parse().unwrap());
    assert_eq!(
        s.allow_clients,
        [
            "192.0.2.0/24".parse::<IpNet>().unwrap(),
            "2001:db8::7/128".parse().unwrap()
        ]
    );
    assert_eq!(
        s.listen_tls,
        Some(ListenTls {
            cert: cert.clone(),
            key
        })
    );
    assert_eq!(
        s.fwd_addrs,
        [
            "[2001:db8::53]:53".parse().unwrap(),
            "192.0.2.1:853".parse().unwrap()
        ]
    );
    assert_eq!(s.fwd_proto, FwdProto::Tcp);
    assert_eq!(
        s.fwd_tls,
        Some(FwdTls {
            ca: Some(cert),
            name: Some("dns.example.net".into())
        })
    );
    assert_eq!(s.fwd_udp_buffer_size, 4096);
    assert_eq!(s.fwd_timeout, Duration::from_millis(500));
    assert_eq!(s.backend, Backend::Ebpf);
    assert!(s.firewall_drop_input);
    assert_eq!(s.cgroups.len(), 2);
    assert_eq!(s.dns_ttl_cache, Some(Duration::from_secs(120)));
    assert_eq!(s.authorized_ttl, Some(Duration::from_secs(3600)));
    assert_eq!(s.ttl_check_interval, Duration::from_secs(10));
    assert!(s.do_not_flush_table && s.do_not_flush_authorized_hosts && s.authorize_ptr);
    assert_eq!(s.bpffs_dir, PathBuf::from("/sys/fs/bpf/nt"));
    assert_eq!(s.metrics_addr, Some("127.0.0.1:9153".parse().unwrap()));
    assert_eq!(s.log_format, LogFormat::Json);
    assert!(s.whitelist_hosts.contains(&"2001:db8::9".parse().unwrap()));
    assert!(
        !s.whitelist_hosts.contains(&"192.0.2.1".parse().unwrap()),
        "an upstream is not a whitelisted host"
    );
    // DoT: each upstream on its port over TCP, nothing else.
    let services: Vec<String> = crate::reload::policy(&s)
        .services
        .iter()
        .map(|s| format!("{} {:?}", s.addr, s.transport))
        .collect();
    assert_eq!(services, ["192.0.2.1:853 Tcp", "[2001:db8::53]:53 Tcp"]);
    assert!(
        s.whitelist_networks
            .contains(&"2001:db8:1::/48".parse().unwrap())
    );
    assert!(
        !s.whitelist_networks
            .contains(&"10.0.0.0/8".parse().unwrap())
    );
    assert_eq!(
        s.blacklist.hosts,
        ["203.0.113.66".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(
        s.blacklist.networks,
        ["2001:db8:66::/48".parse::<IpNet>().unwrap()]
    );
    assert_eq!(s.blacklist.domains, ["tracker.example", "*.ads.example"]);
    assert_eq!(s.blacklist.response, BlockResponse::NxDomain);
    // The effective configuration renders.
    assert!(s.to_toml().contains("authorized_ttl = 3600"));
}

#[test]
fn flags_replace_the_upstream_list() {
    let a = RunArgs {
        fwd_addrs: vec!["198.51.100.7".into(), "198.51.100.8:5353".into()],
        ..RunArgs::default()
    };
    let s = ok(&a, "fwd_addrs = [\"192.0.2.1\"]", &[]);
    assert_eq!(
        s.fwd_addrs,
        [
            "198.51.100.7:53".parse().unwrap(),
            "198.51.100.8:5353".parse().unwrap()
        ]
    );
}

#[test]
fn env_lists_add_to_config_lists() {
    let vars = [
        ("NET_TRUST_WHITELIST_HOSTS_B", "203.0.113.2"),
        ("NET_TRUST_WHITELIST_HOSTS_A", "203.0.113.1"),
        ("NET_TRUST_WHITELIST_NETWORKS_X", "198.51.100.0/24"),
        ("NET_TRUST_WHITELIST_NETWORK_LEGACY", "2001:db8:2::/48"),
        ("NET_TRUST_BLACKLIST_HOSTS_T", "203.0.113.66"),
        ("NET_TRUST_BLACKLIST_NETWORKS_T", "203.0.113.128/25"),
        ("NET_TRUST_BLACKLIST_NETWORK_OLD", "2001:db8:66::/48"),
        ("UNRELATED", "x"),
    ];
    let s = ok(
        &args(),
        "[whitelist]\nhosts = [\"203.0.113.3\"]\n[blacklist]\nhosts = [\"203.0.113.67\"]",
        &vars,
    );
    let hosts: Vec<String> = s.whitelist_hosts.iter().map(ToString::to_string).collect();
    assert_eq!(
        hosts[1..],
        ["203.0.113.1", "203.0.113.2", "203.0.113.3"],
        "env in name order, then file"
    );
    assert!(
        s.whitelist_networks
            .contains(&"198.51.100.0/24".parse().unwrap())
    );
    assert!(
        s.whitelist_networks
            .contains(&"2001:db8:2::/48".parse().unwrap())
    );
    assert_eq!(s.blacklist.hosts.len(), 2);
    assert_eq!(s.blacklist.networks.len(), 2);
}

#[test]
fn unknown_env_scalars_are_reported_not_fatal() {
    let e = env(&[("NET_TRUST_LISTEN_ADR", "x"), ("NET_TRUST_DEBUG", "true")]);
    assert_eq!(e.unknown, ["NET_TRUST_LISTEN_ADR"]);
    assert_eq!(e.scalar("debug"), Some(("NET_TRUST_DEBUG", "true")));
}

#[test]
fn network_host_bits_are_cleared() {
    let s = ok(
        &args(),
        "[whitelist]\nnetworks = [\"198.51.100.7/24\"]",
        &[],
    );
    assert!(
        s.whitelist_networks
            .contains(&"198.51.100.0/24".parse().unwrap())
    );
}

#[test]
fn config_path_can_come_from_the_environment() {
    let e = env(&[("NET_TRUST_CONFIG", "/etc/nettrust/config.toml")]);
    assert_eq!(
        config_path(&RunArgs::default(), &e).unwrap().1,
        PathBuf::from("/etc/nettrust/config.toml")
    );
    let a = RunArgs {
        config: Some("/x.toml".into()),
        ..RunArgs::default()
    };
    assert_eq!(config_path(&a, &e).unwrap().1, PathBuf::from("/x.toml"));
}

// One test per validation rule; each error names the key and the value.

#[test]
fn rejects_bad_listen_addr() {
    let a = RunArgs {
        listen_addr: Some("127.0.0.1:99999".into()),
        ..args()
    };
    err_names(resolve(&a, "", &[]), "--listen-addr", "127.0.0.1:99999");
    err_names(
        resolve(&args(), "listen_addr = \"localhost:53\"", &[]),
        "listen_addr",
        "localhost:53",
    );
    err_names(
        resolve(&args(), "", &[("NET_TRUST_LISTEN_ADDR", "1.2.3:53")]),
        "NET_TRUST_LISTEN_ADDR",
        "1.2.3:53",
    );
}

#[test]
fn rejects_bad_or_missing_upstream() {
    err_names(
        resolve(&RunArgs::default(), "fwd_addr = \"192.0.2.1:0\"", &[]),
        "fwd_addr",
        "192.0.2.1:0",
    );
    err_names(
        resolve(&RunArgs::default(), "fwd_addrs = [\"dns.google\"]", &[]),
        "fwd_addrs",
        "dns.google",
    );
    let e = resolve(&RunArgs::default(), "", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("--fwd-addr"), "{e}");
}

#[test]
fn rejects_listen_equal_to_forward() {
    let a = RunArgs {
        listen_addr: Some("192.0.2.53:53".into()),
        ..args()
    };
    err_names(resolve(&a, "", &[]), "--fwd-addr", "192.0.2.53:53");
}

#[test]
fn rejects_bad_fwd_proto() {
    err_names(
        resolve(&args(), "fwd_proto = \"quic\"", &[]),
        "fwd_proto",
        "quic",
    );
}

#[test]
fn fwd_tls_requires_tcp() {
    err_names(resolve(&args(), "fwd_tls = true", &[]), "fwd_tls", "tcp");
}

#[test]
fn rejects_unreadable_or_invalid_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let key = pem(dir.path(), "k.pem", "PRIVATE KEY");
    let cert = pem(dir.path(), "c.pem", "CERTIFICATE");
    let a = RunArgs {
        fwd_tls_cert: Some(junk.clone()),
        fwd_tls: Some(true),
        fwd_proto: Some(FwdProto::Tcp),
        ..args()
    };
    err_names(
        resolve(&a, "", &[]),
        "--fwd-tls-cert",
        &junk.display().to_string(),
    );
    let a = RunArgs {
        listen_tls: Some(true),
        listen_cert: Some(missing.clone()),
        listen_cert_key: Some(key.clone()),
        ..args()
    };
    err_names(
        resolve(&a, "", &[]),
        "--listen-cert",
        &missing.display().to_string(),
    );
    // A certificate given as key is rejected too.
    let a = RunArgs {
        listen_tls: Some(true),
        listen_cert: Some(cert.clone()),
        listen_cert_key: Some(cert.clone()),
        ..args()
    };
    err_names(
        resolve(&a, "", &[]),
        "--listen-cert-key",
        &cert.display().to_string(),
    );
    let a = RunArgs {
        listen_tls: Some(true),
        listen_cert: Some(cert),
        ..args()
    };
    let e = resolve(&a, "", &[]).unwrap_err().to_string();
    assert!(e.contains("listen_cert_key"), "{e}");
}

#[test]
fn rejects_bad_fwd_tls_name() {
    let a = RunArgs {
        fwd_tls: Some(true),
        fwd_proto: Some(FwdProto::Tcp),
        fwd_tls_name: Some("bad name!".into()),
        ..args()
    };
    err_names(resolve(&a, "", &[]), "--fwd-tls-name", "bad name!");
}

#[test]
fn rejects_small_udp_buffer() {
    err_names(
        resolve(&args(), "fwd_udp_buffer_size = 100", &[]),
        "fwd_udp_buffer_size",
        "100",
    );
    let e = resolve(&args(), "fwd_udp_buffer_size = 70000", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("fwd_udp_buffer_size"), "{e}");
}

#[test]
fn rejects_bad_timeout() {
    err_names(
        resolve(&args(), "fwd_timeout_ms = 0", &[]),
        "fwd_timeout_ms",
        "0",
    );
}

#[test]
fn rejects_bad_backend_and_type() {
    let e = <crate::cli::Cli as clap::Parser>::try_parse_from([
        "nettrust",
        "--firewall-backend",
        "iptables",
    ])
    .expect_err("iptables is no backend")
    .to_string();
    assert!(
        e.contains("--firewall-backend") && e.contains("iptables"),
        "{e}"
    );
    err_names(
        resolve(&args(), "", &[("NET_TRUST_FIREWALL_BACKEND", "iptables")]),
        "NET_TRUST_FIREWALL_BACKEND",
        "iptables",
    );
    err_names(
        resolve(&args(), "firewall_type = \"prerouting\"", &[]),
        "firewall_type",
        "prerouting",
    );
    // Case-insensitive, as the original's OUTPUT/FORWARD.
    assert_eq!(
        ok(&args(), "firewall_type = \"OUTPUT\"", &[]).firewall_type,
        FirewallType::Output
    );
}

#[test]
fn rejects_forward_with_ebpf() {
    err_names(
        resolve(
            &args(),
            "firewall_type = \"forward\"\nfirewall_backend = \"ebpf\"",
            &[],
        ),
        "firewall_type",
        "forward",
    );
}

#[test]
fn rejects_bad_ttls() {
    err_names(
        resolve(&args(), "authorized_ttl = -2", &[]),
        "authorized_ttl",
        "-2",
    );
    err_names(
        resolve(&args(), "authorized_ttl = 0", &[]),
        "authorized_ttl",
        "0",
    );
    err_names(
        resolve(&args(), "dns_ttl_cache = -5", &[]),
        "dns_ttl_cache",
        "-5",
    );
}

#[test]
fn rejects_ticker_below_one() {
    let a = RunArgs {
        ttl_check_interval: Some(0),
        ..args()
    };
    err_names(resolve(&a, "", &[]), "--ttl-check-ticker", "0");
    err_names(
        resolve(&args(), "ttl_check_interval = -3", &[]),
        "ttl_check_interval",
        "-3",
    );
}

#[test]
fn keeping_authorized_hosts_needs_keeping_the_table() {
    err_names(
        resolve(&args(), "do_not_flush_authorized_hosts = true", &[]),
        "do_not_flush_authorized_hosts",
        "do_not_flush_table",
    );
}

#[test]
fn rejects_bad_list_entries() {
    err_names(
        resolve(&args(), "", &[("NET_TRUST_WHITELIST_HOSTS_X", "1.2.3")]),
        "NET_TRUST_WHITELIST_HOSTS_X",
        "1.2.3",
    );
    err_names(
        resolve(
            &args(),
            "",
            &[("NET_TRUST_WHITELIST_NETWORKS_X", "10.0.0.1")],
        ),
        "NET_TRUST_WHITELIST_NETWORKS_X",
        "10.0.0.1",
    );
    err_names(
        resolve(&args(), "", &[("NET_TRUST_BLACKLIST_HOSTS_X", "evil")]),
        "NET_TRUST_BLACKLIST_HOSTS_X",
        "evil",
    );
    err_names(
        resolve(
            &args(),
            "",
            &[("NET_TRUST_WHITELIST_HOST_TYPO", "192.0.2.1")],
        ),
        "NET_TRUST_WHITELIST_HOST_TYPO",
        "192.0.2.1",
    );
    err_names(
        resolve(&args(), "[whitelist]\nnetworks = [\"192.0.2.0/33\"]", &[]),
        "whitelist.networks",
        "192.0.2.0/33",
    );
    err_names(
        resolve(&args(), "[whitelist]\nhosts = [\"example.com\"]", &[]),
        "whitelist.hosts",
        "example.com",
    );
    err_names(
        resolve(&args(), "[blacklist]\nnetworks = [\"2001:db8::/129\"]", &[]),
        "blacklist.networks",
        "2001:db8::/129",
    );
    err_names(
        resolve(&args(), "[blacklist]\nhosts = [\"300.1.1.1\"]", &[]),
        "blacklist.hosts",
        "300.1.1.1",
    );
    err_names(
        resolve(&args(), "[blacklist]\ndomains = [\"bad..example\"]", &[]),
        "blacklist.domains",
        "bad..example",
    );
    err_names(
        resolve(&args(), "[blacklist]\ndomains = [\"*\"]", &[]),
        "blacklist.domains",
        "*",
    );
    err_names(
        resolve(&args(), "[blacklist]\nresponse = \"drop\"", &[]),
        "blacklist.response",
        "drop",
    );
}

#[test]
fn rejects_host_both_white_and_blacklisted() {
    err_names(
        resolve(&args(), "[blacklist]\nhosts = [\"192.0.2.53\"]", &[]),
        "blacklist.hosts",
        "192.0.2.53",
    );
}

#[test]
fn rejects_bad_bpffs_dir() {
    err_names(
        resolve(&args(), "bpffs_dir = \"relative/dir\"", &[]),
        "bpffs_dir",
        "relative/dir",
    );
    err_names(resolve(&args(), "bpffs_dir = \"/\"", &[]), "bpffs_dir", "/");
}

#[test]
fn rejects_bad_metrics_addr_and_log_format() {
    err_names(
        resolve(&args(), "metrics_addr = \"9153\"", &[]),
        "metrics_addr",
        "9153",
    );
    err_names(
        resolve(&args(), "metrics_addr = \"127.0.0.1:53\"", &[]),
        "metrics_addr",
        "127.0.0.1:53",
    );
    err_names(
        resolve(&args(), "log_format = \"xml\"", &[]),
        "log_format",
        "xml",
    );
}

#[test]
fn rejects_bad_env_scalar() {
    err_names(
        resolve(&args(), "", &[("NET_TRUST_AUTHORIZED_TTL", "soon")]),
        "NET_TRUST_AUTHORIZED_TTL",
        "soon",
    );
    err_names(
        resolve(&args(), "", &[("NET_TRUST_WHITELIST_PRIVATE", "yes")]),
        "NET_TRUST_WHITELIST_PRIVATE",
        "yes",
    );
}

#[test]
fn bad_files_are_rejected_with_the_key() {
    let corpus = [
        ("listen_adr = \"127.0.0.1:53\"", "listen_adr"),
        ("whitelist_private = \"yes\"", "whitelist_private"),
        ("[whitelist]\nhost = []", "host"),
        ("[blacklistt]", "blacklistt"),
        ("[blacklist]\ndomain = []", "domain"),
        ("cgroups = \"/sys/fs/cgroup\"", "cgroups"),
        ("listen_addr = ", "listen_addr"),
        ("authorized_ttl = \"60\"", "authorized_ttl"),
        ("fwd_udp_buffer_size = 70000", "fwd_udp_buffer_size"),
        ("ttl = 60", "ttl"),
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
fn dedicated_dot_listener_and_cache_size() {
    let dir = tempfile::tempdir().unwrap();
    let cert = pem(dir.path(), "c.pem", "CERTIFICATE");
    let key = pem(dir.path(), "k.pem", "PRIVATE KEY");
    let tls = |addr: &str| RunArgs {
        listen_tls: Some(true),
        listen_cert: Some(cert.clone()),
        listen_cert_key: Some(key.clone()),
        listen_tls_addr: Some(addr.into()),
        ..args()
    };
    let s = ok(&tls("127.0.0.2"), "", &[]);
    assert_eq!(s.listen_tls_addr, Some("127.0.0.2:853".parse().unwrap()));
    assert!(
        s.whitelist_hosts.contains(&"127.0.0.2".parse().unwrap()),
        "the DoT listener is whitelisted"
    );
    let s = ok(&tls("[::1]:8853"), "", &[]);
    assert_eq!(s.listen_tls_addr, Some("[::1]:8853".parse().unwrap()));
    err_names(
        resolve(&tls("127.0.0.1:53"), "", &[]),
        "--listen-tls-addr",
        "127.0.0.1:53",
    );
    err_names(
        resolve(&tls("nowhere"), "", &[]),
        "--listen-tls-addr",
        "nowhere",
    );
    // Without listen_tls there is no certificate to serve.
    err_names(
        resolve(&args(), "listen_tls_addr = \"127.0.0.1:853\"", &[]),
        "listen_tls_addr",
        "127.0.0.1:853",
    );

    assert_eq!(
        ok(&args(), "", &[]).dns_cache_size,
        crate::dns::cache::DEFAULT_CAPACITY
    );
    assert_eq!(ok(&args(), "dns_cache_size = 50", &[]).dns_cache_size, 50);
    let a = RunArgs {
        dns_cache_size: Some(7),
        ..args()
    };
    assert_eq!(ok(&a, "dns_cache_size = 50", &[]).dns_cache_size, 7);
    err_names(
        resolve(&args(), "dns_cache_size = 0", &[]),
        "dns_cache_size",
        "0",
    );
}

/// A count setting (`key`, flag set by `flag`, read back by `get`): its default, file < env <
/// flag, and every out-of-range or unparsable value an error naming where it came from.
fn count_setting(
    key: &str,
    flag_name: &str,
    (default, max): (usize, usize),
    flag: fn(usize) -> RunArgs,
    get: fn(&Settings) -> usize,
) {
    let var = format!("NET_TRUST_{}", key.to_uppercase());
    assert_eq!(get(&ok(&args(), "", &[])), default);
    assert_eq!(get(&ok(&args(), &format!("{key} = 4"), &[])), 4);
    assert_eq!(
        get(&ok(&args(), &format!("{key} = 4"), &[(var.as_str(), "3")])),
        3
    );
    assert_eq!(
        get(&ok(&flag(2), &format!("{key} = 4"), &[(var.as_str(), "3")])),
        2
    );
    for bad in ["0".to_owned(), (max + 1).to_string()] {
        err_names(resolve(&args(), &format!("{key} = {bad}"), &[]), key, &bad);
        err_names(
            resolve(&args(), "", &[(var.as_str(), bad.as_str())]),
            &var,
            &bad,
        );
    }
    err_names(resolve(&flag(0), "", &[]), flag_name, "0");
    err_names(
        resolve(&args(), "", &[(var.as_str(), "many")]),
        &var,
        "many",
    );
    err_names(
        resolve(&args(), &format!("{key} = \"two\""), &[]),
        key,
        "two",
    );
}

#[test]
fn worker_threads_are_configurable_and_validated() {
    count_setting(
        "worker_threads",
        "--worker-threads",
        (1, 256),
        |n| RunArgs {
            worker_threads: Some(n),
            ..args()
        },
        |s| s.worker_threads,
    );
}

#[test]
fn tcp_connection_cap_is_configurable_and_validated() {
    count_setting(
        "max_tcp_connections",
        "--max-tcp-connections",
        (crate::dns::server::DEFAULT_MAX_TCP_CONNECTIONS, 65_536),
        |n| RunArgs {
            max_tcp_connections: Some(n),
            ..args()
        },
        |s| s.max_tcp_connections,
    );
}

#[test]
fn answer_address_cap_is_configurable_and_validated() {
    assert_eq!(ok(&args(), "", &[]).max_answer_addresses, 32);
    // The default never exceeds a smaller host map.
    assert_eq!(ok(&args(), "max_hosts = 16", &[]).max_answer_addresses, 16);
    assert_eq!(
        ok(&args(), "max_answer_addresses = 8", &[]).max_answer_addresses,
        8
    );
    assert_eq!(
        ok(
            &args(),
            "max_answer_addresses = 8",
            &[("NET_TRUST_MAX_ANSWER_ADDRESSES", "100")]
        )
        .max_answer_addresses,
        100
    );
    let a = RunArgs {
        max_answer_addresses: Some(5),
        ..args()
    };
    assert_eq!(
        ok(&a, "max_answer_addresses = 8", &[]).max_answer_addresses,
        5
    );
    err_names(
        resolve(&args(), "max_answer_addresses = 0", &[]),
        "max_answer_addresses",
        "0",
    );
    err_names(
        resolve(
            &args(),
            "max_hosts = 64
max_answer_addresses = 65",
            &[],
        ),
        "max_answer_addresses",
        "65",
    );
    err_names(
        resolve(&args(), "", &[("NET_TRUST_MAX_ANSWER_ADDRESSES", "many")]),
        "NET_TRUST_MAX_ANSWER_ADDRESSES",
        "many",
    );
}

#[test]
fn map_capacities_are_configurable_and_validated() {
    let s = ok(&args(), "", &[]);
    assert_eq!(s.max_hosts, nettrust_common::DEFAULT_MAX_HOSTS);
    assert_eq!(s.max_networks, nettrust_common::DEFAULT_MAX_NETS);
    let s = ok(&args(), "max_hosts = 16\nmax_networks = 2000", &[]);
    assert_eq!((s.max_hosts, s.max_networks), (16, 2000));
    let a = RunArgs {
        max_hosts: Some(1_000_000),
        ..args()
    };
    assert_eq!(
        ok(&a, "max_hosts = 16", &[("NET_TRUST_MAX_HOSTS", "32")]).max_hosts,
        1_000_000
    );
    assert_eq!(
        ok(&args(), "max_hosts = 16", &[("NET_TRUST_MAX_HOSTS", "32")]).max_hosts,
        32
    );
    err_names(resolve(&args(), "max_hosts = 0", &[]), "max_hosts", "0");
    err_names(
        resolve(&args(), "max_hosts = 16777217", &[]),
        "max_hosts",
        "16777217",
    );
    err_names(
        resolve(&args(), "", &[("NET_TRUST_MAX_NETWORKS", "lots")]),
        "NET_TRUST_MAX_NETWORKS",
        "lots",
    );
    // The whitelists live in the same maps: they must fit, with room for one authorization.
    err_names(
        resolve(
            &args(),
            "max_hosts = 2\n[whitelist]\nhosts = [\"192.0.2.1\", \"192.0.2.2\"]",
            &[],
        ),
        "max_hosts",
        "2",
    );
    // loopback + 4 private IPv4 networks by default.
    err_names(
        resolve(&args(), "max_networks = 3", &[]),
        "max_networks",
        "3",
    );
}

fn file_with_mode(dir: &Path, name: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, "x = 1\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[test]
fn config_file_writable_by_others_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [0o664, 0o646, 0o666, 0o777] {
        let path = file_with_mode(dir.path(), &format!("c{mode:o}.toml"), mode);
        let e = check_file_mode("--config", &path, FileKind::Config, false)
            .expect_err("a config file others can write must be refused")
            .to_string();
        let shown = path.display().to_string();
        assert!(e.contains(&shown), "{e}");
        assert!(e.contains(&format!("chmod 644 {shown}")), "{e}");
        assert!(e.contains("writable"), "{e}");
    }
    for mode in [0o644, 0o600, 0o640, 0o400] {
        let path = file_with_mode(dir.path(), &format!("ok{mode:o}.toml"), mode);
        check_file_mode("--config", &path, FileKind::Config, false)
            .unwrap_or_else(|e| panic!("mode {mode:o}: {e}"));
    }
}

#[test]
fn private_key_readable_by_others_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [0o644, 0o604, 0o660, 0o606] {
        let path = file_with_mode(dir.path(), &format!("k{mode:o}.pem"), mode);
        let e = check_file_mode("listen_cert_key", &path, FileKind::PrivateKey, false)
            .expect_err("a key others can read or write must be refused")
            .to_string();
        let shown = path.display().to_string();
        assert!(e.contains("listen_cert_key") && e.contains(&shown), "{e}");
        assert!(e.contains(&format!("chmod 600 {shown}")), "{e}");
    }
    for mode in [0o600, 0o400, 0o640] {
        let path = file_with_mode(dir.path(), &format!("ok{mode:o}.pem"), mode);
        check_file_mode("listen_cert_key", &path, FileKind::PrivateKey, false)
            .unwrap_or_else(|e| panic!("mode {mode:o}: {e}"));
    }
}

#[test]
fn ca_bundle_writable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = file_with_mode(dir.path(), "ca.pem", 0o664);
    let e = check_file_mode("fwd_tls_cert", &path, FileKind::Trusted, false)
        .expect_err("a CA bundle others can write must be refused")
        .to_string();
    assert!(
        e.contains("fwd_tls_cert") && e.contains(&format!("chmod 644 {}", path.display())),
        "{e}"
    );
    let path = file_with_mode(dir.path(), "ok.pem", 0o644);
    check_file_mode("fwd_tls_cert", &path, FileKind::Trusted, false).unwrap();
}

#[test]
fn file_of_another_user_is_refused_when_running_as_root() {
    use std::os::unix::fs::MetadataExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = file_with_mode(dir.path(), "c.toml", 0o644);
    let owner = std::fs::metadata(&path).unwrap().uid();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        check_file_mode("--config", &path, FileKind::Config, true).unwrap();
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
    }
    let e = check_file_mode("--config", &path, FileKind::Config, true)
        .expect_err("a file owned by another user must be refused when running as root")
        .to_string();
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(e.contains("chown root"), "{e}");
    // Not running as root, the owner is whoever runs nettrust: not checked.
    if owner != 0 {
        check_file_mode("--config", &path, FileKind::Config, false).unwrap();
    }
}

/// A file in a directory others can write can be replaced (renamed over) after it was checked,
/// between the check and the read or before a SIGHUP: the directories on the way to it are
/// checked too, also those of a symbolic link's own path.
#[test]
fn file_in_a_directory_others_can_write_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    for mode in [0o775, 0o757, 0o777] {
        let sub = dir.path().join(format!("d{mode:o}"));
        std::fs::create_dir(&sub).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(mode)).unwrap();
        let path = file_with_mode(&sub, "c.toml", 0o644);
        let e = check_file_mode("--config", &path, FileKind::Config, false)
            .expect_err("a file in a directory others can write must be refused")
            .to_string();
        let shown = sub.display().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains(&format!("chmod go-w {shown}")), "{e}");
        // A symbolic link there to a file elsewhere: the link can be changed.
        let good = file_with_mode(dir.path(), &format!("good{mode:o}.toml"), 0o644);
        let link = sub.join("link.toml");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        let e = check_file_mode("--config", &link, FileKind::Config, false)
            .expect_err("a link in a directory others can write must be refused")
            .to_string();
        assert!(e.contains(&format!("chmod go-w {shown}")), "{e}");
        check_file_mode("--config", &good, FileKind::Config, false).unwrap();
    }
    // The sticky bit (as on /tmp): others cannot rename or remove a file they do not own.
    let sticky = dir.path().join("sticky");
    std::fs::create_dir(&sticky).unwrap();
    std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let path = file_with_mode(&sticky, "c.toml", 0o644);
    check_file_mode("--config", &path, FileKind::Config, false).unwrap();
    // Running as root, a directory of another user is refused (its owner can replace the file).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        let path = file_with_mode(&theirs, "c.toml", 0o644);
        check_file_mode("--config", &path, FileKind::Config, true).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
        let e = check_file_mode("--config", &path, FileKind::Config, true)
            .expect_err("a directory owned by another user must be refused when running as root")
            .to_string();
        assert!(
            e.contains(&format!("chown root:root {}", theirs.display())),
            "{e}"
        );
    }
}

#[test]
fn load_checks_the_config_file_and_the_key() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let cert = pem(dir.path(), "cert.pem", "CERTIFICATE");
    let key = pem(dir.path(), "key.pem", "PRIVATE KEY");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = dir.path().join("nettrust.toml");
    std::fs::write(
        &config,
        format!(
            "fwd_addr = \"192.0.2.53:53\"\ncgroups = [\"{}\"]\nlisten_tls = true\nlisten_cert = \"{}\"\nlisten_cert_key = \"{}\"\n",
            dir.path().display(),
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let a = RunArgs {
        config: Some(config.clone()),
        ..RunArgs::default()
    };
    // Whatever else `load` finds (the directory is not a cgroup), it is not the files' modes.
    let modes_ok = |result: Result<(Settings, Vec<String>), ConfigError>| match result {
        Ok(_) => true,
        Err(e) => !e.to_string().contains("chmod"),
    };
    assert!(modes_ok(load(&a)));
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).unwrap();
    let e = load(&a).expect_err("world-writable config").to_string();
    assert!(
        e.contains(&format!("chmod 644 {}", config.display())),
        "{e}"
    );
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = load(&a).expect_err("world-readable key").to_string();
    assert!(e.contains(&format!("chmod 600 {}", key.display())), "{e}");
}

#[test]
fn allow_clients_defaults_to_loopback_plus_the_listen_subnets() {
    let subnets = |ip: IpAddr| -> Vec<IpNet> {
        match ip.to_string().as_str() {
            "198.51.100.1" => vec!["198.51.100.0/24".parse().unwrap()],
            "2001:db8:ff::1" => vec!["2001:db8:ff::/64".parse().unwrap()],
            other => panic!("asked for {other}"),
        }
    };
    let resolve = |listeners: [Option<&str>; 2]| {
        let none = Options::default();
        clients::allow_clients(
            &options::Layers::new(&none, &none, &none),
            listeners.map(|l| l.map(|a| a.parse().unwrap())),
            subnets,
        )
        .unwrap()
    };
    // Loopback listener: loopback only (the interfaces are not even read).
    assert_eq!(resolve([Some("127.0.0.1:53"), None]), loopback_networks());
    let mut expected = loopback_networks();
    expected.push("198.51.100.0/24".parse().unwrap());
    assert_eq!(resolve([Some("198.51.100.1:53"), None]), expected);
    expected.push("2001:db8:ff::/64".parse().unwrap());
    assert_eq!(
        resolve([Some("198.51.100.1:53"), Some("[2001:db8:ff::1]:853")]),
        expected
    );
    // Through `resolve`, with the default listener.
    assert_eq!(ok(&args(), "", &[]).allow_clients, loopback_networks());
}

#[test]
fn allow_clients_precedence_and_bad_values() {
    let a = RunArgs {
        allow_clients: Some(vec!["203.0.113.0/24".into(), "2001:db8::1".into()]),
        ..args()
    };
    let file = "allow_clients = [\"192.0.2.0/24\"]";
    assert_eq!(
        ok(&a, file, &[("NET_TRUST_ALLOW_CLIENTS", "198.51.100.0/24")]).allow_clients,
        [
            "203.0.113.0/24".parse::<IpNet>().unwrap(),
            "2001:db8::1/128".parse().unwrap()
        ]
    );
    assert_eq!(
        ok(
            &args(),
            file,
            &[("NET_TRUST_ALLOW_CLIENTS", "198.51.100.0/24, 192.0.2.7")]
        )
        .allow_clients,
        [
            "198.51.100.0/24".parse::<IpNet>().unwrap(),
            "192.0.2.7/32".parse().unwrap()
        ]
    );
    assert_eq!(
        ok(&args(), file, &[]).allow_clients,
        ["192.0.2.0/24".parse::<IpNet>().unwrap()]
    );
    err_names(
        resolve(&args(), "allow_clients = [\"192.0.2.0/33\"]", &[]),
        "allow_clients",
        "192.0.2.0/33",
    );
    err_names(
        resolve(&args(), "allow_clients = [\"lan\"]", &[]),
        "allow_clients",
        "lan",
    );
    err_names(
        resolve(
            &args(),
            "",
            &[("NET_TRUST_ALLOW_CLIENTS", "10.0.0.0/8,bad")],
        ),
        "NET_TRUST_ALLOW_CLIENTS",
        "bad",
    );
    let flag = RunArgs {
        allow_clients: Some(vec!["not-a-net".into()]),
        ..args()
    };
    err_names(resolve(&flag, "", &[]), "--allow-client", "not-a-net");
    err_names(
        resolve(&args(), "allow_clients = []", &[]),
        "allow_clients",
        "[]",
    );
}

#[test]
fn interface_networks_reads_the_loopback_prefix() {
    // Every Linux host has 127.0.0.1/8 on lo.
    assert_eq!(
        interface_networks("127.0.0.1".parse().unwrap()),
        ["127.0.0.0/8".parse::<IpNet>().unwrap()]
    );
    // An address on no interface stands for itself.
    assert_eq!(
        interface_networks("192.0.2.250".parse().unwrap()),
        ["192.0.2.250/32".parse::<IpNet>().unwrap()]
    );
    assert!(
        !interface_networks("0.0.0.0".parse().unwrap())
            .iter()
            .any(|n| n.addr().is_loopback())
    );
}

/// Every key of a config file section (`""` for the top level) as serde knows it, read from the
/// message that lists the expected keys.
fn file_keys(section: &str) -> Vec<String> {
    let e = Options::parse(&format!("{section}\nnot_a_key = 0"), Path::new("k.toml"))
        .expect_err("not_a_key is no key")
        .to_string();
    let list = e
        .split("`not_a_key`, expected")
        .nth(1)
        .unwrap_or_else(|| panic!("{e}"));
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// `config.toml` and the README's configuration table document every option of [`Options`]: each
/// file key (top level and sections) and each flag, and every variable is `NET_TRUST_<KEY>`.
#[test]
fn config_toml_and_readme_document_every_option() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let config = std::fs::read_to_string(root.join("config.toml")).unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let rows: Vec<Vec<&str>> = readme
        .lines()
        .skip_while(|l| !l.starts_with("| flag | config key |"))
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.split('|').map(str::trim).collect())
        .collect();
    assert!(rows.len() > 30, "no configuration table in README.md");
    let documented = |line: &str, key: &str| {
        let line = line.trim_start_matches("# ");
        line.starts_with(&format!("{key} ="))
    };
    for (section, prefix) in [
        ("", ""),
        ("[whitelist]", "[whitelist] "),
        ("[blacklist]", "[blacklist] "),
    ] {
        let keys = file_keys(section);
        assert!(!keys.is_empty(), "{section}");
        // The sections themselves are checked key by key below.
        for key in keys
            .into_iter()
            .filter(|k| k != "whitelist" && k != "blacklist")
        {
            assert!(
                config.lines().any(|l| documented(l, &key)),
                "config.toml does not document {prefix}{key}"
            );
            assert!(
                rows.iter()
                    .any(|r| r[2].contains(&format!("`{prefix}")) && r[2].contains(&key)),
                "the README table does not document {prefix}{key}"
            );
        }
    }
    for (id, names) in options::names() {
        assert!(
            rows.iter()
                .any(|r| r[1].contains(&format!("`{} ", names.flag))
                    || r[1].contains(&format!("`{}[", names.flag))
                    || r[1].contains(&format!("`{}`", names.flag))),
            "the README table does not document {}",
            names.flag
        );
        let key = if id == "fwd_addrs" { "fwd_addr" } else { &id };
        if let Some(var) = names.env {
            assert_eq!(var, format!("NET_TRUST_{}", key.to_uppercase()));
        }
    }
}
