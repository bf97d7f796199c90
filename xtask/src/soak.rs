//! `cargo xtask soak --minutes N`: nettrust (eBPF backend) under steady DNS load for N minutes with
//! authorization expiry active, asserting that it holds: daemon RSS drift below 5% after the
//! warm-up, no DNS errors (lost queries, SERVFAIL or anything but NOERROR), and not one packet
//! from the filtered cgroup reaching an address nobody resolved.
//!
//! Like `bench dns`, everything runs in two network namespaces this command creates and removes:
//! "client" (nettrust, dnsperf and a connect loop inside a test cgroup that nettrust filters) and
//! "upstream" (dnsmasq serving `NAMES` names with a short TTL, and an nft counter for packets to
//! `TARGET`), linked by a veth pair on documentation addresses. The host's own network and cgroups
//! are never touched.

use std::{
    fmt::Write as _,
    fs,
    io::Write as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    bench::vmrss_kib,
    netns::{UPSTREAM_V4, World},
};

/// Distinct names served by the upstream, each with its own address in 198.18.0.0/15 (below the
/// host map's 65,536 entries, so no authorization fails for lack of room).
const NAMES: u32 = 40_000;
/// An address nobody resolves: local in the upstream namespace, counted on arrival.
const TARGET: &str = "192.0.2.200";
/// Authorization lifetime and sweep interval: with the load cycling through every name, hosts
/// keep expiring, being swept and being authorized again.
const AUTHORIZED_TTL: &str = "3";
const TTL_CHECK: &str = "1";
/// dnsperf's queries in flight, in the maximum-rate run and the soak alike.
const IN_FLIGHT: u32 = 100;
/// Allowed RSS growth after the warm-up.
const MAX_DRIFT: f64 = 0.05;

/// Options of one soak run.
pub struct Options {
    /// Length of the measured part of the run (after the warm-up).
    pub seconds: u64,
    /// Warm-up before the measured part (load on, RSS not judged yet).
    pub warmup: u64,
    /// dnsperf's query rate limit; `None`: half of the maximum measured first (5 s of dnsperf
    /// without a limit).
    pub qps: Option<u32>,
}

/// `cargo xtask` arguments of the CI soak: 20 s of warm-up and 30 s measured, at half the
/// maximum rate of the debug binary the root tests were built with.
pub fn ci_args(root: &Path) -> Vec<String> {
    let binary = root.join("target/debug/nettrust");
    [
        "soak",
        "--minutes",
        "0.5",
        "--warmup-seconds",
        "20",
        "--binary",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([binary.display().to_string()])
    .collect()
}

/// The soak's processes, stopped in `Drop` (also on error or panic), then its world.
struct Soak {
    children: Vec<Child>,
    nettrust: Option<Child>,
    world: World,
}

impl Soak {
    fn new() -> Result<Self> {
        // TARGET (192.0.2.200) is local in the upstream namespace: a packet that reaches it is
        // counted there.
        let world = World::new(
            "soak",
            's',
            "default",
            &["route add local 192.0.2.0/24 dev lo"],
        )?;
        Ok(Self {
            children: Vec::new(),
            nettrust: None,
            world,
        })
    }

    /// A shell script in the client namespace and the filtered cgroup.
    fn in_cgroup(&self, script: &str) -> Command {
        self.world.in_cgroup(&format!("sh -c '{script}'"))
    }

    fn start_upstream(&mut self) -> Result<()> {
        let mut hosts = String::with_capacity(NAMES as usize * 32);
        let mut queries = String::with_capacity(NAMES as usize * 20);
        for i in 0..NAMES {
            writeln!(
                hosts,
                "198.{}.{}.{} s{i}.soak",
                18 + (i >> 16),
                (i >> 8) & 0xff,
                i & 0xff
            )?;
            writeln!(queries, "s{i}.soak A")?;
        }
        fs::write(self.world.dir.join("hosts"), hosts)?;
        fs::write(self.world.dir.join("queries"), queries)?;
        let conf = format!(
            "no-resolv\nno-hosts\nbind-interfaces\nport=53\nuser=root\npid-file=\n\
             listen-address={UPSTREAM_V4}\naddn-hosts={}\nlocal-ttl=2\n",
            self.world.dir.join("hosts").display()
        );
        fs::write(self.world.dir.join("dnsmasq.conf"), conf)?;
        let child = self
            .world
            .in_upstream("dnsmasq")
            .arg("--keep-in-foreground")
            .arg(format!(
                "--conf-file={}",
                self.world.dir.join("dnsmasq.conf").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting dnsmasq (apt-get install dnsmasq-base)")?;
        self.children.push(child);
        // Packets to TARGET arriving in the upstream namespace, whoever sent them.
        let mut nft = self.world.in_upstream("nft");
        let mut nft = nft
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .context("starting nft")?;
        nft.stdin.take().context("nft stdin")?.write_all(
            format!(
                "table inet soak {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n  ip daddr {TARGET} counter\n }}\n}}\n"
            )
            .as_bytes(),
        )?;
        if !nft.wait()?.success() {
            bail!("nft could not install the arrival counter");
        }
        self.wait_answers(UPSTREAM_V4, "dnsmasq")
    }

    fn arrivals(&self) -> Result<u64> {
        let out = self
            .world
            .in_upstream("nft")
            .args(["list", "chain", "inet", "soak", "input"])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no counter in {text}"))
    }

    fn start_nettrust(&mut self, binary: &Path) -> Result<u32> {
        let child = self
            .world
            .in_client(&binary.display().to_string())
            .args(["run", "--listen-addr", "127.0.0.1:53"])
            .args(["--fwd-addr", &format!("{UPSTREAM_V4}:53")])
            .args(["--authorized-ttl", AUTHORIZED_TTL])
            .args(["--ttl-check-ticker", TTL_CHECK])
            .arg("--cgroup")
            .arg(&self.world.cgroup)
            .arg("--bpffs-dir")
            .arg(&self.world.bpffs_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(fs::File::create(self.world.dir.join("nettrust.log"))?)
            .spawn()
            .context("starting nettrust")?;
        let pid = child.id();
        self.nettrust = Some(child);
        self.wait_answers("127.0.0.1", "nettrust")?;
        Ok(pid)
    }

    fn wait_answers(&self, server: &str, what: &str) -> Result<()> {
        self.world
            .wait_answers(server, "s1.soak", what, Duration::from_secs(20))
    }

    /// nettrust's maximum rate right now: 10 s of dnsperf without a rate limit, with as many
    /// queries in flight as the soak allows (so the daemon's high-water mark of concurrent
    /// queries, and the memory it takes, is reached before the warm-up ends).
    fn max_qps(&self) -> Result<f64> {
        let out = self
            .in_cgroup(&format!(
                "exec dnsperf -s 127.0.0.1 -d {} -l 10 -q {IN_FLIGHT} -t 5",
                self.world.dir.join("queries").display()
            ))
            .output()
            .context("starting dnsperf")?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.trim().strip_prefix("Queries per second:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no qps in dnsperf's output: {text}"))
    }

    /// `Udp: RcvbufErrors` of the client namespace (queries dropped before nettrust read them).
    fn udp_rcvbuf_errors(&self) -> Result<u64> {
        let out = self.world.in_client("cat").arg("/proc/net/snmp").output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
        let (names, values) = (udp.next(), udp.next());
        let (Some(names), Some(values)) = (names, values) else {
            bail!("no Udp lines in /proc/net/snmp");
        };
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(name, _)| *name == "RcvbufErrors")
            .and_then(|(_, v)| v.parse().ok())
            .context("no RcvbufErrors")
    }

    fn nettrust_log(&self) -> String {
        fs::read_to_string(self.world.dir.join("nettrust.log")).unwrap_or_default()
    }
}

impl Drop for Soak {
    fn drop(&mut self) {
        if let Some(mut nettrust) = self.nettrust.take() {
            // SIGTERM: nettrust detaches and unpins everything itself.
            let _ = Command::new("kill")
                .args(["-TERM", &nettrust.id().to_string()])
                .status();
            let started = Instant::now();
            while nettrust.try_wait().ok().flatten().is_none()
                && started.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = nettrust.kill();
            let _ = nettrust.wait();
        }
        for child in &mut self.children {
            // The load runs as a process group of its own.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .output();
            let _ = child.kill();
            let _ = child.wait();
        }
        // Then `world` is dropped: it removes itself.
    }
}

/// Runs the soak with the nettrust binary at `binary`; fails when an assertion does not hold.
pub fn run(binary: &Path, opts: &Options) -> Result<()> {
    use std::os::unix::process::CommandExt as _;
    if !crate::setup::is_root() {
        bail!("the soak creates network namespaces and attaches eBPF: run it as root");
    }
    let mut soak = Soak::new()?;
    soak.start_upstream()?;
    let pid = soak.start_nettrust(binary)?;
    let warmup = opts.warmup;
    let qps = match opts.qps {
        Some(qps) => qps,
        None => {
            let max = soak.max_qps()?;
            eprintln!("xtask: nettrust's maximum here and now: {max:.0} qps");
            ((max / 2.0) as u32).max(100)
        }
    };
    let total = warmup + opts.seconds;
    eprintln!(
        "xtask: soak {} s (+{warmup} s warm-up) at {qps} qps ({NAMES} names, authorized TTL \
         {AUTHORIZED_TTL} s, sweep every {TTL_CHECK} s)",
        opts.seconds
    );
    // Unauthorized attempts, TCP and UDP, for the whole run.
    let mut attempts = soak.in_cgroup(&format!(
        "while true; do socat -u TCP:{TARGET}:80,connect-timeout=0.2 - 2>/dev/null; \
         echo x | socat -u - UDP:{TARGET}:80 2>/dev/null; echo a >> {log}; sleep 0.05; done",
        log = soak.world.dir.join("attempts").display()
    ));
    attempts
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    soak.children
        .push(attempts.spawn().context("starting the connect loop")?);
    let mut perf = soak.in_cgroup(&format!(
        "exec dnsperf -s 127.0.0.1 -d {} -l {total} -Q {qps} -q {IN_FLIGHT} -t 5 -S 5",
        soak.world.dir.join("queries").display(),
    ));
    // To a file, not a pipe: dnsperf prints a line per timed-out query and blocks (stops sending)
    // once nobody reads a full pipe.
    let perf_out = soak.world.dir.join("dnsperf.out");
    let mut perf = perf
        .stdout(fs::File::create(&perf_out)?)
        .stderr(Stdio::null())
        .spawn()
        .context("starting dnsperf")?;

    let started = Instant::now();
    let mut samples: Vec<(u64, u64)> = Vec::new();
    while started.elapsed() < Duration::from_secs(total) {
        std::thread::sleep(Duration::from_secs(1));
        samples.push((started.elapsed().as_secs(), vmrss_kib(pid)?));
    }
    let status = perf.wait()?;
    let report = fs::read_to_string(&perf_out).unwrap_or_default();
    if !status.success() {
        bail!("dnsperf failed: {report}");
    }
    let field = |label: &str| -> Option<String> {
        report
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(|rest| rest.trim().to_owned())
    };
    let number = |label: &str| -> u64 {
        field(label)
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let completed = number("Queries completed:");
    let lost = number("Queries lost:");
    let codes = field("Response codes:").unwrap_or_default();
    let achieved = field("Queries per second:").unwrap_or_default();
    let leaked = soak.arrivals()?;
    let tried = fs::read_to_string(soak.world.dir.join("attempts"))
        .unwrap_or_default()
        .lines()
        .count();
    let base = samples
        .iter()
        .find(|s| s.0 >= warmup)
        .map(|s| s.1)
        .context("the run is shorter than its warm-up")?;
    let after: Vec<u64> = samples
        .iter()
        .filter(|s| s.0 >= warmup)
        .map(|s| s.1)
        .collect();
    let max = after.iter().copied().max().unwrap_or(base);
    let end = *after.last().unwrap_or(&base);
    let drift = (max as f64 - base as f64) / base as f64;
    let firewall_errors = soak.nettrust_log().matches("[Firewall Error]").count();
    println!(
        "soak: {} s after {warmup} s warm-up, target {qps} qps, achieved {achieved} qps",
        opts.seconds
    );
    println!("  queries completed {completed}, lost {lost}, response codes: {codes}");
    println!(
        "  RSS after warm-up {base} KiB, max {max} KiB, end {end} KiB: drift {:.2}% (limit {:.0}%)",
        drift * 100.0,
        MAX_DRIFT * 100.0
    );
    // Informational: growth over the second half of the measured run (a leak keeps growing; a
    // high-water mark of concurrent queries does not).
    let mid = after[after.len() / 2];
    println!(
        "  RSS growth over the second half: {mid} KiB -> {end} KiB ({:.2}%)",
        (end as f64 - mid as f64) / mid as f64 * 100.0
    );
    println!("  unauthorized connect/send rounds {tried}, packets arrived {leaked}");
    println!(
        "  UDP receive-buffer drops in the client namespace: {}",
        soak.udp_rcvbuf_errors()
            .map_or_else(|e| format!("unknown ({e})"), |n| n.to_string())
    );
    // dnsperf -S 5: "<unix time>: <qps>" every 5 s (the achieved rate over time).
    let rates: Vec<&str> = report
        .lines()
        .filter_map(|l| l.split_once(": ").map(|(t, q)| (t, q.trim())))
        .filter(|(t, _)| t.contains('.') && t.trim().parse::<f64>().is_ok())
        .map(|(_, q)| q)
        .collect();
    println!("  qps every 5 s: {}", rates.join(" "));
    if let Some(nettrust) = soak.nettrust.as_mut()
        && let Some(status) = nettrust.try_wait()?
    {
        bail!("nettrust exited during the soak with {status}");
    }
    let mut failures = Vec::new();
    if completed == 0 {
        failures.push("no query completed".to_owned());
    }
    if lost > 0 {
        failures.push(format!("{lost} queries lost (timeouts)"));
    }
    if !codes.starts_with("NOERROR") || codes.contains(',') {
        failures.push(format!("answers other than NOERROR: {codes}"));
    }
    if drift >= MAX_DRIFT {
        failures.push(format!("RSS drift {:.2}% ({samples:?})", drift * 100.0));
    }
    if tried == 0 {
        failures.push("the unauthorized connect loop did not run".to_owned());
    }
    if leaked > 0 {
        failures.push(format!(
            "{leaked} packets reached the unauthorized {TARGET}"
        ));
    }
    if firewall_errors > 0 {
        failures.push(format!(
            "{firewall_errors} firewall errors in nettrust's log"
        ));
    }
    if !failures.is_empty() {
        bail!("soak failed: {}", failures.join("; "));
    }
    println!("soak: ok");
    Ok(())
}
