//! Native core of loopguard: a watchdog thread that notices blocked event loops and captures
//! the blocked thread's Python stack while it is still blocked.
//!
//! The pure-Rust parts ([`watchdog`], [`event`], [`sampler`], [`reader`]) have no pyo3 types,
//! so `cargo test` covers them without an interpreter. [`python`] is the thin pyo3 layer that
//! exposes them as the private module `loopguard._native`.

pub mod callbacks;
pub mod clock;
pub mod context;
pub mod epoll;
pub mod event;
pub mod offload;
pub mod pid;
pub mod reader;
pub mod sampler;
pub mod sched;
pub mod schedstat;
pub mod syscall;
pub mod watchdog;

mod offload_python;
mod python;
