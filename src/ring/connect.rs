//! Client-side ring operations for the load generator (outgoing connections).
//!
//! [`Ring::connect`] starts a TCP connect through the ring and [`Ring::cancel_connect`]
//! abandons one (a connect timeout); the completion comes back as
//! [`Completion::Connect`]. [`client_socket`] makes the socket beforehand: non-blocking,
//! Nagle off and, when a source address is given, bound to it with
//! `IP_BIND_ADDRESS_NO_PORT`, so the kernel picks the port at connect time from the ports
//! free for that (source, destination) pair rather than reserving one per source at bind.
//!
//! Invariants:
//! - A connect's socket address lives in `Ring::connects[slot]`, boxed so that slab growth
//!   never moves it, from the push until the Connect CQE is reaped in `Ring::reap`.
//! - A [`ConnectId`] names its slot only until that CQE: the caller cancels with it only
//!   while its connect is in flight, and forgets it when the completion arrives.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;

use io_uring::{opcode, types};
use slab::Slab;

use super::{pack, sys, Completion, OpKind, Owner, Ring};

/// `IP_BIND_ADDRESS_NO_PORT` (Linux 4.2): bind the address now, choose the port at connect.
const IP_BIND_ADDRESS_NO_PORT: libc::c_int = 24;

/// A connect the kernel is working on: who asked, and the address it reads.
pub struct InflightConnect {
    owner: Owner,
    /// Read by the kernel until the CQE; boxed so that its address is stable.
    addr: Box<SockAddr>,
}

/// A socket address in the kernel's layout.
struct SockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

/// Names an in-flight connect, for [`Ring::cancel_connect`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectId(u32);

impl Ring {
    /// Connects `fd` to `addr` for `owner`. The address is copied into memory the ring owns
    /// until the [`Completion::Connect`] for it is reaped.
    pub fn connect(&mut self, fd: RawFd, addr: &SocketAddr, owner: Owner) -> ConnectId {
        let sockaddr = Box::new(SockAddr::new(addr));
        let ptr: *const libc::sockaddr = std::ptr::addr_of!(sockaddr.storage).cast();
        let len = sockaddr.len;
        let slot = self.connects.insert(InflightConnect {
            owner,
            addr: sockaddr,
        });
        debug_assert!(self.connects[slot].addr.len == len);
        // The SQE points into `connects[slot].addr`, a Box the Ring owns (and never moves)
        // until the Connect CQE for `slot` is reaped by `complete` below.
        let entry = opcode::Connect::new(types::Fd(fd), ptr, len)
            .build()
            .user_data(pack(OpKind::Connect, slot as u32, 0));
        self.push(entry);
        ConnectId(slot as u32)
    }

    /// Asks the kernel to abandon an in-flight connect; its completion then reports
    /// `-ECANCELED` (or its real result, if it finished first). No memory is referenced.
    pub fn cancel_connect(&mut self, id: ConnectId) {
        debug_assert!(
            self.connects.contains(id.0 as usize),
            "cancel of a connect that already completed"
        );
        let entry = opcode::AsyncCancel::new(pack(OpKind::Connect, id.0, 0))
            .build()
            .user_data(pack(OpKind::Cancel, 0, 0));
        self.push(entry);
    }

    /// Connects in flight (addresses the kernel may still read).
    pub fn connects_in_flight(&self) -> usize {
        self.connects.len()
    }
}

/// Types a Connect CQE and releases its address, which the kernel no longer reads.
pub(super) fn complete(connects: &mut Slab<InflightConnect>, slot: u32, res: i32) -> Completion {
    let done = connects.remove(slot as usize);
    drop(done.addr);
    Completion::Connect {
        owner: done.owner,
        res,
    }
}

impl SockAddr {
    fn new(addr: &SocketAddr) -> SockAddr {
        let (storage, len) = sys::sockaddr_of(addr);
        SockAddr { storage, len }
    }
}

/// Opens a non-blocking TCP socket for a connect to `dest`, with TCP_NODELAY, bound to
/// `source` (port chosen at connect time) when one is given. The caller owns the fd.
pub fn client_socket(source: Option<IpAddr>, dest: &SocketAddr) -> io::Result<RawFd> {
    sys::tcp_socket(dest, |fd| {
        sys::set_opt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1 as libc::c_int)?;
        if let Some(ip) = source {
            if ip.is_ipv4() != dest.is_ipv4() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "source and destination address families differ",
                ));
            }
            sys::set_opt(
                fd,
                libc::IPPROTO_IP,
                IP_BIND_ADDRESS_NO_PORT,
                1 as libc::c_int,
            )?;
            sys::bind(fd, &SocketAddr::new(ip, 0))?;
        }
        Ok(())
    })
}

/// Makes the final close of `fd` reset the connection (SO_LINGER with a zero timeout):
/// no FIN handshake and no TIME_WAIT on this side. Used for aborts and abortive churn.
pub fn set_linger_reset(fd: RawFd) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    sys::set_opt(fd, libc::SOL_SOCKET, libc::SO_LINGER, linger)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_layout() {
        let v4 = SockAddr::new(&"127.0.1.2:8080".parse().expect("address"));
        assert_eq!(v4.len as usize, std::mem::size_of::<libc::sockaddr_in>());
        assert_eq!(v4.storage.ss_family as libc::c_int, libc::AF_INET);
        let v6 = SockAddr::new(&"[::1]:9".parse().expect("address"));
        assert_eq!(v6.len as usize, std::mem::size_of::<libc::sockaddr_in6>());
    }

    #[test]
    fn source_bound_socket_has_no_port_until_connect() {
        let dest: SocketAddr = "127.0.0.1:9".parse().expect("address");
        let fd = client_socket(Some("127.0.0.1".parse().expect("ip")), &dest).expect("socket");
        let local = super::super::sys::local_addr(fd).expect("getsockname");
        assert_eq!(local.ip().to_string(), "127.0.0.1");
        assert_eq!(local.port(), 0);
        set_linger_reset(fd).expect("linger");
        super::super::sys::close(fd);
    }
}
