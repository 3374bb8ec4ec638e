//! What a thread's blocking system call waits on: the socket, file, child process or lock.
//!
//! The kernel's view of a thread ([`KernelState`]) gives the call and its arguments. For a call
//! on a file descriptor the first argument is the descriptor, and `/proc/self/fd/N` says what
//! it is: a path (a file, a FIFO, a device) or `socket:[INODE]`. The descriptor is our own, so
//! the socket itself tells its type and addresses (`getsockopt`, `getsockname`, `getpeername`,
//! checked to still be that inode afterwards); the protocol tables
//! `/proc/net/{tcp,tcp6,udp,udp6,unix}`, which have it under that inode, are the fallback:
//! reading one walks the kernel's whole connection hash table (milliseconds, whatever the
//! number of sockets), where asking the socket takes microseconds. `wait4`/`waitid` name the child
//! they wait for (or wait for any, which is the only child more often than not); `futex` is a
//! lock or condition; the sleeps sleep; `poll`/`select`/`epoll_wait` wait on a set of
//! descriptors, described as the one they hold or counted.
//!
//! The watchdog asks this only for a sample of a confirmed block, after the stack is in hand,
//! and only when the call or its descriptor changed since the block's previous sample
//! ([`Waited::describe`]): a few `readlink`/`stat`/small reads or socket calls (a table, when
//! read, is scanned line by line and only up to the matching line). Nothing here takes a lock
//! the loop thread could need.
//!
//! The parsers are pure functions over the text `/proc` gives, tested on sample contents; the
//! reading is apart. Linux only (`cfg(linux_full)`): elsewhere [`Waited::describe`] says
//! nothing.

use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::syscall::KernelState;

/// What `/proc/self/fd/N` links to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FdLink {
    /// `socket:[INODE]`.
    Socket(u64),
    /// `pipe:[INODE]`: an anonymous pipe.
    Pipe(u64),
    /// `anon_inode:[eventpoll]`, `anon_inode:[pidfd]`, `anon_inode:inotify`: the kind.
    Anon(String),
    /// A path in the file system; `deleted` when the file was unlinked since it was opened.
    Path { path: String, deleted: bool },
    /// Anything else (`net:[...]`, a kernel object): the link as it is.
    Other(String),
}

impl FdLink {
    /// Parses the target of a `/proc/self/fd/N` link.
    pub fn parse(link: &str) -> FdLink {
        let bracketed = |prefix: &str| {
            link.strip_prefix(prefix)
                .and_then(|r| r.strip_prefix('['))
                .and_then(|r| r.strip_suffix(']'))
        };
        if let Some(inode) = bracketed("socket:").and_then(|s| s.parse().ok()) {
            return FdLink::Socket(inode);
        }
        if let Some(inode) = bracketed("pipe:").and_then(|s| s.parse().ok()) {
            return FdLink::Pipe(inode);
        }
        if let Some(kind) = link.strip_prefix("anon_inode:") {
            let kind = kind.trim_start_matches('[').trim_end_matches(']');
            return FdLink::Anon(kind.to_owned());
        }
        if link.starts_with('/') {
            return match link.strip_suffix(" (deleted)") {
                Some(path) => FdLink::Path {
                    path: path.to_owned(),
                    deleted: true,
                },
                None => FdLink::Path {
                    path: link.to_owned(),
                    deleted: false,
                },
            };
        }
        FdLink::Other(link.to_owned())
    }
}

/// The kind of an open file, from its mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Regular,
    Directory,
    Fifo,
    CharDevice,
    BlockDevice,
    Other,
}

/// A path and its kind, as a report names them: `/tmp/x.fifo (FIFO)`, `/dev/ttyS0 (character
/// device)`, `/var/db/app.sqlite` for a regular file.
pub fn describe_path(path: &str, kind: FileKind, deleted: bool) -> String {
    let mut notes = Vec::new();
    match kind {
        FileKind::Fifo => notes.push("FIFO"),
        FileKind::CharDevice => notes.push("character device"),
        FileKind::BlockDevice => notes.push("block device"),
        FileKind::Directory => notes.push("directory"),
        FileKind::Regular | FileKind::Other => {}
    }
    if deleted {
        notes.push("deleted");
    }
    if notes.is_empty() {
        path.to_owned()
    } else {
        format!("{path} ({})", notes.join(", "))
    }
}

/// The Internet protocols whose tables are searched, in the order they are searched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inet {
    Tcp,
    Tcp6,
    Udp,
    Udp6,
}

impl Inet {
    pub const ALL: [Inet; 4] = [Inet::Tcp, Inet::Tcp6, Inet::Udp, Inet::Udp6];

    pub fn table(self) -> &'static str {
        match self {
            Inet::Tcp => "/proc/self/net/tcp",
            Inet::Tcp6 => "/proc/self/net/tcp6",
            Inet::Udp => "/proc/self/net/udp",
            Inet::Udp6 => "/proc/self/net/udp6",
        }
    }

    pub fn v6(self) -> bool {
        matches!(self, Inet::Tcp6 | Inet::Udp6)
    }

    pub fn tcp(self) -> bool {
        matches!(self, Inet::Tcp | Inet::Tcp6)
    }
}

/// One line of `/proc/net/tcp*` or `/proc/net/udp*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InetSocket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The kernel's state number (TCP: 0x0A is LISTEN; UDP: 0x01 is connected).
    pub state: u8,
    pub inode: u64,
}

/// The TCP state `LISTEN`.
const TCP_LISTEN: u8 = 0x0A;

impl InetSocket {
    /// Parses a line of a table (`sl local_address rem_address st ... uid timeout inode ...`);
    /// addresses are the kernel's hexadecimal words (each 32-bit word in host byte order),
    /// ports big-endian hexadecimal numbers. `None` for the header and malformed lines.
    pub fn parse(line: &str, v6: bool) -> Option<InetSocket> {
        let mut words = line.split_ascii_whitespace();
        words.next()?.strip_suffix(':')?;
        let local = parse_addr(words.next()?, v6)?;
        let remote = parse_addr(words.next()?, v6)?;
        let state = u8::from_str_radix(words.next()?, 16).ok()?;
        let inode = words.nth(5)?.parse().ok()?;
        Some(InetSocket {
            local,
            remote,
            state,
            inode,
        })
    }

    /// `TCP 127.0.0.1:51234 → 127.0.0.1:8080`, `TCP 0.0.0.0:8080 (listening)`, `UDP
    /// [::1]:5353`. An IPv4-mapped IPv6 address is shown as the IPv4 address it is.
    pub fn describe(&self, tcp: bool) -> String {
        let proto = if tcp { "TCP" } else { "UDP" };
        let local = show_addr(self.local);
        if tcp && self.state == TCP_LISTEN {
            return format!("{proto} {local} (listening)");
        }
        if self.remote.port() == 0 && self.remote.ip().is_unspecified() {
            return format!("{proto} {local}");
        }
        format!("{proto} {local} → {}", show_addr(self.remote))
    }
}

/// The inode column of a table line (the tenth word), without parsing the rest.
fn inet_inode(line: &str) -> Option<u64> {
    line.split_ascii_whitespace().nth(9)?.parse().ok()
}

fn parse_addr(word: &str, v6: bool) -> Option<SocketAddr> {
    let (ip, port) = word.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = if v6 {
        if ip.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (i, chunk) in bytes.chunks_mut(4).enumerate() {
            let word = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(bytes))
    } else {
        if ip.len() != 8 {
            return None;
        }
        let word = u32::from_str_radix(ip, 16).ok()?;
        IpAddr::V4(Ipv4Addr::from(word.to_ne_bytes()))
    };
    Some(SocketAddr::new(ip, port))
}

fn show_addr(addr: SocketAddr) -> String {
    match addr.ip() {
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()).to_string(),
            None => addr.to_string(),
        },
        IpAddr::V4(_) => addr.to_string(),
    }
}

/// Most lines read from one table: a bound on the work for a process with a huge table (the
/// search stops at its match before that in any real case).
pub const MAX_TABLE_LINES: usize = 1_000_000;

/// Searches a table for the socket `inode`, line by line, stopping at the match; only the
/// matching line is fully parsed.
pub fn find_inet<R: BufRead>(mut table: R, inode: u64, v6: bool) -> Option<InetSocket> {
    let mut line = String::new();
    for _ in 0..MAX_TABLE_LINES {
        line.clear();
        if table.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if inet_inode(&line) == Some(inode) {
            return InetSocket::parse(&line, v6);
        }
    }
    None
}

/// One line of `/proc/net/unix`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnixSocket {
    /// 1 stream, 2 datagram, 5 sequenced packets.
    pub kind: u16,
    pub inode: u64,
    /// The bound name (`@name` for an abstract one); `None` for an unnamed socket.
    pub path: Option<String>,
}

impl UnixSocket {
    /// Parses `Num RefCount Protocol Flags Type St Inode [Path]`.
    pub fn parse(line: &str) -> Option<UnixSocket> {
        let mut rest = line.trim_end_matches('\n');
        let mut words = Vec::with_capacity(7);
        for _ in 0..7 {
            rest = rest.trim_start_matches(' ');
            let end = rest.find(' ').unwrap_or(rest.len());
            words.push(&rest[..end]);
            rest = &rest[end..];
        }
        words[0].strip_suffix(':')?;
        let kind = u16::from_str_radix(words[4], 16).ok()?;
        let inode = words[6].parse().ok()?;
        let path = rest.trim_start_matches(' ');
        Some(UnixSocket {
            kind,
            inode,
            path: (!path.is_empty()).then(|| path.to_owned()),
        })
    }

    /// `Unix stream socket /run/app.sock`, `Unix stream socket → /run/app.sock` (an unnamed
    /// socket connected to a named one), `Unix datagram socket (unnamed)`.
    pub fn describe(&self, peer: Option<&str>) -> String {
        let kind = match self.kind {
            1 => "stream",
            2 => "datagram",
            5 => "seqpacket",
            _ => "",
        };
        let head = if kind.is_empty() {
            "Unix socket".to_owned()
        } else {
            format!("Unix {kind} socket")
        };
        match (&self.path, peer) {
            (Some(p), _) => format!("{head} {p}"),
            (None, Some(peer)) => format!("{head} → {peer}"),
            (None, None) => format!("{head} (unnamed)"),
        }
    }
}

/// Searches `/proc/net/unix` contents for the socket `inode`, stopping at the match.
pub fn find_unix<R: BufRead>(mut table: R, inode: u64) -> Option<UnixSocket> {
    let mut line = String::new();
    for _ in 0..MAX_TABLE_LINES {
        line.clear();
        if table.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line
            .split_ascii_whitespace()
            .nth(6)
            .and_then(|w| w.parse().ok())
            == Some(inode)
        {
            return UnixSocket::parse(&line);
        }
    }
    None
}

/// A command line from `/proc/PID/cmdline` (arguments separated by NULs), shortened for a
/// report: the program's file name and its arguments, cut at [`CMDLINE_MAX`] characters.
pub fn format_cmdline(raw: &[u8]) -> Option<String> {
    let mut args = raw
        .split(|&b| b == 0)
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>();
    while args.last().is_some_and(|a| a.is_empty()) {
        args.pop();
    }
    let first = args.first()?;
    let program = first.rsplit('/').next().unwrap_or(first).to_owned();
    let mut text = program;
    for a in &args[1..] {
        text.push(' ');
        text.push_str(a);
    }
    if text.chars().count() > CMDLINE_MAX {
        text = text.chars().take(CMDLINE_MAX - 1).collect::<String>() + "…";
    }
    Some(text)
}

/// Longest command line shown, in characters.
pub const CMDLINE_MAX: usize = 60;

/// The descriptors an epoll instance watches, from its `/proc/self/fdinfo/N` (`tfd: 5 events:
/// 19 data: ...` lines).
pub fn epoll_targets(fdinfo: &str) -> Vec<i32> {
    fdinfo
        .lines()
        .filter_map(|l| l.strip_prefix("tfd:"))
        .filter_map(|r| r.split_ascii_whitespace().next()?.parse().ok())
        .collect()
}

/// The process a pidfd refers to, from its `/proc/self/fdinfo/N` (`Pid:\t1234`).
pub fn pidfd_pid(fdinfo: &str) -> Option<i32> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|r| r.trim().parse().ok())
        .filter(|&p| p > 0)
}

/// The child pids listed in `/proc/self/task/TID/children` contents.
pub fn parse_children(text: &str) -> Vec<i32> {
    text.split_ascii_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

/// The descriptors set in an `fd_set` bitmap of `nfds` bits (`select`'s sets), as read from
/// memory: bit `n` of the bitmap (in 64-bit words, host order) is descriptor `n`.
pub fn fd_set_members(bitmap: &[u8], nfds: usize) -> Vec<i32> {
    let mut fds = Vec::new();
    for (w, word) in bitmap.chunks_exact(8).enumerate() {
        let bits = u64::from_ne_bytes(word.try_into().expect("8 bytes"));
        for b in 0..64 {
            let fd = w * 64 + b;
            if fd < nfds && bits & (1 << b) != 0 {
                fds.push(fd as i32);
            }
        }
    }
    fds
}

/// What a wait for a child process waits for, from `wait4`'s or `waitid`'s arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitFor {
    /// The child with this pid.
    Pid(i32),
    /// Any child.
    AnyChild,
    /// Any child in this process group (0: the caller's).
    Group(i32),
    /// The process of this pidfd.
    PidFd(i32),
}

/// `waitid`'s `idtype` values.
const P_ALL: u64 = 0;
const P_PID: u64 = 1;
const P_PGID: u64 = 2;
const P_PIDFD: u64 = 3;

impl WaitFor {
    /// From `wait4(pid, ...)`: `pid > 0` a child, -1 any, 0 the caller's group, `< -1` group
    /// `-pid`.
    pub fn of_wait4(pid_arg: u64) -> WaitFor {
        // The argument is a C int, sign-extended or not: its low 32 bits are the value.
        let pid = pid_arg as u32 as i32;
        match pid {
            p if p > 0 => WaitFor::Pid(p),
            -1 => WaitFor::AnyChild,
            p => WaitFor::Group(p.saturating_neg()),
        }
    }

    /// From `waitid(idtype, id, ...)`.
    pub fn of_waitid(idtype: u64, id: u64) -> Option<WaitFor> {
        let id = id as u32 as i32;
        match idtype {
            P_ALL => Some(WaitFor::AnyChild),
            P_PID => Some(WaitFor::Pid(id)),
            P_PGID => Some(WaitFor::Group(id)),
            P_PIDFD => Some(WaitFor::PidFd(id)),
            _ => None,
        }
    }
}

/// `pid 1234 (sleep 1)`, or `pid 1234` when its command line cannot be read.
pub fn describe_process(pid: i32, cmdline: Option<&str>) -> String {
    match cmdline {
        Some(c) => format!("pid {pid} ({c})"),
        None => format!("pid {pid}"),
    }
}

/// The description of a futex wait.
pub const FUTEX_TEXT: &str = "a lock or condition";
/// The description of a sleep.
pub const SLEEP_TEXT: &str = "sleeping";

/// What a blocked call is about, before anything is read: the descriptor, the child, or a
/// text known from the call alone. The cheap first step of [`Waited::describe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject {
    /// A call on this descriptor.
    Fd(i32),
    /// `poll`/`ppoll` on `nfds` descriptors at this address.
    Poll { addr: u64, nfds: u64 },
    /// `select`/`pselect6` with `nfds` and its three sets' addresses.
    Select { nfds: u64, sets: [u64; 3] },
    /// `epoll_wait` and kin on this epoll descriptor.
    Epoll(i32),
    /// A wait for a child.
    Wait(WaitFor),
    /// A path given by address (`openat`, `open`).
    PathAt(u64),
    /// Known from the call alone.
    Text(&'static str),
}

/// The subject of a blocked call, from its number and arguments; `None` for calls whose
/// object is not named.
#[cfg(target_os = "linux")]
pub fn subject(nr: i64, args: &[u64; 6]) -> Option<Subject> {
    let fd = args[0] as u32 as i32;
    #[cfg(target_arch = "x86_64")]
    {
        match nr {
            libc::SYS_poll => {
                return Some(Subject::Poll {
                    addr: args[0],
                    nfds: args[1],
                })
            }
            libc::SYS_select => {
                return Some(Subject::Select {
                    nfds: args[0],
                    sets: [args[1], args[2], args[3]],
                })
            }
            libc::SYS_epoll_wait => return Some(Subject::Epoll(fd)),
            libc::SYS_open => return Some(Subject::PathAt(args[0])),
            libc::SYS_pause => return Some(Subject::Text("waiting for a signal")),
            _ => {}
        }
    }
    Some(match nr {
        libc::SYS_read
        | libc::SYS_write
        | libc::SYS_readv
        | libc::SYS_writev
        | libc::SYS_pread64
        | libc::SYS_pwrite64
        | libc::SYS_preadv
        | libc::SYS_pwritev
        | libc::SYS_fsync
        | libc::SYS_fdatasync
        | libc::SYS_flock
        | libc::SYS_fcntl
        | libc::SYS_ioctl
        | libc::SYS_sendfile
        | libc::SYS_copy_file_range
        | libc::SYS_connect
        | libc::SYS_accept
        | libc::SYS_accept4
        | libc::SYS_sendto
        | libc::SYS_recvfrom
        | libc::SYS_sendmsg
        | libc::SYS_recvmsg
        | libc::SYS_sendmmsg
        | libc::SYS_recvmmsg
        | libc::SYS_close
        | libc::SYS_ftruncate
        | libc::SYS_fallocate
        | libc::SYS_splice => Subject::Fd(fd),
        libc::SYS_ppoll => Subject::Poll {
            addr: args[0],
            nfds: args[1],
        },
        libc::SYS_pselect6 => Subject::Select {
            nfds: args[0],
            sets: [args[1], args[2], args[3]],
        },
        libc::SYS_epoll_pwait | libc::SYS_epoll_pwait2 => Subject::Epoll(fd),
        libc::SYS_wait4 => Subject::Wait(WaitFor::of_wait4(args[0])),
        libc::SYS_waitid => Subject::Wait(WaitFor::of_waitid(args[0], args[1])?),
        libc::SYS_openat => Subject::PathAt(args[1]),
        libc::SYS_futex => Subject::Text(FUTEX_TEXT),
        libc::SYS_nanosleep | libc::SYS_clock_nanosleep => Subject::Text(SLEEP_TEXT),
        _ => return None,
    })
}

#[cfg(not(target_os = "linux"))]
pub fn subject(_nr: i64, _args: &[u64; 6]) -> Option<Subject> {
    None
}

/// The key under which a block's last description is kept: the call, its arguments and what
/// its descriptor linked to, so that a descriptor closed and reused for another file between
/// two samples is described afresh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    nr: i64,
    args: [u64; 6],
    link: Option<String>,
}

/// A block's last description, reused while its [`Key`] stays the same.
pub type Cache = Option<(Key, Option<String>)>;

/// Describes what blocked calls wait on; owned by the watchdog thread.
pub struct Waited {
    mem: Option<crate::reader::mem::Memory>,
}

impl Default for Waited {
    fn default() -> Self {
        Waited::new()
    }
}

/// Most descriptors a `select` bitmap is read for.
#[cfg(linux_full)]
const SELECT_MAX_FDS: u64 = 1024;
/// Longest path read from memory for `open`/`openat`.
#[cfg(linux_full)]
const PATH_MAX_READ: usize = 4096;

impl Waited {
    pub fn new() -> Waited {
        Waited {
            mem: if crate::LINUX_FULL {
                crate::reader::mem::Memory::new().ok()
            } else {
                None
            },
        }
    }

    /// What `state` waits on, for a report (`TCP 127.0.0.1:51234 → 127.0.0.1:8080`, `/tmp/x
    /// (FIFO)`, `pid 1234 (sleep 1)`, `a lock or condition`, `sleeping`, `3 fds`); `None`
    /// when not in a system call, for calls whose object is not named, and off Linux. Reuses
    /// `cache` (the block's previous answer) when the call and its descriptor are the same.
    pub fn describe(&self, state: Option<KernelState>, cache: &mut Cache) -> Option<String> {
        #[cfg(linux_full)]
        {
            let Some(KernelState::Syscall { nr, args }) = state else {
                return None;
            };
            let subject = subject(nr, &args)?;
            let link = match subject {
                Subject::Fd(fd) | Subject::Epoll(fd) => read_link(fd),
                _ => None,
            };
            let key = Key { nr, args, link };
            if let Some((k, text)) = cache.as_ref() {
                if *k == key {
                    return text.clone();
                }
            }
            let text = self.resolve(subject, key.link.as_deref());
            *cache = Some((key, text.clone()));
            text
        }
        #[cfg(not(linux_full))]
        {
            let _ = (state, cache, &self.mem);
            None
        }
    }
}

#[cfg(linux_full)]
impl Waited {
    fn resolve(&self, subject: Subject, link: Option<&str>) -> Option<String> {
        match subject {
            Subject::Text(t) => Some(t.to_owned()),
            Subject::Fd(fd) => describe_fd(fd, link),
            Subject::Wait(w) => Some(describe_wait(w)),
            Subject::PathAt(addr) => self.read_c_string(addr),
            Subject::Epoll(fd) => {
                let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
                self.several(&epoll_targets(&info))
            }
            Subject::Poll { addr, nfds } => {
                if nfds == 0 {
                    return Some(SLEEP_TEXT.to_owned());
                }
                if nfds > 1 {
                    return Some(format!("{nfds} fds"));
                }
                // `struct pollfd { int fd; short events; short revents; }`.
                let mut b = [0u8; 4];
                self.mem.as_ref()?.read_bytes(addr as usize, &mut b).ok()?;
                self.several(&[i32::from_ne_bytes(b)])
            }
            Subject::Select { nfds, sets } => {
                let nfds = nfds.min(SELECT_MAX_FDS) as usize;
                let mut fds = Vec::new();
                let mut bitmap = vec![0u8; nfds.div_ceil(64) * 8];
                for addr in sets.into_iter().filter(|&a| a != 0) {
                    self.mem
                        .as_ref()?
                        .read_bytes(addr as usize, &mut bitmap)
                        .ok()?;
                    fds.extend(fd_set_members(&bitmap, nfds));
                }
                fds.sort_unstable();
                fds.dedup();
                if fds.is_empty() {
                    return Some(SLEEP_TEXT.to_owned());
                }
                self.several(&fds)
            }
        }
    }

    /// One descriptor described, or several counted.
    fn several(&self, fds: &[i32]) -> Option<String> {
        match fds {
            [] => None,
            [fd] => describe_fd(*fd, read_link(*fd).as_deref()),
            _ => Some(format!("{} fds", fds.len())),
        }
    }

    fn read_c_string(&self, addr: u64) -> Option<String> {
        let mem = self.mem.as_ref()?;
        let mut out = Vec::new();
        let mut chunk = [0u8; 256];
        let mut at = addr as usize;
        while out.len() < PATH_MAX_READ {
            // A chunk may cross into an unmapped page: read up to the page's end first.
            let room = 4096 - at % 4096;
            let n = room.min(chunk.len());
            mem.read_bytes(at, &mut chunk[..n]).ok()?;
            if let Some(end) = chunk[..n].iter().position(|&b| b == 0) {
                out.extend_from_slice(&chunk[..end]);
                return (!out.is_empty()).then(|| String::from_utf8_lossy(&out).into_owned());
            }
            out.extend_from_slice(&chunk[..n]);
            at += n;
        }
        None
    }
}

#[cfg(linux_full)]
fn read_link(fd: i32) -> Option<String> {
    if fd < 0 {
        return None;
    }
    let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
    Some(target.to_string_lossy().into_owned())
}

#[cfg(linux_full)]
/// Describes descriptor `fd`, whose `/proc/self/fd` link is `link`.
fn describe_fd(fd: i32, link: Option<&str>) -> Option<String> {
    match FdLink::parse(link?) {
        FdLink::Socket(inode) => describe_socket(fd, inode),
        FdLink::Pipe(_) => Some("a pipe".to_owned()),
        FdLink::Anon(kind) if kind == "pidfd" => {
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
            Some(describe_wait(WaitFor::Pid(pidfd_pid(&info)?)))
        }
        FdLink::Anon(kind) => Some(format!("an {kind} descriptor")),
        FdLink::Path { path, deleted } => {
            let kind = file_kind(fd);
            Some(describe_path(&path, kind, deleted))
        }
        FdLink::Other(other) => Some(other),
    }
}

#[cfg(linux_full)]
fn file_kind(fd: i32) -> FileKind {
    use std::os::unix::fs::FileTypeExt;
    // The link is followed to the open file itself (even one since deleted).
    let Ok(meta) = std::fs::metadata(format!("/proc/self/fd/{fd}")) else {
        return FileKind::Other;
    };
    let t = meta.file_type();
    if t.is_file() {
        FileKind::Regular
    } else if t.is_dir() {
        FileKind::Directory
    } else if t.is_fifo() {
        FileKind::Fifo
    } else if t.is_char_device() {
        FileKind::CharDevice
    } else if t.is_block_device() {
        FileKind::BlockDevice
    } else {
        FileKind::Other
    }
}

#[cfg(linux_full)]
fn open_table(path: &str) -> Option<std::io::BufReader<std::fs::File>> {
    let f = std::fs::File::open(path).ok()?;
    Some(std::io::BufReader::with_capacity(64 * 1024, f))
}

/// A socket's address as `getsockname`/`getpeername` give it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SockName {
    Inet(SocketAddr),
    /// A Unix socket's name (see [`unix_name`]); `None` for an unnamed one.
    Unix(Option<String>),
    /// Another family.
    Other,
}

/// Parses the `struct sockaddr` bytes the kernel wrote (`len` of them): the family (host
/// order), then for IPv4 the port (big-endian) and address, for IPv6 the port, flow info and
/// address, for Unix the path.
#[cfg(target_os = "linux")]
pub fn parse_sockaddr(raw: &[u8]) -> Option<SockName> {
    let family = i32::from(u16::from_ne_bytes(raw.get(0..2)?.try_into().ok()?));
    let port = || Some(u16::from_be_bytes(raw.get(2..4)?.try_into().ok()?));
    Some(match family {
        libc::AF_INET => {
            let ip: [u8; 4] = raw.get(4..8)?.try_into().ok()?;
            SockName::Inet(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port()?))
        }
        libc::AF_INET6 => {
            let ip: [u8; 16] = raw.get(8..24)?.try_into().ok()?;
            SockName::Inet(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port()?))
        }
        libc::AF_UNIX => SockName::Unix(unix_name(raw.get(2..).unwrap_or_default())),
        _ => SockName::Other,
    })
}

/// A socket described from its type (`SOCK_STREAM` 1, `SOCK_DGRAM` 2, `SOCK_SEQPACKET` 5),
/// whether it listens, and its names, in the words of [`InetSocket::describe`] and
/// [`UnixSocket::describe`].
pub fn describe_names(
    kind: i32,
    listening: bool,
    local: &SockName,
    peer: Option<&SockName>,
) -> String {
    match local {
        SockName::Inet(addr) => {
            let unspecified = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
            let remote = match peer {
                Some(SockName::Inet(p)) => *p,
                _ => unspecified,
            };
            let s = InetSocket {
                local: *addr,
                remote,
                state: if listening { TCP_LISTEN } else { 1 },
                inode: 0,
            };
            match kind {
                1 => s.describe(true),
                2 => s.describe(false),
                _ => format!("IP socket {}", show_addr(*addr)),
            }
        }
        SockName::Unix(path) => {
            let u = UnixSocket {
                kind: u16::try_from(kind).unwrap_or(0),
                inode: 0,
                path: path.clone(),
            };
            let peer = match peer {
                Some(SockName::Unix(p)) => p.as_deref(),
                _ => None,
            };
            let text = u.describe(peer);
            if listening {
                format!("{text} (listening)")
            } else {
                text
            }
        }
        SockName::Other => "a socket".to_owned(),
    }
}

/// A socket's protocol and addresses, asked of the socket itself (`getsockopt`,
/// `getsockname`, `getpeername`: tens of microseconds). The protocol tables are read only when
/// a sandbox refuses those calls: reading `/proc/net/tcp` walks the kernel's whole connection
/// hash table, 4 ms per table with 37 sockets and 60 ms for 11,000 on a 2-core machine, so a
/// table is read line by line and only up to the socket's line.
#[cfg(linux_full)]
fn describe_socket(fd: i32, inode: u64) -> Option<String> {
    match socket_by_calls(fd, inode) {
        Ok(text) => return Some(text),
        // Not that socket any more (closed, the descriptor reused): nothing to name.
        Err(e) if e == libc::EBADF || e == libc::ENOTSOCK || e == 0 => return None,
        Err(_) => {}
    }
    for proto in Inet::ALL {
        if let Some(s) = open_table(proto.table()).and_then(|t| find_inet(t, inode, proto.v6())) {
            return Some(s.describe(proto.tcp()));
        }
    }
    if let Some(u) = open_table("/proc/self/net/unix").and_then(|t| find_unix(t, inode)) {
        return Some(u.describe(None));
    }
    Some("a socket".to_owned())
}

/// [`describe_names`] of the socket `fd`, when it is still the socket `inode` once asked; else
/// the errno of the call that failed (0: the descriptor is another file now).
#[cfg(linux_full)]
fn socket_by_calls(fd: i32, inode: u64) -> Result<String, i32> {
    let kind = socket_option(fd, libc::SO_TYPE)?;
    let listening = socket_option(fd, libc::SO_ACCEPTCONN) == Ok(1);
    let local = socket_name(fd, false)?;
    // Fails (ENOTCONN) for a socket not connected.
    let peer = socket_name(fd, true).ok();
    // The descriptor may have been closed and reused meanwhile: still the same socket?
    if read_link(fd).map(|l| FdLink::parse(&l)) != Some(FdLink::Socket(inode)) {
        return Err(0);
    }
    Ok(describe_names(kind, listening, &local, peer.as_ref()))
}

#[cfg(linux_full)]
fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// An integer option of the socket `fd` at level `SOL_SOCKET`, or the call's errno.
#[cfg(linux_full)]
fn socket_option(fd: i32, option: libc::c_int) -> Result<i32, i32> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are ours and live for the call; the kernel writes at most `len`
    // (an int's size) bytes into `value`. A descriptor that is not (or no longer) a socket makes
    // the call fail, nothing else.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            std::ptr::addr_of_mut!(value).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(last_errno())
    }
}

/// The socket `fd`'s own address, or its peer's.
#[cfg(linux_full)]
fn socket_name(fd: i32, peer: bool) -> Result<SockName, i32> {
    // As large as `struct sockaddr_storage`; the kernel copies bytes, alignment does not matter.
    let mut buf = [0u8; 128];
    let mut len = buf.len() as libc::socklen_t;
    let addr = buf.as_mut_ptr().cast::<libc::sockaddr>();
    // SAFETY: `buf` and `len` are ours and live for the call; the kernel writes at most `len`
    // bytes at `addr` (the start of `buf`) and the address's full size into `len`. A
    // descriptor that is not (or no longer) a socket makes the call fail, nothing else.
    let rc = unsafe {
        if peer {
            libc::getpeername(fd, addr, &mut len)
        } else {
            libc::getsockname(fd, addr, &mut len)
        }
    };
    if rc != 0 {
        return Err(last_errno());
    }
    parse_sockaddr(&buf[..(len as usize).min(buf.len())]).ok_or(libc::EINVAL)
}

/// A Unix socket's name from its `sun_path` bytes: a path up to its NUL, `@name` for an
/// abstract one (leading NUL), `None` for an unnamed one.
pub fn unix_name(path: &[u8]) -> Option<String> {
    match path.split_first() {
        None => None,
        Some((0, rest)) if !rest.is_empty() => Some(format!("@{}", String::from_utf8_lossy(rest))),
        Some((0, _)) => None,
        Some(_) => {
            let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
            Some(String::from_utf8_lossy(&path[..end]).into_owned())
        }
    }
}

#[cfg(linux_full)]
fn cmdline_of(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    format_cmdline(&raw).or_else(|| {
        // A zombie, or a kernel thread: its name.
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        Some(comm.trim_end().to_owned())
    })
}

#[cfg(linux_full)]
/// This process's children, from every thread's `children` list.
fn children() -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(parse_children(&text));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(linux_full)]
fn describe_wait(w: WaitFor) -> String {
    match w {
        WaitFor::Pid(pid) => describe_process(pid, cmdline_of(pid).as_deref()),
        WaitFor::PidFd(fd) => std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
            .ok()
            .and_then(|i| pidfd_pid(&i))
            .map_or_else(
                || "a pidfd's process".to_owned(),
                |pid| describe_process(pid, cmdline_of(pid).as_deref()),
            ),
        WaitFor::AnyChild | WaitFor::Group(_) => match children().as_slice() {
            [pid] => describe_process(*pid, cmdline_of(*pid).as_deref()),
            [] => "any child".to_owned(),
            many => format!("any of {} children", many.len()),
        },
    }
}

#[cfg(all(test, linux_full))]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// How the kernel prints an IPv4 address: the address's bytes read as a host-order word.
    fn hex4(ip: [u8; 4]) -> String {
        format!("{:08X}", u32::from_ne_bytes(ip))
    }

    fn hex6(ip: [u8; 16]) -> String {
        ip.chunks(4)
            .map(|c| format!("{:08X}", u32::from_ne_bytes(c.try_into().unwrap())))
            .collect()
    }

    const TCP_HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";

    fn tcp_line(n: usize, local: &str, remote: &str, state: &str, inode: u64) -> String {
        format!(
            "{n:4}: {local} {remote} {state} 00000000:00000000 00:00000000 00000000  1000        0 {inode} 1 0000000000000000 20 4 30 10 -1\n"
        )
    }

    #[test]
    fn parses_tcp_lines_and_names_both_ends() {
        let local = format!("{}:C8A2", hex4([127, 0, 0, 1]));
        let remote = format!("{}:1F90", hex4([127, 0, 0, 1]));
        let line = tcp_line(3, &local, &remote, "01", 48213);
        let s = InetSocket::parse(&line, false).unwrap();
        assert_eq!(s.local, "127.0.0.1:51362".parse().unwrap());
        assert_eq!(s.remote, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.state, 1);
        assert_eq!(s.inode, 48213);
        assert_eq!(s.describe(true), "TCP 127.0.0.1:51362 → 127.0.0.1:8080");
        assert_eq!(InetSocket::parse(TCP_HEADER, false), None);

        let listen = tcp_line(
            0,
            &format!("{}:1F90", hex4([0, 0, 0, 0])),
            &format!("{}:0000", hex4([0, 0, 0, 0])),
            "0A",
            77,
        );
        let s = InetSocket::parse(&listen, false).unwrap();
        assert_eq!(s.describe(true), "TCP 0.0.0.0:8080 (listening)");
        // An unconnected UDP socket has no peer.
        assert_eq!(s.describe(false), "UDP 0.0.0.0:8080");
    }

    #[test]
    fn the_first_table_word_for_a_real_little_endian_machine() {
        if cfg!(target_endian = "little") {
            let line = tcp_line(0, "0100007F:1F90", "0201A8C0:0050", "01", 9);
            let s = InetSocket::parse(&line, false).unwrap();
            assert_eq!(s.describe(true), "TCP 127.0.0.1:8080 → 192.168.1.2:80");
        }
    }

    #[test]
    fn parses_tcp6_lines_with_ipv4_mapped_addresses() {
        let loopback6: [u8; 16] = Ipv6Addr::LOCALHOST.octets();
        let mapped: [u8; 16] = Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped().octets();
        let doc: [u8; 16] = "2001:db8::5".parse::<Ipv6Addr>().unwrap().octets();
        let line = tcp_line(
            0,
            &format!("{}:0050", hex6(loopback6)),
            &format!("{}:D431", hex6(doc)),
            "01",
            555,
        );
        let s = InetSocket::parse(&line, true).unwrap();
        assert_eq!(s.describe(true), "TCP [::1]:80 → [2001:db8::5]:54321");
        let line = tcp_line(
            1,
            &format!("{}:0050", hex6(mapped)),
            &format!("{}:0000", hex6([0; 16])),
            "0A",
            556,
        );
        let s = InetSocket::parse(&line, true).unwrap();
        assert_eq!(s.describe(true), "TCP 10.1.2.3:80 (listening)");
        // A v4 word is not a v6 address, nor the other way round.
        assert_eq!(InetSocket::parse(&line, false), None);
        let v4 = tcp_line(2, "0100007F:0050", "00000000:0000", "0A", 1);
        assert_eq!(InetSocket::parse(&v4, true), None);
        if cfg!(target_endian = "little") {
            let line = tcp_line(
                0,
                "0000000000000000FFFF00000100007F:1F90",
                "0000000000000000FFFF00000100007F:C8A2",
                "01",
                3,
            );
            let s = InetSocket::parse(&line, true).unwrap();
            assert_eq!(s.describe(true), "TCP 127.0.0.1:8080 → 127.0.0.1:51362");
        }
    }

    #[test]
    fn finds_a_socket_by_inode_and_stops_at_it() {
        let mut table = TCP_HEADER.to_owned();
        for i in 0..50 {
            table += &tcp_line(i, "0100007F:1F90", "0100007F:C000", "01", 1000 + i as u64);
        }
        let found = find_inet(Cursor::new(table.as_bytes()), 1030, false).unwrap();
        assert_eq!(found.inode, 1030);
        assert_eq!(find_inet(Cursor::new(table.as_bytes()), 99, false), None);
        // Stops at the match: what follows it is never read (here, it is not even a table).
        let mut cut = table[..table.find("  30:").unwrap()].to_owned();
        cut += &tcp_line(30, "0100007F:1F90", "0100007F:C000", "01", 4242);
        cut += "garbage that would fail to parse\n";
        let r = Cursor::new(cut.as_bytes());
        let mut r = std::io::BufReader::with_capacity(16, r);
        assert_eq!(find_inet(&mut r, 4242, false).unwrap().inode, 4242);
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut r, &mut rest).unwrap();
        assert!(rest.starts_with("garbage"), "{rest:?}");
    }

    #[test]
    fn parses_unix_lines_with_and_without_a_path() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 20731 /run/app dir/api.sock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 20955\n\
            0000000000000000: 00000002 00000000 00000000 0002 01 31000 @abstract-name\n";
        let named = find_unix(Cursor::new(table), 20731).unwrap();
        assert_eq!(named.path.as_deref(), Some("/run/app dir/api.sock"));
        assert_eq!(
            named.describe(None),
            "Unix stream socket /run/app dir/api.sock"
        );
        let unnamed = find_unix(Cursor::new(table), 20955).unwrap();
        assert_eq!(unnamed.path, None);
        assert_eq!(unnamed.describe(None), "Unix stream socket (unnamed)");
        assert_eq!(
            unnamed.describe(Some("/run/app.sock")),
            "Unix stream socket → /run/app.sock"
        );
        let dgram = find_unix(Cursor::new(table), 31000).unwrap();
        assert_eq!(dgram.describe(None), "Unix datagram socket @abstract-name");
        assert_eq!(find_unix(Cursor::new(table), 1), None);
        assert_eq!(unix_name(b"/run/x.sock\0\0\0"), Some("/run/x.sock".into()));
        assert_eq!(unix_name(b"\0hidden"), Some("@hidden".into()));
        assert_eq!(unix_name(b""), None);
    }

    #[test]
    fn parses_the_forms_of_fd_links() {
        assert_eq!(FdLink::parse("socket:[48213]"), FdLink::Socket(48213));
        assert_eq!(FdLink::parse("pipe:[77]"), FdLink::Pipe(77));
        assert_eq!(
            FdLink::parse("anon_inode:[eventpoll]"),
            FdLink::Anon("eventpoll".into())
        );
        assert_eq!(
            FdLink::parse("anon_inode:inotify"),
            FdLink::Anon("inotify".into())
        );
        assert_eq!(
            FdLink::parse("/tmp/a b.fifo"),
            FdLink::Path {
                path: "/tmp/a b.fifo".into(),
                deleted: false
            }
        );
        assert_eq!(
            FdLink::parse("/tmp/x (deleted)"),
            FdLink::Path {
                path: "/tmp/x".into(),
                deleted: true
            }
        );
        assert_eq!(
            FdLink::parse("net:[4026531840]"),
            FdLink::Other("net:[4026531840]".into())
        );
        assert_eq!(
            FdLink::parse("socket:[x]"),
            FdLink::Other("socket:[x]".into())
        );
        assert_eq!(
            describe_path("/tmp/x.fifo", FileKind::Fifo, false),
            "/tmp/x.fifo (FIFO)"
        );
        assert_eq!(
            describe_path("/data/db", FileKind::Regular, false),
            "/data/db"
        );
        assert_eq!(
            describe_path("/tmp/gone", FileKind::Regular, true),
            "/tmp/gone (deleted)"
        );
        assert_eq!(
            describe_path("/dev/ttyS0", FileKind::CharDevice, false),
            "/dev/ttyS0 (character device)"
        );
    }

    #[test]
    fn command_lines_are_shortened() {
        assert_eq!(
            format_cmdline(b"sleep\x000.4\x00").as_deref(),
            Some("sleep 0.4")
        );
        assert_eq!(
            format_cmdline(b"/usr/bin/python3\x00-c\x00pass\x00").as_deref(),
            Some("python3 -c pass")
        );
        assert_eq!(format_cmdline(b""), None);
        let long = format_cmdline(format!("cat\0{}\0", "x".repeat(200)).as_bytes()).unwrap();
        assert_eq!(long.chars().count(), CMDLINE_MAX);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn waits_name_their_child() {
        assert_eq!(WaitFor::of_wait4(1234), WaitFor::Pid(1234));
        assert_eq!(WaitFor::of_wait4(u64::MAX), WaitFor::AnyChild);
        assert_eq!(WaitFor::of_wait4(0xffff_ffff), WaitFor::AnyChild);
        assert_eq!(WaitFor::of_wait4(0), WaitFor::Group(0));
        assert_eq!(WaitFor::of_wait4((-42i64) as u64), WaitFor::Group(42));
        assert_eq!(WaitFor::of_waitid(1, 99), Some(WaitFor::Pid(99)));
        assert_eq!(WaitFor::of_waitid(0, 0), Some(WaitFor::AnyChild));
        assert_eq!(WaitFor::of_waitid(3, 7), Some(WaitFor::PidFd(7)));
        assert_eq!(WaitFor::of_waitid(9, 7), None);
        assert_eq!(describe_process(12, Some("sleep 1")), "pid 12 (sleep 1)");
        assert_eq!(describe_process(12, None), "pid 12");
        assert_eq!(parse_children("123 456 \n"), vec![123, 456]);
        assert_eq!(
            pidfd_pid("pos:\t0\nflags:\t02000002\nmnt_id:\t15\nPid:\t4321\n"),
            Some(4321)
        );
        assert_eq!(pidfd_pid("Pid:\t-1\n"), None);
    }

    #[test]
    fn poll_sets_are_read_from_their_fdinfo_and_bitmaps() {
        let info = "pos:\t0\nflags:\t02\nmnt_id:\t15\n\
            tfd:        5 events:       19 data:                5  pos:0 ino:3a1 sdev:8\n\
            tfd:       12 events:       19 data:                c  pos:0 ino:3a2 sdev:8\n";
        assert_eq!(epoll_targets(info), vec![5, 12]);
        assert_eq!(epoll_targets("pos:\t0\n"), Vec::<i32>::new());
        let mut bitmap = [0u8; 16];
        bitmap[..8].copy_from_slice(&((1u64 << 3) | (1 << 63)).to_ne_bytes());
        bitmap[8..].copy_from_slice(&1u64.to_ne_bytes());
        assert_eq!(fd_set_members(&bitmap, 65), vec![3, 63, 64]);
        assert_eq!(fd_set_members(&bitmap, 10), vec![3]);
    }

    #[test]
    fn calls_are_mapped_to_what_they_wait_on() {
        let a = |x: u64| [x, 0, 0, 0, 0, 0];
        assert_eq!(subject(libc::SYS_recvfrom, &a(7)), Some(Subject::Fd(7)));
        assert_eq!(
            subject(libc::SYS_futex, &a(0x1000)),
            Some(Subject::Text(FUTEX_TEXT))
        );
        assert_eq!(
            subject(libc::SYS_clock_nanosleep, &a(0)),
            Some(Subject::Text(SLEEP_TEXT))
        );
        assert_eq!(
            subject(libc::SYS_wait4, &a(321)),
            Some(Subject::Wait(WaitFor::Pid(321)))
        );
        assert_eq!(
            subject(libc::SYS_openat, &[0xffff_ff9c, 0x5000, 0, 0, 0, 0]),
            Some(Subject::PathAt(0x5000))
        );
        assert_eq!(subject(libc::SYS_getrandom, &a(0)), None);
    }

    // Real descriptors of this process, described through /proc.

    #[test]
    fn describes_a_real_tcp_connection_a_fifo_and_a_child() {
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let local = client.local_addr().unwrap();
        let w = Waited::new();
        let recv = KernelState::Syscall {
            nr: libc::SYS_recvfrom,
            args: [client.as_raw_fd() as u64, 0, 0, 0, 0, 0],
        };
        let mut cache = None;
        assert_eq!(
            w.describe(Some(recv), &mut cache).as_deref(),
            Some(format!("TCP {local} → 127.0.0.1:{port}").as_str())
        );
        assert!(cache.is_some());
        let accept = KernelState::Syscall {
            nr: libc::SYS_accept4,
            args: [listener.as_raw_fd() as u64, 0, 0, 0, 0, 0],
        };
        assert_eq!(
            w.describe(Some(accept), &mut cache).as_deref(),
            Some(format!("TCP 127.0.0.1:{port} (listening)").as_str())
        );

        let dir = std::env::temp_dir().join(format!("loopguard-waited-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("x.fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: `c` is a NUL-terminated path that lives for the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .unwrap();
        let read = KernelState::Syscall {
            nr: libc::SYS_read,
            args: [f.as_raw_fd() as u64, 0, 0, 0, 0, 0],
        };
        assert_eq!(
            w.describe(Some(read), &mut None),
            Some(format!("{} (FIFO)", fifo.display()))
        );
        drop(f);
        std::fs::remove_dir_all(&dir).unwrap();

        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let wait = KernelState::Syscall {
            nr: libc::SYS_wait4,
            args: [u64::from(child.id()), 0, 0, 0, 0, 0],
        };
        // The child is named once it has run `exec`.
        let want = format!("pid {} (sleep 5)", child.id());
        let mut seen = None;
        for _ in 0..200 {
            seen = w.describe(Some(wait), &mut None);
            if seen.as_deref() == Some(want.as_str()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(seen, Some(want));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(w.describe(Some(KernelState::Running), &mut None), None);
    }

    #[test]
    fn a_reused_descriptor_is_described_afresh() {
        use std::os::fd::AsRawFd;
        let dir = std::env::temp_dir().join(format!("loopguard-reuse-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::write(&a, "a").unwrap();
        std::fs::write(&b, "b").unwrap();
        let w = Waited::new();
        let mut cache = None;
        let fa = std::fs::File::open(&a).unwrap();
        let fd = fa.as_raw_fd();
        let read = KernelState::Syscall {
            nr: libc::SYS_read,
            args: [fd as u64, 0, 0, 0, 0, 0],
        };
        assert_eq!(
            w.describe(Some(read), &mut cache),
            Some(a.display().to_string())
        );
        drop(fa);
        let fb = std::fs::File::open(&b).unwrap();
        assert_eq!(fb.as_raw_fd(), fd);
        assert_eq!(
            w.describe(Some(read), &mut cache),
            Some(b.display().to_string())
        );
        drop(fb);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn describes_a_unix_socket_pair_and_a_poll_on_one_descriptor() {
        use std::os::fd::AsRawFd;
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let w = Waited::new();
        let recv = KernelState::Syscall {
            nr: libc::SYS_recvfrom,
            args: [a.as_raw_fd() as u64, 0, 0, 0, 0, 0],
        };
        assert_eq!(
            w.describe(Some(recv), &mut None).as_deref(),
            Some("Unix stream socket (unnamed)")
        );
        let pollfd = libc::pollfd {
            fd: a.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let poll = KernelState::Syscall {
            nr: libc::SYS_ppoll,
            args: [std::ptr::addr_of!(pollfd) as u64, 1, 0, 0, 0, 0],
        };
        assert_eq!(
            w.describe(Some(poll), &mut None).as_deref(),
            Some("Unix stream socket (unnamed)")
        );
        let many = KernelState::Syscall {
            nr: libc::SYS_ppoll,
            args: [std::ptr::addr_of!(pollfd) as u64, 3, 0, 0, 0, 0],
        };
        assert_eq!(w.describe(Some(many), &mut None).as_deref(), Some("3 fds"));
        let path = std::ffi::CString::new("/etc/hostname").unwrap();
        let open = KernelState::Syscall {
            nr: libc::SYS_openat,
            args: [0, path.as_ptr() as u64, 0, 0, 0, 0],
        };
        assert_eq!(
            w.describe(Some(open), &mut None).as_deref(),
            Some("/etc/hostname")
        );
    }

    #[test]
    fn parses_socket_addresses_and_names_the_socket() {
        let mut v4 = vec![0u8; 16];
        v4[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4[2..4].copy_from_slice(&8080u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[10, 0, 0, 7]);
        let local = parse_sockaddr(&v4).unwrap();
        assert_eq!(local, SockName::Inet("10.0.0.7:8080".parse().unwrap()));
        let mut v6 = vec![0u8; 28];
        v6[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        v6[2..4].copy_from_slice(&443u16.to_be_bytes());
        v6[8..24].copy_from_slice(&Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped().octets());
        let peer = parse_sockaddr(&v6).unwrap();
        assert_eq!(
            describe_names(1, false, &local, Some(&peer)),
            "TCP 10.0.0.7:8080 → 192.0.2.1:443"
        );
        assert_eq!(
            describe_names(1, true, &local, None),
            "TCP 10.0.0.7:8080 (listening)"
        );
        assert_eq!(describe_names(2, false, &local, None), "UDP 10.0.0.7:8080");
        assert_eq!(parse_sockaddr(&v6[..20]), None);
        let mut un = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        un.extend_from_slice(b"/run/app.sock\0");
        let named = parse_sockaddr(&un).unwrap();
        let unnamed = parse_sockaddr(&(libc::AF_UNIX as u16).to_ne_bytes()).unwrap();
        assert_eq!(unnamed, SockName::Unix(None));
        assert_eq!(
            describe_names(1, false, &unnamed, Some(&named)),
            "Unix stream socket → /run/app.sock"
        );
        assert_eq!(
            describe_names(1, true, &named, None),
            "Unix stream socket /run/app.sock (listening)"
        );
        assert_eq!(
            describe_names(2, false, &unnamed, None),
            "Unix datagram socket (unnamed)"
        );
    }

    #[test]
    fn the_protocol_tables_have_a_real_connection_under_its_inode() {
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(server).unwrap();
        let link = read_link(client.as_raw_fd()).unwrap();
        let FdLink::Socket(inode) = FdLink::parse(&link) else {
            panic!("{link}")
        };
        let found = find_inet(open_table(Inet::Tcp.table()).unwrap(), inode, false).unwrap();
        assert_eq!(found.local, client.local_addr().unwrap());
        assert_eq!(found.remote, server);
        assert_eq!(
            found.describe(true),
            format!("TCP {} → {server}", client.local_addr().unwrap())
        );
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let FdLink::Socket(inode) = FdLink::parse(&read_link(a.as_raw_fd()).unwrap()) else {
            panic!()
        };
        let found = find_unix(open_table("/proc/self/net/unix").unwrap(), inode).unwrap();
        assert_eq!(found.describe(None), "Unix stream socket (unnamed)");
    }

    #[test]
    fn describes_a_named_unix_socket_from_both_ends() {
        use std::os::fd::AsRawFd;
        let dir = std::env::temp_dir().join(format!("loopguard-unix-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("api.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let w = Waited::new();
        let on = |fd: i32, nr| KernelState::Syscall {
            nr,
            args: [fd as u64, 0, 0, 0, 0, 0],
        };
        assert_eq!(
            w.describe(Some(on(client.as_raw_fd(), libc::SYS_recvfrom)), &mut None),
            Some(format!("Unix stream socket → {}", path.display()))
        );
        assert_eq!(
            w.describe(Some(on(listener.as_raw_fd(), libc::SYS_accept4)), &mut None),
            Some(format!("Unix stream socket {} (listening)", path.display()))
        );
        drop((client, listener));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The cost of finding a socket at the end of a 10,000-line table (run with
    /// `cargo test --no-default-features -- --ignored --nocapture table_search_cost`).
    #[test]
    #[ignore]
    fn table_search_cost() {
        let mut table = TCP_HEADER.to_owned();
        for i in 0..10_000 {
            table += &tcp_line(
                i,
                "0100007F:1F90",
                "0100007F:C000",
                "01",
                100_000 + i as u64,
            );
        }
        let path = std::env::temp_dir().join(format!("loopguard-tcp-{}", std::process::id()));
        std::fs::write(&path, &table).unwrap();
        let rounds = 50;
        let t = std::time::Instant::now();
        for _ in 0..rounds {
            let r = open_table(path.to_str().unwrap()).unwrap();
            assert!(find_inet(r, 109_999, false).is_some());
        }
        let per = t.elapsed() / rounds;
        std::fs::remove_file(&path).unwrap();
        println!("10,000-line table, match on the last line: {per:?} per search");
    }
}
