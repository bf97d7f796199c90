//! The raw `bpf(2)` commands the daemon issues itself, each on a `union bpf_attr` from aya-obj's
//! kernel bindings (`aya_obj::generated::bpf_attr`):
//!
//! - map elements through a shared reference (lookup, update, delete, batches; private to the
//!   backend, whose callers pass each map's exact key and value types): the kernel makes every
//!   single-element update and lookup atomic, so concurrent DNS answers need no lock of ours
//!   (aya's `HashMap::insert` takes `&mut self`), and a batch moves thousands of entries per call
//!   (aya has no batch commands);
//! - `BPF_OBJ_GET` + `BPF_LINK_DETACH` on a pinned link, which aya cannot open without knowing
//!   the link's type;
//! - `BPF_PROG_QUERY` on a cgroup, counting programs whoever attached them (for checks from
//!   outside the daemon, such as the root tests).

use std::{
    ffi::CString,
    io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
    path::Path,
};

use aya::{
    Pod,
    maps::{HashMap as AyaHashMap, IterableMap, MapData, MapError},
    programs::CgroupSkbAttachType,
};
use aya_obj::generated::{bpf_attach_type, bpf_attr, bpf_cmd};

/// Entries asked for per `BPF_MAP_LOOKUP_BATCH` call.
const DUMP_BATCH: usize = 4096;

/// `BPF_NOEXIST` from linux/bpf.h: create the element only if it does not exist yet.
pub(super) const BPF_NOEXIST: u64 = aya_obj::generated::BPF_NOEXIST as u64;
/// `BPF_ANY`: create or replace.
pub(super) const BPF_ANY: u64 = aya_obj::generated::BPF_ANY as u64;

/// The raw descriptor of an aya map (valid as long as the map handle lives).
pub(super) fn fd_of<K: Pod, V>(map: &impl IterableMap<K, V>) -> RawFd {
    let data: &MapData = map.map();
    data.fd().as_fd().as_raw_fd()
}

/// An all-zero attribute: every field the kernel does not get is 0, as it requires.
fn zeroed() -> bpf_attr {
    // SAFETY: bpf_attr is a union of plain integer structs; all zeroes is a valid value of each.
    unsafe { std::mem::zeroed() }
}

/// Issues `cmd`; returns the kernel's non-negative result (a new descriptor for some commands).
fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
    // SAFETY: `attr` is a whole, initialised bpf_attr whose variant for `cmd` was filled in; the
    // pointers inside it point at live buffers of the sizes the object was created with.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr),
            size_of::<bpf_attr>() as u32,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// An element command's attribute: map_fd, key, value (or next key) and flags.
fn elem_attr(fd: RawFd, key: u64, value: u64, flags: u64) -> bpf_attr {
    let mut attr = zeroed();
    attr.__bindgen_anon_2.map_fd = fd as u32;
    attr.__bindgen_anon_2.key = key;
    attr.__bindgen_anon_2.__bindgen_anon_1.value = value;
    attr.__bindgen_anon_2.flags = flags;
    attr
}

/// `Ok(false)` for ENOENT (no such key), `Ok(true)` for success.
fn found(result: io::Result<i64>) -> io::Result<bool> {
    match result {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `BPF_MAP_UPDATE_ELEM`. `K` and `V` must be the map's exact key and value types.
pub(super) fn update<K: Pod, V: Pod>(fd: RawFd, key: &K, value: &V, flags: u64) -> io::Result<()> {
    let key = std::ptr::from_ref(key) as u64;
    let value = std::ptr::from_ref(value) as u64;
    bpf(
        bpf_cmd::BPF_MAP_UPDATE_ELEM,
        &mut elem_attr(fd, key, value, flags),
    )
    .map(drop)
}

/// `BPF_MAP_LOOKUP_ELEM`: `Ok(None)` when the key is absent. `V` must be plain data.
pub(super) fn lookup<K: Pod, V: Pod + Default>(fd: RawFd, key: &K) -> io::Result<Option<V>> {
    let mut value = V::default();
    let key = std::ptr::from_ref(key) as u64;
    let out = std::ptr::from_mut(&mut value) as u64;
    let result = bpf(
        bpf_cmd::BPF_MAP_LOOKUP_ELEM,
        &mut elem_attr(fd, key, out, 0),
    );
    Ok(found(result)?.then_some(value))
}

/// `BPF_MAP_DELETE_ELEM`: whether the key was present.
pub(super) fn delete<K: Pod>(fd: RawFd, key: &K) -> io::Result<bool> {
    let key = std::ptr::from_ref(key) as u64;
    found(bpf(
        bpf_cmd::BPF_MAP_DELETE_ELEM,
        &mut elem_attr(fd, key, 0, 0),
    ))
}

/// A batch command's attribute (`in_batch`/`out_batch` tokens are set by the caller).
fn batch_attr(fd: RawFd, keys: u64, values: u64, count: usize, elem_flags: u64) -> bpf_attr {
    let mut attr = zeroed();
    attr.batch.map_fd = fd as u32;
    attr.batch.keys = keys;
    attr.batch.values = values;
    attr.batch.count = u32::try_from(count).unwrap_or(u32::MAX);
    attr.batch.elem_flags = elem_flags;
    attr
}

/// `BPF_MAP_UPDATE_BATCH` (Linux 5.6+): writes `keys[i] → values[i]` in one system call.
/// On error, returns how many were written before it.
pub(super) fn update_batch<K: Pod, V: Pod>(
    fd: RawFd,
    keys: &[K],
    values: &[V],
) -> Result<(), (usize, io::Error)> {
    assert_eq!(keys.len(), values.len());
    let mut attr = batch_attr(
        fd,
        keys.as_ptr() as u64,
        values.as_ptr() as u64,
        keys.len(),
        BPF_ANY,
    );
    bpf(bpf_cmd::BPF_MAP_UPDATE_BATCH, &mut attr)
        .map(drop)
        // SAFETY: reading the count the kernel wrote back into the batch variant.
        .map_err(|e| (unsafe { attr.batch.count } as usize, e))
}

/// Every entry of a hash map, `DUMP_BATCH` per `BPF_MAP_LOOKUP_BATCH` call (Linux 5.6+) instead of
/// two system calls per entry (next key, then lookup): a sweep of a million hosts takes a few
/// hundred calls. `K` and `V` must be the map's exact key and value types. Entries added or
/// removed during the dump may or may not be seen, as with any iteration of a live map.
pub(super) fn dump<K: Pod + Default, V: Pod + Default>(fd: RawFd) -> io::Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    let mut count = DUMP_BATCH;
    let mut keys = vec![K::default(); count];
    let mut values = vec![V::default(); count];
    // Hash maps resume from a bucket index (u32) the kernel hands back.
    let mut token = 0u32;
    let mut first = true;
    loop {
        let mut attr = batch_attr(
            fd,
            keys.as_mut_ptr() as u64,
            values.as_mut_ptr() as u64,
            count,
            0,
        );
        // The resume token: `token` outlives the call.
        attr.batch.in_batch = if first {
            0
        } else {
            std::ptr::from_ref(&token) as u64
        };
        attr.batch.out_batch = std::ptr::from_mut(&mut token) as u64;
        let result = bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr);
        // SAFETY: reading the count the kernel wrote back into the batch variant.
        let got = (unsafe { attr.batch.count } as usize).min(count);
        let end = match result {
            Ok(_) => false,
            // The end of the map; the last entries came with it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            // One bucket holds more entries than fit: ask again with room for more.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && got == 0 => {
                count *= 2;
                keys.resize(count, K::default());
                values.resize(count, V::default());
                continue;
            }
            Err(e) => return Err(e),
        };
        out.extend(
            keys[..got]
                .iter()
                .copied()
                .zip(values[..got].iter().copied()),
        );
        if end {
            return Ok(out);
        }
        first = false;
    }
}

/// Every entry of the hash map `map`: [`dump`], or on a kernel that cannot batch-read hash maps,
/// aya's key-by-key iterator.
pub(super) fn hash_entries<K: Pod + Default, V: Pod + Default>(
    map: &AyaHashMap<MapData, K, V>,
) -> io::Result<Vec<(K, V)>> {
    match dump(fd_of(map)) {
        Ok(entries) => Ok(entries),
        Err(e) => {
            tracing::debug!("batched map read unavailable ({e}), reading key by key");
            map.iter()
                .collect::<Result<_, MapError>>()
                .map_err(io::Error::other)
        }
    }
}

/// `BPF_OBJ_GET`: a descriptor of the object (map, program or link) pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let name = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut attr = zeroed();
    // `name` outlives the call.
    attr.__bindgen_anon_4.pathname = name.as_ptr() as u64;
    let fd = bpf(bpf_cmd::BPF_OBJ_GET, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `BPF_LINK_DETACH` (Linux 5.9+): detaches the link's program from its target now; the link
/// object stays until its last reference goes.
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = zeroed();
    attr.link_detach.link_fd = link.as_raw_fd() as u32;
    bpf(bpf_cmd::BPF_LINK_DETACH, &mut attr).map(drop)
}

/// `BPF_PROG_QUERY`: how many programs are attached to `cgroup`'s `attach_type` hook directly
/// (not inherited), whoever attached them, through links or not.
pub fn attached_programs(
    cgroup: BorrowedFd<'_>,
    attach_type: CgroupSkbAttachType,
) -> io::Result<u32> {
    let mut attr = zeroed();
    attr.query.__bindgen_anon_1.target_fd = cgroup.as_raw_fd() as u32;
    attr.query.attach_type = bpf_attach_type::from(attach_type) as u32;
    bpf(bpf_cmd::BPF_PROG_QUERY, &mut attr)?;
    // SAFETY: reading the count the kernel wrote back into the query variant.
    Ok(unsafe { attr.query.__bindgen_anon_2.prog_cnt })
}
