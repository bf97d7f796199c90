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
    /// Upstream DNS server the proxy forwards to (port defaults to 53).
    #[arg(long, value_name = "IP:PORT")]
    pub fwd_addr: Option<String>,
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
        assert_eq!(cli.run.fwd_addr.as_deref(), Some("192.0.2.53:53"));
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
    fn bad_boolean_is_rejected() {
        assert!(Cli::try_parse_from(["nettrust", "--whitelist-private=maybe"]).is_err());
    }
}
