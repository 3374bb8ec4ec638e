//! A safe wrapper around `epoll_wait(2)` for the event-loop hook (see
//! `python::hooks::EpollProxy`).

use std::io;

/// Most events one `epoll.poll()` returns when the caller passes `maxevents=-1`, as in CPython
/// (`FD_SETSIZE - 1`).
pub const DEFAULT_MAX_EVENTS: usize = 1023;

/// Waits on the epoll instance `epfd` for up to `timeout_ms` (-1: forever), filling the front
/// of `events`; returns how many entries were filled.
///
/// # Errors
/// The `errno` of a failed call, `EINTR` included (the caller handles signals and retries).
pub fn wait(epfd: i32, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
    let max = i32::try_from(events.len()).unwrap_or(i32::MAX);
    if max == 0 {
        return Ok(0);
    }
    // SAFETY: `events` is a valid, writable slice of at least `max` entries, and the kernel
    // writes at most `max` of them. `epfd` is only an integer to the kernel: a stale one fails
    // with EBADF; it cannot make the call touch memory other than `events`.
    let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), max, timeout_ms) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_descriptor_is_an_error() {
        let mut v = [libc::epoll_event { events: 0, u64: 0 }; 4];
        let e = wait(-1, &mut v, 0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
    }
}
