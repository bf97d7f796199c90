//! Cgroup patterns in `cgroups` and in policies' `cgroups`.

use super::*;

/// Loads a file holding `toml` (after an upstream).
fn load_toml(dir: &Path, toml: &str) -> Result<(Settings, Vec<String>), ConfigError> {
    use std::os::unix::fs::PermissionsExt as _;
    let config = dir.join("nettrust.toml");
    std::fs::write(&config, format!("fwd_addr = \"192.0.2.53:53\"\n{toml}")).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    load(&RunArgs {
        config: Some(config),
        ..RunArgs::default()
    })
}

#[test]
fn patterns_are_checked_and_named_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mount = crate::cgroup::cgroup2_mount().expect("a cgroup2 mount");
    let good = format!("{}/nettrust-no-such-parent/docker-*.scope", mount.display());
    // A pattern may match nothing yet: its cgroups come later.
    let (settings, _) = load_toml(dir.path(), &format!("cgroups = [\"{good}\"]")).unwrap();
    assert_eq!(settings.cgroups, [PathBuf::from(&good)]);
    for (toml, key, value) in [
        (
            format!("cgroups = [\"{}/a**/b\"]", mount.display()),
            "cgroup",
            format!("{}/a**/b", mount.display()),
        ),
        (
            "cgroups = [\"/tmp/docker-*\"]".to_owned(),
            "cgroup",
            "/tmp/docker-*".to_owned(),
        ),
        (
            format!(
                "[[policy]]\nname = \"ci\"\ncgroups = [\"{}/x/**/**\"]\n",
                mount.display()
            ),
            "policy.ci.cgroups",
            format!("{}/x/**/**", mount.display()),
        ),
        (
            format!("firewall_backend = \"nftables\"\ncgroups = [\"{good}\"]"),
            "cgroup",
            good.clone(),
        ),
    ] {
        let e = load_toml(dir.path(), &toml)
            .map(|_| ())
            .expect_err(&toml)
            .to_string();
        assert!(e.starts_with(key) && e.contains(&value), "{toml}: {e}");
    }
    let e = load_toml(
        dir.path(),
        &format!("firewall_backend = \"nftables\"\ncgroups = [\"{good}\"]"),
    )
    .map(|_| ())
    .unwrap_err()
    .to_string();
    assert!(e.contains("cgroup patterns need the eBPF backend"), "{e}");
}
