//! The few `bpf(2)` element commands the DNS path needs, issued on a map's file descriptor
//! through a shared reference: the kernel makes every single-element update and lookup atomic,
//! so concurrent DNS answers need no lock of ours (aya's `HashMap::insert` takes `&mut self`).

use std::{
    io,
    mem::size_of,
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
};

use aya::{
    Pod,
    maps::{IterableMap, MapData},
};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
/// Entries asked for per `BPF_MAP_LOOKUP_BATCH` call.
const DUMP_BATCH: usize = 4096;

/// `BPF_NOEXIST` from linux/bpf.h: create the element only if it does not exist yet.
pub const BPF_NOEXIST: u64 = 1;
/// `BPF_ANY`: create or replace.
pub const BPF_ANY: u64 = 0;

/// The raw descriptor of an aya map (valid as long as the map handle lives).
pub fn fd_of<K: Pod, V>(map: &impl IterableMap<K, V>) -> RawFd {
    let data: &MapData = map.map();
    data.fd().as_fd().as_raw_fd()
}

/// `union bpf_attr` for the element commands: map_fd @0, key @8, value @16, flags @24.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `union bpf_attr` for the batch commands: in_batch @0, out_batch @8, keys @16, values @24,
/// count @32, map_fd @36, elem_flags @40, flags @48.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<()> {
    // SAFETY: `attr` is a properly laid out, fully initialised bpf_attr variant of the given size;
    // the pointers inside it point at live buffers of the sizes the map was created with.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            size_of::<A>() as u32,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `BPF_MAP_UPDATE_ELEM`. `K` and `V` must be the map's exact key and value types.
pub fn update<K: Pod, V: Pod>(fd: RawFd, key: &K, value: &V, flags: u64) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd as u32,
        _pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: std::ptr::from_ref(value) as u64,
        flags,
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr)
}

/// `BPF_MAP_LOOKUP_ELEM`: `Ok(None)` when the key is absent. `V` must be plain data.
pub fn lookup<K: Pod, V: Pod + Default>(fd: RawFd, key: &K) -> io::Result<Option<V>> {
    let mut value = V::default();
    let mut attr = ElemAttr {
        map_fd: fd as u32,
        _pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: std::ptr::from_mut(&mut value) as u64,
        flags: 0,
    };
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(()) => Ok(Some(value)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `BPF_MAP_DELETE_ELEM`: whether the key was present.
pub fn delete<K: Pod>(fd: RawFd, key: &K) -> io::Result<bool> {
    let mut attr = ElemAttr {
        map_fd: fd as u32,
        _pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: 0,
        flags: 0,
    };
    match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `BPF_MAP_UPDATE_BATCH` (Linux 5.6+): writes `keys[i] → values[i]` in one system call.
/// Returns how many were written before an error.
pub fn update_batch<K: Pod, V: Pod>(
    fd: RawFd,
    keys: &[K],
    values: &[V],
) -> Result<(), (usize, io::Error)> {
    assert_eq!(keys.len(), values.len());
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: u32::try_from(keys.len()).unwrap_or(u32::MAX),
        map_fd: fd as u32,
        elem_flags: BPF_ANY,
        flags: 0,
    };
    bpf(BPF_MAP_UPDATE_BATCH, &mut attr).map_err(|e| (attr.count as usize, e))
}

/// Every entry of a hash map, `DUMP_BATCH` per `BPF_MAP_LOOKUP_BATCH` call (Linux 5.6+) instead of
/// two system calls per entry (next key, then lookup): a sweep of a million hosts takes a few
/// hundred calls. `K` and `V` must be the map's exact key and value types. Entries added or
/// removed during the dump may or may not be seen, as with any iteration of a live map.
pub fn dump<K: Pod + Default, V: Pod + Default>(fd: RawFd) -> io::Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    let mut count = DUMP_BATCH;
    let mut keys = vec![K::default(); count];
    let mut values = vec![V::default(); count];
    // Hash maps resume from a bucket index (u32) the kernel hands back.
    let mut token = 0u32;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                std::ptr::from_ref(&token) as u64
            },
            out_batch: std::ptr::from_mut(&mut token) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: count as u32,
            map_fd: fd as u32,
            elem_flags: 0,
            flags: 0,
        };
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let got = (attr.count as usize).min(count);
        match result {
            Ok(()) => {}
            // The end of the map; the last entries came with it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                out.extend(
                    keys[..got]
                        .iter()
                        .copied()
                        .zip(values[..got].iter().copied()),
                );
                return Ok(out);
            }
            // One bucket holds more entries than fit: ask again with room for more.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && got == 0 => {
                count *= 2;
                keys.resize(count, K::default());
                values.resize(count, V::default());
                continue;
            }
            Err(e) => return Err(e),
        }
        out.extend(
            keys[..got]
                .iter()
                .copied()
                .zip(values[..got].iter().copied()),
        );
        first = false;
    }
}
