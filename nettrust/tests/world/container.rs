//! A container built by hand next to a [`World`]: its own network namespace behind a veth whose
//! host end is in the world's client namespace (the "host", which routes it to the internet
//! namespace), and processes started in a cgroup of their own with their own mount namespace
//! (the container's `/etc/resolv.conf`, `/etc/hosts` and `/etc/nsswitch.conf` bound over the
//! host's) and cgroup namespace. Nothing nettrust-specific is configured inside. The namespace,
//! the link and the cgroups are removed in `Drop`, also when a test fails.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::world::{CLIENT_V4, World, in_netns, ip, join_cgroup, output_within};

/// The host end of the container's veth (in the world's client namespace): the container's
/// gateway, and the address a DNS proxy must listen on to be reachable from the container.
pub const HOST_V4: &str = "198.51.100.241";
/// The container's own address. The /30 is a more specific route than the link's /24 in both
/// the client and the internet namespace, so no NAT is needed: the internet namespace routes
/// replies back through the client namespace.
pub const CONTAINER_V4: &str = "198.51.100.242";
const PREFIX: &str = "198.51.100.240/30";

/// A container network namespace linked to `world`'s client namespace, and the files its
/// processes see as `/etc`.
pub struct Container {
    /// The container's network namespace (`ntk-ID`).
    pub netns: String,
    /// The container's `/etc/resolv.conf`, `/etc/hosts` and `/etc/nsswitch.conf`.
    etc: PathBuf,
    /// Cgroups made with [`Container::cgroup`], removed (deepest first) with the container.
    cgroups: Vec<PathBuf>,
}

impl Container {
    /// Creates the namespace, the veth pair (host end [`HOST_V4`] in the client namespace,
    /// [`CONTAINER_V4`] inside with the default route through the host end), turns on
    /// forwarding in the client namespace and routes the container's /30 from the internet
    /// namespace through it. `resolver` is the only line the container's resolv.conf names.
    pub fn new(world: &World, resolver: &str) -> Self {
        let netns = format!("ntk-{}", world.id);
        let (host_dev, ctr_dev) = (format!("vkh{}", world.id), format!("vkc{}", world.id));
        let etc = world.dir.path().join("container-etc");
        std::fs::create_dir(&etc).expect("create the container's /etc");
        let container = Self {
            netns,
            etc,
            cgroups: Vec::new(),
        };
        let (c, k) = (&world.client_ns, &container.netns);
        for line in [
            format!("netns add {k}"),
            format!("link add {host_dev} netns {c} type veth peer name {ctr_dev} netns {k}"),
            format!("-n {c} addr add {HOST_V4}/30 dev {host_dev}"),
            format!("-n {c} link set {host_dev} up"),
            format!("-n {k} link set lo up"),
            format!("-n {k} addr add {CONTAINER_V4}/30 dev {ctr_dev}"),
            format!("-n {k} link set {ctr_dev} up"),
            format!("-n {k} route add default via {HOST_V4}"),
            format!("-n {} route add {PREFIX} via {CLIENT_V4}", world.inet_ns),
        ] {
            ip(&line);
        }
        // /proc/sys/net belongs to the network namespace of the process that opens it.
        let mut forward = world.in_ns(c, "sh");
        forward.args(["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]);
        let out = output_within(forward, Duration::from_secs(10));
        assert!(out.status.success(), "turning on forwarding: {out:?}");
        for (name, text) in [
            ("resolv.conf", format!("nameserver {resolver}\n")),
            ("hosts", "127.0.0.1 localhost\n".to_owned()),
            ("nsswitch.conf", "hosts: files dns\n".to_owned()),
        ] {
            std::fs::write(container.etc.join(name), text).expect("write the container's /etc");
        }
        container
    }

    /// Creates the cgroup `parent/name` (removed with the container) and returns its path.
    pub fn cgroup(&mut self, parent: &Path, name: &str) -> PathBuf {
        let path = parent.join(name);
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("create the cgroup {}: {e}", path.display()));
        self.cgroups.push(path.clone());
        path
    }

    /// `program args` run as a container process: in the container's network namespace, moved
    /// into `cgroup` first, then in new mount, cgroup and UTS namespaces (so `/proc/self/cgroup`
    /// reads `0::/`) with the container's files bound over the host's `/etc` ones.
    pub fn command(&self, cgroup: &Path, program: &str, args: &[&str]) -> Command {
        let mut cmd = join_cgroup(in_netns(&self.netns, "unshare"), cgroup);
        cmd.args(["--mount", "--cgroup", "--uts", "--propagation", "private"])
            .args(["sh", "-euc"])
            .arg(
                "for f in resolv.conf hosts nsswitch.conf; do \
                 mount --bind \"$CONTAINER_ETC/$f\" \"/etc/$f\"; done; \
                 unset CONTAINER_ETC; exec \"$@\"",
            )
            .args(["container", program])
            .args(args)
            .env("CONTAINER_ETC", &self.etc);
        cmd
    }

    /// Runs `program args` in the container (see [`Container::command`]) to completion, killed
    /// after 20 s; returns its output and how long it ran.
    pub fn run(&self, cgroup: &Path, program: &str, args: &[&str]) -> (Output, Duration) {
        let started = Instant::now();
        let out = output_within(self.command(cgroup, program, args), Duration::from_secs(20));
        (out, started.elapsed())
    }

    /// The container's view of its own namespaces: its cgroup (`/proc/self/cgroup`'s v2 line)
    /// and the resolver its resolv.conf names.
    pub fn view(&self, cgroup: &Path) -> (String, String) {
        let (out, _) = self.run(
            cgroup,
            "sh",
            &["-c", "grep '^0::' /proc/self/cgroup; cat /etc/resolv.conf"],
        );
        assert!(out.status.success(), "the container did not start: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text.lines();
        let cgroup = lines.next().unwrap_or_default().to_owned();
        let resolver = lines.next().unwrap_or_default().to_owned();
        (cgroup, resolver)
    }
}

impl Drop for Container {
    /// Removes the namespace (and with it the veth pair and the forwarding setting), then the
    /// cgroups, retrying while the kernel still counts exiting processes in them. The route in
    /// the internet namespace goes with that namespace.
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
        for cgroup in self.cgroups.iter().rev() {
            let started = Instant::now();
            while cgroup.exists()
                && std::fs::remove_dir(cgroup).is_err()
                && started.elapsed() < Duration::from_secs(5)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A command's exit status, stdout and stderr, for failure messages.
pub fn describe(out: &Output) -> String {
    format!(
        "{}: stdout {:?}, stderr {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// A nettrust daemon started in `world`'s client namespace with nothing but a config file, the
/// world's bpffs directory and the eBPF backend: what it filters and where it listens come from
/// the file alone. Killed (its log printed when a test fails) when dropped.
pub struct ConfiguredDaemon {
    child: Child,
    log: PathBuf,
}

impl ConfiguredDaemon {
    /// Writes `config` to the world's directory, starts the daemon with it, and waits until it
    /// answers DNS on `ready_at` (an address of the client namespace it listens on).
    pub fn start(world: &World, config: &str, ready_at: &str) -> Self {
        let path = world.dir.path().join("container-nettrust.toml");
        std::fs::write(&path, config).expect("write the config file");
        let log = world.dir.path().join("container-nettrust.log");
        let child = world
            .in_ns(&world.client_ns, env!("CARGO_BIN_EXE_nettrust"))
            .arg("run")
            .arg("--config")
            .arg(&path)
            .arg("--bpffs-dir")
            .arg(&world.bpffs_dir)
            .args(["--firewall-backend", "ebpf"])
            .env("RUST_LOG", "info,nettrust=debug")
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("create the daemon log"))
            .spawn()
            .expect("start nettrust");
        let mut daemon = Self { child, log };
        let started = Instant::now();
        loop {
            let answered = world
                .in_ns(&world.client_ns, "dig")
                .args([
                    "+time=1",
                    "+tries=1",
                    &format!("@{ready_at}"),
                    "ready.invalid",
                ])
                .output()
                .is_ok_and(|o| o.status.success());
            if answered {
                return daemon;
            }
            if let Some(status) = daemon.child.try_wait().expect("wait for nettrust") {
                panic!(
                    "nettrust exited with {status} during start with\n{config}\n{}",
                    daemon.log()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "nettrust did not answer DNS on {ready_at}:\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ConfiguredDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("nettrust log:\n{}", self.log());
        }
    }
}
