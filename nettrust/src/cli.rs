//! Command line: `nettrust [run] [OPTIONS]` and `nettrust list`.
//!
//! Long options keep the original nettrust's names. Every boolean accepts `--flag`, `--flag=true`
//! and `--flag=false`, so a flag can turn off what the config file turned on.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// nettrust: an outbound firewall that only lets a host reach what it resolved through DNS.
#[derive(Debug, Parser)]
#[command(name = "nettrust", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to do; without a command, nettrust runs the daemon with the options given.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Daemon options when no command is given.
    #[command(flatten)]
    pub run: RunArgs,
}

/// nettrust's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the DNS proxy and the firewall (the default).
    Run(RunArgs),
    /// Print the authorized hosts, one per line: address, remaining lifetime, authorizing name.
    /// Reads the pinned maps: works while the daemon runs and after it was killed.
    List(ListArgs),
    /// Print the backend, whether a daemon runs, the attached cgroups and the packet counters.
    Status(ListArgs),
    /// Remove everything nettrust left pinned (programs, links, maps); idempotent.
    Flush(ListArgs),
    /// Attach the pinned filter to one more cgroup (e.g. a container started after nettrust).
    Attach(CgroupArgs),
    /// Detach the filter from one cgroup.
    Detach(CgroupArgs),
    /// Validate the configuration (file, environment, flags) and print the effective settings.
    CheckConfig(RunArgs),
}

/// Options of `nettrust run`. Unset options fall back to the environment (`NET_TRUST_<KEY>`, e.g.
/// `NET_TRUST_AUTHORIZED_TTL`), then the config file, then the built-in defaults.
#[derive(Debug, Default, Clone, Args)]
pub struct RunArgs {
    /// TOML configuration file (an empty file is valid) [env: NET_TRUST_CONFIG].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Address the DNS proxy listens on, UDP and TCP [default: 127.0.0.1:53].
    #[arg(long, value_name = "IP:PORT")]
    pub listen_addr: Option<String>,
    /// Serve DNS over TLS on the TCP listener [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub listen_tls: Option<bool>,
    /// Dedicated DNS-over-TLS listener (needs --listen-tls); the TCP listener of --listen-addr
    /// then stays plain DNS. Port defaults to 853.
    #[arg(long, value_name = "IP:PORT")]
    pub listen_tls_addr: Option<String>,
    /// PEM certificate (chain) of the DoT listener.
    #[arg(long, value_name = "PATH")]
    pub listen_cert: Option<PathBuf>,
    /// PEM private key of the DoT listener.
    #[arg(long, value_name = "PATH")]
    pub listen_cert_key: Option<PathBuf>,
    /// Network (CIDR) or address allowed to query the DNS listeners; repeat for more. Replaces
    /// allow_clients [default: loopback, plus the listen addresses' own subnets].
    #[arg(long = "allow-client", value_name = "NET")]
    pub allow_clients: Vec<String>,
    /// Upstream DNS server (port defaults to 53); repeat for failover, tried in order.
    #[arg(long = "fwd-addr", value_name = "IP:PORT")]
    pub fwd_addrs: Vec<String>,
    /// Transport to the upstream: udp or tcp [default: udp].
    #[arg(long, value_name = "PROTO")]
    pub fwd_proto: Option<String>,
    /// DNS over TLS to the upstream (requires --fwd-proto tcp) [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub fwd_tls: Option<bool>,
    /// PEM CA bundle that signs the upstream's certificate [default: system roots].
    #[arg(long, value_name = "PATH")]
    pub fwd_tls_cert: Option<PathBuf>,
    /// Name the upstream's certificate must carry (and SNI) [default: its IP address].
    #[arg(long, value_name = "NAME")]
    pub fwd_tls_name: Option<String>,
    /// EDNS0 UDP payload size advertised to the upstream, 512-65535 [default: 1232].
    #[arg(long, value_name = "BYTES")]
    pub fwd_udp_buffer_size: Option<u16>,
    /// Upstream timeout in milliseconds before failover/SERVFAIL [default: 2000].
    #[arg(long, value_name = "MS")]
    pub fwd_timeout_ms: Option<u64>,
    /// Firewall backend: auto, ebpf or nftables [default: auto].
    #[arg(long, value_name = "BACKEND")]
    pub firewall_backend: Option<String>,
    /// Hook: output (this host's processes) or forward (gateway) [default: output].
    #[arg(long, value_name = "TYPE")]
    pub firewall_type: Option<String>,
    /// Also drop unsolicited inbound traffic (loopback and replies pass) [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub firewall_drop_input: Option<bool>,
    /// cgroup v2 directory to enforce on; repeatable [default: the cgroup v2 root, the whole host].
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroups: Vec<PathBuf>,
    /// Cache answers for at most SECS seconds; -1 or 0 disables the cache [default: -1].
    #[arg(long, value_name = "SECS", allow_negative_numbers = true)]
    pub dns_ttl_cache: Option<i64>,
    /// Most answers kept in the cache [default: 10000].
    #[arg(long, value_name = "N")]
    pub dns_cache_size: Option<usize>,
    /// TCP/DoT client connections open at once, per listener; at the cap a new connection
    /// closes the oldest of the client holding the most [default: 256].
    #[arg(long, value_name = "N")]
    pub max_tcp_connections: Option<usize>,
    /// Threads serving DNS: 1 serves UDP queries on one thread and the rest on another (the least
    /// CPU per query); more spread queries and TLS handshakes over that many (restart-only)
    /// [default: 1].
    #[arg(long, value_name = "N")]
    pub worker_threads: Option<usize>,
    /// Capacity of each eBPF host map, per address family (authorized plus whitelisted hosts;
    /// restart-only) [default: 65536].
    #[arg(long, value_name = "N")]
    pub max_hosts: Option<u32>,
    /// Capacity of each eBPF network trie, per address family (restart-only) [default: 4096].
    #[arg(long, value_name = "N")]
    pub max_networks: Option<u32>,
    /// Most addresses one DNS answer may authorize; the rest stay in the answer but are not
    /// allowed, and are logged and counted (restart-only) [default: 32].
    #[arg(long, value_name = "N")]
    pub max_answer_addresses: Option<u32>,
    /// Always allow loopback (127.0.0.0/8, ::1) [default: true].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub whitelist_loopback: Option<bool>,
    /// Always allow private networks (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7,
    /// fe80::/10) [default: true].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub whitelist_private: Option<bool>,
    /// Seconds an authorized host stays allowed without being resolved again or used; -1 = never
    /// expires [default: -1].
    #[arg(long, value_name = "SECS", allow_negative_numbers = true)]
    pub authorized_ttl: Option<i64>,
    /// Seconds between expiry sweeps, >= 1 (config key ttl_check_interval) [default: 30].
    #[arg(
        long = "ttl-check-ticker",
        value_name = "SECS",
        allow_negative_numbers = true
    )]
    pub ttl_check_interval: Option<i64>,
    /// On exit keep the deny policy and whitelists in place (authorized hosts are cleared)
    /// [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub do_not_flush_table: Option<bool>,
    /// With --do-not-flush-table: keep the authorized hosts too; the next start adopts them
    /// [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub do_not_flush_authorized_hosts: Option<bool>,
    /// Answer to a blacklisted domain: refused, nxdomain or servfail [default: refused].
    #[arg(long, value_name = "RCODE")]
    pub blacklist_response: Option<String>,
    /// Authorize the address named by a PTR question's answer (the original did) [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub authorize_ptr: Option<bool>,
    /// bpffs directory where nettrust pins its maps [default: /sys/fs/bpf/nettrust].
    #[arg(long, value_name = "PATH")]
    pub bpffs_dir: Option<PathBuf>,
    /// Serve Prometheus metrics over HTTP at IP:PORT/metrics [default: off].
    #[arg(long, value_name = "IP:PORT")]
    pub metrics_addr: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
}

/// Options of `nettrust list`, `status` and `flush`.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// bpffs directory of the daemon.
    #[arg(long, value_name = "PATH", default_value = crate::config::DEFAULT_BPFFS_DIR)]
    pub bpffs_dir: PathBuf,
}

/// Options of `nettrust attach` and `detach`.
#[derive(Debug, Clone, Args)]
pub struct CgroupArgs {
    /// The cgroup v2 directory.
    #[arg(long, value_name = "PATH")]
    pub cgroup: PathBuf,
    /// bpffs directory of the daemon.
    #[arg(long, value_name = "PATH", default_value = crate::config::DEFAULT_BPFFS_DIR)]
    pub bpffs_dir: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("nettrust").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn bare_flags_mean_run() {
        let cli = parse(&["--fwd-addr", "192.0.2.53:53"]);
        assert!(cli.command.is_none());
        assert_eq!(cli.run.fwd_addrs, ["192.0.2.53:53"]);
    }

    #[test]
    fn booleans_take_optional_values() {
        let cli = parse(&["run", "--whitelist-loopback", "--whitelist-private=false"]);
        let Some(Command::Run(args)) = cli.command else {
            panic!("expected run")
        };
        assert_eq!(args.whitelist_loopback, Some(true));
        assert_eq!(args.whitelist_private, Some(false));
    }

    #[test]
    fn cgroup_is_repeatable() {
        let cli = parse(&["--cgroup", "/a", "--cgroup", "/b"]);
        assert_eq!(
            cli.run.cgroups,
            vec![PathBuf::from("/a"), PathBuf::from("/b")]
        );
    }

    #[test]
    fn negative_numbers_are_values() {
        let cli = parse(&[
            "--authorized-ttl",
            "-1",
            "--dns-ttl-cache=-1",
            "--ttl-check-ticker",
            "5",
        ]);
        assert_eq!(cli.run.authorized_ttl, Some(-1));
        assert_eq!(cli.run.dns_ttl_cache, Some(-1));
        assert_eq!(cli.run.ttl_check_interval, Some(5));
    }

    #[test]
    fn fwd_addr_is_repeatable() {
        let cli = parse(&["--fwd-addr", "192.0.2.1", "--fwd-addr", "[2001:db8::1]:53"]);
        assert_eq!(cli.run.fwd_addrs, ["192.0.2.1", "[2001:db8::1]:53"]);
    }

    #[test]
    fn check_config_takes_run_options() {
        let cli = parse(&["check-config", "--config", "x.toml", "--do-not-flush-table"]);
        let Some(Command::CheckConfig(args)) = cli.command else {
            panic!("expected check-config")
        };
        assert_eq!(args.do_not_flush_table, Some(true));
    }

    #[test]
    fn pinned_state_commands_parse() {
        let cli = parse(&[
            "attach",
            "--cgroup",
            "/cg/app",
            "--bpffs-dir",
            "/sys/fs/bpf/x",
        ]);
        let Some(Command::Attach(args)) = cli.command else {
            panic!("expected attach")
        };
        assert_eq!(args.cgroup, PathBuf::from("/cg/app"));
        assert_eq!(args.bpffs_dir, PathBuf::from("/sys/fs/bpf/x"));
        let cli = parse(&["flush"]);
        let Some(Command::Flush(args)) = cli.command else {
            panic!("expected flush")
        };
        assert_eq!(
            args.bpffs_dir,
            PathBuf::from(crate::config::DEFAULT_BPFFS_DIR)
        );
        assert!(
            Cli::try_parse_from(["nettrust", "detach"]).is_err(),
            "--cgroup is required"
        );
        assert!(matches!(
            parse(&["status"]).command,
            Some(Command::Status(_))
        ));
    }

    #[test]
    fn bad_boolean_is_rejected() {
        assert!(Cli::try_parse_from(["nettrust", "--whitelist-private=maybe"]).is_err());
    }
}
