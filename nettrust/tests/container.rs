//! A container end to end, built by hand: its own network namespace behind a veth with the
//! default route through the host, its own mount namespace whose /etc/resolv.conf names a
//! resolver, and a cgroup namespace, started in a cgroup of a Docker-like parent. nettrust runs
//! on the host (the world's client namespace) from a config file alone; nothing nettrust-specific
//! is configured inside the container. `curl` from the container to a name the upstream answers
//! works, to an address nobody resolved fails at once and nothing arrives, and a sibling cgroup the
//! configuration does not name stays unfiltered.
//!
//! Four variants, by how the container finds the resolver and how the configuration names its
//! cgroup: the resolver configured (resolv.conf names nettrust's address on the host end of the
//! veth) or captured (`dns_capture = true`; resolv.conf names 192.0.2.53, where nobody listens),
//! and the cgroup listed literally (created before the daemon starts) or matched by a pattern
//! (`…/docker-*.scope`, created after the daemon started). Run with `cargo xtask test`.
#![expect(
    unused_crate_dependencies,
    reason = "a test target sees every dependency of the package and uses only a few of them"
)]

mod world;

#[path = "world/container.rs"]
mod container;

use std::{net::IpAddr, path::Path, process::Stdio, time::Duration};

use container::{ConfiguredDaemon, Container, HOST_V4, describe};
use world::{UPSTREAM, World};

/// Port of the HTTP server that answers `ok` on every internet address.
const HTTP_PORT: u16 = 8081;
/// A name the world's upstream answers, and its address.
const NAME: &str = "a.test";
const NAME_V4: &str = "192.0.2.10";
/// An internet address nobody resolved (n77.test's, never asked for).
const NEVER_RESOLVED: &str = "203.0.113.77";
/// The resolver a captured container's resolv.conf names: nothing listens there, and nettrust
/// does not listen on it either.
const FOREIGN_RESOLVER: &str = "192.0.2.53";

/// How the container reaches a resolver.
#[derive(Clone, Copy)]
enum Dns {
    /// Its resolv.conf names nettrust's listen address on the host end of the veth.
    Configured,
    /// Its resolv.conf names [`FOREIGN_RESOLVER`]; `dns_capture = true` answers it.
    Captured,
}

/// How the configuration names the container's cgroup.
#[derive(Clone, Copy)]
enum Cgroups {
    /// Its own path, created before the daemon starts.
    Literal,
    /// `PARENT/docker-*.scope`, the cgroup created after the daemon started.
    Pattern,
}

/// The container's cgroup name, as Docker's systemd driver names them.
const CONTAINER_SCOPE: &str = "docker-4e1f0c2ab7d94f1c8e3b5a6d7c8e9f00.scope";
/// A sibling no entry names.
const SIBLING_SCOPE: &str = "other.scope";

/// The daemon's config file: the upstream, the listener(s), capture, and the one `cgroups`
/// entry.
fn config(dns: Dns, cgroup_entry: &Path) -> String {
    let listen = match dns {
        Dns::Configured => format!("listen_addr = \"{HOST_V4}:53\"\n"),
        // The daemon's own namespace keeps listen_addr (127.0.0.1:53); the container's queries
        // go to the first of listen_addrs, the host end of its veth.
        Dns::Captured => format!("dns_capture = true\nlisten_addrs = [\"{HOST_V4}:53\"]\n"),
    };
    format!(
        "fwd_addr = \"{UPSTREAM}:53\"\n{listen}cgroups = [\"{}\"]\n",
        cgroup_entry.display()
    )
}

/// An HTTP server in the internet namespace answering `ok` on every address and [`HTTP_PORT`];
/// returns once it answers.
fn start_http_server(world: &mut World) {
    let root = world.dir.path().join("www");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("index.html"), "ok\n").unwrap();
    let mut server = world.in_ns(&world.inet_ns, "python3");
    server
        .args(["-m", "http.server", &HTTP_PORT.to_string(), "--bind", "::"])
        .arg("--directory")
        .arg(&root);
    world.spawn_server(server);
    let url = format!("http://{NAME_V4}:{HTTP_PORT}/");
    world.eventually("the HTTP server", Duration::from_secs(10), || {
        world
            .in_ns(&world.client_ns, "curl")
            .args(["-sS", "--max-time", "1", &url])
            .stderr(Stdio::null())
            .output()
            .is_ok_and(|o| o.stdout == b"ok\n")
    });
}

/// `curl` in the container's `cgroup` to `host` (a name or an address) on [`HTTP_PORT`].
fn curl(container: &Container, cgroup: &Path, host: &str) -> (std::process::Output, Duration) {
    let url = format!("http://{host}:{HTTP_PORT}/");
    container.run(
        cgroup,
        "curl",
        &["-sS", "--connect-timeout", "3", "--max-time", "10", &url],
    )
}

/// Builds the world, the container and the daemon for one variant, then checks what the
/// container can reach.
fn container_end_to_end(dns: Dns, cgroups: Cgroups) {
    let mut world = World::new();
    start_http_server(&mut world);
    let parent = world.extra_cgroup("containers");
    let resolver = match dns {
        Dns::Configured => HOST_V4,
        Dns::Captured => FOREIGN_RESOLVER,
    };
    let mut container = Container::new(&world, resolver);
    let (cgroup, entry) = match cgroups {
        Cgroups::Literal => {
            let cgroup = container.cgroup(&parent, CONTAINER_SCOPE);
            (Some(cgroup.clone()), cgroup)
        }
        Cgroups::Pattern => (None, parent.join("docker-*.scope")),
    };
    let daemon = ConfiguredDaemon::start(&world, &config(dns, &entry), HOST_V4);
    let cgroup = cgroup.unwrap_or_else(|| container.cgroup(&parent, CONTAINER_SCOPE));
    check_container(&world, &container, &daemon, &cgroup, resolver);
    let sibling = container.cgroup(&parent, SIBLING_SCOPE);
    check_sibling_unfiltered(&world, &container, &sibling);
}

/// The container sees its own cgroup root and resolver; a name resolves and connects; an
/// address nobody resolved fails at once (connect itself is refused) and nothing reaches it.
fn check_container(
    world: &World,
    container: &Container,
    daemon: &ConfiguredDaemon,
    cgroup: &Path,
    resolver: &str,
) {
    // The harness itself: the process is in its own cgroup namespace and reads the container's
    // resolv.conf.
    assert_eq!(
        container.view(cgroup),
        ("0::/".to_owned(), format!("nameserver {resolver}"))
    );
    let (out, _) = curl(container, cgroup, NAME);
    assert!(
        out.status.success() && out.stdout == b"ok\n",
        "curl http://{NAME}:{HTTP_PORT}/ from the container failed: {}\nnettrust log:\n{}",
        describe(&out),
        daemon.log()
    );
    // nettrust answered (not some other resolver): the answer authorized the address.
    let name_v4: IpAddr = NAME_V4.parse().unwrap();
    assert!(world.list().contains(&name_v4), "{NAME_V4} not authorized");
    world.count_arrivals(NEVER_RESOLVED);
    let (out, took) = curl(container, cgroup, NEVER_RESOLVED);
    assert!(
        !out.status.success() && out.stdout.is_empty(),
        "curl to {NEVER_RESOLVED} must fail: {}",
        describe(&out)
    );
    // curl's exit code 7: it could not connect, because connect(2) itself was refused, not
    // because the SYN went unanswered until curl gave up (exit code 28).
    assert!(
        out.status.code() == Some(7) && took < Duration::from_secs(2),
        "curl to {NEVER_RESOLVED} must fail at once, took {took:?}: {}",
        describe(&out)
    );
    assert_eq!(world.arrivals(), 0, "a packet reached {NEVER_RESOLVED}");
}

/// A sibling cgroup of the container's that the configuration does not name reaches the address
/// nobody resolved (the arrival counter counts it): only the named cgroup is filtered.
fn check_sibling_unfiltered(world: &World, container: &Container, sibling: &Path) {
    let (out, _) = curl(container, sibling, NEVER_RESOLVED);
    assert!(
        out.status.success() && out.stdout == b"ok\n",
        "the unfiltered sibling {} could not reach {NEVER_RESOLVED}: {}",
        sibling.display(),
        describe(&out)
    );
    assert!(world.arrivals() > 0, "the arrival counter does not count");
}

/// The control: the container's resolv.conf names nettrust's address on the host end of the
/// veth, and the configuration lists the container's cgroup literally.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn configured_resolver_literal_cgroup() {
    container_end_to_end(Dns::Configured, Cgroups::Literal);
}

/// The container's cgroup is created after the daemon started and matched by a pattern; its
/// resolv.conf names nettrust.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn configured_resolver_pattern_cgroup_created_later() {
    container_end_to_end(Dns::Configured, Cgroups::Pattern);
}

/// The container's resolv.conf names a resolver nettrust does not listen on; capture answers.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn captured_dns_literal_cgroup() {
    container_end_to_end(Dns::Captured, Cgroups::Literal);
}

/// Nothing configured for nettrust anywhere near the container: a foreign resolver in its
/// resolv.conf, a cgroup created after the daemon started, matched by a pattern. The whole
/// scenario.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn captured_dns_pattern_cgroup_created_later() {
    container_end_to_end(Dns::Captured, Cgroups::Pattern);
}

/// The `NET_TRUST_*` variables the DaemonSet sets, with `$(NODE_IP)` standing for a node
/// address.
fn daemonset_environment(manifest: &str) -> Vec<(String, String)> {
    let mut vars = Vec::new();
    let mut lines = manifest.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(name) = line.strip_prefix("- name: NET_TRUST_") else {
            continue;
        };
        let value = lines
            .next()
            .and_then(|l| l.strip_prefix("value: "))
            .unwrap_or_else(|| panic!("NET_TRUST_{name} has no literal value in the DaemonSet"));
        vars.push((
            format!("NET_TRUST_{name}"),
            value.trim_matches('"').replace("$(NODE_IP)", "192.0.2.1"),
        ));
    }
    vars
}

/// The Kubernetes configuration (deploy/kubernetes/config.toml, the ConfigMap's content) with the
/// DaemonSet's environment is valid for this build: every key and variable known, every value
/// accepted. The cgroup tree is the node's, not this machine's, so the cgroups are checked
/// against `/sys/fs/cgroup` as the v2 mount, without looking at the filesystem.
#[test]
fn the_kubernetes_configuration_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let manifest = std::fs::read_to_string(dir.join("daemonset.yaml")).expect("daemonset.yaml");
    let vars = daemonset_environment(&manifest);
    assert!(!vars.is_empty(), "no NET_TRUST_ variable in the DaemonSet");
    let env = nettrust::config::Env::from_vars(vars.clone())
        .unwrap_or_else(|e| panic!("the DaemonSet's environment {vars:?}: {e}"));
    assert!(
        env.unknown.is_empty(),
        "variables nettrust does not know: {:?}",
        env.unknown
    );
    let path = dir.join("config.toml");
    let file = nettrust::config::Options::load(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let settings = nettrust::config::Settings::resolve(
        &nettrust::config::Options::default(),
        &file,
        &env,
        || Ok("/sys/fs/cgroup".into()),
    )
    .unwrap_or_else(|e| panic!("{} with {vars:?}: {e}", path.display()));
    assert!(
        settings.policies.iter().any(|p| p.name == "besteffort"),
        "the besteffort policy is missing"
    );
}

/// The manifests are valid Kubernetes 1.32 objects: `kubernetes-validate --strict` (installed by
/// `cargo xtask test` from PyPI; its schemas ship in the package, so it runs offline) accepts the
/// Namespace and the DaemonSet (unknown fields, wrong types and missing required fields fail).
/// The ConfigMap is generated by kustomize from config.toml, checked by the test above.
#[test]
fn the_manifests_validate_against_kubernetes_1_32() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let out = std::process::Command::new("kubernetes-validate")
        .args(["--strict", "-k", "1.32.0"])
        .arg(dir.join("namespace.yaml"))
        .arg(dir.join("daemonset.yaml"))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run kubernetes-validate (cargo xtask setup installs it): {e}")
        });
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    for resource in ["namespace/nettrust", "daemonset/nettrust"] {
        assert!(
            report.contains(&format!("passed for resource {resource}")),
            "{resource} not validated: {report}"
        );
    }
}

/// The DaemonSet grants the capabilities the systemd unit grants (dist/nettrust.service's
/// `CapabilityBoundingSet`, which the systemd root test proves sufficient): one set to keep in
/// step when the daemon's needs change.
#[test]
fn the_daemonset_grants_the_units_capabilities() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let read = |path: &str| {
        std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let unit = read("dist/nettrust.service");
    let mut from_unit: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet in the unit")
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_owned())
        .collect();
    let manifest = read("deploy/kubernetes/daemonset.yaml");
    let mut from_daemonset: Vec<String> = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("add: ["))
        .expect("capabilities add: [...] in the DaemonSet")
        .trim_end_matches(']')
        .split(',')
        .map(|c| c.trim().trim_matches('"').to_owned())
        .collect();
    from_unit.sort();
    from_daemonset.sort();
    assert_eq!(from_daemonset, from_unit);
    assert!(
        manifest.contains("drop: [\"ALL\"]"),
        "the DaemonSet must drop every other capability"
    );
}
