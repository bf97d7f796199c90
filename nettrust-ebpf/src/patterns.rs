//! Cgroup patterns in the kernel: tracepoint programs on the cgroup tree's changes that keep
//! `POLICY_OF` right for the cgroups configured patterns name, synchronously, before the change
//! returns to the caller (so before any process can be in a new cgroup).
//!
//! `cgroup_mkdir` runs the compiled patterns (`PATTERNS`, `PATTERN_LIT`; see
//! `nettrust_common::patterns`) over the new cgroup's path, relative to the cgroup v2 root as
//! the kernel reports it, and writes the first matching pattern's policy for the cgroup's id.
//! `cgroup_rmdir` removes a pattern entry and the cached scope of a removed cgroup. Only the v2
//! hierarchy (root 0) is looked at. A cgroup v2 directory cannot be renamed (the kernel refuses
//! with EPERM), so a classified cgroup's path never changes.
//!
//! The loop over the patterns and, inside it, the per-byte matcher run through `bpf_loop`, so the
//! verifier checks each body once whatever the number of patterns and the path's length.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{bpf_loop, bpf_probe_read_kernel_str},
    macros::{map, tracepoint},
    maps::{Array, PerCpuArray},
    programs::TracePointContext,
};
use nettrust_common::{
    CgroupPath, MAX_PATTERNS, PATTERN_PATH_LEN, PATTERN_WORDS, POLICY_PATTERN, PatternBits,
    PatternMasks, PolicyRef, pattern_accepts, pattern_closure, pattern_lit_index, pattern_step,
};

use crate::maps::{POLICY_OF, SCOPES, UNCLASSIFIED};

/// The compiled patterns, in configuration order; the first with `used` 0 ends the list.
#[map(name = "PATTERNS")]
static PATTERNS: Array<PatternMasks> = Array::with_max_entries(MAX_PATTERNS, 0);
/// The literal masks of each pattern and byte value.
#[map(name = "PATTERN_LIT")]
static PATTERN_LIT: Array<PatternBits> = Array::with_max_entries(MAX_PATTERNS * 256, 0);
/// The patterns as configured (for `nettrust status`; the programs do not read it).
#[map(name = "PATTERN_TEXT")]
static PATTERN_TEXT: Array<CgroupPath> = Array::with_max_entries(MAX_PATTERNS, 0);
/// The path being classified (too large for the 512-byte stack).
#[map(name = "PATTERN_PATH")]
static PATTERN_PATH: PerCpuArray<PathBuf> = PerCpuArray::with_max_entries(1, 0);

/// A cgroup path as the tracepoint recorded it, NUL-terminated.
#[repr(C)]
struct PathBuf {
    bytes: [u8; PATTERN_PATH_LEN as usize],
}

// The format of the `cgroup` trace events (/sys/kernel/tracing/events/cgroup/cgroup_mkdir/format,
// the same for rmdir): `int root` at 8, `u64 id` at 16, `__data_loc char[] path` at
// 24 (offset of the string in the record in the low 16 bits, its length in the high 16).
const ROOT_OFFSET: usize = 8;
const ID_OFFSET: usize = 16;
const PATH_OFFSET: usize = 24;
/// The hierarchy id of cgroup v2 (`cgrp_dfl_root`).
const CGROUP2_ROOT: i32 = 0;

/// The matcher's state for one pattern, passed to each `bpf_loop` step.
#[repr(C)]
struct Matching {
    d: PatternBits,
    pattern: u32,
    _pad: u32,
}

#[tracepoint]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the aya attribute macro fixes the entry point's signature"
)]
pub fn cgroup_mkdir(ctx: TracePointContext) -> u32 {
    if let Some(id) = v2_cgroup(&ctx) {
        match classify(&ctx) {
            Classified::Matched(policy) => {
                let _ = POLICY_OF.insert(id, policy, 0);
            }
            Classified::Unreadable => {
                let _ = UNCLASSIFIED.insert(id, 1, 0);
            }
            Classified::Unmatched => {}
        }
    }
    0
}

/// What [`classify`] made of a new cgroup's path.
enum Classified {
    /// The first pattern that matches, and its policy.
    Matched(PolicyRef),
    /// No pattern matches.
    Unmatched,
    /// The path is too long to read whole: it cannot be judged (`UNCLASSIFIED`).
    Unreadable,
}

#[tracepoint]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the aya attribute macro fixes the entry point's signature"
)]
pub fn cgroup_rmdir(ctx: TracePointContext) -> u32 {
    if let Some(id) = v2_cgroup(&ctx) {
        remove_pattern_entry(id);
        let _ = SCOPES.remove(id);
        let _ = UNCLASSIFIED.remove(id);
    }
    0
}

/// The id of the event's cgroup when it is in the v2 hierarchy.
#[inline(always)]
fn v2_cgroup(ctx: &TracePointContext) -> Option<u64> {
    // SAFETY: offsets inside the event record (format above).
    let root: i32 = unsafe { ctx.read_at(ROOT_OFFSET) }.ok()?;
    if root != CGROUP2_ROOT {
        return None;
    }
    // SAFETY: as above.
    unsafe { ctx.read_at(ID_OFFSET) }.ok()
}

/// Removes the `POLICY_OF` entry of `id` if pattern classification wrote it (a configured
/// cgroup's entry is the daemon's).
#[inline(always)]
fn remove_pattern_entry(id: u64) {
    // SAFETY: plain data, copied out at once.
    let flags = unsafe { POLICY_OF.get(id) }.map(|p| p.flags);
    if flags.is_some_and(|f| f & POLICY_PATTERN != 0) {
        let _ = POLICY_OF.remove(id);
    }
}

/// The policy of the first pattern matching the event's path, if any.
#[inline(never)]
fn classify(ctx: &TracePointContext) -> Classified {
    // SAFETY: offset inside the event record.
    let Ok(loc) = (unsafe { ctx.read_at::<u32>(PATH_OFFSET) }) else {
        return Classified::Unreadable;
    };
    let Some(buf) = PATTERN_PATH.get_ptr_mut(0) else {
        return Classified::Unreadable;
    };
    // SAFETY: the per-CPU buffer is ours for this run; the source is the event record.
    let read = unsafe {
        bpf_probe_read_kernel_str(
            (*buf).bytes.as_mut_ptr().cast(),
            PATTERN_PATH_LEN,
            ctx.as_ptr()
                .cast::<u8>()
                .add((loc & 0xffff) as usize)
                .cast(),
        )
    };
    // The length counts the terminating NUL; a path filling the buffer may be cut.
    if read <= 1 || read >= i64::from(PATTERN_PATH_LEN) {
        return Classified::Unreadable;
    }
    let mut search = Search {
        len: (read - 1) as u32,
        found: 0,
    };
    // SAFETY: `try_pattern` has the callback signature bpf_loop expects; `search` outlives the
    // call.
    unsafe {
        bpf_loop(
            MAX_PATTERNS,
            try_pattern as *mut c_void,
            (&raw mut search).cast::<c_void>(),
            0,
        );
    }
    match search
        .found
        .checked_sub(1)
        .and_then(|found| PATTERNS.get(found))
    {
        Some(masks) => Classified::Matched(masks.policy),
        None => Classified::Unmatched,
    }
}

/// The search through the patterns, passed to each `bpf_loop` step of [`try_pattern`].
#[repr(C)]
struct Search {
    /// Bytes of the path.
    len: u32,
    /// The index + 1 of the first matching pattern (0: none yet).
    found: u32,
}

/// Pattern `index` over the path of the [`Search`] `ctx`; stops the loop (returns 1) at the
/// first match or the end of the list. A callback too, so the verifier checks the matcher once
/// instead of once per pattern.
#[inline(never)]
extern "C" fn try_pattern(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer `classify` gave it.
    let search = unsafe { &mut *ctx.cast::<Search>() };
    let pattern = index as u32;
    let Some(masks) = PATTERNS.get(pattern) else {
        return 1;
    };
    if masks.used == 0 {
        return 1;
    }
    if matches(pattern, masks, search.len) {
        search.found = pattern + 1;
        return 1;
    }
    0
}

/// Runs pattern `pattern` over the first `len` bytes of `PATTERN_PATH`.
#[inline(always)]
fn matches(pattern: u32, masks: &PatternMasks, len: u32) -> bool {
    let mut state = Matching {
        d: [0; PATTERN_WORDS],
        pattern,
        _pad: 0,
    };
    state.d[0] = 1;
    pattern_closure(&mut state.d, masks);
    // SAFETY: `step` has the callback signature bpf_loop expects; `state` outlives the call.
    unsafe {
        bpf_loop(
            len,
            step as *mut c_void,
            (&raw mut state).cast::<c_void>(),
            0,
        );
    }
    pattern_accepts(&state.d, masks)
}

/// One byte of the path (index `index`) through the matcher in `ctx` (a [`Matching`]); stops
/// the loop (returns 1) once no pattern position is alive.
#[inline(never)]
extern "C" fn step(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer `matches` gave it.
    let state = unsafe { &mut *ctx.cast::<Matching>() };
    let alive = step_byte(state, index);
    if !alive {
        state.d = [0; PATTERN_WORDS];
        return 1;
    }
    0
}

#[inline(always)]
fn step_byte(state: &mut Matching, index: u64) -> bool {
    let Some(buf) = PATTERN_PATH.get(0) else {
        return false;
    };
    let byte = buf.bytes[(index as usize) & (PATTERN_PATH_LEN as usize - 1)];
    let Some(masks) = PATTERNS.get(state.pattern) else {
        return false;
    };
    let Some(lit) = PATTERN_LIT.get(pattern_lit_index(state.pattern, byte)) else {
        return false;
    };
    pattern_step(&mut state.d, masks, lit, byte)
}
