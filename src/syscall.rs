//! What a thread of this process is doing in the kernel, from `/proc/self/task/TID/syscall`.
//!
//! The kernel reports, for a thread blocked in a system call, the call's number and arguments;
//! for a thread on a CPU, `running`. Reading it needs no signal, no ptrace and no lock of ours,
//! and the thread is not disturbed. The watchdog uses it to tell apart two blocks that look the
//! same from the GIL alone — the loop thread waiting to get the GIL back while another thread
//! holds it (starvation: a `futex` wait on the GIL's own condition variable or mutex), and the
//! loop thread in a blocking call of its own (a sleep, a socket read) while some other thread
//! happens to hold the GIL — and to name the call a GIL-releasing block is spent in.

use std::ops::Range;

/// A thread's state as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelState {
    /// On a CPU, or runnable: user code (Python or C), not a system call.
    Running,
    /// Blocked in the system call `nr` with these arguments.
    Syscall { nr: i64, args: [u64; 6] },
    /// Blocked, but not in a system call (a page fault, a stop).
    Blocked,
}

impl KernelState {
    /// Parses the contents of `/proc/.../syscall`: `running`, `-1 SP PC`, or
    /// `NR ARG1 .. ARG6 SP PC` (arguments in hexadecimal).
    pub fn parse(text: &str) -> Option<KernelState> {
        let mut words = text.split_ascii_whitespace();
        let first = words.next()?;
        if first == "running" {
            return Some(KernelState::Running);
        }
        let nr: i64 = first.parse().ok()?;
        if nr < 0 {
            return Some(KernelState::Blocked);
        }
        let mut args = [0u64; 6];
        for arg in &mut args {
            let word = words.next()?;
            *arg = u64::from_str_radix(word.strip_prefix("0x")?, 16).ok()?;
        }
        Some(KernelState::Syscall { nr, args })
    }

    /// Reads the state of the thread `tid` (a kernel thread id) of this process. `None` when the
    /// file cannot be read (the thread has exited, `/proc` is not mounted, or the kernel was built
    /// without it).
    pub fn of_thread(tid: i64) -> Option<KernelState> {
        if tid <= 0 || !crate::LINUX_FULL {
            return None;
        }
        let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).ok()?;
        KernelState::parse(&text)
    }

    /// True when the thread waits on a futex whose address lies in `span`: the GIL's state,
    /// whose condition variables and mutexes are what a thread waiting for the GIL sleeps on.
    pub fn waits_on(&self, span: &Range<usize>) -> bool {
        match *self {
            KernelState::Syscall { nr, args } if nr == FUTEX => {
                usize::try_from(args[0]).is_ok_and(|addr| span.contains(&addr))
            }
            _ => false,
        }
    }

    /// The system call's name for a report (`recvfrom`, `clock_nanosleep`, ...), or its number
    /// for one outside the common blocking calls. `None` when not in a system call.
    pub fn syscall_name(&self) -> Option<String> {
        match *self {
            KernelState::Syscall { nr, .. } => {
                Some(NAMES.iter().find(|(n, _)| *n == nr).map_or_else(
                    || format!("system call {nr}"),
                    |(_, name)| (*name).to_owned(),
                ))
            }
            _ => None,
        }
    }
}

/// The number of `futex` (none off Linux, where no state is read).
#[cfg(target_os = "linux")]
const FUTEX: i64 = libc::SYS_futex;
#[cfg(not(target_os = "linux"))]
const FUTEX: i64 = -1;

/// Off Linux no call is named (nor read: see [`KernelState::of_thread`]).
#[cfg(not(target_os = "linux"))]
const NAMES: &[(i64, &str)] = &[];

/// The blocking system calls worth naming, by this architecture's numbers (from `libc`).
#[cfg(target_os = "linux")]
const NAMES: &[(i64, &str)] = &[
    (libc::SYS_read, "read"),
    (libc::SYS_write, "write"),
    (libc::SYS_readv, "readv"),
    (libc::SYS_writev, "writev"),
    (libc::SYS_pread64, "pread64"),
    (libc::SYS_pwrite64, "pwrite64"),
    (libc::SYS_openat, "openat"),
    (libc::SYS_close, "close"),
    (libc::SYS_fsync, "fsync"),
    (libc::SYS_fdatasync, "fdatasync"),
    (libc::SYS_flock, "flock"),
    (libc::SYS_fcntl, "fcntl"),
    (libc::SYS_ioctl, "ioctl"),
    (libc::SYS_sendfile, "sendfile"),
    (libc::SYS_copy_file_range, "copy_file_range"),
    (libc::SYS_socket, "socket"),
    (libc::SYS_connect, "connect"),
    (libc::SYS_accept, "accept"),
    (libc::SYS_accept4, "accept4"),
    (libc::SYS_sendto, "sendto"),
    (libc::SYS_recvfrom, "recvfrom"),
    (libc::SYS_sendmsg, "sendmsg"),
    (libc::SYS_recvmsg, "recvmsg"),
    (libc::SYS_pselect6, "pselect6"),
    (libc::SYS_ppoll, "ppoll"),
    (libc::SYS_epoll_pwait, "epoll_pwait"),
    (libc::SYS_nanosleep, "nanosleep"),
    (libc::SYS_clock_nanosleep, "clock_nanosleep"),
    (libc::SYS_futex, "futex"),
    (libc::SYS_wait4, "wait4"),
    (libc::SYS_waitid, "waitid"),
    // Starting a process: `subprocess` and `os.posix_spawn` wait in these until the child
    // has exec'd (a loaded machine can take that long).
    (libc::SYS_clone, "clone"),
    (libc::SYS_clone3, "clone3"),
    (libc::SYS_execve, "execve"),
    (libc::SYS_getrandom, "getrandom"),
    (libc::SYS_rt_sigtimedwait, "rt_sigtimedwait"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_open, "open"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_select, "select"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_poll, "poll"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_epoll_wait, "epoll_wait"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_pause, "pause"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_vfork, "vfork"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_fork, "fork"),
];

#[cfg(all(test, linux_full))]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_shapes() {
        assert_eq!(KernelState::parse("running\n"), Some(KernelState::Running));
        assert_eq!(
            KernelState::parse("-1 0x7ffc991e69d8 0x7fb9c022b2ad\n"),
            Some(KernelState::Blocked)
        );
        let text = format!(
            "{} 0x7f00000010 0x80 0x0 0x7ffd0 0x0 0xffffffff 0x7ffc991e69d8 0x7fb9c022b2ad\n",
            libc::SYS_futex
        );
        assert_eq!(
            KernelState::parse(&text),
            Some(KernelState::Syscall {
                nr: libc::SYS_futex,
                args: [0x7f00000010, 0x80, 0, 0x7ffd0, 0, 0xffffffff],
            })
        );
        assert_eq!(KernelState::parse(""), None);
        assert_eq!(KernelState::parse("12 0x1 0x2"), None);
        assert_eq!(KernelState::parse("12 1 2 3 4 5 6 7 8"), None);
    }

    #[test]
    fn a_futex_wait_is_on_the_gil_only_inside_its_span() {
        let wait = |addr: u64| KernelState::Syscall {
            nr: libc::SYS_futex,
            args: [addr, 0, 0, 0, 0, 0],
        };
        let span = 0x1000..0x10d0;
        assert!(wait(0x1000).waits_on(&span));
        assert!(wait(0x1030).waits_on(&span));
        assert!(!wait(0x10d0).waits_on(&span));
        assert!(!wait(0x0ff8).waits_on(&span));
        let sleep = KernelState::Syscall {
            nr: libc::SYS_clock_nanosleep,
            args: [0x1000, 0, 0, 0, 0, 0],
        };
        assert!(!sleep.waits_on(&span));
        assert!(!KernelState::Running.waits_on(&span));
    }

    #[test]
    fn names_the_common_calls_and_numbers_the_rest() {
        let call = |nr| KernelState::Syscall { nr, args: [0; 6] };
        assert_eq!(
            call(libc::SYS_recvfrom).syscall_name().as_deref(),
            Some("recvfrom")
        );
        assert_eq!(
            call(libc::SYS_clone3).syscall_name().as_deref(),
            Some("clone3")
        );
        #[cfg(target_arch = "x86_64")]
        assert_eq!(call(58).syscall_name().as_deref(), Some("vfork"));
        assert_eq!(
            call(100_000).syscall_name().as_deref(),
            Some("system call 100000")
        );
        assert_eq!(KernelState::Running.syscall_name(), None);
    }

    #[test]
    fn reads_a_sleeping_thread_of_this_process() {
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::gettid() }).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(400));
        });
        let tid = rx.recv().unwrap();
        let mut seen = None;
        for _ in 0..100 {
            std::thread::sleep(std::time::Duration::from_millis(2));
            seen = KernelState::of_thread(i64::from(tid)).and_then(|s| s.syscall_name());
            if seen.is_some() {
                break;
            }
        }
        t.join().unwrap();
        let name = seen.expect("the sleeping thread was seen in a system call");
        assert!(
            name == "clock_nanosleep" || name == "nanosleep",
            "unexpected {name}"
        );
        assert_eq!(KernelState::of_thread(0), None);
    }
}
