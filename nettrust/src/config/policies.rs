//! The `[[policy]]` sections: names, cgroups, allow-lists (inline and file), networks and mode,
//! validated into [`PolicySettings`]. A cgroup belongs to one policy at most, and a policy's
//! cgroup is not also one of the top-level `cgroups` (the default policy's).

use std::path::PathBuf;

use super::{
    ConfigError, PolicySettings,
    domains::domain_list,
    invalid,
    options::{Layers, PolicyMode, PolicySection, parse_choice},
    validate::parse_network,
};

/// Longest policy name.
const MAX_NAME_LEN: usize = 32;

/// Whether `name` matches `[a-z0-9_-]{1,32}`: short and safe in logs, metric labels and file
/// names.
fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Every `[[policy]]` of the config file, in order; `top_cgroups` are the default policy's.
pub(super) fn policies(
    l: &Layers,
    top_cgroups: &[PathBuf],
) -> Result<Vec<PolicySettings>, ConfigError> {
    let mut policies: Vec<PolicySettings> = Vec::with_capacity(l.file().policies.len());
    for section in &l.file().policies {
        let name = &section.name;
        if !valid_name(name) {
            return Err(invalid(
                "policy.name",
                name,
                "a policy name is 1 to 32 of a-z, 0-9, '_' and '-'",
            ));
        }
        if policies.iter().any(|p| p.name == *name) {
            return Err(invalid(
                "policy.name",
                name,
                "two [[policy]] sections have this name",
            ));
        }
        check_cgroups(section, top_cgroups, &policies)?;
        policies.push(policy(section)?);
    }
    Ok(policies)
}

/// Refuses a policy without cgroups, and a cgroup listed twice, in another policy or in the
/// top-level `cgroups`: each filtered cgroup has exactly one policy.
fn check_cgroups(
    section: &PolicySection,
    top_cgroups: &[PathBuf],
    before: &[PolicySettings],
) -> Result<(), ConfigError> {
    let key = format!("policy.{}.cgroups", section.name);
    if section.cgroups.is_empty() {
        return Err(invalid(
            key,
            "[]",
            "a policy needs at least one cgroup v2 directory",
        ));
    }
    for (i, cgroup) in section.cgroups.iter().enumerate() {
        let shown = cgroup.display().to_string();
        if section.cgroups[..i].contains(cgroup) {
            return Err(invalid(&key, shown, "listed twice"));
        }
        if top_cgroups.contains(cgroup) {
            return Err(invalid(
                &key,
                shown,
                "also in the top-level cgroups (the default policy); a cgroup belongs to one policy",
            ));
        }
        if let Some(other) = before.iter().find(|p| p.cgroups.contains(cgroup)) {
            return Err(invalid(
                &key,
                shown,
                format!(
                    "also in policy {:?}; a cgroup belongs to one policy",
                    other.name
                ),
            ));
        }
    }
    Ok(())
}

/// One section whose name and cgroups were checked: its allow-list, networks and mode.
fn policy(section: &PolicySection) -> Result<PolicySettings, ConfigError> {
    let name = &section.name;
    let key = |field: &str| format!("policy.{name}.{field}");
    let domains = domain_list(
        (&key("allow_domains"), &section.allow_domains),
        (
            &key("allow_domains_file"),
            section.allow_domains_file.as_deref(),
        ),
    )?;
    let mut networks = Vec::with_capacity(section.allow_networks.len());
    for net in &section.allow_networks {
        let net = parse_network(&key("allow_networks"), net)?;
        if !networks.contains(&net) {
            networks.push(net);
        }
    }
    let mode = match &section.mode {
        Some(value) => parse_choice::<PolicyMode>(value)
            .map_err(|reason| invalid(key("mode"), value, reason))?,
        None => PolicyMode::Enforce,
    };
    Ok(PolicySettings {
        name: name.clone(),
        mode,
        cgroups: section.cgroups.clone(),
        domains,
        domains_file: section.allow_domains_file.clone(),
        networks,
    })
}
