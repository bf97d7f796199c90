//! What the programs report: the per-verdict counters (`STATS`), the per-cgroup ones (`ALLOWS`,
//! `DROPS`, `AUDITS`), the rate-limited denied and audit events (`DENIED`) and the rate limit of
//! the aya-log debug records (`may_log`; the records themselves are written in `main`).

use aya_ebpf::{
    helpers::bpf_ktime_get_boot_ns,
    maps::{PerCpuArray, PerCpuHashMap},
};
use aya_log_ebpf::macro_support::Level;
use nettrust_common::{
    DENIED_EVENTS_PER_SEC, DeniedEvent, FLOW_RECORDS_PER_SEC, FlowKey, FlowRecord,
    LOG_RECORDS_PER_SEC, RateState,
};

use crate::maps::{
    DENIED, DENIED_RATE, FLOW_RATE, FLOWS, FLOWS_LOST, LOG_RATE, SOCK_OWNERS, STATS,
};

/// Bumps a per-cgroup counter (`DROPS`, `ALLOWS` or `AUDITS`).
#[inline(always)]
pub fn count_cgroup(map: &PerCpuHashMap<u64, u64>, cgroup_id: u64) {
    if let Some(counter) = map.get_ptr_mut(cgroup_id) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *counter += 1 };
    } else {
        let _ = map.insert(cgroup_id, 1, 0);
    }
}

/// Whether one more event fits this CPU's one-second window of `limit` events (counted if so).
#[inline(always)]
fn within_rate(rate: &PerCpuArray<RateState>, limit: u64, now: u64) -> bool {
    let Some(state) = rate.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
    let state = unsafe { &mut *state };
    if now.wrapping_sub(state.window_start_ns) >= 1_000_000_000 {
        state.window_start_ns = now;
        state.count = 0;
    }
    if state.count >= limit {
        return false;
    }
    state.count += 1;
    true
}

/// Whether the program may write a debug record now: the daemon enabled debug records for this
/// program (`AYA_LOG_LEVEL`, set before load; checked first, so with debug off the limiter is
/// never touched) and this CPU wrote fewer than `LOG_RECORDS_PER_SEC` in the current second.
#[inline(always)]
pub fn may_log() -> bool {
    if !aya_log_ebpf::macro_support::level_enabled(Level::Debug) {
        return false;
    }
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    within_rate(&LOG_RATE, LOG_RECORDS_PER_SEC, now)
}

/// Sends a [`DeniedEvent`] (`flags`: `EVENT_*` bits; `scope`: the sender's policy), at most
/// `DENIED_EVENTS_PER_SEC` per CPU per second, audit events included.
#[inline(always)]
pub fn report_denied(cgroup_id: u64, flow: &FlowKey, now: u64, scope: u32, flags: u16) {
    if !within_rate(&DENIED_RATE, DENIED_EVENTS_PER_SEC, now) {
        return;
    }
    let event = DeniedEvent {
        cgroup_id,
        addr: flow.addr,
        port: flow.remote_port,
        proto: flow.proto,
        family: flow.family,
        scope: scope as u16,
        flags,
    };
    let _ = DENIED.output::<DeniedEvent>(&event, 0);
}

#[inline(always)]
pub fn count(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *counter += 1 };
    }
}

/// Sends a [`FlowRecord`] of `flow` (`cgroup_id` sent it at `now`; `verdict` in the low byte
/// of `judged`, the `STAT_*` reason in the next, the `FLOW_*` flags in the third, the scope in the
/// high 32 bits) with the process that created the socket of `cookie` (`SOCK_OWNERS`), at most
/// `FLOW_RECORDS_PER_SEC` per CPU per second; what the limit or a full ring turns away is
/// counted in `FLOWS_LOST`. A BPF subprogram: its record is written into the ring, not onto the
/// caller's stack, and its branches stay out of the caller's verifier states.
#[inline(never)]
pub fn record_flow(flow: &FlowKey, cgroup_id: u64, now: u64, judged: u64, cookie: u64) {
    if !within_rate(&FLOW_RATE, FLOW_RECORDS_PER_SEC, now) {
        count_lost();
        return;
    }
    let Some(mut entry) = FLOWS.reserve::<FlowRecord>(0) else {
        count_lost();
        return;
    };
    let record = entry.as_mut_ptr();
    let owner = SOCK_OWNERS.get_ptr(cookie);
    // SAFETY: `record` points at the reserved record, written field by field in place (a
    // record built on the stack would not fit the callers' frames); `owner`, when found, at a
    // map value, plain data.
    unsafe {
        (&raw mut (*record).time_ns).write(now);
        (&raw mut (*record).cgroup_id).write(cgroup_id);
        (&raw mut (*record).addr).write(flow.addr);
        (&raw mut (*record).remote_port).write(flow.remote_port);
        (&raw mut (*record).local_port).write(flow.local_port);
        (&raw mut (*record).proto).write(flow.proto);
        (&raw mut (*record).family).write(flow.family);
        (&raw mut (*record).verdict).write(judged as u8);
        (&raw mut (*record).reason).write((judged >> 8) as u8);
        (&raw mut (*record).flags).write((judged >> 16) as u8);
        (&raw mut (*record)._pad).write([0; 7]);
        (&raw mut (*record).scope).write((judged >> 32) as u32);
        match owner {
            Some(owner) => {
                (&raw mut (*record).pid).write((*owner).pid);
                (&raw mut (*record).comm).write((*owner).comm);
            }
            None => {
                (&raw mut (*record).pid).write(0);
                (&raw mut (*record).comm).write([0; 16]);
            }
        }
    }
    entry.submit(0);
}

/// The `judged` word of [`record_flow`].
#[inline(always)]
pub fn judged(verdict: u8, reason: u32, flags: u8, scope: u32) -> u64 {
    u64::from(verdict)
        | (u64::from(reason as u8) << 8)
        | (u64::from(flags) << 16)
        | (u64::from(scope) << 32)
}

fn count_lost() {
    if let Some(counter) = FLOWS_LOST.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *counter += 1 };
    }
}
