//! The classifier's kernel side.
//!
//! * `connect`: `cgroup/connect4|6` classify each TCP connect() against the
//!   policy maps and remember the verdict by socket cookie.
//! * `publish`: `sockops` publishes that verdict once the 4-tuple is known,
//!   keyed by the client's local address (what a proxy sees as its peer),
//!   and withdraws it when the connection closes.
//! * `query`: `cgroup/getsockopt` answers a proxy's query on its accepted
//!   socket from the published verdicts.
//!
//! * `learn`: for connections the policy gives no verdict, who sends the
//!   first payload: hooked from `connect` and `publish`.
//!
//! Every program lets the operation through on every path: a failure is
//! counted, never turned into a refused connect.
#![no_std]
#![no_main]
#![expect(
    internal_features,
    reason = "core::intrinsics::atomic_xadd (see maps::atomic_add); built with nightly"
)]
#![feature(core_intrinsics)]

mod addr;
mod connect;
mod learn;
mod maps;
mod publish;
mod query;
mod scope;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program; required by no_std.
    loop {}
}
