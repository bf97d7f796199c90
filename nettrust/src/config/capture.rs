//! `listen_addrs` (more DNS listen addresses) and `dns_capture` (answer every DNS query of the
//! filtered cgroups, whatever resolver they ask), checked against the listener and the firewall.

use std::net::SocketAddr;

use super::{
    ConfigError, invalid,
    options::{Backend, FirewallType, Given, Layers},
    validate::parse_socket_addr,
};

/// `listen_addrs`: each an `IP:PORT` (or an address, port 53), none equal to `listen_addr`,
/// `listen_tls_addr` or another entry. `NET_TRUST_LISTEN_ADDRS` is comma- or space-separated.
pub(super) fn listen_addrs(
    l: &Layers,
    listen_addr: SocketAddr,
    listen_tls_addr: Option<SocketAddr>,
) -> Result<Vec<SocketAddr>, ConfigError> {
    let Some(Given { value, key }) = l.get("listen_addrs", |o| o.listen_addrs.clone()) else {
        return Ok(Vec::new());
    };
    let entries: Vec<String> = if key.starts_with("NET_TRUST_") {
        value
            .iter()
            .flat_map(|v| v.split(|c: char| c == ',' || c.is_whitespace()))
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect()
    } else {
        value
    };
    let mut out: Vec<SocketAddr> = Vec::new();
    for entry in entries {
        let addr = parse_socket_addr(&key, &entry)?;
        if addr == listen_addr || Some(addr) == listen_tls_addr || out.contains(&addr) {
            return Err(invalid(
                &key,
                &entry,
                "listed twice (listen_addr, listen_tls_addr and listen_addrs must all differ)",
            ));
        }
        out.push(addr);
    }
    Ok(out)
}

/// `dns_capture`: needs the eBPF backend (socket-address programs; the nftables backend and
/// gateway mode have no equivalent), so it is refused with `firewall_backend = "nftables"` or
/// `firewall_type = "forward"`. With `auto`, a fallback to nftables is refused at start.
pub(super) fn dns_capture(
    l: &Layers,
    backend: Backend,
    firewall_type: FirewallType,
) -> Result<bool, ConfigError> {
    let Some(Given { value, key }) = l.get("dns_capture", |o| o.dns_capture) else {
        return Ok(false);
    };
    if value && backend == Backend::Nftables {
        return Err(invalid(
            key,
            "true",
            "DNS capture needs the eBPF backend (socket-address hooks); firewall_backend is nftables",
        ));
    }
    if value && firewall_type == FirewallType::Forward {
        return Err(invalid(
            key,
            "true",
            "DNS capture works on the filtered cgroups' sockets; gateway mode (firewall_type = forward) has none",
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::super::{ConfigError, Env, FileConfig, Settings};
    use crate::cli::RunArgs;

    fn resolve(flags: &[&str], toml: &str, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let mut args = RunArgs {
            fwd_addrs: vec!["192.0.2.53:53".into()],
            ..RunArgs::default()
        };
        if let Some(list) = flags.iter().position(|f| *f == "--listen-addrs") {
            args.listen_addrs = Some(vec![flags[list + 1].to_owned()]);
        }
        if flags.contains(&"--dns-capture") {
            args.dns_capture = Some(true);
        }
        let file = FileConfig::parse(toml, Path::new("test.toml"))?;
        let env = Env::from_vars(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())))?;
        Settings::resolve(&args, &file, &env, || Ok(PathBuf::from("/sys/fs/cgroup")))
    }

    #[track_caller]
    fn error(result: Result<Settings, ConfigError>, names: &[&str]) {
        let e = result.expect_err("expected an error").to_string();
        for name in names {
            assert!(e.contains(name), "error {e:?} does not name {name:?}");
        }
    }

    #[test]
    fn defaults_off_and_empty() {
        let s = resolve(&[], "", &[]).unwrap();
        assert!(!s.dns_capture);
        assert!(s.listen_addrs.is_empty());
    }

    #[test]
    fn listen_addrs_from_each_layer_join_the_listen_addresses() {
        let toml = "listen_addrs = [\"198.51.100.1:53\", \"2001:db8::1\"]\ndns_capture = true";
        let s = resolve(&[], toml, &[]).unwrap();
        assert!(s.dns_capture);
        let want: Vec<std::net::SocketAddr> = vec![
            "198.51.100.1:53".parse().unwrap(),
            "[2001:db8::1]:53".parse().unwrap(),
        ];
        assert_eq!(s.listen_addrs, want);
        assert!(s.whitelist_hosts.contains(&want[0].ip()));
        let env = resolve(
            &[],
            toml,
            &[("NET_TRUST_LISTEN_ADDRS", "10.0.0.1:53, 10.0.0.2")],
        )
        .unwrap();
        assert_eq!(env.listen_addrs.len(), 2);
        let flag = resolve(&["--listen-addrs", "10.0.0.9:5353"], toml, &[]).unwrap();
        assert_eq!(flag.listen_addrs, ["10.0.0.9:5353".parse().unwrap()]);
    }

    #[test]
    fn bad_listen_addrs_are_named() {
        error(
            resolve(&[], "listen_addrs = [\"nope\"]", &[]),
            &["listen_addrs", "nope"],
        );
        error(
            resolve(&[], "listen_addrs = [\"127.0.0.1:53\"]", &[]),
            &["listen_addrs", "127.0.0.1:53", "twice"],
        );
        error(
            resolve(&[], "listen_addrs = [\"10.0.0.1:53\", \"10.0.0.1\"]", &[]),
            &["listen_addrs", "10.0.0.1", "twice"],
        );
        error(
            resolve(&[], "listen_addrs = [\"10.0.0.1:0\"]", &[]),
            &["listen_addrs", "10.0.0.1:0"],
        );
    }

    #[test]
    fn capture_needs_the_ebpf_backend() {
        error(
            resolve(&["--dns-capture"], "firewall_backend = \"nftables\"", &[]),
            &["--dns-capture", "nftables"],
        );
        error(
            resolve(&[], "dns_capture = true\nfirewall_type = \"forward\"", &[]),
            &["dns_capture", "forward"],
        );
        assert!(resolve(&[], "dns_capture = true\nfirewall_backend = \"ebpf\"", &[]).is_ok());
    }
}
