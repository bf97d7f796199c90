//! What the programs report: the per-verdict counters (`STATS`), the per-cgroup ones (`ALLOWS`,
//! `DROPS`, `AUDITS`), the rate-limited denied and audit events (`DENIED`) and the rate limit of
//! the aya-log debug records (`may_log`; the records themselves are written in `main`).

use aya_ebpf::{
    helpers::bpf_ktime_get_boot_ns,
    maps::{PerCpuArray, PerCpuHashMap},
};
use aya_log_ebpf::macro_support::Level;
use nettrust_common::{
    DENIED_EVENTS_PER_SEC, DeniedEvent, FlowKey, LOG_RECORDS_PER_SEC, RateState,
};

use crate::maps::{DENIED, DENIED_RATE, LOG_RATE, STATS};

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
