//! Who created each socket of a filtered cgroup: `sock_owner`, a `cgroup/sock_create` program
//! attached with `egress`, runs in the creating process when an IPv4 or IPv6 socket is created
//! and records under the socket's cookie (`SOCK_OWNERS`, an LRU) the creator's cgroup — the one
//! `egress` judges the socket's packets by —, that cgroup's policy and the process (pid and
//! command). The `connect` programs judge a connect by it, so a socket used from another cgroup
//! (passed over a Unix socket, its process moved) is judged as its packets will be.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_socket_cookie,
    },
    macros::cgroup_sock,
    programs::SockContext,
};
use nettrust_common::SockOwner;

use crate::{maps::SOCK_OWNERS, scopes};

/// A `cgroup/sock_create` program's "let the socket be created".
const CREATE: i32 = 1;

#[cgroup_sock(sock_create)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the aya attribute macro fixes the entry point's signature"
)]
pub fn sock_owner(ctx: SockContext) -> i32 {
    // SAFETY: helpers on the context the kernel passed, or without preconditions.
    let (cookie, cgroup_id, pid_tgid) = unsafe {
        (
            bpf_get_socket_cookie(ctx.as_ptr()),
            bpf_get_current_cgroup_id(),
            bpf_get_current_pid_tgid(),
        )
    };
    let owner = SockOwner {
        cgroup_id,
        policy: scopes::current_policy_any(),
        generation: scopes::generation(),
        pid: (pid_tgid >> 32) as u32,
        comm: bpf_get_current_comm().unwrap_or_default(),
    };
    let _ = SOCK_OWNERS.insert(cookie, owner, 0);
    CREATE
}
