//! Commit latency: how long the daemon's own code path takes to authorize one DNS
//! answer with 1 and 8 fresh addresses — `Authorizer::authorize` (CNAME chain, blacklists,
//! deadline, one `Firewall::authorize_answer` per answer) into the real eBPF backend
//! (pinned maps, programs attached to a scratch cgroup) and the real nftables backend (its table in
//! a scratch network namespace).
//!
//! Run as root by `cargo xtask bench commit` (`harness = false`): `cargo bench -p nettrust --bench
//! commit -- [--rounds N]`. The process first moves itself into a new network namespace
//! (`unshare(CLONE_NEWNET)`), so the nftables table never reaches the host's ruleset; the eBPF
//! programs attach to an empty cgroup of its own. Everything is removed on every exit path.
//! Prints one line per figure: `commit BACKEND ADDRESSES p50_ns p99_ns rounds`; then, with the
//! eBPF host map holding every address authorized so far, how long the sweeper's full scan takes
//! (`Firewall::due`, batched reads) against reading the same map key by key (aya's iterator, two
//! system calls per entry, what the scan did before): `scan HOSTS batched_ns key_by_key_ns`.
#![expect(
    unused_crate_dependencies,
    reason = "a benchmark uses the library and a few crates, not every dependency of the package"
)]

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    str::FromStr as _,
    sync::Arc,
    time::Instant,
};

use hickory_proto::{
    op::{Message, OpCode, Query},
    rr::{Name, RData, Record, RecordType, rdata::A},
};
use nettrust::{
    authorizer::Authorizer,
    firewall::{
        ExitMode, Firewall, Policy,
        ebpf::{Capacities, EbpfFirewall, EbpfOptions},
        nftables::{Mode, NftablesFirewall, Options},
    },
};

/// Scratch cgroup and bpffs directory, removed on drop (also on panic).
struct Scratch {
    cgroup: PathBuf,
    bpffs: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = nettrust::firewall::ebpf::remove_all(&self.bpffs);
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

/// An answer for `name` with `count` A records, addresses numbered from `first` in 198.18.0.0/15
/// and 240.0.0.0/4 (never routed; they only go into the firewall).
fn answer(round: u32, count: u32, first: u32) -> (Query, Message) {
    let name = Name::from_str(&format!("c{round}.commit.bench.")).expect("name");
    let question = Query::query(name.clone(), RecordType::A);
    let mut msg = Message::response(1, OpCode::Query);
    msg.add_query(question.clone());
    for i in 0..count {
        let n = first + i;
        let ip = Ipv4Addr::new(
            240 + (n >> 24) as u8,
            (n >> 16) as u8,
            (n >> 8) as u8,
            n as u8,
        );
        msg.add_answer(Record::from_rdata(name.clone(), 60, RData::A(A(ip))));
    }
    (question, msg)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `rounds` answers of `count` fresh addresses each through the authorizer; prints p50/p99.
fn measure(backend: &str, fw: &Arc<impl Firewall + 'static>, count: u32, rounds: u32, base: u32) {
    // With a TTL (`--authorized-ttl`), as the sweeper needs: every host gets a deadline.
    let authorizer = Authorizer::new(fw.clone(), Some(std::time::Duration::from_secs(3600)));
    let mut samples = Vec::with_capacity(rounds as usize);
    // A few warm-up answers (first map inserts, page faults) are not counted.
    for round in 0..rounds + 20 {
        let (q, m) = answer(round, count, base + round * count);
        let started = Instant::now();
        authorizer
            .authorize(nettrust::firewall::Scope::DEFAULT, &q, &m)
            .unwrap_or_else(|e| panic!("{backend}: authorizing failed: {e}"));
        let elapsed = started.elapsed().as_nanos() as u64;
        if round >= 20 {
            samples.push(elapsed);
        }
    }
    // Every address of every answer must be enforced: the figure is worthless otherwise.
    let hosts = fw.authorized().expect("read the authorized hosts");
    let (q, m) = answer(rounds + 19, count, base + (rounds + 19) * count);
    let last: Vec<IpAddr> = nettrust::dns::answer::chain_addresses(&q, &m.answers).addresses;
    assert!(
        last.iter().all(|a| hosts.iter().any(|h| h.addr == *a)),
        "{backend}: the last answer's addresses are not authorized"
    );
    samples.sort_unstable();
    println!(
        "commit {backend} {count} {} {} {rounds}",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99)
    );
}

/// Median of 5 full scans of the host maps: the sweeper's (`due` with a horizon past every
/// deadline) and a reader's of the pinned maps as `nettrust list`/`status` do it (opening and
/// memory-mapping the IPv4 table, then reading every slot; IPv6 entries in batches).
fn scan(fw: &EbpfFirewall, bpffs: &std::path::Path) {
    let mut sweeper = Vec::new();
    let mut pinned = Vec::new();
    let mut hosts = 0;
    for _ in 0..5 {
        let started = Instant::now();
        hosts = fw.due(u64::MAX).expect("scan the host maps").len();
        sweeper.push(started.elapsed().as_nanos() as u64);
        let started = Instant::now();
        let n = nettrust::firewall::ebpf::list_pinned(bpffs)
            .expect("read the pinned host maps")
            .len();
        pinned.push(started.elapsed().as_nanos() as u64);
        // Every authorized host is due at that horizon and listed (the last answers may not be
        // named yet, they are listed all the same).
        assert!(n == hosts && hosts > 0, "scan saw {hosts} hosts, list {n}");
    }
    sweeper.sort_unstable();
    pinned.sort_unstable();
    println!("scan {hosts} {} {}", sweeper[2], pinned[2]);
}

/// The `--rounds` to measure, or `None` without `--bench` (`cargo test --benches` runs bench
/// targets without it: nothing to test here).
fn rounds_to_measure() -> Option<u32> {
    let mut rounds = 2000u32;
    let mut bench = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--bench" {
            bench = true;
        } else if arg == "--rounds" {
            rounds = args
                .next()
                .and_then(|v| v.parse().ok())
                .filter(|&n: &u32| n > 0)
                .expect("--rounds N (N >= 1)");
        }
        // Other arguments are ignored.
    }
    bench.then_some(rounds)
}

fn main() {
    let Some(rounds) = rounds_to_measure() else {
        println!("commit: run with `cargo bench` (as root) to measure");
        return;
    };
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "run as root (cargo xtask bench commit)"
    );
    // Still single-threaded: the whole process moves into a fresh network namespace.
    // SAFETY: unshare on our own process.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let _guard = runtime.enter();
    let pid = std::process::id();
    let scratch = Scratch {
        cgroup: nettrust::cgroup::cgroup2_mount()
            .expect("cgroup v2 is not mounted")
            .join(format!("nettrust-bench-commit-{pid}")),
        bpffs: PathBuf::from(format!("/sys/fs/bpf/nettrust-bench-commit-{pid}")),
    };
    std::fs::create_dir(&scratch.cgroup).expect("create the scratch cgroup");
    bench_ebpf(&scratch, rounds);
    bench_nftables(&scratch, rounds);
    drop(scratch);
}

/// Commit latency into the eBPF backend attached to the scratch cgroup, then the host map scan.
fn bench_ebpf(scratch: &Scratch, rounds: u32) {
    let ebpf = Arc::new(
        EbpfFirewall::start(&EbpfOptions {
            cgroups: vec![scratch.cgroup.clone()],
            pin_dir: scratch.bpffs.clone(),
            policy: Policy::default(),
            drop_input: false,
            capacities: Capacities {
                hosts: 16 * rounds + 1024,
                networks: 16,
            },
            scopes: nettrust::firewall::Scopes::default(),
        })
        .expect("start the eBPF backend"),
    );
    for (i, count) in [1u32, 8].into_iter().enumerate() {
        measure("ebpf", &ebpf, count, rounds, (i as u32) << 20);
    }
    scan(&ebpf, &scratch.bpffs);
    ebpf.stop(ExitMode::FlushAll)
        .expect("stop the eBPF backend");
}

/// Commit latency into the nftables backend (its table in this process's network namespace).
fn bench_nftables(scratch: &Scratch, rounds: u32) {
    let nft = Arc::new(
        NftablesFirewall::start(
            &Options {
                mode: Mode::Output {
                    cgroups: vec![scratch.cgroup.clone()],
                },
                drop_input: false,
            },
            &Policy::default(),
        )
        .expect("start the nftables backend"),
    );
    for (i, count) in [1u32, 8].into_iter().enumerate() {
        measure("nftables", &nft, count, rounds, (i as u32) << 20);
    }
    nft.stop(nettrust::firewall::ExitMode::FlushAll)
        .expect("stop the nftables backend");
}
