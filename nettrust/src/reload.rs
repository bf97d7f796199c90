//! SIGHUP: re-read the configuration and apply what can change while running — the whitelists
//! (and, with the DNS layer, the blacklists) — without dropping authorizations. Entries removed
//! from the configuration are removed from enforcement (the original's issue #8). A new blacklist
//! also revokes at once the authorizations it now forbids: hosts and networks by address, domains
//! by the name recorded with the authorization (the question's name, as `nettrust list` shows it).
//! Anything else that changed needs a restart; such a reload is refused as a whole, so the daemon
//! never runs with half a configuration.

use std::{net::IpAddr, str::FromStr as _, sync::Arc};

use hickory_proto::rr::Name;

use crate::{
    authorizer::Authorizer,
    blacklist::{Blacklist, PatternError},
    config::Settings,
    firewall::{Firewall, FirewallError, Policy},
};

/// Why a reload was not applied. The running configuration stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// Options that only take effect at start changed.
    #[error(
        "reload refused: {0} changed; restart nettrust to apply it (the running configuration stays in force)"
    )]
    NeedsRestart(String),
    /// The firewall could not be updated.
    #[error("reload failed")]
    Firewall(#[from] FirewallError),
    /// The new blacklist is unusable.
    #[error("reload refused: blacklist")]
    Blacklist(#[from] PatternError),
    /// The new policies are unusable.
    #[error("reload refused: policies")]
    Scopes(#[from] crate::scopes::ScopeCollision),
}

/// The whitelists of `settings`, as the firewall takes them: the upstream servers are allowed on
/// their DNS port and transport only, and the blacklisted hosts and networks get no replies
/// through flows they open.
pub fn policy(settings: &Settings) -> Policy {
    let tcp_only = settings.fwd_proto == crate::config::FwdProto::Tcp || settings.fwd_tls.is_some();
    let b = &settings.blacklist;
    Policy {
        whitelist_hosts: settings.whitelist_hosts.clone(),
        whitelist_networks: settings.whitelist_networks.clone(),
        services: crate::firewall::upstream_services(&settings.fwd_addrs, tcp_only),
        blocked: b
            .hosts
            .iter()
            .map(|&h| ipnet::IpNet::from(h))
            .chain(b.networks.iter().copied())
            .collect(),
    }
}

/// The proxy's blacklist for `settings`.
pub fn blacklist(settings: &Settings) -> Result<Blacklist, PatternError> {
    let b = &settings.blacklist;
    Ok(Blacklist::with_domains(
        b.matcher.clone(),
        &b.hosts,
        &b.networks,
        b.response,
    ))
}

/// Applies `new` over `current`: checks that only reloadable options differ, updates the firewall
/// and the proxy's blacklist, then records `new` as current.
pub fn apply(
    current: &mut Settings,
    new: Settings,
    firewall: &dyn Firewall,
    authorizer: &Authorizer,
) -> Result<(), ReloadError> {
    let mut changed = restart_only_changes(current, &new);
    let (literals, patterns) = crate::cgroup::patterns::split(new.filtered_cgroups());
    let (current_literals, current_patterns) =
        crate::cgroup::patterns::split(current.filtered_cgroups());
    if sorted(literals) != sorted(current_literals) {
        // Attaching and detaching happen at start; moving a filtered cgroup between policies
        // (or the default policy) is a reload, and so is a changed set of cgroup patterns.
        changed.push("cgroups");
    }
    // With patterns, every reload classifies again and attaches a recreated attach point.
    let patterns_changed = patterns != current_patterns || !patterns.is_empty();
    if !changed.is_empty() {
        return Err(ReloadError::NeedsRestart(changed.join(", ")));
    }
    // Build everything that can fail before changing anything.
    let new_blacklist = (new.blacklist != current.blacklist)
        .then(|| blacklist(&new))
        .transpose()?;
    let (policies, scopes) = crate::scopes::of_settings(&new)?;
    let policy = policy(&new);
    if policy != self::policy(current) {
        firewall.set_whitelist(&policy)?;
    }
    let narrowed = if new.policies == current.policies && !patterns_changed {
        None
    } else {
        firewall.set_scopes(&scopes)?;
        let policies = Arc::new(policies);
        let narrowed = policies.narrowed_from(&authorizer.policies());
        // Installed before the revocation, so no answer authorizes what it revokes afterwards.
        authorizer.set_policies(policies.clone());
        Some((policies, narrowed))
    };
    let revoke = new_blacklist.map(|new_blacklist| {
        // Installed before the revocation, so no answer authorizes a newly blacklisted host
        // after it was revoked.
        let new_blacklist = Arc::new(new_blacklist);
        authorizer.set_blacklist(new_blacklist.clone());
        new_blacklist
    });
    tracing::info!(
        whitelist_hosts = new.whitelist_hosts.len(),
        whitelist_networks = new.whitelist_networks.len(),
        "[Reload] configuration reloaded"
    );
    *current = new;
    if let Some(blacklist) = revoke {
        let revoked = firewall.revoke(&|grant, name| blacklisted(&blacklist, grant.addr, name))?;
        for grant in &revoked {
            tracing::info!(
                "[Reload] Host [{grant}] is blacklisted now. Removed from firewall rules"
            );
        }
    }
    if let Some((policies, narrowed)) = narrowed {
        let revoked = firewall.revoke(&|grant, name| policies.revokes(&narrowed, grant, name))?;
        for grant in &revoked {
            tracing::info!(
                policy = policies.name(grant.scope),
                "[Reload] Host [{grant}] is no longer allowed by its policy. Removed from firewall rules"
            );
        }
    }
    Ok(())
}

fn sorted(mut paths: Vec<std::path::PathBuf>) -> Vec<std::path::PathBuf> {
    paths.sort();
    paths
}

/// Whether an authorization of `addr` for `name` is forbidden by `blacklist`. A name too long for
/// `nettrust list` is recorded as `…` and its end ([`crate::firewall::listed_name`]): its end still
/// names its domains, so it is matched without the `…`.
fn blacklisted(blacklist: &Blacklist, addr: IpAddr, name: Option<&str>) -> bool {
    blacklist.blocks_host(addr)
        || (blacklist.has_domains()
            && name
                .map(|n| n.strip_prefix('…').unwrap_or(n))
                .and_then(|n| Name::from_str(n).ok())
                .is_some_and(|n| blacklist.blocks_domain(&n)))
}

/// `differing!(out, b; field => "key", …)`: pushes `"key"` onto `out` for each `field` (bound by
/// destructuring one `Settings`) that differs from `b.field`.
macro_rules! differing {
    ($out:ident, $b:ident; $($field:ident => $key:literal,)*) => {
        $(if *$field != $b.$field {
            $out.push($key);
        })*
    };
}

/// The options that differ between `a` and `b` and cannot change without a restart.
fn restart_only_changes(a: &Settings, b: &Settings) -> Vec<&'static str> {
    // Exhaustive on purpose: a new option must be classified as reloadable or not.
    let Settings {
        listen_addr,
        listen_tls,
        listen_tls_addr,
        allow_clients,
        fwd_addrs,
        fwd_proto,
        fwd_tls,
        fwd_udp_buffer_size,
        fwd_timeout,
        backend,
        firewall_type,
        firewall_drop_input,
        cgroups: _,
        dns_ttl_cache,
        dns_cache_size,
        max_tcp_connections,
        worker_threads,
        max_hosts,
        max_networks,
        max_answer_addresses,
        authorized_ttl,
        ttl_check_interval,
        do_not_flush_table,
        do_not_flush_authorized_hosts,
        whitelist_hosts: _,
        whitelist_networks: _,
        blacklist: _,
        authorize_ptr,
        bpffs_dir,
        metrics_addr,
        log_format,
        policies: _,
        listen_addrs,
        dns_capture,
    } = a;
    let mut changed = Vec::new();
    differing!(changed, b;
        listen_addr => "listen_addr",
        listen_tls => "listen_tls",
        listen_tls_addr => "listen_tls_addr",
        allow_clients => "allow_clients",
        fwd_addrs => "fwd_addr(s)",
        fwd_proto => "fwd_proto",
        fwd_tls => "fwd_tls",
        fwd_udp_buffer_size => "fwd_udp_buffer_size",
        fwd_timeout => "fwd_timeout_ms",
        backend => "firewall_backend",
        firewall_type => "firewall_type",
        firewall_drop_input => "firewall_drop_input",
        dns_ttl_cache => "dns_ttl_cache",
        dns_cache_size => "dns_cache_size",
        max_tcp_connections => "max_tcp_connections",
        worker_threads => "worker_threads",
        max_hosts => "max_hosts",
        max_networks => "max_networks",
        max_answer_addresses => "max_answer_addresses",
        authorized_ttl => "authorized_ttl",
        ttl_check_interval => "ttl_check_interval",
        do_not_flush_table => "do_not_flush_table",
        do_not_flush_authorized_hosts => "do_not_flush_authorized_hosts",
        authorize_ptr => "authorize_ptr",
        bpffs_dir => "bpffs_dir",
        metrics_addr => "metrics_addr",
        log_format => "log_format",
        listen_addrs => "listen_addrs",
        dns_capture => "dns_capture",
    );
    changed
}

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, path::Path};

    use super::*;
    use crate::{
        cli::RunArgs,
        config::{Env, FileConfig},
        firewall::fake::FakeFirewall,
    };

    fn settings(toml: &str) -> Settings {
        let args = RunArgs {
            fwd_addrs: vec!["192.0.2.53".into()],
            ..RunArgs::default()
        };
        let file = FileConfig::parse(toml, Path::new("t.toml")).unwrap();
        Settings::resolve(&args, &file, &Env::default(), || Ok("/cg".into())).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn whitelist_changes_apply_and_keep_authorizations() {
        let mut current =
            settings("[whitelist]\nhosts = [\"203.0.113.1\"]\nnetworks = [\"198.51.100.0/24\"]");
        let fw = Arc::new(FakeFirewall::new(policy(&current)));
        let authorizer = Authorizer::new(fw.clone(), None);
        fw.authorize(ip("192.0.2.7").into(), 0).unwrap();
        assert!(fw.allows(ip("203.0.113.1"), 0) && fw.allows(ip("198.51.100.9"), 0));

        let new = settings("[whitelist]\nhosts = [\"203.0.113.2\"]");
        apply(&mut current, new, fw.as_ref(), &authorizer).unwrap();
        assert!(
            !fw.allows(ip("203.0.113.1"), 0),
            "removed host still allowed"
        );
        assert!(
            !fw.allows(ip("198.51.100.9"), 0),
            "removed network still allowed"
        );
        assert!(fw.allows(ip("203.0.113.2"), 0), "added host not allowed");
        assert!(fw.allows(ip("192.0.2.7"), 0), "authorization lost");
        assert_eq!(
            current.whitelist_hosts,
            settings("[whitelist]\nhosts = [\"203.0.113.2\"]").whitelist_hosts
        );
    }

    #[test]
    fn blacklist_changes_reach_the_proxy() {
        use std::str::FromStr;
        let mut current = settings("");
        let fw = Arc::new(FakeFirewall::new(policy(&current)));
        let authorizer = Authorizer::new(fw.clone(), None);
        let tracker = hickory_proto::rr::Name::from_str("t.ads.example.").unwrap();
        assert!(!authorizer.blacklist().blocks_domain(&tracker));
        apply(
            &mut current,
            settings("[blacklist]\ndomains = [\"*.ads.example\"]"),
            fw.as_ref(),
            &authorizer,
        )
        .unwrap();
        assert!(authorizer.blacklist().blocks_domain(&tracker));
        apply(&mut current, settings(""), fw.as_ref(), &authorizer).unwrap();
        assert!(!authorizer.blacklist().blocks_domain(&tracker));
    }

    #[test]
    fn a_new_blacklist_revokes_what_it_forbids() {
        let mut current = settings("");
        let fw = Arc::new(FakeFirewall::new(policy(&current)));
        let authorizer = Authorizer::new(fw.clone(), None);
        for (addr, name) in [
            ("192.0.2.7", "a.test."),
            ("192.0.2.8", "t.ads.example."),
            ("192.0.2.9", "…aaaa.tracker.ads.example"),
            ("198.51.100.9", "c.test."),
            ("192.0.2.20", "ok.test."),
        ] {
            fw.authorize(ip(addr).into(), 0).unwrap();
            fw.record_name(ip(addr).into(), name).unwrap();
        }
        apply(
            &mut current,
            settings(
                "[blacklist]\nhosts = [\"192.0.2.7\"]\nnetworks = [\"198.51.100.0/24\"]\ndomains = [\"*.ads.example\"]",
            ),
            fw.as_ref(),
            &authorizer,
        )
        .unwrap();
        for revoked in ["192.0.2.7", "192.0.2.8", "192.0.2.9", "198.51.100.9"] {
            assert!(!fw.allows(ip(revoked), 0), "{revoked} still allowed");
            assert!(!fw.has_entry(ip(revoked)), "{revoked} still listed");
        }
        assert!(
            fw.allows(ip("192.0.2.20"), 0),
            "a host not blacklisted was revoked"
        );
    }

    /// A configuration with policy `ci` (`mode`, `domains`) on /cg/a and `other` on /cg/b.
    fn with_policies(mode: &str, domains: &str) -> Settings {
        settings(&format!(
            "[[policy]]\nname = \"ci\"\ncgroups = [\"/cg/a\"]\nallow_domains = [{domains}]\nmode = \"{mode}\"\n\
             [[policy]]\nname = \"other\"\ncgroups = [\"/cg/b\"]\nallow_domains = [\"example.net\"]\n"
        ))
    }

    #[test]
    fn narrowing_a_policy_revokes_its_grants_a_mode_switch_keeps_them() {
        use crate::{firewall::Grant, scopes::scope_of_name};
        let mut current = with_policies("audit", r#""example.com", "*.example.org""#);
        let fw = Arc::new(FakeFirewall::new(policy(&current)));
        let authorizer = Authorizer::new(fw.clone(), None);
        // As at start.
        authorizer.set_policies(Arc::new(crate::scopes::of_settings(&current).unwrap().0));
        let ci = scope_of_name("ci");
        let grants = [
            (Grant::new(ci, ip("192.0.2.1")), "example.com."),
            (Grant::new(ci, ip("192.0.2.2")), "www.example.org."),
            (Grant::new(ci, ip("192.0.2.3")), "audited.test."),
            (Grant::from(ip("192.0.2.4")), "audited.test."),
        ];
        for (grant, name) in grants {
            fw.authorize(grant, 0).unwrap();
            fw.record_name(grant, name).unwrap();
        }
        // Audit to enforce with the same domains: every grant stays.
        let enforce = with_policies("enforce", r#""example.com", "*.example.org""#);
        apply(&mut current, enforce, fw.as_ref(), &authorizer).unwrap();
        assert!(grants.iter().all(|(g, _)| fw.has_grant(*g)));
        assert!(
            fw.scopes()
                .cgroups
                .iter()
                .any(|c| c.scope == ci && !c.audit)
        );
        // Narrowed: what it no longer allows goes at once, the default scope is untouched.
        let narrowed = with_policies("enforce", r#""example.com""#);
        apply(&mut current, narrowed, fw.as_ref(), &authorizer).unwrap();
        let kept: Vec<bool> = grants.iter().map(|(g, _)| fw.has_grant(*g)).collect();
        assert_eq!(kept, [true, false, false, true]);
        // The policy removed: its grants go too.
        apply(
            &mut current,
            settings("cgroups = [\"/cg/a\", \"/cg/b\"]"),
            fw.as_ref(),
            &authorizer,
        )
        .unwrap();
        assert!(!fw.has_grant(grants[0].0));
        assert!(fw.has_grant(grants[3].0));
    }

    #[test]
    fn restart_only_changes_are_refused_whole() {
        let mut current = settings("authorized_ttl = 60");
        let fw = Arc::new(FakeFirewall::new(policy(&current)));
        let authorizer = Authorizer::new(fw.clone(), None);
        let new = settings(
            "authorized_ttl = 120\nlisten_addr = \"127.0.0.1:5353\"\nworker_threads = 2\n[whitelist]\nhosts = [\"203.0.113.2\"]",
        );
        let e = apply(&mut current, new, fw.as_ref(), &authorizer)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("listen_addr")
                && e.contains("authorized_ttl")
                && e.contains("worker_threads"),
            "{e}"
        );
        assert!(
            !fw.allows(ip("203.0.113.2"), 0),
            "a refused reload must change nothing"
        );
        assert_eq!(current, settings("authorized_ttl = 60"));
    }
}
