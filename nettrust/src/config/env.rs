//! The `NET_TRUST_*` environment: list additions (`NET_TRUST_{WHITELIST,BLACKLIST}_{HOSTS,NETWORKS}_<NAME>`,
//! as in the original) and one variable per scalar option (`NET_TRUST_<CONFIG_KEY>`).

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;

use super::{ConfigError, invalid, parse_host, parse_network};

/// Scalar options settable from the environment, by config key.
pub const SCALAR_KEYS: &[&str] = &[
    "config",
    "listen_addr",
    "listen_tls",
    "listen_cert",
    "listen_cert_key",
    "allow_clients",
    "fwd_addr",
    "fwd_proto",
    "fwd_tls",
    "fwd_tls_cert",
    "fwd_tls_name",
    "fwd_udp_buffer_size",
    "fwd_timeout_ms",
    "firewall_backend",
    "firewall_type",
    "firewall_drop_input",
    "dns_ttl_cache",
    "dns_cache_size",
    "max_tcp_connections",
    "worker_threads",
    "max_hosts",
    "max_networks",
    "max_answer_addresses",
    "whitelist_loopback",
    "whitelist_private",
    "authorized_ttl",
    "ttl_check_interval",
    "do_not_flush_table",
    "do_not_flush_authorized_hosts",
    "blacklist_response",
    "authorize_ptr",
    "bpffs_dir",
    "metrics_addr",
    "log_format",
    "debug",
];

/// What the environment contributes. Variables are read in name order, so the result does not
/// depend on the environment's order.
#[derive(Debug, Default, PartialEq)]
pub struct Env {
    /// Hosts to whitelist.
    pub whitelist_hosts: Vec<IpAddr>,
    /// Networks to whitelist.
    pub whitelist_networks: Vec<IpNet>,
    /// Hosts never to authorize.
    pub blacklist_hosts: Vec<IpAddr>,
    /// Networks never to authorize.
    pub blacklist_networks: Vec<IpNet>,
    /// Scalar values by config key: (variable name, value).
    pub scalars: BTreeMap<&'static str, (String, String)>,
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
        let mut env = Self::default();
        for (var, value) in vars {
            let rest = &var["NET_TRUST_".len()..];
            if let Some(key) = SCALAR_KEYS.iter().find(|k| k.eq_ignore_ascii_case(rest)) {
                env.scalars.insert(key, (var.clone(), value));
                continue;
            }
            let list = |prefix: &str| {
                ["S_", "_"].iter().any(|sep| {
                    rest.strip_prefix(prefix)
                        .and_then(|r| r.strip_prefix(sep))
                        .is_some_and(|name| !name.is_empty())
                })
            };
            // `HOSTS_<NAME>`; `NETWORKS_<NAME>` and the original README's `NETWORK_<NAME>`.
            if rest.starts_with("WHITELIST_HOSTS_") {
                env.whitelist_hosts.push(parse_host(&var, &value)?);
            } else if list("WHITELIST_NETWORK") {
                env.whitelist_networks.push(parse_network(&var, &value)?);
            } else if rest.starts_with("BLACKLIST_HOSTS_") {
                env.blacklist_hosts.push(parse_host(&var, &value)?);
            } else if list("BLACKLIST_NETWORK") {
                env.blacklist_networks.push(parse_network(&var, &value)?);
            } else if rest.starts_with("WHITELIST_") || rest.starts_with("BLACKLIST_") {
                // A typo here would silently drop a list entry: refuse it.
                return Err(invalid(
                    &var,
                    &value,
                    "unknown list variable; use NET_TRUST_{WHITELIST,BLACKLIST}_{HOSTS,NETWORKS}_<NAME>",
                ));
            } else {
                env.unknown.push(var);
            }
        }
        Ok(env)
    }

    /// The raw value of a scalar: (variable name, value).
    pub fn scalar(&self, key: &str) -> Option<(&str, &str)> {
        self.scalars
            .get(key)
            .map(|(var, value)| (var.as_str(), value.as_str()))
    }
}
