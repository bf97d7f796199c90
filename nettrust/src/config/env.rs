//! The `NET_TRUST_*` environment: one variable per option (the `env` of its flag in
//! [`Options`]), and list additions (`NET_TRUST_{WHITELIST,BLACKLIST}_{HOSTS,NETWORKS}_<NAME>`, as
//! in the original).

use std::{collections::BTreeMap, net::IpAddr};

use clap::FromArgMatches as _;
use ipnet::IpNet;

use super::{
    ConfigError, invalid,
    options::{Options, names},
    validate::{parse_host, parse_network},
};

/// Variables nettrust reads that are not options: `NET_TRUST_DEBUG` (debug logs, read by `main`).
const OTHER_VARIABLES: &[&str] = &["NET_TRUST_DEBUG"];

/// What the environment contributes. Variables are read in name order, so the result does not
/// depend on the environment's order.
#[derive(Debug, Default)]
pub struct Env {
    /// The options set by `NET_TRUST_<KEY>` variables.
    pub options: Options,
    /// Hosts to whitelist.
    pub whitelist_hosts: Vec<IpAddr>,
    /// Networks to whitelist.
    pub whitelist_networks: Vec<IpNet>,
    /// Hosts never to authorize.
    pub blacklist_hosts: Vec<IpAddr>,
    /// Networks never to authorize.
    pub blacklist_networks: Vec<IpNet>,
    /// Known scalar variables by lower-case key: (variable name, value).
    pub scalars: BTreeMap<String, (String, String)>,
    /// `NET_TRUST_*` variables nettrust does not know (warned about, not fatal).
    pub unknown: Vec<String>,
}

impl Env {
    /// Collects the environment from `vars` (e.g. `std::env::vars()`).
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut vars: Vec<_> = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with("NET_TRUST_"))
            .collect();
        vars.sort();
        let names = names();
        let mut env = Self::default();
        let mut argv = vec!["nettrust".to_owned()];
        for (var, value) in vars {
            let known = names.values().find_map(|n| {
                n.env
                    .as_deref()
                    .filter(|e| e.eq_ignore_ascii_case(&var))
                    .map(|_| n.flag.clone())
            });
            if let Some(flag) = known {
                let arg = format!("{flag}={}", value.trim());
                // Parsed alone first, so that a bad value is named with its variable.
                option_command()
                    .try_get_matches_from([argv[0].as_str(), arg.as_str()])
                    .map_err(|_| {
                        invalid(&var, &value, format!("not a valid value for {}", key(&var)))
                    })?;
                argv.push(arg);
            } else if !OTHER_VARIABLES.iter().any(|o| o.eq_ignore_ascii_case(&var)) {
                env.list(&var, &value)?;
                continue;
            }
            env.scalars.insert(key(&var), (var, value));
        }
        let matches = option_command()
            .try_get_matches_from(argv)
            .map_err(|e| invalid("NET_TRUST_*", "", e.to_string()))?;
        env.options = Options::from_arg_matches(&matches)
            .map_err(|e| invalid("NET_TRUST_*", "", e.to_string()))?;
        Ok(env)
    }

    /// A list variable, or an unknown one.
    fn list(&mut self, var: &str, value: &str) -> Result<(), ConfigError> {
        let rest = &var["NET_TRUST_".len()..];
        let list = |prefix: &str| {
            ["S_", "_"].iter().any(|sep| {
                rest.strip_prefix(prefix)
                    .and_then(|r| r.strip_prefix(sep))
                    .is_some_and(|name| !name.is_empty())
            })
        };
        // `HOSTS_<NAME>`; `NETWORKS_<NAME>` and the original README's `NETWORK_<NAME>`.
        if rest.starts_with("WHITELIST_HOSTS_") {
            self.whitelist_hosts.push(parse_host(var, value)?);
        } else if list("WHITELIST_NETWORK") {
            self.whitelist_networks.push(parse_network(var, value)?);
        } else if rest.starts_with("BLACKLIST_HOSTS_") {
            self.blacklist_hosts.push(parse_host(var, value)?);
        } else if list("BLACKLIST_NETWORK") {
            self.blacklist_networks.push(parse_network(var, value)?);
        } else if rest.starts_with("WHITELIST_") || rest.starts_with("BLACKLIST_") {
            // A typo here would silently drop a list entry: refuse it.
            return Err(invalid(
                var,
                value,
                "unknown list variable; use NET_TRUST_{WHITELIST,BLACKLIST}_{HOSTS,NETWORKS}_<NAME>",
            ));
        } else {
            self.unknown.push(var.to_owned());
        }
        Ok(())
    }

    /// The raw value of a known scalar variable by key (`debug` for `NET_TRUST_DEBUG`):
    /// (variable name, value).
    pub fn scalar(&self, key: &str) -> Option<(&str, &str)> {
        self.scalars
            .get(key)
            .map(|(var, value)| (var.as_str(), value.as_str()))
    }
}

/// The config key a variable names: `NET_TRUST_AUTHORIZED_TTL` gives `authorized_ttl`.
fn key(var: &str) -> String {
    var["NET_TRUST_".len()..].to_ascii_lowercase()
}

/// The options' command line without its environment: the variables given to
/// [`Env::from_vars`] are the only ones read.
pub(super) fn option_command() -> clap::Command {
    Options::command().mut_args(|arg| arg.env(None))
}
