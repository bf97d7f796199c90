//! The `[[policy]]` variants of the benchmarks:
//!
//! - `bench dns` (g): nettrust eBPF with one policy listing the cgroup dnsperf runs in, whose
//!   `allow_domains_file` holds every benchmark name exactly plus [`WILDCARD_FILLERS`]
//!   `*.fillerN.example` patterns, so every query is judged by the policy (client lookup in the
//!   egress program's `CLIENTS` record, then the matcher) and allowed. After each run the daemon's
//!   `nettrust_policy_questions_total` must have counted the queries as allowed and none as not
//!   allowed, or the run fails: a variant that silently took the default path would measure
//!   nothing.
//! - `bench datapath` "10 policies": ten policies, the sender's cgroup in the first, its target
//!   granted in that scope by a DNS answer, and `hosts[1]` more grants spread over the ten scopes,
//!   written straight into the daemon's pinned `GRANTS` map (resolving a million names through
//!   the proxy would take minutes). Before the fill, the target must be refused before it is
//!   resolved, and refused from another policy's cgroup after.

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{HashMap as BpfHashMap, MapData};
use nettrust_common::{
    FLAG_AUTHORIZED, GrantKey, HostValue, MAP_GRANTS, MAP_POLICY_NAMES, POLICY_NAME_LEN,
};

use crate::{
    bench::{Bench, NAMES, Options, TARGET_V4},
    bench_report::Report,
};

/// The policy of `bench dns` (g).
const DNS_POLICY: &str = "bench";
/// Wildcard patterns added to the benchmark's names in (g)'s `allow_domains_file`, so the matcher
/// holds both kinds of entry.
const WILDCARD_FILLERS: u32 = 1_000;
/// Policies of the datapath variant; the sender's cgroup is in the first.
const POLICIES: u32 = 10;

/// Variant (g)'s set-up: writes its configuration once (the domain list and a `[[policy]]`
/// listing the cgroup), then starts nettrust eBPF with it. Returns the address dnsperf asks.
pub(crate) fn start_dns_policy(bench: &mut Bench) -> Result<&'static str> {
    let config = bench.dir.join("policy-dns.toml");
    if !config.exists() {
        let domains = bench.dir.join("policy-dns.domains");
        let mut list = String::with_capacity(NAMES as usize * 16);
        list.push_str("# every benchmark name, then wildcards no query matches\n");
        for i in 0..NAMES {
            writeln!(list, "n{i}.bench")?;
        }
        for i in 0..WILDCARD_FILLERS {
            writeln!(list, "*.filler{i}.example")?;
        }
        fs::write(&domains, list)?;
        let text = format!(
            "[[policy]]\nname = \"{DNS_POLICY}\"\ncgroups = [{}]\n\
             allow_domains_file = {}\nmode = \"enforce\"\n",
            toml_path(&bench.net.cgroup),
            toml_path(&domains)
        );
        fs::write(&config, text)?;
    }
    bench.start_nettrust_policies(&[
        "--config".into(),
        config.display().to_string(),
        "--firewall-backend".into(),
        "ebpf".into(),
    ])?;
    Ok("127.0.0.1")
}

/// Fails unless the running daemon of (g) counted at least `at_least` questions of its policy as
/// allowed and none as not allowed (a benchmark name missing from the list, or a query judged
/// by another policy).
pub(crate) fn check_dns_policy(bench: &Bench, at_least: f64) -> Result<()> {
    let metrics = bench.metrics()?;
    let count = |result: &str| {
        let key = format!(
            "nettrust_policy_questions_total{{policy=\"{DNS_POLICY}\",result=\"{result}\"}}"
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&key)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let (allowed, refused) = (count("allowed"), count("not_allowed"));
    if allowed < at_least || refused > 0.0 {
        bail!(
            "dns (g): the policy \"{DNS_POLICY}\" judged {allowed} questions allowed (at least \
             {at_least} expected) and {refused} not allowed (0 expected): the variant did not \
             take the policy path"
        );
    }
    Ok(())
}

/// A TOML basic string of `path` (escaping `\` and `"`).
fn toml_path(path: &Path) -> String {
    format!(
        "\"{}\"",
        path.display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
    )
}

/// The datapath variant: [`POLICIES`] policies (the sender's cgroup in `p0`, a new cgroup each
/// for the others), `base_config` (the whitelist of the other steps) and `capacity` as
/// `max_hosts`; the target resolved from the sender's cgroup, `opts.hosts[1]` grants spread over
/// the ten scopes, then the TCP/UDP figures of `tcp_udp` under `label`.
pub(crate) fn datapath(
    bench: &mut Bench,
    opts: &Options,
    base_config: &str,
    capacity: u32,
    report: &mut Report,
) -> Result<()> {
    let label = "eBPF, 10 policies, 1M grants";
    let mut config = base_config.to_owned();
    let mut others = Vec::new();
    for i in 0..POLICIES {
        let (cgroup, domains) = if i == 0 {
            (bench.net.cgroup.clone(), "iperf.bench")
        } else {
            let cgroup = bench.net.extra_cgroup(&format!("p{i}"))?;
            others.push(cgroup.clone());
            (cgroup, "*.fill")
        };
        write!(
            config,
            "\n[[policy]]\nname = \"p{i}\"\ncgroups = [{}]\nallow_domains = [\"{domains}\"]\n\
             mode = \"enforce\"\n",
            toml_path(&cgroup)
        )?;
    }
    let config_path = bench.dir.join("datapath-policies.toml");
    fs::write(&config_path, config)?;
    bench.start_nettrust_policies(&[
        "--config".into(),
        config_path.display().to_string(),
        "--firewall-backend".into(),
        "ebpf".into(),
        "--max-hosts".into(),
        capacity.to_string(),
    ])?;
    if crate::bench_datapath::iperf_reaches(bench, &bench.net.cgroup) {
        bail!("{label}: iperf3 reached {TARGET_V4} before it was resolved");
    }
    crate::bench_datapath::resolve_target(bench)?;
    if crate::bench_datapath::iperf_reaches(bench, &others[0]) {
        bail!("{label}: a grant of p0 opened {TARGET_V4} for p1's cgroup");
    }
    let scopes = policy_scopes(&bench.net.bpffs_dir)?;
    let started = Instant::now();
    let written = write_grants(&bench.net.bpffs_dir, &scopes, opts.hosts[1])?;
    report.note(format!(
        "datapath {label}: {written} grants written into the pinned GRANTS in {:.1} s, \
         max_hosts {capacity}",
        started.elapsed().as_secs_f64()
    ));
    eprintln!("xtask: datapath: {label}");
    crate::bench_datapath::tcp_udp(bench, opts, label, report)?;
    bench.check_nettrust()?;
    bench.stop_nettrust()
}

/// The scope of each policy `p0`..`p9`, read from the daemon's pinned `POLICY_NAMES` map.
fn policy_scopes(pin_dir: &Path) -> Result<Vec<u32>> {
    let path = pin_dir.join(MAP_POLICY_NAMES);
    let map: BpfHashMap<MapData, u32, [u8; POLICY_NAME_LEN]> =
        BpfHashMap::try_from(aya::maps::Map::HashMap(
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?,
        ))?;
    let mut by_name = HashMap::new();
    for entry in &map {
        let (scope, name) = entry?;
        let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
        by_name.insert(String::from_utf8_lossy(&name[..end]).into_owned(), scope);
    }
    (0..POLICIES)
        .map(|i| {
            by_name
                .get(&format!("p{i}"))
                .copied()
                .with_context(|| format!("no policy p{i} in {}: {by_name:?}", path.display()))
        })
        .collect()
}

/// Writes `count` grants (never expiring) into the pinned `GRANTS` map: grant `i` opens
/// 240.0.0.0 + `i` (reserved, never routed: the grants only fill the map) for `scopes[i % n]`.
/// Returns how many were written.
fn write_grants(pin_dir: &Path, scopes: &[u32], count: u32) -> Result<u32> {
    let path: PathBuf = pin_dir.join(MAP_GRANTS);
    let mut map: BpfHashMap<MapData, GrantKey, HostValue> =
        BpfHashMap::try_from(aya::maps::Map::HashMap(
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?,
        ))?;
    let value = HostValue {
        flags: FLAG_AUTHORIZED,
        ..HostValue::default()
    };
    let base = u32::from(Ipv4Addr::new(240, 0, 0, 0));
    for (i, scope) in (0..count).zip(scopes.iter().cycle()) {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&Ipv4Addr::from(base + i).octets());
        let key = GrantKey {
            scope: *scope,
            family: 4,
            _pad: [0; 3],
            addr,
        };
        map.insert(key, value, 0)
            .with_context(|| format!("writing grant {i} of {count} into {}", path.display()))?;
    }
    Ok(count)
}
