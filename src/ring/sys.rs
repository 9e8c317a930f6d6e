//! Plain system calls the reactor needs outside the ring: sockets, the per-thread file
//! table, limits and signals.
//!
//! Every function here is a thin, safe wrapper: it passes only values or memory it owns for
//! the duration of the call, so no pointer outlives the call.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// Listen backlog for every shard's listener; the kernel clamps it to `somaxconn`.
pub const LISTEN_BACKLOG: i32 = 65_535;

pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A socket address in the kernel's layout, with its meaningful length.
pub(crate) fn sockaddr_of(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned;
            // the write stays inside `storage`, which this function owns.
            unsafe { std::ptr::write(std::ptr::addr_of_mut!(storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: as above, sockaddr_storage holds a sockaddr_in6.
            unsafe { std::ptr::write(std::ptr::addr_of_mut!(storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn addr_from_storage(storage: &libc::sockaddr_storage) -> io::Result<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin: libc::sockaddr_in =
                unsafe { std::ptr::read(std::ptr::addr_of!(*storage).cast()) };
            let ip = std::net::Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Ok(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6: libc::sockaddr_in6 =
                unsafe { std::ptr::read(std::ptr::addr_of!(*storage).cast()) };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Ok(SocketAddr::from((ip, u16::from_be(sin6.sin6_port))))
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "unknown address family",
        )),
    }
}

/// Sets a socket option from a value that lives on this stack frame.
pub(crate) fn set_opt<T>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: T,
) -> io::Result<()> {
    // SAFETY: `value` lives on this stack frame for the whole call and the length passed is
    // its size; the kernel only reads it.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Binds `fd` to `addr`.
pub(crate) fn bind(fd: RawFd, addr: &SocketAddr) -> io::Result<()> {
    let (storage, len) = sockaddr_of(addr);
    // SAFETY: `storage` outlives the call and `len` is its meaningful length; the kernel
    // copies the address before bind(2) returns.
    cvt(unsafe { libc::bind(fd, std::ptr::addr_of!(storage).cast(), len) }).map(drop)
}

/// Opens a non-blocking, close-on-exec TCP socket of `addr`'s family and runs `setup` on
/// it; the socket is closed again if `setup` fails. The caller owns the returned fd.
pub(crate) fn tcp_socket(
    addr: &SocketAddr,
    setup: impl FnOnce(RawFd) -> io::Result<()>,
) -> io::Result<RawFd> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket(2) takes no pointers.
    let fd = cvt(unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    })?;
    if let Err(e) = setup(fd) {
        close(fd);
        return Err(e);
    }
    Ok(fd)
}

/// Opens a non-blocking TCP listener with SO_REUSEADDR and SO_REUSEPORT on `addr`, so that
/// every shard can own one listener on the same port and the kernel spreads connections.
pub fn reuseport_listener(addr: &SocketAddr) -> io::Result<RawFd> {
    tcp_socket(addr, |fd| {
        set_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1 as libc::c_int)?;
        set_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1 as libc::c_int)?;
        // Accepted sockets inherit TCP_NODELAY from the listener on Linux, which saves a
        // setsockopt per accept: a push node sends small frames that must leave now.
        set_opt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1 as libc::c_int)?;
        bind(fd, addr)?;
        // SAFETY: listen(2) takes no pointers.
        cvt(unsafe { libc::listen(fd, LISTEN_BACKLOG) }).map(drop)
    })
}

/// Whether another socket already listens on `addr` (this process has none yet). Binds a
/// plain socket with SO_REUSEADDR but without SO_REUSEPORT: Linux lets it bind over
/// TIME_WAIT leftovers but refuses it (EADDRINUSE) while any listener holds the address,
/// SO_REUSEPORT or not. Port 0 is never taken. Other bind errors are returned as they are.
pub fn someone_listens_on(addr: &SocketAddr) -> io::Result<bool> {
    if addr.port() == 0 {
        return Ok(false);
    }
    match tcp_socket(addr, |fd| {
        set_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1 as libc::c_int)?;
        bind(fd, addr)
    }) {
        Ok(fd) => {
            close(fd);
            Ok(false)
        }
        Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => Ok(true),
        Err(e) => Err(e),
    }
}

/// The address a socket is bound to (resolves port 0).
pub fn local_addr(fd: RawFd) -> io::Result<SocketAddr> {
    // SAFETY: all-zero sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` and `len` outlive the call; the kernel writes at most `len` bytes.
    cvt(unsafe { libc::getsockname(fd, std::ptr::addr_of_mut!(storage).cast(), &mut len) })?;
    addr_from_storage(&storage)
}

/// The address of a connected socket's peer (a multishot accept gives none).
pub fn peer_addr(fd: RawFd) -> io::Result<SocketAddr> {
    // SAFETY: all-zero sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` and `len` outlive the call; the kernel writes at most `len` bytes.
    cvt(unsafe { libc::getpeername(fd, std::ptr::addr_of_mut!(storage).cast(), &mut len) })?;
    addr_from_storage(&storage)
}

/// Closes a descriptor of this thread's file table; errors are irrelevant after the fact.
pub fn close(fd: RawFd) {
    // SAFETY: close(2) takes no pointers; the caller owns `fd` and forgets it.
    unsafe { libc::close(fd) };
}

/// Half- or full-closes a socket. `SHUT_WR` sends FIN after queued data; `SHUT_RDWR` also
/// ends an armed multishot recv (it completes with 0).
pub fn shutdown(fd: RawFd, how: libc::c_int) {
    // SAFETY: shutdown(2) takes no pointers.
    unsafe { libc::shutdown(fd, how) };
}

/// Best-effort non-blocking send of a small response on a fresh socket (refusals).
pub fn send_now(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: `bytes` is borrowed for the duration of the call only.
    let n = unsafe {
        libc::send(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Gives the calling thread its own file table, a copy of the process's table at this
/// moment. Each table may hold RLIMIT_NOFILE descriptors, which is how one process holds
/// more sockets than the per-process cap.
pub fn unshare_file_table() -> io::Result<()> {
    // SAFETY: unshare(2) takes no pointers.
    cvt(unsafe { libc::unshare(libc::CLONE_FILES) }).map(drop)
}

/// The soft RLIMIT_NOFILE of this process (the cap of each file table).
pub fn nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        1024
    }
}

/// Blocks SIGINT and SIGTERM in the calling thread (threads spawned later inherit the mask),
/// so only the thread that waits for them with [`wait_signal`] ever sees them.
pub fn block_shutdown_signals() -> io::Result<()> {
    let set = shutdown_sigset();
    // SAFETY: `set` outlives the call; the old mask is not requested.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

fn shutdown_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by this frame.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
    }
    set
}

/// Waits up to `timeout` for SIGINT or SIGTERM (blocked beforehand). Returns the signal.
pub fn wait_signal(timeout: std::time::Duration) -> Option<i32> {
    let set = shutdown_sigset();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `set` and `ts` outlive the call; no siginfo is requested.
    let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
    (sig > 0).then_some(sig)
}

/// Resident set size of this process in bytes, from /proc/self/statm.
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf takes no pointers.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    pages * page
}
