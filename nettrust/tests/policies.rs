//! Root tests of `[[policy]]`: names judged by the policy of the cgroup that asked, grants that
//! open their addresses only for that policy's cgroups, audit mode, SIGHUP narrowing, and a
//! client in another network namespace identified exactly. Each runs on both backends.
//! Run with `cargo xtask test` (they are `#[ignore]`d in a plain `cargo test`).
#![expect(
    unused_crate_dependencies,
    reason = "a test target sees every dependency of the package and uses only a few of them"
)]

#[macro_use]
mod world;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use world::{Backend, ECHO_PORT, TCP_PORT, World, join_cgroup, socat_gets};

both_backends!(
    names_and_grants_are_scoped_to_the_policy_that_asked,
    audit_mode_passes_and_reports,
    sighup_narrowing_revokes_at_once,
    one_address_keeps_each_policys_name,
    liveness_is_per_scope,
    tcp_clients_and_a_listener_flood_are_judged_exactly,
    nobody_but_the_proxy_asks_the_upstream,
    a_policy_filling_the_grants_leaves_the_others_their_share,
);

/// This file's upstream: a dnsmasq in the internet namespace that logs every query it receives,
/// so a test can tell what reached it.
const LOGGING_UPSTREAM: &str = "192.0.2.53";

/// The zone of [`LOGGING_UPSTREAM`].
const ZONE: &str = "local-ttl=60\n\
    host-record=a.test,192.0.2.10\n\
    host-record=b.test,192.0.2.11\n\
    host-record=c.test,192.0.2.12\n\
    cname=alias.test,c.test\n\
    host-record=x.wild.test,192.0.2.20\n\
    host-record=wild.test,192.0.2.21\n\
    host-record=shared-a.test,192.0.2.30\n\
    host-record=shared-b.test,192.0.2.30\n\
    txt-record=a.test,\"hello\"\n\
    txt-record=secret.tunnel.test,\"exfiltrated\"\n";

/// A world with two policy cgroups (`alpha`, `beta`) next to its default cgroup, the logging
/// upstream, and the daemon started with `policies` (TOML `[[policy]]` sections in which
/// `{alpha}` and `{beta}` stand for the two cgroups) plus `extra` lines of configuration.
struct Policies {
    world: World,
    alpha: PathBuf,
    beta: PathBuf,
    config: PathBuf,
    upstream_log: PathBuf,
}

impl Policies {
    fn start(backend: Backend, policies: &str, extra: &str, listen: &str) -> Self {
        let mut world = World::with_backend(backend);
        let alpha = world.extra_cgroup("alpha");
        let beta = world.extra_cgroup("beta");
        let upstream_log = world.dir.path().join("upstream-queries.log");
        let zone = format!(
            "{ZONE}log-queries\nlog-facility={}\n",
            upstream_log.display()
        );
        let dnsmasq = world::netns_dnsmasq(&world, LOGGING_UPSTREAM, &zone, "logging");
        world.spawn_server(dnsmasq);
        let config = world.dir.path().join("nettrust.toml");
        let this = Self {
            world,
            alpha,
            beta,
            config,
            upstream_log,
        };
        this.write_config(policies, extra);
        let upstream = format!("{LOGGING_UPSTREAM}:53");
        let config_arg = this.config.to_string_lossy().into_owned();
        let mut this = this;
        this.world
            .start_daemon_on(listen, &["--fwd-addr", &upstream, "--config", &config_arg]);
        this
    }

    fn write_config(&self, policies: &str, extra: &str) {
        let text = policies
            .replace("{alpha}", &self.alpha.to_string_lossy())
            .replace("{beta}", &self.beta.to_string_lossy());
        std::fs::write(&self.config, format!("{extra}\n{text}")).unwrap();
    }

    /// The response code and answers of `dig NAME TYPE` from a process in `cgroup`.
    fn dig(&self, cgroup: &Path, name: &str, rtype: &str) -> (String, Vec<String>) {
        dig(
            self.world.in_cgroup_at(cgroup, "dig"),
            "127.0.0.1",
            name,
            rtype,
        )
    }

    /// Whether a TCP connection from `cgroup` to `addr` gets the server's "ok".
    fn reaches(&self, cgroup: &Path, addr: &str) -> bool {
        socat_gets(
            self.world.in_cgroup_at(cgroup, "socat"),
            &format!("TCP:{addr}:{TCP_PORT},connect-timeout=2"),
            b"ok",
        )
    }

    /// The output of `nettrust list`.
    fn list(&self) -> String {
        String::from_utf8_lossy(&self.world.nettrust(&["list"]).stdout).into_owned()
    }

    /// The names the upstream was asked so far.
    fn upstream_saw(&self, name: &str) -> bool {
        std::fs::read_to_string(&self.upstream_log)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("query[") && l.contains(&format!(" {name} from")))
    }
}

/// Whether `list` (the output of `nettrust list`) shows a grant of `addr` to `policy`
/// (`default`: the default scope, whose lines have no policy field).
fn lists_grant(list: &str, addr: &str, policy: &str) -> bool {
    list.lines()
        .filter(|l| l.starts_with(&format!("{addr}\t")))
        .any(|l| match l.rsplit_once("\tpolicy=") {
            Some((_, name)) => name == policy,
            None => policy == "default",
        })
}

/// `dig +noall +comments +answer @SERVER NAME TYPE` run as `cmd`: the response code ("NO
/// ANSWER" when none came) and the answers' data fields.
fn dig(mut cmd: Command, server: &str, name: &str, rtype: &str) -> (String, Vec<String>) {
    let out = cmd
        .args(["+time=3", "+tries=1", "+noall", "+comments", "+answer"])
        .args([&format!("@{server}"), name, rtype])
        .output()
        .expect("run dig (apt-get install bind9-dnsutils)");
    world::dig_reply(&String::from_utf8_lossy(&out.stdout))
}

const TWO_POLICIES: &str = "[[policy]]\nname = \"alpha\"\ncgroups = [\"{alpha}\"]\n\
    allow_domains = [\"a.test\", \"*.wild.test\", \"alias.test\"]\n\
    [[policy]]\nname = \"beta\"\ncgroups = [\"{beta}\"]\nallow_domains = [\"b.test\"]\n";

/// Two cgroups in two policies and one (the world's own) in the default policy: a name allowed
/// in one policy only is refused in the other and authorizes nothing there; an address resolved
/// from one cgroup opens for the cgroups of its policy only; wildcards, CNAME chains; a refused
/// TXT question never reaches the upstream.
fn names_and_grants_are_scoped_to_the_policy_that_asked(backend: Backend) {
    let metrics = "metrics_addr = \"127.0.0.1:9153\"";
    let p = Policies::start(backend, TWO_POLICIES, metrics, "127.0.0.1:53");
    let (alpha, beta, default) = (&p.alpha, &p.beta, &p.world.cgroup);

    assert_eq!(p.dig(beta, "a.test", "A").0, "REFUSED", "a.test from beta");
    assert!(
        !p.upstream_saw("a.test"),
        "a refused question reached the upstream"
    );
    assert!(!p.reaches(beta, "192.0.2.10"), "nothing resolved yet");
    let (status, answers) = p.dig(alpha, "a.test", "A");
    assert_eq!(
        (status.as_str(), answers),
        ("NOERROR", vec!["192.0.2.10".to_owned()])
    );
    assert!(p.reaches(alpha, "192.0.2.10"), "alpha's own grant");
    assert!(!p.reaches(beta, "192.0.2.10"), "alpha's grant opened beta");
    assert!(
        !p.reaches(default, "192.0.2.10"),
        "alpha's grant opened the default policy"
    );

    let list = String::from_utf8_lossy(&p.world.nettrust(&["list"]).stdout).into_owned();
    let line = |addr: &str| {
        list.lines()
            .find(|l| l.starts_with(&format!("{addr}\t")))
            .unwrap_or_else(|| panic!("{addr} not listed:\n{list}"))
            .to_owned()
    };
    assert!(line("192.0.2.10").contains("policy="), "{list}");
    if backend == Backend::Ebpf {
        assert!(line("192.0.2.10").ends_with("\tpolicy=alpha"), "{list}");
    }
    let status = String::from_utf8_lossy(&p.world.nettrust(&["status"]).stdout).into_owned();
    assert!(status.contains("policies: 2"), "{status}");
    let alpha_line = status
        .lines()
        .find(|l| l.trim_start().starts_with("alpha (enforce, scope "))
        .unwrap_or_else(|| panic!("no alpha policy line:\n{status}"));
    assert!(alpha_line.contains(" grants 1 "), "{status}");
    assert!(
        alpha_line.ends_with(&format!("cgroups {}", alpha.display())),
        "{status}"
    );

    // The default policy resolves anything, for its own cgroups only.
    assert_eq!(p.dig(default, "b.test", "A").0, "NOERROR");
    assert!(p.reaches(default, "192.0.2.11"));
    assert!(
        !p.reaches(alpha, "192.0.2.11"),
        "a default grant opened alpha"
    );
    assert!(
        !p.reaches(beta, "192.0.2.11"),
        "a default grant opened beta"
    );
    assert_eq!(p.dig(beta, "b.test", "A").0, "NOERROR");
    assert!(p.reaches(beta, "192.0.2.11"), "beta's own grant");
    assert!(!p.reaches(alpha, "192.0.2.11"));

    // `*.wild.test` is every name below wild.test, not wild.test itself.
    assert_eq!(p.dig(alpha, "x.wild.test", "A").0, "NOERROR");
    assert!(p.reaches(alpha, "192.0.2.20"));
    assert_eq!(p.dig(alpha, "wild.test", "A").0, "REFUSED");
    assert!(!p.reaches(alpha, "192.0.2.21"));
    // The end of an allowed question's CNAME chain is authorized for it.
    let (status, answers) = p.dig(alpha, "alias.test", "A");
    assert_eq!(status, "NOERROR");
    assert!(answers.contains(&"192.0.2.12".to_owned()), "{answers:?}");
    assert!(p.reaches(alpha, "192.0.2.12"));
    assert!(!p.reaches(beta, "192.0.2.12"));

    // Tunnelling through a name nobody allowed: refused before the upstream, any type.
    for rtype in ["TXT", "A", "AAAA", "MX"] {
        assert_eq!(
            p.dig(alpha, "secret.tunnel.test", rtype).0,
            "REFUSED",
            "{rtype}"
        );
    }
    // The log works: an allowed TXT question is there.
    assert_eq!(p.dig(alpha, "a.test", "TXT").0, "NOERROR");
    p.world
        .eventually("the upstream logs a.test", Duration::from_secs(5), || {
            p.upstream_saw("a.test")
        });
    assert!(
        !p.upstream_saw("secret.tunnel.test"),
        "a refused TXT reached the upstream"
    );
    assert!(
        p.world.daemon_log().contains("[Not Allowed]"),
        "refusals are logged:\n{}",
        p.world.daemon_log()
    );
    let refused = "nettrust_policy_questions_total{policy=\"alpha\",result=\"not_allowed\"}";
    assert_eq!(
        p.world.metric(refused),
        5.0,
        "wild.test and 4 tunnel questions"
    );
    let beta = "nettrust_policy_questions_total{policy=\"beta\",result=\"not_allowed\"}";
    assert_eq!(p.world.metric(beta), 1.0, "a.test from beta");
    assert_eq!(
        p.world.metric("nettrust_policy_grants{policy=\"alpha\"}"),
        3.0
    );
}

/// Audit mode: nothing is dropped for the policy's cgroups, what enforcement would drop is
/// reported; names outside the list are resolved and authorized but reported. Other cgroups are
/// enforced as usual.
fn audit_mode_passes_and_reports(backend: Backend) {
    let policies = "[[policy]]\nname = \"alpha\"\ncgroups = [\"{alpha}\"]\n\
        allow_domains = [\"a.test\"]\nmode = \"audit\"\n";
    let metrics = "metrics_addr = \"127.0.0.1:9153\"";
    let p = Policies::start(backend, policies, metrics, "127.0.0.1:53");
    assert_eq!(
        p.dig(&p.alpha, "b.test", "A").0,
        "NOERROR",
        "audited, not refused"
    );
    assert!(p.upstream_saw("b.test"));
    assert!(p.reaches(&p.alpha, "192.0.2.11"));
    // An address nobody resolved passes for the audited cgroup, and is reported.
    assert!(
        p.reaches(&p.alpha, "192.0.2.99"),
        "audit mode dropped a packet"
    );
    assert!(
        !p.reaches(&p.world.cgroup, "192.0.2.99"),
        "the default policy is enforced"
    );
    assert!(
        !p.reaches(&p.world.cgroup, "192.0.2.11"),
        "an audit grant opened another policy"
    );
    p.world
        .eventually("the audit reports", Duration::from_secs(5), || {
            let log = p.world.daemon_log();
            log.contains("[Audit] not allowed question") && log.contains("192.0.2.99")
        });
    // `status` counts what audit mode let through for the policy.
    let status = String::from_utf8_lossy(&p.world.nettrust(&["status"]).stdout).into_owned();
    let audited = status
        .lines()
        .find(|l| l.trim_start().starts_with("alpha (audit, scope "))
        .and_then(|l| l.split(" audited ").nth(1))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no audited count for alpha:\n{status}"));
    assert!(audited >= 1, "{status}");
    let audit_metric = "nettrust_egress_packets_total{verdict=\"audit\"}";
    p.world
        .eventually("the audit metric", Duration::from_secs(5), || {
            p.world.metric(audit_metric) >= 1.0
        });
    // Switching to enforce keeps every grant, and enforces from then on.
    p.write_config(&policies.replace("audit", "enforce"), metrics);
    p.world.signal_daemon(libc::SIGHUP);
    p.world
        .eventually("enforcement", Duration::from_secs(5), || {
            !p.reaches(&p.alpha, "192.0.2.99")
        });
    assert!(
        p.reaches(&p.alpha, "192.0.2.11"),
        "a grant made in audit mode was dropped"
    );
    assert_eq!(p.dig(&p.alpha, "c.test", "A").0, "REFUSED");
}

/// A SIGHUP that narrows a policy revokes at once the grants it no longer allows, keeps the
/// others, and refuses the name from then on.
fn sighup_narrowing_revokes_at_once(backend: Backend) {
    let wide = "[[policy]]\nname = \"alpha\"\ncgroups = [\"{alpha}\"]\n\
        allow_domains = [\"a.test\", \"b.test\"]\n";
    let p = Policies::start(backend, wide, "", "127.0.0.1:53");
    for name in ["a.test", "b.test"] {
        assert_eq!(p.dig(&p.alpha, name, "A").0, "NOERROR", "{name}");
    }
    assert!(p.reaches(&p.alpha, "192.0.2.10") && p.reaches(&p.alpha, "192.0.2.11"));
    p.write_config(
        "[[policy]]\nname = \"alpha\"\ncgroups = [\"{alpha}\"]\nallow_domains = [\"a.test\"]\n",
        "",
    );
    p.world.signal_daemon(libc::SIGHUP);
    p.world
        .eventually("b.test revoked", Duration::from_secs(5), || {
            !p.reaches(&p.alpha, "192.0.2.11")
        });
    assert!(
        p.reaches(&p.alpha, "192.0.2.10"),
        "a grant still allowed was revoked"
    );
    assert_eq!(p.dig(&p.alpha, "b.test", "A").0, "REFUSED");
}

/// Two policies resolve one address from two names: each grant keeps the name that authorized
/// it (`nettrust list`), and a reload that narrows one policy judges its grant by its own name,
/// not by the other policy's (which would revoke the wrong grant or keep one no longer allowed).
fn one_address_keeps_each_policys_name(backend: Backend) {
    let policies = "[[policy]]\nname = \"alpha\"\ncgroups = [\"{alpha}\"]\n\
        allow_domains = [\"shared-a.test\"]\n\
        [[policy]]\nname = \"beta\"\ncgroups = [\"{beta}\"]\nallow_domains = [\"shared-b.test\"]\n";
    let p = Policies::start(backend, policies, "", "127.0.0.1:53");
    assert_eq!(p.dig(&p.alpha, "shared-a.test", "A").1, ["192.0.2.30"]);
    assert_eq!(p.dig(&p.beta, "shared-b.test", "A").1, ["192.0.2.30"]);
    let listed = |policy: &str| {
        let list = String::from_utf8_lossy(&p.world.nettrust(&["list"]).stdout).into_owned();
        list.lines()
            .find(|l| l.starts_with("192.0.2.30\t") && l.ends_with(&format!("\tpolicy={policy}")))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no grant of 192.0.2.30 for {policy}:\n{list}"))
    };
    p.world
        .eventually("both names listed", Duration::from_secs(5), || {
            listed("alpha").contains("\tshared-a.test")
                && listed("beta").contains("\tshared-b.test")
        });
    p.write_config(
        "[[policy]]\nname = \"alpha\"\ncgroups = [\"{alpha}\"]\nallow_domains = [\"shared-a.test\"]\n\
         [[policy]]\nname = \"beta\"\ncgroups = [\"{beta}\"]\nallow_domains = [\"b.test\"]\n",
        "",
    );
    p.world.signal_daemon(libc::SIGHUP);
    p.world
        .eventually("beta's grant revoked", Duration::from_secs(5), || {
            !p.reaches(&p.beta, "192.0.2.30")
        });
    assert!(
        p.reaches(&p.alpha, "192.0.2.30"),
        "alpha's grant, still allowed by its own name, was revoked"
    );
}

/// A network namespace of its own joined to the client namespace by a veth (a container): the
/// namespace and its link are removed on drop.
struct Container {
    ns: String,
}

impl Container {
    /// Proxy end 198.51.100.129, container end 198.51.100.130 (a /30 of the documentation range
    /// the world's link does not use).
    fn new(world: &World) -> Self {
        let ns = format!("ntpol-{}", world.id);
        let dev = format!("vpol{}", world.id);
        let container = Self { ns: ns.clone() };
        for args in [
            format!("netns add {ns}"),
            format!("-n {ns} link set lo up"),
            format!(
                "-n {} link add {dev}a type veth peer name {dev}b netns {ns}",
                world.client_ns
            ),
            format!(
                "-n {} addr add 198.51.100.129/30 dev {dev}a",
                world.client_ns
            ),
            format!("-n {} link set {dev}a up", world.client_ns),
            format!("-n {ns} addr add 198.51.100.130/30 dev {dev}b"),
            format!("-n {ns} link set {dev}b up"),
        ] {
            world::ip(&args);
        }
        container
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.ns])
            .stderr(Stdio::null())
            .status();
    }
}

/// Liveness is per scope: alpha, beta and the default policy resolve the same name; alpha holds
/// an idle TCP connection to its address, the others do nothing. Past the TTL and a few sweeps,
/// alpha's grant is still listed and alpha connects again, while beta's and the default
/// policy's grants are gone and their new connections fail: alpha's connection renews alpha's
/// grant only. With eBPF the client namespace has no firewall rule, so conntrack tracks nothing
/// there (`live_tcp` is the signal); with nftables conntrack tracks the flows and the policy
/// chain's mark on alpha's flow names alpha's scope.
fn liveness_is_per_scope(backend: Backend) {
    let policies = "[[policy]]\nname = \"alpha\"\ncgroups = [\"{alpha}\"]\n\
        allow_domains = [\"b.test\"]\n\
        [[policy]]\nname = \"beta\"\ncgroups = [\"{beta}\"]\nallow_domains = [\"b.test\"]\n";
    let ttl = "authorized_ttl = 2\nttl_check_interval = 1\n";
    let p = Policies::start(backend, policies, ttl, "127.0.0.1:53");
    let _echo = world::echo_server(&p.world);
    let rules = p
        .world
        .in_ns(&p.world.client_ns, "nft")
        .args(["list", "ruleset"])
        .output()
        .expect("nft list ruleset");
    assert!(
        backend == Backend::Nftables || rules.stdout.trim_ascii().is_empty(),
        "the client namespace must have no firewall rules: {}",
        String::from_utf8_lossy(&rules.stdout)
    );
    let (alpha, beta, default) = (&p.alpha, &p.beta, &p.world.cgroup);
    for cgroup in [alpha, beta, default] {
        let (status, answers) = p.dig(cgroup, "b.test", "A");
        assert_eq!(
            (status.as_str(), answers),
            ("NOERROR", vec!["192.0.2.11".to_owned()]),
            "{}",
            cgroup.display()
        );
    }
    let authorized = Instant::now();
    let list = p.list();
    for policy in ["alpha", "beta", "default"] {
        assert!(
            lists_grant(&list, "192.0.2.11", policy),
            "{policy}:\n{list}"
        );
    }
    // Alpha connects, says nothing for 8 s (four TTLs), then sends one line and waits for its
    // echo.
    let idle = p
        .world
        .in_cgroup_at(alpha, "sh")
        .args([
            "-c",
            &format!(
                "(sleep 8; echo still-here; sleep 1) | socat -t 2 - TCP:192.0.2.11:{ECHO_PORT}"
            ),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start alpha's idle client");
    std::thread::sleep(Duration::from_millis(5500).saturating_sub(authorized.elapsed()));
    let list = p.list();
    let listed = |policy: &str| lists_grant(&list, "192.0.2.11", policy);
    assert!(
        listed("alpha"),
        "alpha's idle connection must keep alpha's grant:\n{list}\n{}",
        p.world.daemon_log()
    );
    assert!(
        !listed("beta") && !listed("default"),
        "alpha's connection kept another scope's grant alive:\n{list}"
    );
    assert!(
        !p.reaches(beta, "192.0.2.11"),
        "beta's grant outlived its TTL"
    );
    assert!(
        !p.reaches(default, "192.0.2.11"),
        "the default policy's grant outlived its TTL"
    );
    assert!(p.reaches(alpha, "192.0.2.11"), "alpha lost its grant");
    let out = idle
        .wait_with_output()
        .expect("wait for alpha's idle client");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("still-here"),
        "the next packet of alpha's idle connection must get out (status {}, stderr: {})",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A client of the alpha policy in its own network namespace reaches the proxy over a veth: the
/// eBPF data path tells the proxy exactly which cgroup sent the query, so its questions are
/// judged by alpha (a.test allowed, b.test refused) and its grants open for alpha only. (eBPF
/// only: an nftables table and `sock_diag` see the daemon's own network namespace.)
#[test]
#[ignore = "needs root: cargo xtask test"]
fn a_client_in_another_network_namespace_is_identified() {
    let backend = Backend::Ebpf;
    let extra = "allow_clients = [\"127.0.0.0/8\", \"198.51.100.128/30\"]\n\
        [whitelist]\nhosts = [\"198.51.100.129\"]\n";
    let p = Policies::start(backend, TWO_POLICIES, extra, "0.0.0.0:53");
    let container = Container::new(&p.world);
    let in_container =
        |cgroup: &Path, program: &str| join_cgroup(world::in_netns(&container.ns, program), cgroup);
    let (status, answers) = dig(
        in_container(&p.alpha, "dig"),
        "198.51.100.129",
        "a.test",
        "A",
    );
    assert_eq!(
        (status.as_str(), answers),
        ("NOERROR", vec!["192.0.2.10".to_owned()])
    );
    let (status, _) = dig(
        in_container(&p.alpha, "dig"),
        "198.51.100.129",
        "b.test",
        "A",
    );
    assert_eq!(
        status, "REFUSED",
        "alpha's container asked a name alpha does not allow"
    );
    // Beta in the same namespace is told apart from alpha.
    let (status, _) = dig(
        in_container(&p.beta, "dig"),
        "198.51.100.129",
        "b.test",
        "A",
    );
    assert_eq!(status, "NOERROR");
    // The grant is alpha's: the default cgroup in the client namespace is not opened.
    assert!(!p.reaches(&p.world.cgroup, "192.0.2.10"));
    assert!(p.reaches(&p.alpha, "192.0.2.10"));
}

/// The upstream is open to the proxy's own sockets only: a process of a policy (or of the
/// default policy) asking it directly, past the proxy, gets nothing and the upstream never sees
/// the question, while the same name asked through the proxy is refused and an allowed one
/// answered.
fn nobody_but_the_proxy_asks_the_upstream(backend: Backend) {
    let p = Policies::start(backend, TWO_POLICIES, "", "127.0.0.1:53");
    for cgroup in [&p.alpha, &p.world.cgroup] {
        let (status, _) = dig(
            p.world.in_cgroup_at(cgroup, "dig"),
            LOGGING_UPSTREAM,
            "secret.tunnel.test",
            "TXT",
        );
        assert_eq!(status, "NO ANSWER", "asked the upstream directly");
    }
    assert_eq!(p.dig(&p.alpha, "secret.tunnel.test", "TXT").0, "REFUSED");
    assert_eq!(p.dig(&p.alpha, "a.test", "TXT").0, "NOERROR");
    p.world
        .eventually("the upstream logs a.test", Duration::from_secs(5), || {
            p.upstream_saw("a.test")
        });
    assert!(
        !p.upstream_saw("secret.tunnel.test"),
        "a question asked past the proxy reached the upstream"
    );
}

/// Sends DNS queries for `flood.test` to 127.0.0.1:53 as fast as it can for `argv[1]` seconds,
/// each from another source address of 127.0.0.0/8 (`IP_PKTINFO`), so each is a new client to
/// the proxy (8 = `IP_PKTINFO`, which Python does not name); prints how many it sent.
const FLOOD: &str = r#"
import socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x05flood\x04test\x00\x00\x01\x00\x01"
end, n = time.time() + float(sys.argv[1]), 0
while time.time() < end:
    for _ in range(256):
        src = struct.pack(">I", 0x7F000000 | (1 + n % 0xFFFFF0))
        try:
            s.sendmsg([q], [(socket.IPPROTO_IP, 8, struct.pack("=I4s4s", 0, src, bytes(4)))], 0, ("127.0.0.1", 53))
        except BlockingIOError:
            pass
        n += 1
print(n)
"#;

/// Queries over TCP are judged by the policy of the cgroup that opened the connection; and while
/// beta floods the listener from 100,000s of source addresses (each a new client record on the
/// eBPF data path, far more than it remembers), every question alpha asks is still judged by
/// alpha: never by the default policy, which would forward a name alpha does not allow.
fn tcp_clients_and_a_listener_flood_are_judged_exactly(backend: Backend) {
    let p = Policies::start(backend, TWO_POLICIES, "", "127.0.0.1:53");
    let tcp = |cgroup: &Path, name: &str| {
        let mut cmd = p.world.in_cgroup_at(cgroup, "dig");
        cmd.arg("+tcp");
        dig(cmd, "127.0.0.1", name, "A").0
    };
    assert_eq!(
        tcp(&p.alpha, "a.test"),
        "NOERROR",
        "a.test over TCP from alpha"
    );
    assert_eq!(
        tcp(&p.alpha, "b.test"),
        "REFUSED",
        "b.test over TCP from alpha"
    );
    assert_eq!(
        tcp(&p.beta, "b.test"),
        "NOERROR",
        "b.test over TCP from beta"
    );
    assert_eq!(
        tcp(&p.beta, "a.test"),
        "REFUSED",
        "a.test over TCP from beta"
    );

    let flood = p
        .world
        .in_cgroup_at(&p.beta, "python3")
        .args(["-c", FLOOD, "6"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python3");
    std::thread::sleep(Duration::from_millis(500));
    // Each question must get the answer alpha's policy gives, or none (the flood may drop it).
    let mut got = [0; 2];
    for _ in 0..30 {
        for (count, (name, expected)) in got
            .iter_mut()
            .zip([("c.test", "REFUSED"), ("a.test", "NOERROR")])
        {
            let (status, _) = p.dig(&p.alpha, name, "A");
            match status.as_str() {
                s if s == expected => *count += 1,
                "NO ANSWER" => {}
                other => panic!("{name} from alpha during the flood: {other}"),
            }
        }
    }
    let [refused, answered] = got;
    let out = flood.wait_with_output().unwrap();
    let sent: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(sent >= 100_000, "the flood sent only {sent} queries");
    assert!(
        refused >= 20 && answered >= 20,
        "alpha got too few answers during the flood: {refused} REFUSED, {answered} NOERROR"
    );
    assert!(
        !p.upstream_saw("c.test"),
        "a question alpha may not ask reached the upstream"
    );
}

/// A policy on a cgroup deeper than the egress program looks for listed ancestors would
/// silently take a shallower cgroup's policy: the start is refused, naming the cgroup.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn a_policy_cgroup_deeper_than_the_program_looks_is_refused() {
    let mut world = World::with_backend(Backend::Ebpf);
    let base = world.extra_cgroup("deep");
    let mut nested = world::CgroupDirs(Vec::new());
    let mut dir = base.clone();
    for i in 0..16 {
        dir = dir.join(format!("l{i}"));
        std::fs::create_dir(&dir).unwrap();
        nested.0.push(dir.clone());
    }
    let config = world.dir.path().join("deep.toml");
    std::fs::write(
        &config,
        format!(
            "[[policy]]\nname = \"deep\"\ncgroups = [\"{}\"]\nallow_domains = [\"a.test\"]\n",
            dir.display()
        ),
    )
    .unwrap();
    let err = world.start_fails(&["--config", &config.to_string_lossy()]);
    assert!(err.contains("levels deep") && err.contains("/l15"), "{err}");
    drop(nested);
}

/// `max_hosts` of the fair-share test: the capacity of `GRANTS` (and of the nftables policy
/// sets together), four times fewer than the names alpha resolves.
const SHARED_GRANTS: u32 = 16;

/// The count after `" grants "` on `policy`'s line of `nettrust status`.
fn status_grants(world: &World, policy: &str) -> u64 {
    let status = String::from_utf8_lossy(&world.nettrust(&["status"]).stdout).into_owned();
    status
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{policy} (")))
        .and_then(|l| l.split(" grants ").nth(1))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no grants count for {policy}:\n{status}"))
}

/// One policy's client resolves four times as many names as the grants hold (a workload that
/// resolves many names, or a flood of names its `*.test` pattern allows): it churns through its
/// own grants, every name answered, its most recent ones reachable; another policy keeps the
/// grant it had and still gets a new name authorized and reachable (its fair share), and the
/// evictions are counted for the policy that lost them.
fn a_policy_filling_the_grants_leaves_the_others_their_share(backend: Backend) {
    let mut world = World::with_backend(backend);
    let alpha = world.extra_cgroup("alpha");
    let beta = world.extra_cgroup("beta");
    let config = world.dir.path().join("shares.toml");
    let policy = |name: &str, cgroup: &Path| {
        format!(
            "[[policy]]\nname = \"{name}\"\ncgroups = [\"{}\"]\nallow_domains = [\"*.test\"]\n",
            cgroup.display()
        )
    };
    std::fs::write(&config, policy("alpha", &alpha) + &policy("beta", &beta)).unwrap();
    world.start_daemon(&[
        "--max-hosts",
        &SHARED_GRANTS.to_string(),
        "--metrics-addr",
        "127.0.0.1:9153",
        "--config",
        &config.to_string_lossy(),
    ]);
    let ask =
        |cgroup: &Path, name: &str| dig(world.in_cgroup_at(cgroup, "dig"), "127.0.0.1", name, "A");
    let reaches = |cgroup: &Path, addr: &str| {
        socat_gets(
            world.in_cgroup_at(cgroup, "socat"),
            &format!("TCP:{addr}:{TCP_PORT},connect-timeout=2"),
            b"ok",
        )
    };
    // Beta's grant, made first and left unused: the oldest and idlest of all.
    assert_eq!(ask(&beta, "c.test").0, "NOERROR", "c.test from beta");

    let names = 4 * SHARED_GRANTS;
    let statuses: Vec<String> = (1..=names)
        .map(|i| ask(&alpha, &format!("n{i}.test")).0)
        .collect();
    let (status, answers) = ask(&beta, "b.test");
    assert_eq!(
        status, "NOERROR",
        "{backend:?}: beta refused once alpha filled the grants (alpha: {statuses:?})"
    );
    assert_eq!(answers, ["192.0.2.11"]);
    assert!(reaches(&beta, "192.0.2.11"), "beta's new grant");
    assert!(
        reaches(&beta, "192.0.2.12"),
        "{backend:?}: alpha's names evicted beta's grant"
    );
    assert!(
        statuses.iter().all(|s| s == "NOERROR"),
        "{backend:?}: alpha must churn through its own grants: {statuses:?}"
    );
    // Alpha keeps working for its most recent names, and for a new one.
    for i in names - 3..=names {
        let addr = format!("203.0.113.{i}");
        assert!(reaches(&alpha, &addr), "alpha's recent n{i}.test");
    }
    assert!(!reaches(&alpha, "203.0.113.1"), "alpha's first name kept");
    let next = names + 1;
    assert_eq!(ask(&alpha, &format!("n{next}.test")).0, "NOERROR");
    assert!(reaches(&alpha, &format!("203.0.113.{next}")));

    // The numbers: the grants fill the capacity, beta holds its two, the evictions are
    // alpha's, nothing was refused.
    let metric = |name: &str, policy: &str| world.metric(&format!("{name}{{policy=\"{policy}\"}}"));
    assert_eq!(status_grants(&world, "beta"), 2);
    assert_eq!(
        status_grants(&world, "alpha") + 2,
        u64::from(SHARED_GRANTS),
        "alpha holds the rest of the capacity"
    );
    assert_eq!(
        metric("nettrust_policy_grants", "alpha"),
        f64::from(SHARED_GRANTS - 2)
    );
    assert_eq!(metric("nettrust_policy_evicted_hosts_total", "beta"), 0.0);
    assert_eq!(
        metric("nettrust_policy_evicted_hosts_total", "alpha"),
        f64::from(next - (SHARED_GRANTS - 2)),
        "every alpha name but those it holds was evicted"
    );
    assert_eq!(world.metric("nettrust_firewall_full_total"), 0.0);
    assert!(world.stop_daemon(), "nettrust failed at exit");
}
