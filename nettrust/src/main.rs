//! `nettrust` binary: parses arguments, sets up logging, and hands over to the library.
#![expect(
    unused_crate_dependencies,
    reason = "the binary is a thin wrapper: the package's other dependencies serve the library"
)]

use nettrust::{
    cli::{Cli, Command},
    commands::CommandError,
    config::LogFormat,
};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            match e.downcast_ref::<CommandError>() {
                Some(CommandError::NotRunning(_)) => {
                    std::process::ExitCode::from(nettrust::commands::NOT_RUNNING_EXIT_CODE)
                }
                _ => std::process::ExitCode::FAILURE,
            }
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::List(args)) => {
            init_tracing(LogFormat::Text);
            print!("{}", nettrust::commands::list(&args.bpffs_dir)?);
            Ok(())
        }
        Some(Command::Status(args)) => {
            init_tracing(LogFormat::Text);
            match nettrust::commands::status(&args.bpffs_dir) {
                Ok(report) => print!("{report}"),
                // The report a script reads on stdout, the explanation on stderr.
                Err(e @ CommandError::NotRunning(_)) => {
                    println!("backend: none\ndaemon: not running");
                    return Err(e.into());
                }
                Err(e) => return Err(e.into()),
            }
            Ok(())
        }
        Some(Command::Flush(args)) => {
            init_tracing(LogFormat::Text);
            print!("{}", nettrust::commands::flush(&args.bpffs_dir)?);
            Ok(())
        }
        Some(Command::Attach(args)) => {
            init_tracing(LogFormat::Text);
            nettrust::commands::attach(&args.bpffs_dir, &args.cgroup)?;
            println!("attached {}", args.cgroup.display());
            Ok(())
        }
        Some(Command::Detach(args)) => {
            init_tracing(LogFormat::Text);
            if nettrust::commands::detach(&args.bpffs_dir, &args.cgroup)? {
                println!("detached {}", args.cgroup.display());
            } else {
                println!("{} was not attached", args.cgroup.display());
            }
            Ok(())
        }
        Some(Command::CheckConfig(args)) => {
            let (settings, warnings) = nettrust::config::load(&args)?;
            for warning in warnings {
                eprintln!("warning: {warning}");
            }
            print!("{}", settings.to_toml());
            Ok(())
        }
        Some(Command::Run(args)) => run(&args),
        None => run(&cli.run),
    }
}

fn run(args: &nettrust::cli::RunArgs) -> anyhow::Result<()> {
    // Everything is validated before the runtime starts and before any firewall object exists.
    let (settings, warnings) = nettrust::config::load(args)?;
    init_tracing(settings.log_format);
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    // One thread (the default) runs every task on this thread; blocking work (the sweeper's
    // scans) still goes to the blocking pool either way.
    let runtime = if settings.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(settings.worker_threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        let reloads = reload_on_sighup(args.clone())?;
        nettrust::run(settings, shutdown, reloads).await?;
        Ok(())
    })
}

/// On each SIGHUP, re-reads the configuration the daemon was started with (same flags, current
/// environment and file) and sends it to the daemon; an invalid one is logged and ignored.
fn reload_on_sighup(
    args: nettrust::cli::RunArgs,
) -> std::io::Result<tokio::sync::mpsc::Receiver<nettrust::config::Settings>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup())?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("[Reload] SIGHUP received, reading the configuration again");
            match nettrust::config::load(&args) {
                Ok((settings, _)) => {
                    if tx.send(settings).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::error!(
                    "[Reload] invalid configuration, keeping the running one: {e:#}"
                ),
            }
        }
    });
    Ok(rx)
}

/// Completes on the first SIGINT or SIGTERM.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
    })
}

/// Whether text logs carry ANSI colours: only when stderr is a terminal, and never when `NO_COLOR`
/// is set to anything but the empty string (<https://no-color.org>). A log file, a pipe or the
/// journal gets plain text.
fn log_colours(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

/// Logs go to stderr. `RUST_LOG` selects levels as usual; without it, `NET_TRUST_DEBUG=true` means
/// debug and anything else info. The egress program's aya-log records arrive as `log` records
/// (target `nettrust::ebpf`), bridged into tracing by `init()`; the program writes them only when
/// this filter enables that target at debug when the firewall loads it (`NET_TRUST_DEBUG=true`
/// or `RUST_LOG=info,nettrust::ebpf=debug`).
fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal as _;
    let default = if std::env::var("NET_TRUST_DEBUG").is_ok_and(|v| v == "true") {
        "info,nettrust=debug"
    } else {
        "info"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(log_colours(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        ));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[cfg(test)]
mod tests {
    use super::log_colours;
    use std::ffi::OsStr;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(log_colours(true, None));
        assert!(log_colours(true, Some(OsStr::new(""))));
        assert!(!log_colours(true, Some(OsStr::new("1"))));
        assert!(!log_colours(false, None));
        assert!(!log_colours(false, Some(OsStr::new(""))));
    }
}
