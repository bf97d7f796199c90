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
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once at startup; boxing would only complicate the callers"
)]
pub enum Command {
    /// Run the DNS proxy and the firewall (the default).
    Run(RunArgs),
    /// Print the authorized hosts of the running daemon, one per line, address first.
    List(ListArgs),
}

/// Options of `nettrust run`. Unset options fall back to the environment, then the config file,
/// then the built-in defaults.
#[derive(Debug, Default, Clone, Args)]
pub struct RunArgs {
    /// TOML configuration file (an empty file is valid).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Address the DNS proxy listens on, UDP and TCP [default: 127.0.0.1:53].
    #[arg(long, value_name = "IP:PORT")]
    pub listen_addr: Option<String>,
    /// Upstream DNS server the proxy forwards to (port defaults to 53, 853 with --fwd-tls);
    /// repeatable: the next one is tried when one fails.
    #[arg(long = "fwd-addr", value_name = "IP:PORT")]
    pub fwd_addr: Vec<String>,
    /// Protocol to the upstreams: udp (TCP for TCP clients and truncated answers) or tcp
    /// [default: udp].
    #[arg(long, value_name = "PROTO")]
    pub fwd_proto: Option<String>,
    /// DNS over TLS to the upstreams (needs tcp) [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub fwd_tls: Option<bool>,
    /// PEM CA bundle that verifies the upstreams' certificates [default: the system bundle].
    #[arg(long, value_name = "PATH")]
    pub fwd_tls_cert: Option<PathBuf>,
    /// Name the upstreams' certificates must carry (sent as SNI) [default: their IP address].
    #[arg(long, value_name = "NAME")]
    pub fwd_tls_name: Option<String>,
    /// EDNS0 UDP payload size advertised to the upstreams [default: 1232].
    #[arg(long, value_name = "BYTES")]
    pub fwd_udp_buffer_size: Option<u16>,
    /// How long one upstream may take to answer, in milliseconds [default: 3000].
    #[arg(long, value_name = "MS")]
    pub fwd_timeout_ms: Option<u64>,
    /// Serve DNS over TLS on the TCP listener of --listen-addr [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub listen_tls: Option<bool>,
    /// Additional, dedicated DNS-over-TLS listener, e.g. 127.0.0.1:853.
    #[arg(long, value_name = "IP:PORT")]
    pub listen_tls_addr: Option<String>,
    /// PEM certificate chain of the DNS-over-TLS listener.
    #[arg(long, value_name = "PATH")]
    pub listen_cert: Option<PathBuf>,
    /// PEM private key of the DNS-over-TLS listener.
    #[arg(long, value_name = "PATH")]
    pub listen_cert_key: Option<PathBuf>,
    /// Cache answers for at most this many seconds; 0 or less disables the cache [default: off].
    #[arg(long, value_name = "SECS", allow_negative_numbers = true)]
    pub dns_ttl_cache: Option<i64>,
    /// Most answers kept in the cache [default: 10000].
    #[arg(long, value_name = "N")]
    pub dns_cache_size: Option<usize>,
    /// Answer to blacklisted domains: refused, nxdomain or servfail [default: refused].
    #[arg(long, value_name = "RCODE")]
    pub blacklist_response: Option<String>,
    /// Let PTR answers authorize the address they name (the original did) [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub authorize_ptr: Option<bool>,
    /// cgroup v2 directory to enforce on; repeatable [default: the cgroup v2 root, the whole host].
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroups: Vec<PathBuf>,
    /// Firewall backend: auto, ebpf or nftables [default: auto].
    #[arg(long, value_name = "BACKEND")]
    pub firewall_backend: Option<String>,
    /// Always allow loopback (127.0.0.0/8, ::1) [default: true].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub whitelist_loopback: Option<bool>,
    /// Always allow private networks (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7,
    /// fe80::/10) [default: true].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub whitelist_private: Option<bool>,
    /// bpffs directory where nettrust pins its maps [default: /sys/fs/bpf/nettrust].
    #[arg(long, value_name = "PATH")]
    pub bpffs_dir: Option<PathBuf>,
}

/// Options of `nettrust list`.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// bpffs directory of the daemon [default: /sys/fs/bpf/nettrust].
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
        assert_eq!(cli.run.fwd_addr, ["192.0.2.53:53"]);
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
    fn fwd_addr_is_repeatable_and_cache_takes_negatives() {
        let cli = parse(&[
            "--fwd-addr",
            "192.0.2.1",
            "--fwd-addr",
            "192.0.2.2:5353",
            "--dns-ttl-cache",
            "-1",
            "--fwd-tls",
        ]);
        assert_eq!(cli.run.fwd_addr, ["192.0.2.1", "192.0.2.2:5353"]);
        assert_eq!(cli.run.dns_ttl_cache, Some(-1));
        assert_eq!(cli.run.fwd_tls, Some(true));
    }

    #[test]
    fn bad_boolean_is_rejected() {
        assert!(Cli::try_parse_from(["nettrust", "--whitelist-private=maybe"]).is_err());
    }
}
