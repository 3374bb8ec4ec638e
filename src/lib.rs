//! Native core of loopguard: a watchdog thread that notices blocked event loops and captures
//! the blocked thread's Python stack while it is still blocked.
//!
//! Every module but `python` is pure Rust, with no pyo3 types, so `cargo test` covers it
//! without an interpreter: [`watchdog`], [`event`], [`sampler`], [`reader`], [`policy`] (every
//! timing derived from the threshold), [`offload`] and the rest. `python` is the pyo3 layer
//! that exposes them as the private module `loopguard._native`; nothing outside it calls into
//! it.

pub mod callbacks;
pub mod clock;
pub mod context;
pub mod epoll;
pub mod event;
pub mod native_stack;
pub mod offload;
pub mod pid;
pub mod policy;
pub mod reader;
pub mod sampler;
pub mod sched;
pub mod schedstat;
pub mod syscall;
pub mod watchdog;

mod python;
