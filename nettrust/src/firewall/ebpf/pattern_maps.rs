//! The compiled cgroup patterns in the maps the `cgroup_mkdir` tracepoint program reads
//! (`PATTERNS`, `PATTERN_LIT`) and their texts for `nettrust status` (`PATTERN_TEXT`).

use std::{
    io,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use aya::maps::{Array, Map, MapData};
use nettrust_common::{
    CgroupPath, MAP_PATTERN_LIT, MAP_PATTERN_TEXT, MAP_PATTERNS, MAX_PATTERNS, PatternBits,
    PatternMasks, pattern_lit_index,
};

use super::{
    adopt::open_pinned,
    syscalls::{self, BPF_ANY},
    types::{EbpfError, map_error},
};

/// One compiled pattern: its masks and the literal mask of each byte value.
pub type Compiled = (PatternMasks, Vec<PatternBits>);

/// The pattern maps, opened from their pins.
pub struct PatternMaps {
    masks: Array<MapData, PatternMasks>,
    lit: Array<MapData, PatternBits>,
    text: Array<MapData, CgroupPath>,
    /// The patterns last written (an unchanged set is not rewritten); `None` until this run
    /// wrote them (adopted maps may hold another run's).
    written: Mutex<Option<Vec<Compiled>>>,
    /// Serializes the writers.
    write: Mutex<()>,
    /// Whether this run attached the cgroup tracepoint programs.
    tracepoints: AtomicBool,
}

impl PatternMaps {
    /// Opens the maps pinned in `pin_dir`.
    pub(super) fn open(pin_dir: &std::path::Path) -> Result<Self, EbpfError> {
        Ok(Self {
            masks: open_pinned(pin_dir, MAP_PATTERNS, Map::Array)?,
            lit: open_pinned(pin_dir, MAP_PATTERN_LIT, Map::Array)?,
            text: open_pinned(pin_dir, MAP_PATTERN_TEXT, Map::Array)?,
            written: Mutex::new(None),
            write: Mutex::new(()),
            tracepoints: AtomicBool::new(false),
        })
    }

    /// Appends one compiled pattern (`nettrust attach`) after those in `PATTERNS`, literal
    /// masks first, so the tracepoint never runs it half written; returns its index. Refuses a
    /// pattern already there and a full list.
    pub(super) fn append_pattern(
        &self,
        compiled: &(PatternMasks, Vec<PatternBits>),
        text: &str,
    ) -> Result<u32, EbpfError> {
        let _write = self.write.lock().expect("pattern maps lock poisoned");
        let refused = |what: String| {
            map_error(
                MAP_PATTERNS,
                what,
                io::Error::from(io::ErrorKind::InvalidInput),
            )
        };
        let text_fd = syscalls::fd_of(&self.text);
        let mut index = 0;
        while index < MAX_PATTERNS {
            let present = self
                .text
                .get(&index, 0)
                .map_err(|e| map_error(MAP_PATTERN_TEXT, "cannot read", e))?;
            let present = Some(super::pins::unpadded(&present.path));
            match present.as_deref() {
                None | Some("") => break,
                Some(t) if t == text => {
                    return Err(refused(format!("cgroup pattern {text}: already attached")));
                }
                Some(_) => index += 1,
            }
        }
        if index == MAX_PATTERNS {
            return Err(refused(format!(
                "cgroup pattern {text}: {MAX_PATTERNS} patterns already"
            )));
        }
        let (masks, lit) = compiled;
        for (byte, bits) in (0u8..=255).zip(lit) {
            syscalls::update(
                syscalls::fd_of(&self.lit),
                &pattern_lit_index(index, byte),
                bits,
                BPF_ANY,
            )
            .map_err(|e| map_error(MAP_PATTERN_LIT, "cannot write a pattern", e))?;
        }
        syscalls::update(syscalls::fd_of(&self.masks), &index, masks, BPF_ANY)
            .map_err(|e| map_error(MAP_PATTERNS, "cannot write a pattern", e))?;
        let value = CgroupPath {
            path: super::pins::padded(text),
        };
        syscalls::update(text_fd, &index, &value, BPF_ANY)
            .map_err(|e| map_error(MAP_PATTERN_TEXT, "cannot write a pattern", e))?;
        *self.written.lock().expect("poisoned") = None;
        Ok(index)
    }

    /// Whether this run attached the cgroup tracepoint programs.
    pub(super) fn tracepoints_attached(&self) -> bool {
        self.tracepoints.load(Ordering::Relaxed)
    }

    /// Records that this run attached the cgroup tracepoint programs.
    pub(super) fn set_tracepoints_attached(&self) {
        self.tracepoints.store(true, Ordering::Relaxed);
    }

    /// Writes the compiled patterns (masks and each byte's literal mask, in order) into
    /// `PATTERNS`/`PATTERN_LIT`, marks the rest of `PATTERNS` unused, and the patterns' `texts`
    /// into `PATTERN_TEXT` (for `nettrust status`).
    pub(super) fn write_patterns(
        &self,
        compiled: &[(PatternMasks, Vec<PatternBits>)],
        texts: &[String],
    ) -> Result<(), EbpfError> {
        if compiled.len() > MAX_PATTERNS as usize {
            return Err(map_error(
                MAP_PATTERNS,
                format!("{} cgroup patterns; at most {MAX_PATTERNS}", compiled.len()),
                io::Error::from(io::ErrorKind::InvalidInput),
            ));
        }
        let _write = self.write.lock().expect("pattern maps lock poisoned");
        let mut written = self.written.lock().expect("poisoned");
        if written.as_deref() == Some(compiled) {
            return Ok(());
        }
        let (masks_fd, lit_fd) = (syscalls::fd_of(&self.masks), syscalls::fd_of(&self.lit));
        let err = |e| map_error(MAP_PATTERNS, "cannot write a pattern", e);
        // Unused first, so the tracepoint never runs a pattern whose literals are half written
        // (a cgroup created meanwhile is classified by the walk that follows).
        let unused = PatternMasks::default();
        for index in 0..MAX_PATTERNS {
            syscalls::update(masks_fd, &index, &unused, BPF_ANY).map_err(err)?;
        }
        for (index, (_, lit)) in (0u32..).zip(compiled) {
            for (byte, bits) in (0u8..=255).zip(lit) {
                syscalls::update(lit_fd, &pattern_lit_index(index, byte), bits, BPF_ANY)
                    .map_err(|e| map_error(MAP_PATTERN_LIT, "cannot write a pattern", e))?;
            }
        }
        for (index, (masks, _)) in (0u32..).zip(compiled) {
            syscalls::update(masks_fd, &index, masks, BPF_ANY).map_err(err)?;
        }
        *written = Some(compiled.to_vec());
        let text_fd = syscalls::fd_of(&self.text);
        for index in 0..MAX_PATTERNS {
            let text = texts.get(index as usize).map_or("", String::as_str);
            let value = CgroupPath {
                path: super::pins::padded(text),
            };
            syscalls::update(text_fd, &index, &value, BPF_ANY)
                .map_err(|e| map_error(MAP_PATTERN_TEXT, "cannot write a pattern", e))?;
        }
        Ok(())
    }
}
