//! Command line: `nettrust [run] [OPTIONS]` and `nettrust list`.
//!
//! Long options keep the original nettrust's names. Every boolean accepts `--flag`, `--flag=true`
//! and `--flag=false`, so a flag can turn off what the config file turned on.

use std::{ffi::OsString, path::PathBuf};

use clap::{
    Args, Parser, Subcommand,
    error::{ContextKind, ContextValue, ErrorKind},
    parser::ValueSource,
};

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

impl Cli {
    /// Parses the process's command line and `NET_TRUST_*` environment; on error prints clap's
    /// message (naming the variable when the bad value came from the environment) and exits.
    pub fn parse() -> Self {
        let argv: Vec<OsString> = std::env::args_os().collect();
        Self::parse_with_sources(&argv).unwrap_or_else(|e| {
            env_error(&e, &argv, |var| std::env::var(var).ok())
                .unwrap_or(e)
                .exit()
        })
    }

    /// [`Parser::try_parse_from`], also recording in the daemon options which of them clap read
    /// from the environment (`RunArgs::from_env`).
    pub fn parse_with_sources(argv: &[OsString]) -> Result<Self, clap::Error> {
        let matches = <Self as clap::CommandFactory>::command().try_get_matches_from(argv)?;
        let mut cli = <Self as clap::FromArgMatches>::from_arg_matches(&matches)?;
        let (args, matches) = match (&mut cli.command, matches.subcommand()) {
            (Some(Command::Run(args) | Command::CheckConfig(args)), Some((_, sub))) => (args, sub),
            _ => (&mut cli.run, &matches),
        };
        args.from_env = matches
            .ids()
            .filter(|id| matches.value_source(id.as_str()) == Some(ValueSource::EnvVariable))
            .map(ToString::to_string)
            .collect();
        Ok(cli)
    }
}

/// For a value clap could not parse that came from the environment (the flag is not in `argv`
/// and variable `var` holds it), the error naming the variable, as the configuration's other
/// errors do; `None` otherwise.
pub fn env_error(
    e: &clap::Error,
    argv: &[OsString],
    var: impl Fn(&str) -> Option<String>,
) -> Option<clap::Error> {
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let (Some(ContextValue::String(arg)), Some(ContextValue::String(value))) = (
        e.get(ContextKind::InvalidArg),
        e.get(ContextKind::InvalidValue),
    ) else {
        return None;
    };
    let flag = arg.split([' ', '=']).next()?;
    let on_command_line = argv.iter().filter_map(|a| a.to_str()).any(|a| {
        a == flag
            || a.strip_prefix(flag)
                .is_some_and(|rest| rest.starts_with('='))
    });
    if on_command_line {
        return None;
    }
    let (key, names) = crate::config::option_names()
        .into_iter()
        .find(|(_, names)| names.flag == flag)?;
    let env = names.env?;
    (var(&env)?.as_str() == value).then(|| {
        clap::Error::raw(
            e.kind(),
            format!("{env}: invalid value {value:?}: not a valid value for {key}\n"),
        )
    })
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

/// Options of `nettrust run` and `check-config`: the options of the config file, each also a flag
/// with its `NET_TRUST_<KEY>` environment variable (declared once, in `config::options`).
pub use crate::config::Options as RunArgs;

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
    /// The cgroup v2 directory (for `attach`, also a pattern: `*` within a component, `**` any
    /// depth).
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
    fn a_bad_environment_value_names_its_variable() {
        // clap reads a variable as the flag's value: its error names the flag.
        let e = Cli::try_parse_from(["nettrust", "--authorized-ttl=soon"]).unwrap_err();
        let env = |var: &str| (var == "NET_TRUST_AUTHORIZED_TTL").then(|| "soon".to_owned());
        let named = env_error(&e, &["nettrust".into()], env)
            .expect("the value came from the environment")
            .to_string();
        assert!(
            named.contains("NET_TRUST_AUTHORIZED_TTL") && named.contains("\"soon\""),
            "{named}"
        );
        let argv = ["nettrust".into(), "--authorized-ttl=soon".into()];
        assert!(env_error(&e, &argv, env).is_none(), "given as a flag");
        let e = Cli::try_parse_from(["nettrust", "--fwd-proto", "quic"]).unwrap_err();
        let env = |var: &str| (var == "NET_TRUST_FWD_PROTO").then(|| "quic".to_owned());
        let named = env_error(&e, &["nettrust".into()], env)
            .unwrap()
            .to_string();
        assert!(named.contains("NET_TRUST_FWD_PROTO"), "{named}");
    }

    #[test]
    fn parsing_with_sources_keeps_the_flags() {
        let argv: Vec<OsString> = ["nettrust", "check-config", "--authorized-ttl=5"]
            .map(OsString::from)
            .into();
        let cli = Cli::parse_with_sources(&argv).unwrap();
        let Some(Command::CheckConfig(args)) = cli.command else {
            panic!("expected check-config")
        };
        assert_eq!(args.authorized_ttl, Some(5));
        assert!(!args.from_env.contains(&"authorized_ttl".to_owned()));
    }

    #[test]
    fn bad_boolean_is_rejected() {
        assert!(Cli::try_parse_from(["nettrust", "--whitelist-private=maybe"]).is_err());
    }
}
