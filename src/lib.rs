//! Native core of loopguard: a watchdog thread that notices blocked event loops and captures
//! the blocked thread's Python stack while it is still blocked.
//!
//! Every module but `python` is pure Rust, with no pyo3 types, so `cargo test` covers it
//! without an interpreter: [`watchdog`], [`event`], [`sampler`], [`reader`], [`deep`] (how deep
//! a stack is read), [`fold`] (a stack's repeats folded), [`policy`] (every timing derived
//! from the threshold), [`offload`] and the rest. `python` is the pyo3 layer that exposes them
//! as the private module `loopguard._native`; nothing outside it calls into it.
//!
//! Linux-only readers (`epoll_wait`, `process_vm_readv`, `/proc/self/task/TID/*`) are compiled
//! under `cfg(linux_full)`, set by `build.rs` on Linux unless the `portable` feature is on.
//! Without it the watchdog, the heartbeat on any selector and the sampler that takes the GIL
//! still work; the GIL-free reader, system call names, run-queue time and per-thread CPU time
//! are absent, and say so ([`NOT_BUILT`]). The watchdog's wake-up hint ([`sched`]) is per
//! system and in every build.

pub mod callbacks;
pub mod clock;
pub mod context;
pub mod deep;
#[cfg(linux_full)]
pub mod epoll;
pub mod event;
pub mod fold;
pub mod holder_wait;
pub mod native_stack;
pub mod offload;
pub mod pid;
pub mod policy;
pub mod quiet;
pub mod reader;
pub mod sampler;
pub mod sched;
pub mod schedstat;
pub mod syscall;
pub mod waited;
pub mod watchdog;

mod python;

/// Why the Linux-only parts are not in this build, in words for a user.
pub const NOT_BUILT: &str = if cfg!(target_os = "linux") {
    "this build of loopguard has only its portable path (built with the `portable` feature)"
} else {
    "it needs Linux (process_vm_readv and /proc)"
};

/// True when this build has the Linux-only parts.
pub const LINUX_FULL: bool = cfg!(linux_full);
