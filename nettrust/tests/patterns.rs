//! Root tests of cgroup patterns (eBPF backend): a cgroup created after the daemon started that
//! matches a pattern is filtered from its first packet, its non-matching siblings are not; the
//! layouts of Docker, Podman, systemd and kubelet, built under a unique test cgroup, with `*`
//! and `**`; a pattern in a policy judges by that policy; `nettrust status` shows what each
//! pattern covers. Run with `cargo xtask test` (they are `#[ignore]`d in a plain `cargo test`).
#![expect(
    unused_crate_dependencies,
    reason = "a test target sees every dependency of the package and uses only a few of them"
)]

#[macro_use]
mod world;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use world::{TCP_PORT, World, socat_gets};

/// An address of the test "internet" nothing authorizes: a packet counted arriving there got
/// through the filter.
const UNAUTHORIZED: &str = "192.0.2.99";

/// A subtree of test cgroups below `root` (itself removed by the world), removed deepest first.
struct Tree {
    root: PathBuf,
    made: Vec<PathBuf>,
}

impl Tree {
    fn new(root: PathBuf) -> Self {
        Self {
            root,
            made: Vec::new(),
        }
    }

    /// Creates `rel` (and its missing parents) below the root.
    fn mkdir(&mut self, rel: &str) -> PathBuf {
        let mut path = self.root.clone();
        for part in rel.split('/') {
            path.push(part);
            if !path.exists() {
                std::fs::create_dir(&path)
                    .unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
                self.made.push(path.clone());
            }
        }
        path
    }

    /// Removes the cgroup `path` (made by [`Tree::mkdir`], empty), waiting for exiting
    /// processes to leave it.
    fn rmdir(&mut self, path: &Path) {
        remove_cgroup(path);
        self.made.retain(|p| p != path);
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        for path in self.made.iter().rev() {
            remove_cgroup(path);
        }
    }
}

fn remove_cgroup(path: &Path) {
    let started = Instant::now();
    while path.exists()
        && std::fs::remove_dir(path).is_err()
        && started.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends one UDP datagram to `addr` from a process that joins `cgroup` right before it runs (so
/// its first packet is the datagram); whether the send succeeded (a dropped egress packet fails
/// the send with EPERM).
fn send_from(world: &World, cgroup: &Path, addr: &str) -> bool {
    world
        .in_cgroup_at(cgroup, "bash")
        .args(["-c", &format!("echo x > /dev/udp/{addr}/9")])
        .output()
        .expect("run bash")
        .status
        .success()
}

/// `dig NAME A` at the proxy from a process in `cgroup`: the response code and the answers.
fn dig_from(world: &World, cgroup: &Path, name: &str) -> (String, Vec<String>) {
    let out = world
        .in_cgroup_at(cgroup, "dig")
        .args(["+time=3", "+tries=1", "+noall", "+comments", "+answer"])
        .args(["@127.0.0.1", name, "A"])
        .output()
        .expect("run dig");
    world::dig_reply(&String::from_utf8_lossy(&out.stdout))
}

/// A world whose daemon filters the world's own cgroup and the `patterns` (each `{root}` the
/// test tree's root), with the tree to build below the root; `before` is created before the
/// daemon starts.
fn start(patterns: &[&str], before: &[&str], extra: &[&str]) -> (World, Tree) {
    let mut world = World::new();
    let root = world.extra_cgroup("patterns");
    let mut tree = Tree::new(root.clone());
    for rel in before {
        tree.mkdir(rel);
    }
    let patterns: Vec<String> = patterns
        .iter()
        .map(|p| p.replace("{root}", &root.to_string_lossy()))
        .collect();
    let mut args: Vec<&str> = Vec::new();
    for p in &patterns {
        args.extend(["--cgroup", p.as_str()]);
    }
    args.extend_from_slice(extra);
    world.start_daemon(&args);
    world.count_arrivals(UNAUTHORIZED);
    (world, tree)
}

/// 200 times: a new cgroup matching the pattern, a process moved in that sends at once to an
/// unauthorized address: nothing arrives; a new non-matching sibling sends too: it arrives.
#[test]
#[ignore = "root: run with cargo xtask test"]
fn new_matching_cgroups_are_filtered_from_the_first_packet() {
    let (world, mut tree) = start(&["{root}/job-*"], &[], &[]);
    let mut sent = 0;
    for i in 0..200 {
        let job = tree.mkdir(&format!("job-{i}"));
        assert!(
            !send_from(&world, &job, UNAUTHORIZED),
            "the send from new cgroup job-{i} succeeded"
        );
        tree.rmdir(&job);
        let other = tree.mkdir(&format!("other-{i}"));
        assert!(
            send_from(&world, &other, UNAUTHORIZED),
            "the send from non-matching other-{i} failed"
        );
        sent += 1;
        tree.rmdir(&other);
    }
    world.eventually(
        "the siblings' datagrams counted",
        Duration::from_secs(2),
        || world.arrivals() >= sent,
    );
    assert_eq!(
        world.arrivals(),
        sent,
        "only the non-matching siblings' datagrams may arrive"
    );
}

/// The layouts users have, created under the test root, partly before the daemon starts (the
/// walk at start classifies them) and partly after (the tracepoint does): what each pattern
/// matches is filtered, with its descendants; the rest passes.
#[test]
#[ignore = "root: run with cargo xtask test"]
fn container_and_service_layouts() {
    let patterns = [
        "{root}/docker/*",
        "{root}/system.slice/docker-*.scope",
        "{root}/machine.slice/libpod-*.scope",
        "{root}/user.slice/**/libpod-*.scope",
        "{root}/system.slice/*.service",
        "{root}/kubepods.slice/kubepods-*.slice/kubepods-*-pod*.slice/cri-containerd-*.scope",
        "{root}/kube.slice/**",
    ];
    let before = [
        "docker/aaa1",
        "system.slice/docker-bbb1.scope",
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod11.slice/cri-containerd-c1.scope",
        "kube.slice/x",
    ];
    let (world, mut tree) = start(&patterns, &before, &[]);
    let filtered = [
        "docker/aaa1",
        "docker/aaa2",
        "system.slice/docker-bbb1.scope",
        "system.slice/docker-bbb2.scope",
        "system.slice/docker-bbb2.scope/init",
        "machine.slice/libpod-ccc.scope",
        "user.slice/libpod-ddd.scope",
        "user.slice/user-1000.slice/user@1000.service/user.slice/libpod-eee.scope",
        "system.slice/nginx.service",
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod11.slice/cri-containerd-c1.scope",
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod22.slice/cri-containerd-c2.scope",
        "kube.slice/x",
        "kube.slice/y/z",
    ];
    let unfiltered = [
        "docker",
        "system.slice/podman-1.scope",
        "system.slice/session-1.scope",
        "machine.slice/qemu-1.scope",
        "user.slice/user-1000.slice/session-2.scope",
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod22.slice",
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod22.slice/crio-c3.scope",
        "kube.slice",
        "other",
    ];
    let mut arrived = 0;
    for rel in filtered {
        let cgroup = tree.mkdir(rel);
        assert!(
            !send_from(&world, &cgroup, UNAUTHORIZED),
            "{rel} is not filtered"
        );
    }
    for rel in unfiltered {
        let cgroup = tree.mkdir(rel);
        assert!(
            send_from(&world, &cgroup, UNAUTHORIZED),
            "{rel} is filtered"
        );
        arrived += 1;
    }
    world.eventually("the datagrams counted", Duration::from_secs(2), || {
        world.arrivals() >= arrived
    });
    assert_eq!(
        world.arrivals(),
        arrived,
        "a filtered cgroup's datagram arrived"
    );
    drop(tree);
}

/// A pattern in a policy: a cgroup created later that matches is judged by that policy (a name
/// outside its allow_domains is refused from it, one inside resolves and opens its address).
#[test]
#[ignore = "root: run with cargo xtask test"]
fn a_pattern_in_a_policy_judges_by_that_policy() {
    let mut world = World::new();
    let root = world.extra_cgroup("patterns");
    let mut tree = Tree::new(root.clone());
    let config = world.dir.path().join("nettrust.toml");
    std::fs::write(
        &config,
        format!(
            "[[policy]]\nname = \"jobs\"\ncgroups = [\"{}/job-*\"]\nallow_domains = [\"a.test\"]\n",
            root.display()
        ),
    )
    .unwrap();
    let config_arg = config.to_string_lossy().into_owned();
    world.start_daemon(&["--config", &config_arg]);
    let job = tree.mkdir("job-1");
    let dig = |cgroup: &Path, name: &str| dig_from(&world, cgroup, name);
    assert_eq!(
        dig(&job, "b.test").0,
        "REFUSED",
        "b.test from the policy's job"
    );
    let reaches = |cgroup: &Path, addr: &str| {
        socat_gets(
            world.in_cgroup_at(cgroup, "socat"),
            &format!("TCP:{addr}:{TCP_PORT},connect-timeout=2"),
            b"ok",
        )
    };
    assert!(
        !reaches(&job, "192.0.2.11"),
        "b.test's address opened for the job"
    );
    assert_eq!(
        dig(&job, "a.test").0,
        "NOERROR",
        "a.test from the policy's job"
    );
    assert!(
        reaches(&job, "192.0.2.10"),
        "a.test's address closed for the job"
    );
    // The default cgroup (the world's own) may resolve b.test: the pattern's policy is not its.
    assert_eq!(dig(&world.cgroup, "b.test").0, "NOERROR");
    let sibling = tree.mkdir("web-1");
    assert_eq!(
        dig(&sibling, "b.test").0,
        "NOERROR",
        "an unfiltered sibling"
    );
    tree.rmdir(&sibling);
    drop(tree);
}

/// `nettrust status` lists each pattern with the cgroups it covers now.
#[test]
#[ignore = "root: run with cargo xtask test"]
fn status_shows_what_each_pattern_covers() {
    let (world, mut tree) = start(&["{root}/job-*", "{root}/svc/**"], &["job-1"], &[]);
    tree.mkdir("job-2");
    tree.mkdir("svc/a/b");
    tree.mkdir("web-1");
    let out = world.nettrust(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = tree.root.display().to_string();
    let section = |pattern: &str| -> Vec<String> {
        let header = format!("pattern {root}/{pattern}");
        text.lines()
            .skip_while(|l| !l.trim_start().starts_with(&header))
            .skip(1)
            .take_while(|l| l.starts_with("    "))
            .map(|l| l.trim().to_owned())
            .collect()
    };
    assert_eq!(
        section("job-*"),
        [format!("{root}/job-1"), format!("{root}/job-2")],
        "{text}"
    );
    assert_eq!(
        section("svc/**"),
        [format!("{root}/svc/a"), format!("{root}/svc/a/b")],
        "{text}"
    );
    assert!(!text.contains("web-1"), "{text}");
}

/// SIGHUP with a changed pattern set reclassifies: a pattern removed leaves its cgroups (and new
/// ones it would have matched) unfiltered, a pattern added with a new attach point filters the
/// cgroups that exist and those created later.
#[test]
#[ignore = "root: run with cargo xtask test"]
fn sighup_reclassifies_a_changed_pattern_set() {
    let mut world = World::new();
    let root = world.extra_cgroup("patterns");
    let mut tree = Tree::new(root.clone());
    tree.mkdir("svc");
    let config = world.dir.path().join("nettrust.toml");
    let write = |pattern: &str| {
        std::fs::write(
            &config,
            format!(
                "[[policy]]\nname = \"jobs\"\ncgroups = [\"{}/{pattern}\"]\nallow_domains = [\"a.test\"]\n",
                root.display()
            ),
        )
        .unwrap();
    };
    write("job-*");
    let config_arg = config.to_string_lossy().into_owned();
    world.start_daemon(&["--config", &config_arg]);
    world.count_arrivals(UNAUTHORIZED);
    let job1 = tree.mkdir("job-1");
    let s1 = tree.mkdir("svc/s1");
    assert!(
        !send_from(&world, &job1, UNAUTHORIZED),
        "job-1 before the reload"
    );
    assert!(
        send_from(&world, &s1, UNAUTHORIZED),
        "svc/s1 before the reload"
    );
    write("svc/*");
    world.signal_daemon(libc::SIGHUP);
    world.eventually("the reload", Duration::from_secs(5), || {
        world.daemon_log().contains("configuration reloaded")
    });
    let s2 = tree.mkdir("svc/s2");
    let job2 = tree.mkdir("job-2");
    assert!(
        !send_from(&world, &s1, UNAUTHORIZED),
        "existing svc/s1 after the reload"
    );
    assert!(
        !send_from(&world, &s2, UNAUTHORIZED),
        "new svc/s2 after the reload"
    );
    assert!(
        send_from(&world, &job1, UNAUTHORIZED),
        "existing job-1 after the reload"
    );
    assert!(
        send_from(&world, &job2, UNAUTHORIZED),
        "new job-2 after the reload"
    );
    world.eventually("the datagrams counted", Duration::from_secs(2), || {
        world.arrivals() >= 3
    });
    assert_eq!(world.arrivals(), 3, "{}", world.daemon_log());
}

/// `nettrust attach --cgroup PATTERN` with the daemon running: cgroups created afterwards that
/// match are filtered from their first packet, their siblings are not, status lists it; a bad
/// pattern is refused naming it.
#[test]
#[ignore = "root: run with cargo xtask test"]
fn attach_accepts_a_pattern() {
    let (world, mut tree) = start(&[], &["job-0"], &[]);
    let root = tree.root.display().to_string();
    let pattern = format!("{root}/job-*");
    let out = world.nettrust(&["attach", "--cgroup", &pattern]);
    assert!(
        out.status.success(),
        "attach failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job0 = tree.root.join("job-0");
    let job1 = tree.mkdir("job-1");
    let other = tree.mkdir("other-1");
    assert!(!send_from(&world, &job0, UNAUTHORIZED), "existing job-0");
    assert!(!send_from(&world, &job1, UNAUTHORIZED), "new job-1");
    assert!(send_from(&world, &other, UNAUTHORIZED), "sibling other-1");
    let status = world.nettrust(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains(&format!("pattern {pattern}")), "{text}");
    let bad = format!("{root}/a**");
    let out = world.nettrust(&["attach", "--cgroup", &bad]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(&bad), "{err}");
    world.eventually(
        "the sibling's datagram counted",
        Duration::from_secs(2),
        || world.arrivals() >= 1,
    );
    assert_eq!(world.arrivals(), 1);
}

/// A pattern below a configured (filtered) cgroup: no attach point of its own, and a cgroup it
/// matches later is still judged by the pattern's policy, not by its filtered parent's.
#[test]
#[ignore = "root: run with cargo xtask test"]
fn a_pattern_below_a_filtered_cgroup_keeps_its_policy() {
    let mut world = World::new();
    let config = world.dir.path().join("nettrust.toml");
    std::fs::write(
        &config,
        format!(
            "[[policy]]\nname = \"jobs\"\ncgroups = [\"{}/job-*\"]\nallow_domains = [\"a.test\"]\n",
            world.cgroup.display()
        ),
    )
    .unwrap();
    let config_arg = config.to_string_lossy().into_owned();
    world.start_daemon(&["--config", &config_arg]);
    let mut tree = Tree::new(world.cgroup.clone());
    let job = tree.mkdir("job-1");
    let out = world
        .in_cgroup_at(&job, "dig")
        .args(["+time=3", "+tries=1", "+noall", "+comments"])
        .args(["@127.0.0.1", "b.test", "A"])
        .output()
        .expect("run dig");
    let (rcode, _) = world::dig_reply(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(rcode, "REFUSED", "b.test from the pattern's job");
    let other = tree.mkdir("other-1");
    world.count_arrivals(UNAUTHORIZED);
    assert!(
        !send_from(&world, &other, UNAUTHORIZED),
        "a non-matching child of a filtered cgroup stays filtered"
    );
    drop(tree);
}

/// A pattern's attach point removed and created again (dockerd's `docker` cgroup): the removal
/// is logged as an error; a SIGHUP attaches to the new one and its matching children are
/// filtered again, its other children not.
#[test]
#[ignore = "root: run with cargo xtask test"]
fn a_recreated_attach_point_is_logged_and_reattached_by_sighup() {
    let (world, mut tree) = start(&["{root}/docker/*"], &["docker"], &[]);
    let docker = tree.root.join("docker");
    tree.rmdir(&docker);
    world.eventually("the removal logged", Duration::from_secs(3), || {
        world
            .daemon_log()
            .contains("a cgroup pattern's attach point was removed")
    });
    tree.mkdir("docker");
    world.signal_daemon(libc::SIGHUP);
    world.eventually("the reload", Duration::from_secs(5), || {
        world.daemon_log().contains("configuration reloaded")
    });
    let container = tree.mkdir("docker/c1");
    assert!(
        !send_from(&world, &container, UNAUTHORIZED),
        "a container below the recreated attach point"
    );
    let sibling = tree.mkdir("other");
    assert!(send_from(&world, &sibling, UNAUTHORIZED), "a sibling");
    world.eventually(
        "the sibling's datagram counted",
        Duration::from_secs(2),
        || world.arrivals() >= 1,
    );
    assert_eq!(world.arrivals(), 1);
}

/// What the data path cannot see fails closed, never open. Below `deep`, a cgroup a `**` pattern
/// matches more than 15 levels down (out of the walk's reach) is found by its own id; a
/// non-matching cgroup that deep, and a matched one's child, are filtered with the default
/// policy (a deeper matched ancestor cannot be seen); a shallow non-matching one still passes.
/// Below `long`, a new cgroup whose path is too long for the kernel matcher is filtered too.
#[test]
#[ignore = "root: run with cargo xtask test"]
fn cgroups_beyond_the_walk_fail_closed() {
    let (world, mut tree) = start(&["{root}/deep/**/job-*", "{root}/long/**/leaf"], &[], &[]);
    let levels: Vec<String> = (0..17).map(|i| format!("l{i}")).collect();
    let deep = levels.join("/");
    // Four 250-byte components: past the 1,023 bytes the tracepoint reads.
    let long: Vec<String> = ["a", "b", "c", "d"].iter().map(|c| c.repeat(250)).collect();
    let long = long.join("/");
    let blocked = [
        format!("deep/{deep}/job-1"),
        format!("deep/{deep}/other"),
        format!("deep/{deep}/job-1/child"),
        format!("long/{long}/leaf"),
    ];
    for rel in &blocked {
        let cgroup = tree.mkdir(rel);
        assert!(
            !send_from(&world, &cgroup, UNAUTHORIZED),
            "the send from {rel} succeeded"
        );
    }
    let mut sent = 0;
    for rel in ["deep/l0/other", "long/other"] {
        let cgroup = tree.mkdir(rel);
        assert!(
            send_from(&world, &cgroup, UNAUTHORIZED),
            "the send from non-matching {rel} failed"
        );
        sent += 1;
    }
    world.eventually(
        "the passing datagrams counted",
        Duration::from_secs(2),
        || world.arrivals() >= sent,
    );
    assert_eq!(
        world.arrivals(),
        sent,
        "only the passing cgroups' datagrams may arrive"
    );
}

/// A `**` pattern's policy out of the walk's reach is never replaced by a shallower one: `ci`
/// is listed in an audit-mode policy (everything passes), its `**/job-*` descendants in an
/// enforcing one. A child of a job deeper than the walk sees (the job matched, the child is not
/// listed) is unresolved: its packets to an unauthorized address are dropped, not audited, and
/// the proxy refuses its questions. Shallow, a job's child inherits the enforcing policy.
#[test]
#[ignore = "root: run with cargo xtask test"]
fn a_deep_cgroup_never_falls_back_to_a_shallower_policy() {
    let mut world = World::new();
    let root = world.extra_cgroup("patterns");
    let mut tree = Tree::new(root.clone());
    let ci = tree.mkdir("ci");
    let config = world.dir.path().join("nettrust.toml");
    std::fs::write(
        &config,
        format!(
            "[[policy]]\nname = \"wide\"\ncgroups = [\"{ci}\"]\nallow_domains = [\"a.test\"]\nmode = \"audit\"\n\
             [[policy]]\nname = \"strict\"\ncgroups = [\"{ci}/**/job-*\"]\nallow_domains = [\"a.test\"]\n",
            ci = ci.display()
        ),
    )
    .unwrap();
    let config_arg = config.to_string_lossy().into_owned();
    world.start_daemon(&["--config", &config_arg]);
    world.count_arrivals(UNAUTHORIZED);
    let dig = |cgroup: &Path, name: &str| dig_from(&world, cgroup, name).0;
    let audited = tree.mkdir("ci/other");
    assert!(
        send_from(&world, &audited, UNAUTHORIZED),
        "the audit policy's own cgroup is not audited"
    );
    let shallow = tree.mkdir("ci/job-1/child");
    assert!(!send_from(&world, &shallow, UNAUTHORIZED), "ci/job-1/child");
    assert_eq!(dig(&shallow, "a.test"), "NOERROR", "ci/job-1/child");
    let levels: Vec<String> = (0..17).map(|i| format!("l{i}")).collect();
    let deep = tree.mkdir(&format!("ci/{}/job-2/child", levels.join("/")));
    assert!(
        !send_from(&world, &deep, UNAUTHORIZED),
        "a deep job's child fell back to the audit policy"
    );
    assert_eq!(dig(&deep, "a.test"), "REFUSED", "a deep job's child");
    world.eventually(
        "the audited datagram counted",
        Duration::from_secs(2),
        || world.arrivals() >= 1,
    );
    assert_eq!(
        world.arrivals(),
        1,
        "only the audited cgroup's datagram may arrive"
    );
}

/// A socket is judged at `connect` as its packets are by `egress`: by the cgroup that created
/// it (`sock_owner`), not by the process that connects it. A socket created in a matched job and
/// connected after its process moved to an unmatched sibling fails at once (EPERM; without the
/// record it would be judged unfiltered and its SYN dropped until the timeout); one created in
/// the sibling and connected from the job is let out, as `egress` lets its packets out.
#[test]
#[ignore = "root: run with cargo xtask test"]
fn a_socket_is_judged_by_the_cgroup_that_created_it() {
    let (world, mut tree) = start(&["{root}/job-*"], &[], &[]);
    let job = tree.mkdir("job-1");
    let other = tree.mkdir("other");
    // Creates a TCP socket, moves this process into the cgroup given, then connects.
    let script = format!(
        r#"
import socket, sys, errno, os
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(5)
with open(sys.argv[1] + "/cgroup.procs", "w") as procs:
    procs.write(str(os.getpid()))
try:
    s.connect(("{UNAUTHORIZED}", {TCP_PORT}))
    print("connected")
except socket.timeout:
    print("timeout")
except OSError as e:
    print(errno.errorcode[e.errno])
"#
    );
    let run = |from: &Path, to: &Path| {
        let out = world
            .in_cgroup_at(from, "python3")
            .args(["-c", &script])
            .arg(to)
            .output()
            .expect("run python3");
        assert!(out.status.success(), "python3 failed: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(
        run(&job, &other),
        "EPERM",
        "created in the job, connected from the sibling"
    );
    assert_eq!(
        run(&other, &job),
        "connected",
        "created in the sibling, connected from the job"
    );
}
