//! `live_tcp`: a `sock_ops` program attached to the same cgroups as `egress`, recording every TCP
//! connection those cgroups open while it is established, so the sweeper can keep the host of an
//! idle connection authorized without conntrack (which tracks nothing on a host without ct-using
//! rules). The kernel runs the program for the sockets of the cgroup whatever network namespace
//! they live in, so connections from containers are seen as well as the host's.
//!
//! An actively opened connection is recorded when `connect` starts its handshake
//! (`TCP_CONNECT_CB`), under its socket cookie, with the remote address and the scope of the
//! connecting task's cgroup; the program asks for the socket's state callbacks then, marks the
//! entry established when the handshake completes (the SYN-ACK came back: the flow was let out
//! and answered), and removes it when the socket reaches `TCP_CLOSE` (orderly close into
//! TIME_WAIT, reset, timeout, abort, or a handshake that failed). Only established entries are
//! liveness. Each entry also carries the id of the cgroup the program ran for, read from the
//! cgroup's storage (`LIVE_TCP_CGROUP`, written by the daemon when it attaches the program): a
//! cgroup detached or removed while it held connections no longer reports their close, and the
//! daemon ignores the entries of cgroups it no longer filters.
//!
//! The scope is what the egress program resolves for the socket's packets (`scopes`: the
//! deepest listed ancestor-or-self in `POLICY_OF`), so a connection keeps alive only the grants
//! of its own policy. It is resolved at connect time because that callback runs in the
//! connecting task's context (the `connect` or fast-open `sendmsg` call), where the task's cgroup
//! is the socket's: the kernel gives `sock_ops` no helper that reads a socket's cgroup
//! (`bpf_sk_cgroup_id` is refused), and the handshake completes in softirq context, where the
//! current task is anyone's. A socket created in one cgroup and connected by a task of another
//! (moved since, or handed the socket) is recorded with the connecting task's scope. A
//! connection of a cgroup that is not filtered (below a pattern's attach point, matched by no
//! pattern) is not recorded.
#![expect(
    deprecated,
    reason = "the cgroup storage of an attachment (BPF_MAP_TYPE_CGROUP_STORAGE) is the only per-cgroup storage a sock_ops program reaches by itself"
)]

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_F_NO_PREALLOC, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_TCP_CLOSE,
    },
    helpers::bpf_get_socket_cookie,
    macros::{map, sock_ops},
    maps::{CgroupStorage, HashMap},
    programs::SockOpsContext,
};
use core::ptr::read_volatile;

use nettrust_common::{LiveTcp, MAX_LIVE_TCP};

use crate::scopes;

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// Socket cookie → the connection (`nettrust_common::MAP_LIVE_TCP`).
#[map(name = "LIVE_TCP_SCOPED")]
static LIVE_TCP: HashMap<u64, LiveTcp> = HashMap::with_max_entries(MAX_LIVE_TCP, BPF_F_NO_PREALLOC);
/// The id of the cgroup the program is attached to, written by the daemon.
#[map(name = "LIVE_TCP_CGROUP")]
static LIVE_TCP_CGROUP: CgroupStorage<u64> = CgroupStorage::new();

#[sock_ops]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the aya attribute macro fixes the entry point's signature"
)]
pub fn live_tcp(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => connecting(&ctx),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            // SAFETY: the helper reads the socket of the context the kernel passed us.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            if let Some(entry) = LIVE_TCP.get_ptr_mut(cookie) {
                // SAFETY: pointer from a successful lookup, into the map's value.
                unsafe { core::ptr::write_volatile(&raw mut (*entry).established, 1) };
            }
        }
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => {
            // SAFETY: the helper reads the socket of the context the kernel passed us.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            let _ = LIVE_TCP.remove(cookie);
        }
        _ => {}
    }
    1
}

#[inline(always)]
fn connecting(ctx: &SockOpsContext) {
    // The connecting task's policy, unless its cgroup is not filtered.
    let Some(policy) = scopes::current_policy() else {
        return;
    };
    // Each field is read with its own volatile load at a constant offset from the context:
    // LLVM otherwise merges loads of different fields into one load through a computed context
    // pointer, which the verifier refuses. `remote_ip4`/`remote_ip6` hold the address in network
    // byte order.
    let ops = ctx.ops;
    // SAFETY: `ops` is the context the kernel passed; these fields are readable for every op.
    let (family, v4, w) = unsafe {
        (
            read_volatile(&raw const (*ops).family),
            read_volatile(&raw const (*ops).remote_ip4).to_ne_bytes(),
            [
                read_volatile(&raw const (*ops).remote_ip6[0]),
                read_volatile(&raw const (*ops).remote_ip6[1]),
                read_volatile(&raw const (*ops).remote_ip6[2]),
                read_volatile(&raw const (*ops).remote_ip6[3]),
            ],
        )
    };
    let (a, b, c, d) = (
        w[0].to_ne_bytes(),
        w[1].to_ne_bytes(),
        w[2].to_ne_bytes(),
        w[3].to_ne_bytes(),
    );
    let remote = match family {
        AF_INET => [
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
        ],
        AF_INET6 => [
            a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1],
            d[2], d[3],
        ],
        _ => return,
    };
    let (hi, lo) = remote.split_at(8);
    let words = |b: &[u8]| u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    // SAFETY: the storage of the cgroup this program runs for, valid while it runs.
    let cgroup = unsafe { read_volatile(LIVE_TCP_CGROUP.get_ptr_mut()) };
    let value = LiveTcp {
        remote: [words(hi), words(lo)],
        attach_cgroup: cgroup,
        scope: policy.scope,
        established: 0,
    };
    // SAFETY: as above.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // Only a recorded connection needs its establishment and close reported (a full map records
    // nothing).
    if LIVE_TCP.insert(cookie, value, 0).is_ok() {
        let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    }
}
