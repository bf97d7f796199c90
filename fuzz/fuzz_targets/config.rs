//! Config file text → validated settings. Must never panic; whatever it accepts must keep the
//! invariants the firewall relies on.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use nettrust::{
    cli::RunArgs,
    config::{Env, FileConfig, Settings},
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(file) = FileConfig::parse(text, Path::new("fuzz.toml")) else { return };
    let args = RunArgs { fwd_addrs: vec!["192.0.2.53:53".into()], ..RunArgs::default() };
    let Ok(settings) = Settings::resolve(&args, &file, &Env::default(), || Ok("/sys/fs/cgroup".into())) else {
        return;
    };
    assert!(!settings.fwd_addrs.is_empty());
    assert!(!settings.fwd_addrs.contains(&settings.listen_addr), "listen == forward accepted");
    assert!(settings.whitelist_hosts.contains(&settings.listen_addr.ip()) || settings.listen_addr.ip().is_unspecified());
    assert!(settings.ttl_check_interval.as_secs() >= 1);
    assert!(settings.fwd_udp_buffer_size >= 512);
    assert!(settings.bpffs_dir.is_absolute());
    for host in &settings.blacklist.hosts {
        assert!(!settings.whitelist_hosts.contains(host), "{host} both white- and blacklisted");
    }
    let _ = settings.to_toml();
});
