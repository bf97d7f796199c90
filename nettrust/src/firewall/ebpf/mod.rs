//! The eBPF backend, in layers; each module uses only those listed before it:
//!
//! 1. `types` (errors, map handles, the linked programs) and `syscalls` (the raw `bpf(2)`
//!    commands, on aya-obj's `bpf_attr`);
//! 2. `ipv4_table` (the memory-mapped IPv4 table) and `host_table` (one interface over it and
//!    the IPv6 map);
//! 3. `pins` (the bpffs directory) and `adopt` (checking and opening what a previous run
//!    pinned);
//! 4. what the daemon writes into the maps: `authorizations`, `services`, `whitelist`,
//!    `names_writer`, and what it reads: `denied_events`; `grant_memo` (the deadlines the daemon
//!    knows `GRANTS` holds), `scopes` (policies, their grants, the DNS listeners and clients)
//!    and `pattern_maps` (the compiled cgroup patterns);
//! 5. `eviction` (writing into a full host map) and `live_tcp` (the `sock_ops` program);
//! 6. `attach` (filtering a cgroup) and `pinned_state` (list, status, counters); `patterns`
//!    (cgroup patterns: the tracepoint programs, classification, attach points); `capture` (the
//!    DNS capture targets) and `sock_addr` (the socket-address programs: the connect-time
//!    verdict and DNS capture);
//! 7. `loader` (loading and pinning the object) and `backend` ([`EbpfFirewall`], the
//!    [`crate::firewall::Firewall`] on all of it).

mod adopt;
mod attach;
mod authorizations;
mod backend;
mod capture;
mod denied_events;
mod eviction;
mod flow_events;
mod grant_memo;
mod host_table;
mod ipv4_table;
mod live_tcp;
mod loader;
mod names_writer;
mod pattern_maps;
mod patterns;
mod pinned_state;
mod pins;
mod scoped;
mod scopes;
mod services;
mod sock_addr;
pub mod syscalls;
mod types;
mod whitelist;

pub use adopt::{Capacities, open_table};
pub use attach::{attach_pinned, detach_pinned};
pub use backend::{EbpfFirewall, EbpfOptions};
pub use capture::{CaptureTargets, NetnsTarget};
pub use ipv4_table::HostTable;
pub use patterns::{
    PatternCoverage, attach_pattern_pinned, classify, coverage, coverage_pinned, scoped_patterns,
};
pub use pinned_state::{
    PinnedStatus, cgroup_egress, list_pinned, policy_names_pinned, read_stats, status_pinned,
};
pub use pins::{daemon_running, remove_all};
pub use scopes::{CgroupScope, ClientRecord, PatternEntries, ScopeMaps};
pub use types::{EbpfError, PinError};
