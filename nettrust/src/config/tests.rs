use super::*;
use std::path::Path;

use crate::{blacklist::BlockResponse, cli::RunArgs};

fn env(vars: &[(&str, &str)]) -> Env {
    Env::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap()
}

fn resolve(args: &RunArgs, toml: &str, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let file = FileConfig::parse(toml, Path::new("test.toml"))?;
    let env = Env::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))?;
    Settings::resolve(args, &file, &env, || Ok(PathBuf::from("/sys/fs/cgroup")))
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
    let s = Settings::resolve(&RunArgs::default(), &file, &Env::default(), || {
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

/// The upstream every case of the tables below has unless it says otherwise.
const UP: &str = "--fwd-addr=192.0.2.53:53";

/// Options as the command line gives them (without the environment).
fn flags(argv: &[&str]) -> RunArgs {
    use clap::FromArgMatches as _;
    let matches = env::option_command()
        .try_get_matches_from(std::iter::once("nettrust").chain(argv.iter().copied()))
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    RunArgs::from_arg_matches(&matches).unwrap()
}

/// One case: flags, config file, environment.
type Case<'a> = (&'a [&'a str], &'a str, &'a [(&'a str, &'a str)]);

/// Precedence (flag > env > file > default, also for `0`, `-1` and `false`) and accepted values:
/// each case, the setting it reads and the value expected.
#[test]
fn settings_follow_precedence_and_values() {
    type Get = fn(&Settings) -> String;
    let port: Get = |s| s.listen_addr.port().to_string();
    let ttl: Get = |s| format!("{:?}", s.authorized_ttl);
    let cache: Get = |s| format!("{:?}", s.dns_ttl_cache);
    let ten: Get = |s| {
        let ten: IpNet = "10.0.0.0/8".parse().unwrap();
        s.whitelist_networks.contains(&ten).to_string()
    };
    let keep: Get = |s| s.do_not_flush_table.to_string();
    let nets: Get = |s| format!("{:?}", s.whitelist_networks);
    let fwd: Get = |s| format!("{:?}", s.fwd_addrs);
    let size: Get = |s| s.dns_cache_size.to_string();
    let answer: Get = |s| s.max_answer_addresses.to_string();
    let hosts: Get = |s| format!("{} {}", s.max_hosts, s.max_networks);
    let clients: Get = |s| format!("{:?}", s.allow_clients);
    let hook: Get = |s| format!("{:?}", s.firewall_type);
    let env_port = [("NET_TRUST_LISTEN_ADDR", "127.0.0.1:2053")];
    let file_port = "listen_addr = \"127.0.0.1:1053\"";
    let no_private = [("NET_TRUST_WHITELIST_PRIVATE", "false")];
    let private = "whitelist_private = true\ndo_not_flush_table = true";
    let max16 = "max_hosts = 16";
    let env32 = [("NET_TRUST_MAX_HOSTS", "32")];
    let file_clients = "allow_clients = [\"192.0.2.0/24\"]";
    #[rustfmt::skip]
    let cases: &[(Case, Get, &str)] = &[
        ((&[UP], "", &[]), port, "53"),
        ((&[UP], file_port, &[]), port, "1053"),
        ((&[UP], file_port, &env_port), port, "2053"),
        ((&[UP, "--listen-addr=127.0.0.1:3053"], file_port, &env_port), port, "3053"),
        ((&[UP], "", &[]), ttl, "None"),
        ((&[UP], "authorized_ttl = 60", &[]), ttl, "Some(60s)"),
        // env -1 beats the file.
        ((&[UP], "authorized_ttl = 60", &[("NET_TRUST_AUTHORIZED_TTL", "-1")]), ttl, "None"),
        ((&[UP, "--authorized-ttl", "5"], "authorized_ttl = 60", &[("NET_TRUST_AUTHORIZED_TTL", "-1")]), ttl, "Some(5s)"),
        // dns_ttl_cache 0 from a flag disables a cache the file enabled.
        ((&[UP], "dns_ttl_cache = 300", &[]), cache, "Some(300s)"),
        ((&[UP, "--dns-ttl-cache=0"], "dns_ttl_cache = 300", &[]), cache, "None"),
        ((&[UP], private, &[]), ten, "true"),
        // env false beats file true; a flag beats env.
        ((&[UP], private, &no_private), ten, "false"),
        ((&[UP, "--whitelist-private"], private, &no_private), ten, "true"),
        ((&[UP], private, &[]), keep, "true"),
        // A flag turns a config true off.
        ((&[UP, "--do-not-flush-table=false"], private, &[]), keep, "false"),
        ((&[UP], "whitelist_private = false\nwhitelist_loopback = false", &[]), nets, "[]"),
        ((&[UP], "whitelist_private = false\nwhitelist_loopback = false\n[whitelist]\nnetworks = [\"198.51.100.7/24\"]", &[]), nets, "[198.51.100.0/24]"),
        // Flags replace the file's upstream list.
        ((&["--fwd-addr", "198.51.100.7", "--fwd-addr", "198.51.100.8:5353"], "fwd_addrs = [\"192.0.2.1\"]", &[]), fwd, "[198.51.100.7:53, 198.51.100.8:5353]"),
        ((&[UP], "", &[]), size, &crate::dns::cache::DEFAULT_CAPACITY.to_string()),
        ((&[UP], "dns_cache_size = 50", &[]), size, "50"),
        ((&[UP, "--dns-cache-size=7"], "dns_cache_size = 50", &[]), size, "7"),
        ((&[UP], "", &[]), answer, "32"),
        // The default never exceeds a smaller host map.
        ((&[UP], max16, &[]), answer, "16"),
        ((&[UP], "max_answer_addresses = 8", &[]), answer, "8"),
        ((&[UP], "max_answer_addresses = 8", &[("NET_TRUST_MAX_ANSWER_ADDRESSES", "100")]), answer, "100"),
        ((&[UP, "--max-answer-addresses=5"], "max_answer_addresses = 8", &[]), answer, "5"),
        ((&[UP], "", &[]), hosts, &format!("{} {}", nettrust_common::DEFAULT_MAX_HOSTS, nettrust_common::DEFAULT_MAX_NETS)),
        ((&[UP], "max_hosts = 16\nmax_networks = 2000", &[]), hosts, "16 2000"),
        ((&[UP, "--max-hosts=1000000"], max16, &env32), hosts, &format!("1000000 {}", nettrust_common::DEFAULT_MAX_NETS)),
        ((&[UP], max16, &env32), hosts, &format!("32 {}", nettrust_common::DEFAULT_MAX_NETS)),
        ((&[UP, "--allow-client", "203.0.113.0/24", "--allow-client", "2001:db8::1"], file_clients, &[("NET_TRUST_ALLOW_CLIENTS", "198.51.100.0/24")]), clients, "[203.0.113.0/24, 2001:db8::1/128]"),
        ((&[UP], file_clients, &[("NET_TRUST_ALLOW_CLIENTS", "198.51.100.0/24, 192.0.2.7")]), clients, "[198.51.100.0/24, 192.0.2.7/32]"),
        ((&[UP], file_clients, &[]), clients, "[192.0.2.0/24]"),
        // Case-insensitive, as the original's OUTPUT/FORWARD.
        ((&[UP], "firewall_type = \"OUTPUT\"", &[]), hook, "Output"),
    ];
    for ((argv, toml, vars), get, expected) in cases {
        let s = ok(&flags(argv), toml, vars);
        assert_eq!(get(&s), *expected, "{argv:?} {toml:?} {vars:?}");
    }
}

/// A config file setting every key (`@CERT@` and `@KEY@` stand for PEM files' paths).
const EVERY_KEY: &str = r#"
listen_addr = "[::1]:5353"
listen_tls = true
listen_cert = "@CERT@"
listen_cert_key = "@KEY@"
allow_clients = ["192.0.2.0/24", "2001:db8::7"]
fwd_addr = "2001:db8::53"
fwd_addrs = ["192.0.2.1:853", "2001:db8::53"]
fwd_proto = "tcp"
fwd_tls = true
fwd_tls_cert = "@CERT@"
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
"#;

#[test]
fn every_file_key_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let cert = pem(dir.path(), "c.pem", "CERTIFICATE");
    let key = pem(dir.path(), "k.pem", "PRIVATE KEY");
    let toml = EVERY_KEY
        .replace("@CERT@", &cert.display().to_string())
        .replace("@KEY@", &key.display().to_string());
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

/// One case per validation rule: each error names the key (flag, variable or config key) and the
/// value.
#[test]
fn bad_values_are_rejected_with_key_and_value() {
    #[rustfmt::skip]
    let cases: &[(Case, &str, &str)] = &[
        ((&[UP, "--listen-addr", "127.0.0.1:99999"], "", &[]), "--listen-addr", "127.0.0.1:99999"),
        ((&[UP], "listen_addr = \"localhost:53\"", &[]), "listen_addr", "localhost:53"),
        ((&[UP], "", &[("NET_TRUST_LISTEN_ADDR", "1.2.3:53")]), "NET_TRUST_LISTEN_ADDR", "1.2.3:53"),
        ((&[], "fwd_addr = \"192.0.2.1:0\"", &[]), "fwd_addr", "192.0.2.1:0"),
        ((&[], "fwd_addrs = [\"dns.google\"]", &[]), "fwd_addrs", "dns.google"),
        ((&[], "", &[]), "--fwd-addr", ""),
        ((&[UP, "--listen-addr", "192.0.2.53:53"], "", &[]), "--fwd-addr", "192.0.2.53:53"),
        ((&[UP], "fwd_proto = \"quic\"", &[]), "fwd_proto", "quic"),
        ((&[UP], "fwd_tls = true", &[]), "fwd_tls", "tcp"),
        ((&[UP, "--fwd-tls", "--fwd-proto=tcp", "--fwd-tls-name", "bad name!"], "", &[]), "--fwd-tls-name", "bad name!"),
        ((&[UP], "fwd_udp_buffer_size = 100", &[]), "fwd_udp_buffer_size", "100"),
        ((&[UP], "fwd_udp_buffer_size = 70000", &[]), "fwd_udp_buffer_size", ""),
        ((&[UP], "fwd_timeout_ms = 0", &[]), "fwd_timeout_ms", "0"),
        ((&[UP], "", &[("NET_TRUST_FIREWALL_BACKEND", "iptables")]), "NET_TRUST_FIREWALL_BACKEND", "iptables"),
        ((&[UP], "firewall_type = \"prerouting\"", &[]), "firewall_type", "prerouting"),
        ((&[UP], "firewall_type = \"forward\"\nfirewall_backend = \"ebpf\"", &[]), "firewall_type", "forward"),
        ((&[UP], "authorized_ttl = -2", &[]), "authorized_ttl", "-2"),
        ((&[UP], "authorized_ttl = 0", &[]), "authorized_ttl", "0"),
        ((&[UP], "dns_ttl_cache = -5", &[]), "dns_ttl_cache", "-5"),
        ((&[UP, "--ttl-check-ticker", "0"], "", &[]), "--ttl-check-ticker", "0"),
        ((&[UP], "ttl_check_interval = -3", &[]), "ttl_check_interval", "-3"),
        ((&[UP], "do_not_flush_authorized_hosts = true", &[]), "do_not_flush_authorized_hosts", "do_not_flush_table"),
        ((&[UP], "", &[("NET_TRUST_WHITELIST_HOSTS_X", "1.2.3")]), "NET_TRUST_WHITELIST_HOSTS_X", "1.2.3"),
        ((&[UP], "", &[("NET_TRUST_WHITELIST_NETWORKS_X", "10.0.0.1")]), "NET_TRUST_WHITELIST_NETWORKS_X", "10.0.0.1"),
        ((&[UP], "", &[("NET_TRUST_BLACKLIST_HOSTS_X", "evil")]), "NET_TRUST_BLACKLIST_HOSTS_X", "evil"),
        ((&[UP], "", &[("NET_TRUST_WHITELIST_HOST_TYPO", "192.0.2.1")]), "NET_TRUST_WHITELIST_HOST_TYPO", "192.0.2.1"),
        ((&[UP], "[whitelist]\nnetworks = [\"192.0.2.0/33\"]", &[]), "whitelist.networks", "192.0.2.0/33"),
        ((&[UP], "[whitelist]\nhosts = [\"example.com\"]", &[]), "whitelist.hosts", "example.com"),
        ((&[UP], "[blacklist]\nnetworks = [\"2001:db8::/129\"]", &[]), "blacklist.networks", "2001:db8::/129"),
        ((&[UP], "[blacklist]\nhosts = [\"300.1.1.1\"]", &[]), "blacklist.hosts", "300.1.1.1"),
        ((&[UP], "[blacklist]\ndomains = [\"bad..example\"]", &[]), "blacklist.domains", "bad..example"),
        ((&[UP], "[blacklist]\ndomains = [\"*\"]", &[]), "blacklist.domains", "*"),
        ((&[UP], "[blacklist]\nresponse = \"drop\"", &[]), "blacklist.response", "drop"),
        // A host both white- and blacklisted (here the upstream).
        ((&[UP], "[blacklist]\nhosts = [\"192.0.2.53\"]", &[]), "blacklist.hosts", "192.0.2.53"),
        ((&[UP], "bpffs_dir = \"relative/dir\"", &[]), "bpffs_dir", "relative/dir"),
        ((&[UP], "bpffs_dir = \"/\"", &[]), "bpffs_dir", "/"),
        ((&[UP], "metrics_addr = \"9153\"", &[]), "metrics_addr", "9153"),
        ((&[UP], "metrics_addr = \"127.0.0.1:53\"", &[]), "metrics_addr", "127.0.0.1:53"),
        ((&[UP], "log_format = \"xml\"", &[]), "log_format", "xml"),
        ((&[UP], "", &[("NET_TRUST_AUTHORIZED_TTL", "soon")]), "NET_TRUST_AUTHORIZED_TTL", "soon"),
        ((&[UP], "", &[("NET_TRUST_WHITELIST_PRIVATE", "yes")]), "NET_TRUST_WHITELIST_PRIVATE", "yes"),
        // Without listen_tls there is no certificate to serve.
        ((&[UP], "listen_tls_addr = \"127.0.0.1:853\"", &[]), "listen_tls_addr", "127.0.0.1:853"),
        ((&[UP], "dns_cache_size = 0", &[]), "dns_cache_size", "0"),
        ((&[UP], "max_answer_addresses = 0", &[]), "max_answer_addresses", "0"),
        ((&[UP], "max_hosts = 64\nmax_answer_addresses = 65", &[]), "max_answer_addresses", "65"),
        ((&[UP], "", &[("NET_TRUST_MAX_ANSWER_ADDRESSES", "many")]), "NET_TRUST_MAX_ANSWER_ADDRESSES", "many"),
        ((&[UP], "max_hosts = 0", &[]), "max_hosts", "0"),
        ((&[UP], "max_hosts = 16777217", &[]), "max_hosts", "16777217"),
        ((&[UP], "", &[("NET_TRUST_MAX_NETWORKS", "lots")]), "NET_TRUST_MAX_NETWORKS", "lots"),
        // The whitelists live in the same maps: they must fit, with room for one authorization.
        ((&[UP], "max_hosts = 2\n[whitelist]\nhosts = [\"192.0.2.1\", \"192.0.2.2\"]", &[]), "max_hosts", "2"),
        // loopback + 4 private IPv4 networks by default.
        ((&[UP], "max_networks = 3", &[]), "max_networks", "3"),
        ((&[UP], "allow_clients = [\"192.0.2.0/33\"]", &[]), "allow_clients", "192.0.2.0/33"),
        ((&[UP], "allow_clients = [\"lan\"]", &[]), "allow_clients", "lan"),
        ((&[UP], "", &[("NET_TRUST_ALLOW_CLIENTS", "10.0.0.0/8,bad")]), "NET_TRUST_ALLOW_CLIENTS", "bad"),
        ((&[UP, "--allow-client", "not-a-net"], "", &[]), "--allow-client", "not-a-net"),
        ((&[UP], "allow_clients = []", &[]), "allow_clients", "[]"),
    ];
    for ((argv, toml, vars), key, value) in cases {
        err_names(resolve(&flags(argv), toml, vars), key, value);
    }
    // A value clap cannot parse never reaches the settings: the command line names it.
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
}

/// A value clap read from the environment (`from_env`) is the environment's: read as the
/// environment layer reads it (trimmed) and named with its variable.
#[test]
fn values_clap_read_from_the_environment_are_the_environments() {
    let from_env = |addr: &str| RunArgs {
        listen_addr: Some(addr.to_owned()),
        from_env: vec!["listen_addr".to_owned()],
        ..args()
    };
    let padded = [("NET_TRUST_LISTEN_ADDR", " 127.0.0.1:2053 ")];
    assert_eq!(
        ok(&from_env(" 127.0.0.1:2053 "), "", &padded)
            .listen_addr
            .port(),
        2053
    );
    let bad = [("NET_TRUST_LISTEN_ADDR", "1.2.3:53")];
    err_names(
        resolve(&from_env("1.2.3:53"), "", &bad),
        "NET_TRUST_LISTEN_ADDR",
        "1.2.3:53",
    );
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
fn dedicated_dot_listener() {
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
        ("[[policy]]", "[[policy]] "),
    ] {
        let keys = file_keys(section);
        assert!(!keys.is_empty(), "{section}");
        // The sections themselves are checked key by key below.
        for key in keys
            .into_iter()
            .filter(|k| k != "whitelist" && k != "blacklist" && k != "policy")
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

mod patterns;
mod policies;
