//! After setup the daemon keeps only CAP_NET_ADMIN and CAP_BPF, in every thread, with an equally
//! reduced bounding set and no-new-privs, and still does everything it does after setup: authorize
//! answers, apply a SIGHUP reload, sweep, and remove its firewall at exit (eBPF and nftables).
//! Run with `cargo xtask test`.
#![expect(
    unused_crate_dependencies,
    reason = "a test target sees every dependency of the package and uses only a few of them"
)]

mod world;

use std::time::Duration;

use nettrust::privileges::{CAP_BPF, CAP_NET_ADMIN, parse_status};
use world::World;

const KEPT: u64 = 1 << CAP_NET_ADMIN | 1 << CAP_BPF;

/// The pid of the daemon of `world` (the only process whose command line names its bpffs dir).
fn daemon_pid(world: &World) -> u32 {
    let needle = world.bpffs_dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains(&needle) && c.contains("run\0")
            })
        })
        .expect("the daemon's pid")
}

/// Every thread of `pid` shows exactly the kept set (effective, permitted, bounding), no ambient
/// capability and no-new-privs.
fn assert_reduced(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let amb = status
        .lines()
        .find_map(|l| l.strip_prefix("CapAmb:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap());
    assert_eq!(amb, Some(0), "ambient capabilities left:\n{status}");
    let threads = world::threads(pid);
    assert!(!threads.is_empty(), "no thread of {pid} listed");
    for thread in &threads {
        let text = &thread.status;
        let caps = parse_status(text).unwrap();
        let tid = thread.tid;
        assert_eq!(caps.effective, KEPT, "thread {tid}: CapEff\n{text}");
        assert_eq!(caps.permitted, KEPT, "thread {tid}: CapPrm\n{text}");
        assert_eq!(caps.bounding, KEPT, "thread {tid}: CapBnd\n{text}");
        assert!(caps.no_new_privs, "thread {tid}: NoNewPrivs\n{text}");
    }
    threads.len()
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn ebpf_daemon_keeps_only_net_admin_and_bpf() {
    let mut world = World::new();
    let config = world.dir.path().join("privileges.toml");
    std::fs::write(&config, "[whitelist]\nhosts = [\"203.0.113.50\"]\n").unwrap();
    let config_arg = config.display().to_string();
    world.start_daemon(&[
        "--config",
        &config_arg,
        "--authorized-ttl",
        "2",
        "--ttl-check-ticker",
        "1",
    ]);
    let pid = daemon_pid(&world);
    // The drop happens right after setup, before "nettrust is running".
    world.eventually("the reduced set", Duration::from_secs(5), || {
        world.daemon_log().contains("capabilities reduced")
    });
    let threads = assert_reduced(pid);
    eprintln!("{threads} threads checked");

    // Authorizing answers still works (map writes need CAP_BPF)...
    assert_eq!(world.resolve("a.test", "A", false), ["192.0.2.10"]);
    assert!(world.reachable_from_cgroup("192.0.2.10"));
    assert!(world.reachable_from_cgroup("203.0.113.50"));
    // ...so do reloads...
    std::fs::write(&config, "[whitelist]\nhosts = [\"203.0.113.51\"]\n").unwrap();
    world.signal_daemon(libc::SIGHUP);
    world.eventually("the reload", Duration::from_secs(10), || {
        world.reachable_from_cgroup("203.0.113.51")
    });
    assert!(!world.reachable_from_cgroup("203.0.113.50"));
    // ...and the sweeper: an unused authorization expires and is removed.
    assert_eq!(world.resolve("b.test", "A", false), ["192.0.2.11"]);
    world.eventually("the sweep", Duration::from_secs(15), || {
        !world.list().contains(&"192.0.2.11".parse().unwrap())
    });
    assert_reduced(pid);
    assert!(
        !world.daemon_log().contains("ERROR"),
        "errors with the reduced set:\n{}",
        world.daemon_log()
    );

    // The exit still removes everything (links detached, pins gone): the cgroup is open again.
    assert!(world.stop_daemon(), "nettrust failed at exit");
    assert!(world.reachable_from_cgroup("192.0.2.99"));
    assert_eq!(world.attached_egress_programs(), 0);
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn nftables_daemon_keeps_only_net_admin_and_bpf() {
    let mut world = World::new();
    world.start_daemon(&["--firewall-backend", "nftables"]);
    let pid = daemon_pid(&world);
    world.eventually("the reduced set", Duration::from_secs(5), || {
        world.daemon_log().contains("capabilities reduced")
    });
    assert_reduced(pid);
    assert_eq!(world.resolve("a.test", "A", false), ["192.0.2.10"]);
    assert!(world.reachable_from_cgroup("192.0.2.10"));
    assert!(!world.reachable_from_cgroup("192.0.2.11"));
    assert!(world.stop_daemon(), "nettrust failed at exit");
    // The table is gone.
    let out = world
        .in_ns(&world.client_ns, "nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("net-trust"),
        "table left behind"
    );
    assert!(world.reachable_from_cgroup("192.0.2.11"));
}

/// A daemon that cannot reduce its privileges does not run with them: here
/// `/proc/sys/kernel/cap_last_cap` is hidden (as systemd's `ProcSubset=pid` does), so the drop
/// cannot know the kernel's capabilities. The start fails with an error naming the file, and the
/// firewall it had set up is removed again: the cgroup is neither left filtered nor served.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn a_failed_privilege_drop_stops_the_daemon() {
    use std::{ffi::CString, os::unix::process::CommandExt as _};

    let world = World::new();
    let mut cmd = world.in_ns(&world.client_ns, env!("CARGO_BIN_EXE_nettrust"));
    cmd.args(["run", "--listen-addr", "127.0.0.1:53", "--fwd-addr"])
        .arg(format!("{}:53", world::UPSTREAM))
        .arg("--cgroup")
        .arg(&world.cgroup)
        .arg("--bpffs-dir")
        .arg(&world.bpffs_dir)
        .args(["--firewall-backend", "ebpf"]);
    let root = CString::new("/").unwrap();
    let null = CString::new("/dev/null").unwrap();
    let last_cap = CString::new("/proc/sys/kernel/cap_last_cap").unwrap();
    // SAFETY: unshare and mount are async-signal-safe system calls; the strings are allocated
    // before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                || libc::mount(
                    null.as_ptr(),
                    last_cap.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = world::output_within(cmd, Duration::from_secs(15));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "nettrust kept running without dropping its privileges:\n{stderr}"
    );
    assert!(
        stderr.contains("cannot start with reduced privileges")
            && stderr.contains("/proc/sys/kernel/cap_last_cap"),
        "the error does not say why:\n{stderr}"
    );
    // It had attached its filter before the drop; the failed start removed it again.
    assert_eq!(world.attached_egress_programs(), 0, "{stderr}");
    assert!(!world.bpffs_dir.exists(), "pinned state left:\n{stderr}");
    assert!(world.reachable_from_cgroup("192.0.2.99"));
}
