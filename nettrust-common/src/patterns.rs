//! Cgroup patterns in the kernel: each configured pattern (`*` within one path component, `**`
//! across any depth) compiled by the daemon into a bit-parallel matcher (Shift-And over the
//! bytes of a cgroup's path relative to the cgroup v2 root), run by the `cgroup_mkdir`
//! tracepoint program on every new cgroup before `mkdir` returns. A matching cgroup is written
//! into `POLICY_OF` with the pattern's policy and [`POLICY_PATTERN`].
//!
//! Bit `i` of a matcher state means "the pattern's first `i` tokens matched the bytes read so
//! far". A token is a literal byte, `*` (any bytes but `/`, [`PatternMasks::star_loop`]), `**`'s
//! any bytes ([`PatternMasks::any_loop`]), an empty exit token after a middle `**`
//! ([`PatternMasks::eps`]), and a middle `**` may be skipped entirely ([`PatternMasks::skip`],
//! three tokens: `/`, any bytes, exit). One step over byte `c`:
//! `D = ((D << 1) & LIT[c]) | (D & loop(c))`, then the empty moves (`star`, `eps`, `skip`).

use crate::PolicyRef;

/// The compiled patterns: index → [`PatternMasks`] (Array, [`MAX_PATTERNS`]).
pub const MAP_PATTERNS: &str = "PATTERNS";
/// The patterns' literal masks: [`pattern_lit_index`] → [`PatternBits`] (Array).
pub const MAP_PATTERN_LIT: &str = "PATTERN_LIT";
/// The patterns as configured, for `nettrust status`: index → [`CgroupPath`](crate::CgroupPath)
/// (Array, [`MAX_PATTERNS`]; an empty path ends the list). Written by userspace only.
pub const MAP_PATTERN_TEXT: &str = "PATTERN_TEXT";
/// The `cgroup_mkdir` tracepoint program (classifies a new cgroup).
pub const PROGRAM_CGROUP_MKDIR: &str = "cgroup_mkdir";
/// The `cgroup_rmdir` tracepoint program (drops a removed cgroup's entries).
pub const PROGRAM_CGROUP_RMDIR: &str = "cgroup_rmdir";

/// [`PolicyRef::flags`] bit: this cgroup is where the programs are attached for a pattern, and
/// is not filtered itself; its packets, and those of descendants no deeper entry covers, pass.
pub const POLICY_UNFILTERED: u32 = 1 << 1;

/// [`PolicyRef::flags`] bit: the entry was written by pattern classification (the tracepoint
/// or the daemon's walk), not listed by the configuration; removed with its cgroup.
pub const POLICY_PATTERN: u32 = 1 << 2;

/// Capacity of the programs' own `UNCLASSIFIED` set: new cgroups whose path the kernel matcher
/// cannot read whole (longer than [`PATTERN_PATH_LEN`] - 1 bytes). Below a pattern's attach
/// point, such a cgroup and its descendants are filtered with the default policy unless a
/// listed cgroup filters them; they never pass as unmatched.
pub const MAX_UNCLASSIFIED: u32 = 1024;

/// Most patterns the kernel matcher holds (all lists together).
pub const MAX_PATTERNS: u32 = 32;

/// 64-bit words of a matcher state: a pattern has at most `64 * PATTERN_WORDS - 1` tokens.
pub const PATTERN_WORDS: usize = 4;

/// Most tokens of one compiled pattern (bit 0 is the empty prefix).
pub const MAX_PATTERN_TOKENS: usize = 64 * PATTERN_WORDS - 1;

/// Bytes of a cgroup path the tracepoint program reads (the kernel's own trace buffer is
/// 1,024 bytes, `TRACE_CGROUP_PATH_LEN`); a longer path matches no pattern.
pub const PATTERN_PATH_LEN: u32 = 1024;

/// A matcher state or mask, [`PATTERN_WORDS`] words, bit `i` in word `i / 64`.
pub type PatternBits = [u64; PATTERN_WORDS];

/// Value of [`MAP_PATTERNS`](crate::MAP_PATTERNS): one compiled pattern (its per-byte literal
/// masks are in [`MAP_PATTERN_LIT`](crate::MAP_PATTERN_LIT)).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PatternMasks {
    /// Bit `i + 1` for each `*` token `i`: stays set on any byte but `/`.
    pub star_loop: PatternBits,
    /// Bit `i + 1` for each any-bytes token `i` of `**`: stays set on any byte.
    pub any_loop: PatternBits,
    /// Bit `i` for each `*` or any-bytes token `i`: bit `i` sets bit `i + 1` without a byte.
    pub star: PatternBits,
    /// Bit `i` for each exit token `i` after a middle `**`: sets bit `i + 1` without a byte.
    pub eps: PatternBits,
    /// Bit `i` before each middle `**`: sets bit `i + 3` without a byte (zero components).
    pub skip: PatternBits,
    /// The bit of the whole pattern matched.
    pub accept: PatternBits,
    /// The policy of a matching cgroup (`flags` includes [`POLICY_PATTERN`]).
    pub policy: PolicyRef,
    /// 1 for a compiled pattern; the matcher stops at the first 0.
    pub used: u32,
    /// Explicit padding (always 0).
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<PatternMasks>() == 6 * 8 * PATTERN_WORDS + 16);

/// Index in [`MAP_PATTERN_LIT`](crate::MAP_PATTERN_LIT) of the literal mask of `byte` in
/// pattern `pattern`: bit `i + 1` for each literal token `i` equal to `byte`.
pub const fn pattern_lit_index(pattern: u32, byte: u8) -> u32 {
    pattern * 256 + byte as u32
}

/// `bits << 1` across the words.
#[inline(always)]
pub fn bits_shl1(bits: &PatternBits) -> PatternBits {
    let mut out = [0u64; PATTERN_WORDS];
    let mut carry = 0;
    let mut i = 0;
    while i < PATTERN_WORDS {
        out[i] = (bits[i] << 1) | carry;
        carry = bits[i] >> 63;
        i += 1;
    }
    out
}

/// `bits << 3` across the words.
#[inline(always)]
pub fn bits_shl3(bits: &PatternBits) -> PatternBits {
    let mut out = [0u64; PATTERN_WORDS];
    let mut carry = 0;
    let mut i = 0;
    while i < PATTERN_WORDS {
        out[i] = (bits[i] << 3) | carry;
        carry = bits[i] >> 61;
        i += 1;
    }
    out
}

/// The empty moves after a step: into `*`/`**` loops, out of a middle `**`, and over a middle
/// `**` matching zero components (in this order: a skip starts after a component's `*`).
#[inline(always)]
pub fn pattern_closure(d: &mut PatternBits, m: &PatternMasks) {
    let star = bits_shl1(&and(d, &m.star));
    or_into(d, &star);
    let eps = bits_shl1(&and(d, &m.eps));
    or_into(d, &eps);
    let skip = bits_shl3(&and(d, &m.skip));
    or_into(d, &skip);
}

/// One byte: `D = ((D << 1) & lit) | (D & loop(byte))`, then [`pattern_closure`]. Returns
/// whether any bit is still set (no bit: the pattern cannot match any more).
#[inline(always)]
pub fn pattern_step(d: &mut PatternBits, m: &PatternMasks, lit: &PatternBits, byte: u8) -> bool {
    let shifted = bits_shl1(d);
    let mut live = 0;
    let mut i = 0;
    while i < PATTERN_WORDS {
        let looping = if byte == b'/' {
            m.any_loop[i]
        } else {
            m.any_loop[i] | m.star_loop[i]
        };
        d[i] = (shifted[i] & lit[i]) | (d[i] & looping);
        i += 1;
    }
    pattern_closure(d, m);
    i = 0;
    while i < PATTERN_WORDS {
        live |= d[i];
        i += 1;
    }
    live != 0
}

/// Whether the state `d` has the pattern's accept bit.
#[inline(always)]
pub fn pattern_accepts(d: &PatternBits, m: &PatternMasks) -> bool {
    let mut hit = 0;
    let mut i = 0;
    while i < PATTERN_WORDS {
        hit |= d[i] & m.accept[i];
        i += 1;
    }
    hit != 0
}

#[inline(always)]
fn and(a: &PatternBits, b: &PatternBits) -> PatternBits {
    let mut out = [0u64; PATTERN_WORDS];
    let mut i = 0;
    while i < PATTERN_WORDS {
        out[i] = a[i] & b[i];
        i += 1;
    }
    out
}

#[inline(always)]
fn or_into(a: &mut PatternBits, b: &PatternBits) {
    let mut i = 0;
    while i < PATTERN_WORDS {
        a[i] |= b[i];
        i += 1;
    }
}
