//! The shipped unit, `dist/nettrust.service`, started by a real systemd: systemd-nspawn boots
//! systemd as PID 1 of a container (a tmpfs root with the host's /usr, a private network
//! namespace), which starts the unit with its whole sandbox (capabilities, system-call filter,
//! ProtectSystem, ProtectProc, …) and only `ExecStart` replaced by a drop-in to run this build.
//! A probe unit then proves from inside that the daemon runs the eBPF backend (not the nftables
//! fallback; a second case runs the unit with `--firewall-backend nftables`), that every thread of it dropped to `CAP_NET_ADMIN` + `CAP_BPF`, and that it
//! enforces: a process in the filtered slice cannot reach an address nobody resolved, and can
//! reach one once resolved through nettrust. Run with `cargo xtask test`.
//!
//! What the container needs to look like a host, and nothing more:
//! - bpffs at /sys/fs/bpf: systemd mounts it at boot on a host, but nspawn's /sys has no such
//!   directory; an empty tmpfs is put there and a oneshot unit mounts a bpffs on it (private to
//!   the container, so no pin reaches the host's bpffs);
//! - the capabilities and the system call a host's root has and nspawn withholds from containers
//!   by default: `CAP_BPF`, `CAP_PERFMON`, `CAP_SYS_RESOURCE` (the unit's own bounding set) and
//!   `bpf(2)` (nspawn's seccomp filter); the unit itself then narrows them as on a host;
//! - a test internet: a veth pair to a network namespace holding dnsmasq (the upstream) and a
//!   TCP server answering "ok" on documentation addresses.
//!
//! Nothing reaches the host: the daemon runs in the container's private network namespace, and the
//! only cgroup it attaches to is a slice of the container, below a test cgroup created here (the
//! test checks from the host with `BPF_PROG_QUERY`: one program on the slice, none on the test
//! cgroup itself).
#![expect(
    unused_crate_dependencies,
    reason = "a test target sees every dependency of the package and uses only a few of them"
)]

mod world;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use nettrust::privileges::{needed, parse_status};

/// Where the test build is bound inside the container.
const BINARY: &str = "/opt/nettrust-test/nettrust";

/// What the unit's ExecStart becomes: this build, forwarding to the test upstream, filtering the
/// container's `filtered.slice`, plus `extra` (all else is the unit's and the binary's defaults).
fn drop_in(cgroup_mount: &Path, extra: &str) -> String {
    format!(
        "# Only the command is replaced: the test build, the test upstream, one filtered slice.\n\
         [Service]\n\
         ExecStart=\n\
         ExecStart={BINARY} run --fwd-addr 198.51.100.53:53 --cgroup {}/filtered.slice {extra}\n",
        cgroup_mount.display()
    )
}

/// The test's own units (name, contents), all enabled (wanted by multi-user.target).
const UNITS: &[(&str, &str)] = &[
    (
        "bpffs.service",
        "[Unit]\n\
         Description=bpffs at /sys/fs/bpf, as systemd mounts it at boot on a host\n\
         DefaultDependencies=no\n\
         Before=nettrust.service\n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         ExecStart=/bin/mount -t bpf -o mode=0700 bpf /sys/fs/bpf\n",
    ),
    (
        "testnet.service",
        "[Unit]\n\
         Description=test internet: a veth pair to the namespace of the servers\n\
         Before=network-online.target upstream.service web.service nettrust.service\n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         ExecStart=/usr/sbin/ip netns add inet\n\
         ExecStart=/usr/sbin/ip link add veth0 type veth peer name veth1 netns inet\n\
         ExecStart=/usr/sbin/ip addr add 203.0.113.1/24 dev veth0\n\
         ExecStart=/usr/sbin/ip link set veth0 up\n\
         ExecStart=/usr/sbin/ip -n inet addr add 203.0.113.2/24 dev veth1\n\
         ExecStart=/usr/sbin/ip -n inet addr add 192.0.2.10/32 dev veth1\n\
         ExecStart=/usr/sbin/ip -n inet addr add 192.0.2.99/32 dev veth1\n\
         ExecStart=/usr/sbin/ip -n inet addr add 198.51.100.53/32 dev veth1\n\
         ExecStart=/usr/sbin/ip -n inet link set veth1 up\n\
         ExecStart=/usr/sbin/ip -n inet link set lo up\n\
         ExecStart=/usr/sbin/ip route add default via 203.0.113.2\n",
    ),
    (
        "upstream.service",
        "[Unit]\n\
         Description=the upstream DNS server (dnsmasq)\n\
         Requires=testnet.service\n\
         After=testnet.service\n\
         Before=nettrust.service\n\
         [Service]\n\
         NetworkNamespacePath=/run/netns/inet\n\
         ExecStart=/usr/sbin/dnsmasq --keep-in-foreground --no-resolv --no-hosts --user=root \
         --listen-address=198.51.100.53 --bind-interfaces --address=/a.test/192.0.2.10 \
         --address=/ready.invalid/\n",
    ),
    (
        "web.service",
        "[Unit]\n\
         Description=a TCP server answering ok on every test address\n\
         Requires=testnet.service\n\
         After=testnet.service\n\
         [Service]\n\
         NetworkNamespacePath=/run/netns/inet\n\
         ExecStart=/usr/bin/socat TCP-LISTEN:8080,reuseaddr,fork SYSTEM:\"echo ok\"\n",
    ),
    (
        "filtered.slice",
        "[Unit]\n\
         Description=the slice nettrust filters\n\
         Before=nettrust.service\n",
    ),
    (
        // A service living in the slice, as on a host: systemd removes the cgroup of an empty
        // slice, and nettrust must find the cgroup it is told to filter.
        "client.service",
        "[Unit]\n\
         Description=a long-running program in the filtered slice\n\
         Before=nettrust.service\n\
         [Service]\n\
         Slice=filtered.slice\n\
         ExecStart=/bin/sleep infinity\n",
    ),
    (
        "probe.service",
        "[Unit]\n\
         Description=the test's probe: results to /run/out\n\
         After=nettrust.service web.service upstream.service client.service\n\
         [Service]\n\
         Type=oneshot\n\
         ExecStart=/bin/sh /run/out/probe.sh\n",
    ),
];

/// Runs unfiltered (system.slice); the filtered commands run as transient units in
/// `filtered.slice` (`systemd-run --slice`). Each result goes to a file of /run/out.
const PROBE: &str = r#"out=/run/out
exec > $out/probe.log 2>&1
set -x
binary=/opt/nettrust-test/nettrust
i=0
until dig +time=1 +tries=1 @127.0.0.1 ready.invalid > /dev/null; do
    i=$((i + 1)); [ $i -gt 120 ] && break; sleep 0.5
done
filtered() { systemd-run --quiet --wait --pipe --slice=filtered.slice "$@" 2>&1; }
connect() { socat -T2 -u TCP:$1:8080,connect-timeout=2 - 2>&1; }
echo "$(connect 192.0.2.99)" > $out/unfiltered-unresolved
echo "$(filtered socat -T2 -u TCP:192.0.2.99:8080,connect-timeout=2 -)" > $out/filtered-unresolved
echo "$(filtered dig +short +time=2 +tries=2 @127.0.0.1 a.test)" > $out/resolved
echo "$(filtered socat -T2 -u TCP:192.0.2.10:8080,connect-timeout=2 -)" > $out/filtered-resolved
pid=$(systemctl show --property=MainPID --value nettrust.service)
for task in /proc/$pid/task/*; do
    echo "== $task"; cat $task/status
done > $out/threads
$binary status > $out/status 2>&1
systemctl show --property=ActiveState,NRestarts nettrust.service > $out/unit
journalctl --no-pager --output=cat --unit=nettrust.service > $out/journal
touch $out/done
"#;

/// The cgroup the container lives in, below the host's cgroup2 root; removed with what systemd
/// created in it once the container is gone.
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new(mount: &Path) -> Self {
        let path = mount.join(format!("nettrust-systemd-test-{}", std::process::id()));
        std::fs::create_dir(&path).expect("create the test cgroup");
        Self(path)
    }

    fn remove(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    Self::remove(&entry.path());
                }
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Whatever the container left running (it should have stopped everything) goes first.
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
        let started = Instant::now();
        while self.0.exists() && started.elapsed() < Duration::from_secs(10) {
            Self::remove(&self.0);
            if self.0.exists() {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// systemd-nspawn; stopped with SIGTERM (the container's systemd shuts down in order: nettrust
/// gets its SIGTERM and removes its firewall), killed if it does not exit.
struct Container(Child);

impl Container {
    /// Sends SIGTERM and waits; whether it exited within `limit`.
    fn stop(&mut self, limit: Duration) -> bool {
        if self.0.try_wait().ok().flatten().is_some() {
            return true;
        }
        let pid = libc::pid_t::try_from(self.0.id()).unwrap();
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let started = Instant::now();
        while started.elapsed() < limit {
            if self.0.try_wait().ok().flatten().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if !self.stop(Duration::from_secs(30)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The directories named `name` below `dir`.
fn find_dirs(dir: &Path, name: &str, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            if entry.file_name() == name {
                found.push(entry.path());
            }
            find_dirs(&entry.path(), name, found);
        }
    }
}

fn read(out: &Path, name: &str) -> String {
    std::fs::read_to_string(out.join(name)).unwrap_or_else(|e| panic!("/run/out/{name}: {e}"))
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn the_shipped_unit_runs_the_ebpf_backend_with_reduced_capabilities_and_enforces() {
    shipped_unit(Backend::Auto);
}

/// The same unit with the nftables backend (what `auto` falls back to where eBPF cannot load;
/// its lock lives in `/run/nettrust`).
#[test]
#[ignore = "needs root: cargo xtask test"]
fn the_shipped_unit_runs_the_nftables_backend_with_reduced_capabilities_and_enforces() {
    shipped_unit(Backend::Nftables);
}

/// The backend the unit's daemon is started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    /// The default, `auto`, which must pick eBPF under the unit.
    Auto,
    /// `--firewall-backend nftables`.
    Nftables,
}

fn shipped_unit(backend: Backend) {
    let nspawn = Command::new("systemd-nspawn").arg("--version").output();
    assert!(
        nspawn.is_ok_and(|o| o.status.success()),
        "systemd-nspawn is missing (Debian package systemd-container, installed by cargo xtask setup)"
    );
    let dir = tempfile::tempdir().unwrap();
    let units = dir.path().join("units");
    let out = dir.path().join("out");
    let wants = units.join("multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::fs::create_dir_all(units.join("nettrust.service.d")).unwrap();
    std::fs::create_dir_all(&out).unwrap();

    // The real unit file, as shipped; only its command is replaced, by a drop-in.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/nettrust.service");
    std::fs::copy(&shipped, units.join("nettrust.service")).unwrap();
    let mount = nettrust::cgroup::cgroup2_mount().expect("the cgroup2 mount");
    std::fs::write(
        units.join("nettrust.service.d/test.conf"),
        drop_in(
            &mount,
            match backend {
                Backend::Auto => "",
                Backend::Nftables => "--firewall-backend nftables",
            },
        ),
    )
    .unwrap();
    for (name, text) in UNITS {
        std::fs::write(units.join(name), text).unwrap();
    }
    for name in UNITS
        .iter()
        .map(|(name, _)| *name)
        .chain(["nettrust.service"])
    {
        std::os::unix::fs::symlink(format!("../{name}"), wants.join(name)).unwrap();
    }
    std::fs::write(out.join("probe.sh"), PROBE).unwrap();

    let cgroup = TestCgroup::new(&mount);
    let console = dir.path().join("console.log");
    let mut cmd = Command::new("systemd-nspawn");
    cmd.args([
        "--directory=/",
        "--volatile=yes",
        "--private-network",
        "--register=no",
        "--keep-unit",
        "--boot",
        "--console=pipe",
        "--capability=CAP_BPF,CAP_PERFMON,CAP_SYS_RESOURCE",
        "--system-call-filter=bpf",
        "--tmpfs=/sys/fs/bpf",
    ])
    .arg(format!("--bind-ro={}:/etc/systemd/system", units.display()))
    .arg(format!("--bind={}:/run/out", out.display()))
    .arg(format!(
        "--bind-ro={}:{BINARY}",
        env!("CARGO_BIN_EXE_nettrust")
    ))
    .stdin(Stdio::null())
    .stdout(std::fs::File::create(&console).unwrap())
    .stderr(Stdio::from(
        std::fs::File::options()
            .append(true)
            .open(&console)
            .unwrap(),
    ));
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(cgroup.0.join("cgroup.procs"))
        .unwrap();
    // SAFETY: write(2) is async-signal-safe; "0" moves nspawn itself into the test cgroup, so the
    // container's systemd builds its cgroup tree there.
    unsafe {
        use std::os::{fd::AsRawFd as _, unix::process::CommandExt as _};
        cmd.pre_exec(move || {
            if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut container = Container(cmd.spawn().expect("start systemd-nspawn"));

    let started = Instant::now();
    while !out.join("done").exists() {
        if let Some(status) = container.0.try_wait().unwrap() {
            panic!(
                "the container exited ({status}) before the probe finished:\n{}",
                std::fs::read_to_string(&console).unwrap_or_default()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the probe did not finish within 180 s; probe log:\n{}\nconsole:\n{}",
            std::fs::read_to_string(out.join("probe.log")).unwrap_or_default(),
            std::fs::read_to_string(&console).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Seen from the host while the daemon runs: its filter is attached to the container's slice,
    // a cgroup below the test cgroup, and nowhere above it.
    let mut slices = Vec::new();
    find_dirs(&cgroup.0, "filtered.slice", &mut slices);
    assert_eq!(slices.len(), 1, "{slices:?}");
    let attached_to_slice = world::egress_programs(&slices[0]);
    let attached_to_test_cgroup = world::egress_programs(&cgroup.0);
    let stopped = container.stop(Duration::from_secs(60));

    let journal = read(&out, "journal");
    let context = format!(
        "nettrust's journal:\n{journal}\nprobe log:\n{}",
        read(&out, "probe.log")
    );
    // The unit started once and kept running (Restart=always would hide a crash loop).
    let unit = read(&out, "unit");
    assert!(
        unit.contains("ActiveState=active") && unit.contains("NRestarts=0"),
        "{unit}\n{context}"
    );
    let status = read(&out, "status");
    if backend == Backend::Auto {
        // eBPF, not the nftables fallback.
        assert!(
            !journal.contains("falling back to nftables"),
            "auto fell back to nftables under the unit:\n{context}"
        );
        assert!(
            status.starts_with("backend: ebpf") && status.contains("enforcement: active (pinned)"),
            "nettrust status:\n{status}\n{context}"
        );
        assert!(
            status.contains(&format!("{}/filtered.slice", mount.display())),
            "the filtered slice is not attached:\n{status}\n{context}"
        );
    } else {
        assert!(
            status.starts_with("backend: nftables")
                && status.contains("daemon: running")
                && status.contains("enforcement: active"),
            "nettrust status:\n{status}\n{context}"
        );
    }
    // Every thread of the daemon dropped to the running set, no-new-privs set.
    let last_cap: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let kept = needed(last_cap);
    let threads = read(&out, "threads");
    let mut checked = 0;
    for thread in threads.split("== ").filter(|t| !t.trim().is_empty()) {
        let caps = parse_status(thread).unwrap_or_else(|| panic!("unreadable status:\n{thread}"));
        assert_eq!(caps.effective, kept, "CapEff:\n{thread}");
        assert_eq!(caps.permitted, kept, "CapPrm:\n{thread}");
        assert!(caps.no_new_privs, "NoNewPrivs:\n{thread}");
        assert!(thread.contains("CapAmb:\t0000000000000000"), "{thread}");
        checked += 1;
    }
    assert!(
        checked >= 1,
        "no thread of the daemon read:\n{threads}\n{context}"
    );
    assert!(journal.contains("capabilities reduced to"), "{context}");
    // Enforcement: the server answers an unfiltered process; a filtered one gets nothing from an
    // address nobody resolved (socat ran and failed to connect), and reaches it once resolved.
    let unfiltered = read(&out, "unfiltered-unresolved");
    assert_eq!(
        unfiltered.trim(),
        "ok",
        "the test server is down:\n{context}"
    );
    let blocked = read(&out, "filtered-unresolved");
    assert!(
        blocked.lines().all(|l| l.trim() != "ok")
            && blocked.contains("socat")
            && blocked.contains("connect"),
        "an unresolved address answered a filtered process (or socat did not run): \
         {blocked}\n{context}"
    );
    assert_eq!(read(&out, "resolved").trim(), "192.0.2.10", "{context}");
    assert_eq!(
        read(&out, "filtered-resolved").trim(),
        "ok",
        "a resolved address is unreachable from the filtered slice:\n{context}"
    );
    assert_eq!(
        (attached_to_slice, attached_to_test_cgroup),
        (u32::from(backend == Backend::Auto), 0),
        "egress programs on {} and on the test cgroup {}",
        slices[0].display(),
        cgroup.0.display()
    );
    assert!(
        stopped,
        "the container did not stop within 60 s of SIGTERM:\n{}",
        std::fs::read_to_string(&console).unwrap_or_default()
    );
    eprintln!(
        "{checked} threads checked; {}; filter on {}",
        status.lines().next().unwrap(),
        slices[0].display()
    );
}
