//! Established TCP connections and their received byte counts, from the
//! kernel's socket diagnostics (`sock_diag(7)`, `NETLINK_SOCK_DIAG` with
//! `INET_DIAG_INFO`: `tcpi_bytes_received` of `struct tcp_info`).
//!
//! Interim copy of the readers branch's module, same interface; the
//! readers branch's version replaces it on merge.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// One established TCP connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConnection {
    pub inode: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub bytes_received: u64,
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const INET_DIAG_INFO: u16 = 2;
const TCP_ESTABLISHED: u32 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const INET_DIAG_MSG_LEN: usize = 72;
const TCPI_BYTES_RECEIVED: usize = 128;

/// Every established TCP connection (IPv4 and IPv6) whose remote end is one
/// of `remotes`.
///
/// # Errors
/// The netlink socket cannot be opened or answers with an error.
pub fn established_to(remotes: &[SocketAddr]) -> io::Result<Vec<TcpConnection>> {
    let mut found = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        for connection in dump(family)? {
            if remotes.contains(&connection.remote) {
                found.push(connection);
            }
        }
    }
    Ok(found)
}

fn dump(family: libc::c_int) -> io::Result<Vec<TcpConnection>> {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut request = Vec::with_capacity(16 + 56);
    request.extend_from_slice(&72u32.to_ne_bytes());
    request.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = u16::try_from(libc::NLM_F_REQUEST | libc::NLM_F_DUMP).unwrap_or(0);
    request.extend_from_slice(&flags.to_ne_bytes());
    request.extend_from_slice(&1u32.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes());
    // inet_diag_req_v2: family, protocol, ext, pad, states, id (48 bytes).
    request.push(u8::try_from(family).unwrap_or(0));
    request.push(u8::try_from(libc::IPPROTO_TCP).unwrap_or(6));
    request.push(1 << (INET_DIAG_INFO - 1));
    request.push(0);
    request.extend_from_slice(&(1u32 << TCP_ESTABLISHED).to_ne_bytes());
    request.extend_from_slice(&[0u8; 48]);
    // SAFETY: sends `request`, valid for its length.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut connections = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: receives into `buffer`, valid for its length.
        let got = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                0,
            )
        };
        let Ok(got) = usize::try_from(got) else {
            return Err(io::Error::last_os_error());
        };
        if got == 0 {
            return Ok(connections);
        }
        let mut at = 0;
        while at + 16 <= got {
            let length = u32_at(&buffer, at) as usize;
            let kind = u16::from_ne_bytes([buffer[at + 4], buffer[at + 5]]);
            if length < 16 || at + length > got {
                break;
            }
            match kind {
                NLMSG_DONE => return Ok(connections),
                NLMSG_ERROR => {
                    let errno =
                        i32::from_ne_bytes(buffer[at + 16..at + 20].try_into().unwrap_or_default());
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                _ => {
                    if let Some(c) = parse_message(&buffer[at + 16..at + length]) {
                        connections.push(c);
                    }
                }
            }
            at += (length + 3) & !3;
        }
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap_or_default())
}

fn parse_message(message: &[u8]) -> Option<TcpConnection> {
    if message.len() < INET_DIAG_MSG_LEN {
        return None;
    }
    let family = libc::c_int::from(message[0]);
    let sport = u16::from_be_bytes([message[4], message[5]]);
    let dport = u16::from_be_bytes([message[6], message[7]]);
    let address = |at: usize| -> IpAddr {
        if family == libc::AF_INET {
            IpAddr::V4(Ipv4Addr::new(
                message[at],
                message[at + 1],
                message[at + 2],
                message[at + 3],
            ))
        } else {
            let octets: [u8; 16] = message[at..at + 16].try_into().unwrap_or_default();
            IpAddr::V6(Ipv6Addr::from(octets))
        }
    };
    let local = SocketAddr::new(address(8), sport);
    let remote = SocketAddr::new(address(24), dport);
    let inode = u64::from(u32_at(message, 68));
    let mut bytes_received = 0;
    let mut at = INET_DIAG_MSG_LEN;
    while at + 4 <= message.len() {
        let length = usize::from(u16::from_ne_bytes([message[at], message[at + 1]]));
        let kind = u16::from_ne_bytes([message[at + 2], message[at + 3]]);
        if length < 4 || at + length > message.len() {
            break;
        }
        if kind == INET_DIAG_INFO && length >= 4 + TCPI_BYTES_RECEIVED + 8 {
            let start = at + 4 + TCPI_BYTES_RECEIVED;
            bytes_received = u64::from_ne_bytes(message[start..start + 8].try_into().ok()?);
        }
        at += (length + 3) & !3;
    }
    Some(TcpConnection {
        inode,
        local,
        remote,
        bytes_received,
    })
}
