//! bpf(2) for what aya 0.14 does not offer: cgroup links created, pinned
//! and inspected by hand (see `datapath::link` for why), and map elements
//! read, written and deleted in batches (a full policy slot is 140k
//! entries: one syscall per entry is most of what writing it costs). The
//! attribute and
//! info layouts are aya-obj's generated kernel bindings, not offsets.

use std::{
    ffi::CString,
    io, mem,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

pub use aya_obj::generated::bpf_attach_type;
use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_link_info, bpf_map_info, bpf_map_type};

/// An all-zero `bpf_attr`: the kernel requires every byte it does not use
/// for the command to be zero.
fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is a union of structs of integers, for which the
    // all-zero bit pattern is valid.
    unsafe { mem::zeroed() }
}

/// # Safety
/// Every pointer `attr` carries for `cmd` (as a u64) must point to memory
/// that is valid for the kernel to read or write as `cmd` specifies, for
/// the duration of the call.
unsafe fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
    // SAFETY: attr is a live, zero-padded bpf_attr of the size passed; the
    // caller vouches for the pointers inside it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            &raw mut *attr,
            mem::size_of::<bpf_attr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A command that returns a new file descriptor.
///
/// # Safety
/// As for [`sys_bpf`].
unsafe fn sys_bpf_fd(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<OwnedFd> {
    // SAFETY: forwarded from the caller.
    let fd = unsafe { sys_bpf(cmd, attr)? };
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("bpf returned no fd"))?;
    // SAFETY: the kernel returned a new file descriptor that nothing else
    // owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// bpf(2) with a command no kernel defines and no attribute: the kernel
/// answers EINVAL, while a seccomp filter that refuses bpf() answers before
/// the kernel looks at the command (EPERM or ENOSYS from the profile). The
/// errno this returns tells the two apart.
pub fn probe_unknown_command() -> io::Error {
    // SAFETY: no attribute pointer (NULL, size 0), so the kernel reads and
    // writes no memory of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0x7fff_ffff as libc::c_long,
            std::ptr::null_mut::<libc::c_void>(),
            0usize,
        )
    };
    if rc < 0 {
        io::Error::last_os_error()
    } else {
        io::Error::other("bpf() accepted an unknown command")
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// BPF_LINK_CREATE: attaches `program` to `target` (a cgroup directory
/// for the cgroup attach types) and returns the link.
pub fn link_create(
    program: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    attach_type: bpf_attach_type,
) -> io::Result<OwnedFd> {
    let mut attr = zeroed_attr();
    attr.link_create.__bindgen_anon_1.prog_fd = program.as_raw_fd() as u32;
    attr.link_create.__bindgen_anon_2.target_fd = target.as_raw_fd() as u32;
    attr.link_create.attach_type = attach_type as u32;
    // SAFETY: BPF_LINK_CREATE with no iterator or cookie data reads no
    // pointers from attr.
    unsafe { sys_bpf_fd(bpf_cmd::BPF_LINK_CREATE, &mut attr) }
}

/// BPF_OBJ_PIN: pins `object` (a map, program or link) at `path` on bpffs.
pub fn obj_pin(object: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let path = c_path(path)?;
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_4.pathname = path.as_ptr() as u64;
    attr.__bindgen_anon_4.bpf_fd = object.as_raw_fd() as u32;
    // SAFETY: pathname points to `path`, a NUL-terminated string that
    // outlives the call.
    unsafe { sys_bpf(bpf_cmd::BPF_OBJ_PIN, &mut attr) }.map(drop)
}

/// BPF_OBJ_GET: opens the object pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let path = c_path(path)?;
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_4.pathname = path.as_ptr() as u64;
    // SAFETY: pathname points to `path`, a NUL-terminated string that
    // outlives the call.
    unsafe { sys_bpf_fd(bpf_cmd::BPF_OBJ_GET, &mut attr) }
}

/// BPF_OBJ_GET_INFO_BY_FD on a cgroup link: the id of the cgroup it is
/// attached to (the cgroup directory's inode on cgroup v2), 0 once that
/// cgroup is gone.
pub fn link_cgroup_id(link: BorrowedFd<'_>) -> io::Result<u64> {
    let info: bpf_link_info = obj_info(link)?;
    // SAFETY: every member of the union is integers, so reading the cgroup
    // member is defined whatever link type the kernel described.
    Ok(unsafe { info.__bindgen_anon_1.cgroup.cgroup_id })
}

/// An info struct of the kernel's that is integers (and arrays and unions
/// of them) throughout.
///
/// # Safety
/// The all-zero bit pattern, and any the kernel writes, must be valid.
unsafe trait ObjInfo: Sized {}
// SAFETY: generated bindings of structs and unions of integers.
unsafe impl ObjInfo for bpf_link_info {}
// SAFETY: as above.
unsafe impl ObjInfo for bpf_map_info {}

/// BPF_OBJ_GET_INFO_BY_FD: what the kernel says of a BPF object.
fn obj_info<T: ObjInfo>(object: BorrowedFd<'_>) -> io::Result<T> {
    // SAFETY: T is integers throughout (ObjInfo), for which the all-zero
    // bit pattern is valid.
    let mut info: T = unsafe { mem::zeroed() };
    let mut attr = zeroed_attr();
    attr.info.bpf_fd = object.as_raw_fd() as u32;
    attr.info.info_len = mem::size_of::<T>() as u32;
    attr.info.info = (&raw mut info) as u64;
    // SAFETY: info points to a live T of info_len bytes, which the kernel
    // fills; nothing else reads or writes it during the call.
    unsafe { sys_bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)? };
    Ok(info)
}

/// BPF_MAP_CREATE for a small map of integers (no BTF): `inner` is the
/// template map of a map-in-map type.
fn map_create(
    map_type: bpf_map_type,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    inner: Option<BorrowedFd<'_>>,
) -> io::Result<OwnedFd> {
    let mut attr = zeroed_attr();
    // SAFETY: writing plain integers into the union member for MAP_CREATE.
    let create = unsafe { &mut attr.__bindgen_anon_1 };
    create.map_type = map_type as u32;
    create.key_size = key_size;
    create.value_size = value_size;
    create.max_entries = max_entries;
    if let Some(inner) = inner {
        create.inner_map_fd = inner.as_raw_fd() as u32;
    }
    // SAFETY: BPF_MAP_CREATE without a name, BTF or token reads no pointers.
    unsafe { sys_bpf_fd(bpf_cmd::BPF_MAP_CREATE, &mut attr) }
}

/// BPF_MAP_UPDATE_ELEM with a u32 key and a u32 value.
fn map_update_u32(map: BorrowedFd<'_>, key: u32, value: u32) -> io::Result<()> {
    let mut attr = zeroed_attr();
    // SAFETY: writing plain integers into the union member for the element
    // commands.
    let elem = unsafe { &mut attr.__bindgen_anon_2 };
    elem.map_fd = map.as_raw_fd() as u32;
    elem.key = (&raw const key) as u64;
    elem.__bindgen_anon_1.value = (&raw const value) as u64;
    // SAFETY: key and value point to live u32s (the map's key and value
    // size) that outlive the call; the kernel only reads them.
    unsafe { sys_bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM, &mut attr) }.map(drop)
}

/// Waits for an RCU grace period: every eBPF program (non-sleepable, as all
/// of the classifier's are) that was running when this was called has
/// returned when it returns.
///
/// The kernel offers no direct call for this, but documents one that
/// implies it: an update of a map-in-map (`BPF_MAP_TYPE_ARRAY_OF_MAPS`)
/// returns only after `synchronize_rcu()` (`maybe_wait_bpf_programs()` in
/// kernel/bpf/syscall.c, since 5.x; the comment there states this very
/// purpose). The map-in-map here is private to the caller and no program
/// reads it.
pub struct RcuBarrier {
    outer: OwnedFd,
    inner: OwnedFd,
}

impl RcuBarrier {
    pub fn new() -> io::Result<Self> {
        use std::os::fd::AsFd as _;
        let inner = map_create(bpf_map_type::BPF_MAP_TYPE_ARRAY, 4, 4, 1, None)?;
        let outer = map_create(
            bpf_map_type::BPF_MAP_TYPE_ARRAY_OF_MAPS,
            4,
            4,
            1,
            Some(inner.as_fd()),
        )?;
        Ok(Self { outer, inner })
    }

    /// Returns after a full RCU grace period.
    pub fn wait(&self) -> io::Result<()> {
        use std::os::fd::AsFd as _;
        map_update_u32(self.outer.as_fd(), 0, self.inner.as_raw_fd() as u32)
    }
}

/// BPF_LINK_UPDATE: replaces the program of `link` with `program` in place
/// (the attachment is never removed). With `expected`, the kernel refuses
/// (EPERM) unless the link still runs that program.
pub fn link_update(
    link: BorrowedFd<'_>,
    program: BorrowedFd<'_>,
    expected: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let mut attr = zeroed_attr();
    attr.link_update.link_fd = link.as_raw_fd() as u32;
    attr.link_update.__bindgen_anon_1.new_prog_fd = program.as_raw_fd() as u32;
    if let Some(old) = expected {
        attr.link_update.flags = aya_obj::generated::BPF_F_REPLACE;
        attr.link_update.__bindgen_anon_2.old_prog_fd = old.as_raw_fd() as u32;
    }
    // SAFETY: BPF_LINK_UPDATE reads no pointers from attr.
    unsafe { sys_bpf(bpf_cmd::BPF_LINK_UPDATE, &mut attr) }.map(drop)
}

/// BPF_PROG_QUERY on a cgroup: the ids of the programs attached to that
/// cgroup itself (not inherited from its ancestors) for `attach_type`.
pub fn prog_query(cgroup: BorrowedFd<'_>, attach_type: bpf_attach_type) -> io::Result<Vec<u32>> {
    // A cgroup holds at most 64 programs per attach type (BPF_CGROUP_MAX_PROGS).
    let mut ids = vec![0u32; 64];
    let mut attr = zeroed_attr();
    attr.query.__bindgen_anon_1.target_fd = cgroup.as_raw_fd() as u32;
    attr.query.attach_type = attach_type as u32;
    attr.query.prog_ids = ids.as_mut_ptr() as u64;
    attr.query.__bindgen_anon_2.prog_cnt = ids.len() as u32;
    // SAFETY: prog_ids points to `ids`, prog_cnt u32s the kernel may write,
    // alive until the call returns.
    unsafe { sys_bpf(bpf_cmd::BPF_PROG_QUERY, &mut attr)? };
    // SAFETY: the kernel wrote back how many ids it filled in.
    let count = unsafe { attr.query.__bindgen_anon_2.prog_cnt } as usize;
    ids.truncate(count.min(64));
    Ok(ids)
}

/// A batch command that failed part way: the kernel had done `done`
/// elements (in order) when it stopped.
#[derive(Debug)]
pub struct BatchError {
    pub error: io::Error,
    pub done: usize,
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (after {} elements)", self.error, self.done)
    }
}

impl std::error::Error for BatchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// BPF_OBJ_GET_INFO_BY_FD on a map: its key and value sizes, which the
/// kernel uses to read and write a batch's buffers.
fn map_sizes(map: BorrowedFd<'_>) -> io::Result<(usize, usize)> {
    let info: bpf_map_info = obj_info(map)?;
    Ok((info.key_size as usize, info.value_size as usize))
}

/// The elements in `keys` (and `values`), each `key_size` (`value_size`)
/// bytes, one after the other; their number, or an error when the
/// lengths disagree or the sizes are not `map`'s own (the kernel reads
/// and writes the buffers by the map's sizes, whatever the caller says).
fn batch_count(
    map: BorrowedFd<'_>,
    keys: &[u8],
    key_size: usize,
    values: Option<(&[u8], usize)>,
) -> Result<u32, BatchError> {
    let invalid = |what: &str| BatchError {
        error: io::Error::new(io::ErrorKind::InvalidInput, what.to_string()),
        done: 0,
    };
    let (map_key, map_value) = map_sizes(map).map_err(|error| BatchError { error, done: 0 })?;
    if key_size != map_key || values.is_some_and(|(_, size)| size != map_value) {
        return Err(invalid("key or value size is not the map's"));
    }
    if key_size == 0 || !keys.len().is_multiple_of(key_size) {
        return Err(invalid("keys are not a whole number of keys"));
    }
    let count = keys.len() / key_size;
    if let Some((values, value_size)) = values {
        if values.len() != count * value_size {
            return Err(invalid("not one value per key"));
        }
    }
    u32::try_from(count).map_err(|_| invalid("too many elements for one batch"))
}

/// BPF_MAP_UPDATE_BATCH: writes every key of `keys` with the value at the
/// same position of `values` (flags 0: created or replaced), in one call.
/// The kernel writes them in order and stops at the first that fails. A
/// map without batch support (an LPM trie before 5.13, or a type without
/// it) answers EINVAL or ENOTSUPP at once, with nothing done.
pub fn map_update_batch(
    map: BorrowedFd<'_>,
    keys: &[u8],
    key_size: usize,
    values: &[u8],
    value_size: usize,
) -> Result<(), BatchError> {
    let count = batch_count(map, keys, key_size, Some((values, value_size)))?;
    if count == 0 {
        return Ok(());
    }
    let mut attr = zeroed_attr();
    attr.batch.map_fd = map.as_raw_fd() as u32;
    attr.batch.keys = keys.as_ptr() as u64;
    attr.batch.values = values.as_ptr() as u64;
    attr.batch.count = count;
    // SAFETY: keys and values point to `count` keys and values of the
    // map's own sizes (checked against its info and the slices' lengths),
    // alive until the call returns; the kernel only reads them.
    let rc = unsafe { sys_bpf(bpf_cmd::BPF_MAP_UPDATE_BATCH, &mut attr) };
    batch_result(rc, &attr, count)
}

/// BPF_MAP_DELETE_BATCH: deletes every key of `keys`, in one call. The
/// kernel stops at the first that fails, a key that is not there included
/// (ENOENT).
pub fn map_delete_batch(
    map: BorrowedFd<'_>,
    keys: &[u8],
    key_size: usize,
) -> Result<(), BatchError> {
    let count = batch_count(map, keys, key_size, None)?;
    if count == 0 {
        return Ok(());
    }
    let mut attr = zeroed_attr();
    attr.batch.map_fd = map.as_raw_fd() as u32;
    attr.batch.keys = keys.as_ptr() as u64;
    attr.batch.count = count;
    // SAFETY: keys points to `count` keys of the map's own key size
    // (checked against its info and the slice's length), alive until the
    // call returns; the kernel only reads them.
    let rc = unsafe { sys_bpf(bpf_cmd::BPF_MAP_DELETE_BATCH, &mut attr) };
    batch_result(rc, &attr, count)
}

/// A batch command's outcome: on failure the kernel has written back in
/// `count` how many elements it had done.
fn batch_result(rc: io::Result<i64>, attr: &bpf_attr, requested: u32) -> Result<(), BatchError> {
    match rc {
        Ok(_) => Ok(()),
        Err(error) => Err(BatchError {
            error,
            done: batch_done(attr, requested),
        }),
    }
}

/// How many elements a failed batch command had done. A kernel that
/// refuses the command outright (unknown, or not for this map type)
/// returns before it writes `count` back, leaving the number requested,
/// which an element's failure never leaves (it stops before that one).
fn batch_done(attr: &bpf_attr, requested: u32) -> usize {
    // SAFETY: reading back an integer of the union member the command used.
    let count = unsafe { attr.batch.count };
    if count == requested {
        0
    } else {
        count as usize
    }
}

/// BPF_MAP_LOOKUP_BATCH: the elements after the position `from` (`None`:
/// from the first), as many as `keys` holds keys of `key_size` bytes,
/// written into `keys` and `values`; the position to go on from into
/// `next` (a key's size). Returns how many were written, and whether the
/// map may hold more after them (`false`: the walk is over).
pub fn map_lookup_batch(
    map: BorrowedFd<'_>,
    from: Option<&[u8]>,
    next: &mut [u8],
    keys: &mut [u8],
    key_size: usize,
    values: &mut [u8],
    value_size: usize,
) -> Result<(usize, bool), BatchError> {
    let count = batch_count(map, keys, key_size, Some((values, value_size)))?;
    if from.is_some_and(|f| f.len() != key_size) || next.len() != key_size {
        return Err(BatchError {
            error: io::Error::new(io::ErrorKind::InvalidInput, "a position is not one key"),
            done: 0,
        });
    }
    let mut attr = zeroed_attr();
    attr.batch.map_fd = map.as_raw_fd() as u32;
    attr.batch.in_batch = from.map_or(0, |f| f.as_ptr() as u64);
    attr.batch.out_batch = next.as_mut_ptr() as u64;
    attr.batch.keys = keys.as_mut_ptr() as u64;
    attr.batch.values = values.as_mut_ptr() as u64;
    attr.batch.count = count;
    // SAFETY: in_batch (when set) points to one key the kernel reads;
    // out_batch to one key, keys and values to `count` keys and values,
    // which it writes; the sizes are the map's own (checked above against
    // its info) and the slices' lengths match them; all alive until the
    // call returns.
    let rc = unsafe { sys_bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr) };
    match rc {
        // The kernel wrote `count` back (it sets 0 before the first
        // element).
        // SAFETY: reading back an integer of the union member the command
        // used.
        Ok(_) => Ok((unsafe { attr.batch.count } as usize, true)),
        // The end of the map: `count` elements before it.
        // SAFETY: as above.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            Ok((unsafe { attr.batch.count } as usize, false))
        }
        Err(error) => Err(BatchError {
            error,
            done: batch_done(&attr, count),
        }),
    }
}
