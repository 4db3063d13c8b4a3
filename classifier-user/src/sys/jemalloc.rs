//! jemalloc's `mallctl(3)`: reading and writing the allocator's settings
//! by name (which ones, and why, is said where the agent sets them up).

use std::ffi::{c_void, CStr};
use std::io;

/// `mallctl(name, NULL, NULL, &value, sizeof(ssize_t))`: writes a signed
/// size setting such as `arenas.dirty_decay_ms`.
pub fn write_ssize(name: &CStr, value: isize) -> io::Result<()> {
    let mut value = value;
    // SAFETY: `name` is NUL-terminated; the new value points to a live
    // `ssize_t` of the length given; no old value is asked for.
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            (&raw mut value).cast::<c_void>(),
            std::mem::size_of::<isize>(),
        )
    };
    result(name, rc)
}

/// `mallctl(name, &value, &len, NULL, 0)`: reads a signed size setting
/// (the allocator's tests read back what `configure` set).
#[cfg(test)]
pub fn read_ssize(name: &CStr) -> io::Result<isize> {
    let mut value: isize = 0;
    let mut len = std::mem::size_of::<isize>();
    // SAFETY: `name` is NUL-terminated; the old value is written to a live
    // `ssize_t` whose length is passed and updated; nothing is written.
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            (&raw mut value).cast::<c_void>(),
            &raw mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    result(name, rc).map(|()| value)
}

/// `mallctl(name, NULL, NULL, NULL, 0)`: an action that takes and returns
/// nothing, such as `arena.<i>.purge`.
pub fn run(name: &CStr) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; every pointer is null and every
    // length 0, which actions without arguments expect.
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    result(name, rc)
}

/// mallctl returns an errno value itself (it does not set `errno`).
fn result(name: &CStr, rc: i32) -> io::Result<()> {
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::from_raw_os_error(rc);
    Err(io::Error::new(
        err.kind(),
        format!("jemalloc's {name:?}: {err}"),
    ))
}
