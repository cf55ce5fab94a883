//! The kernel's table of established TCP connections, through netlink
//! `NETLINK_SOCK_DIAG` (`sock_diag(7)`): for each connection its socket inode
//! (what `/proc/<pid>/fd/<n>` links to as `socket:[inode]`), both addresses
//! and `tcpi_bytes_received` from its `tcp_info` (`INET_DIAG_INFO`).
//!
//! Why netlink and not `/proc/net/tcp{,6}`: those files have no byte
//! counters, and `ss` output is not an interface. The request and replies
//! are a few fixed C layouts, built and parsed here by hand on bytes (no
//! crate, no `unsafe`: the socket calls are `rustix`'s), so the parser is
//! tested on byte strings and nothing of it is linked into `run`'s path
//! (see `evolution/ECP-0133-stale-readers-and-progress-watchdog.md`).
//!
//! A reply is trusted for nothing: every length is checked against what
//! is left of the datagram, a message too short for its header ends the
//! dump with an error, `NLMSG_ERROR` is the request's failure, and the dump
//! ends only at `NLMSG_DONE` (it spans many datagrams on a busy host).
//! Addresses are compared as IP and port; an IPv4-mapped IPv6 address
//! (`::ffff:10.0.0.5`, an IPv6 socket talking to an IPv4 peer) is reported
//! as the IPv4 address it is.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use rustix::net::{
    AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType, netlink, recv, send, socket_with,
};

/// One established TCP connection as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpConnection {
    /// The socket's inode: `socket:[inode]` in a descriptor's link.
    pub inode: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Payload bytes received so far (`tcpi_bytes_received`, Linux 4.1+);
    /// 0 when the kernel does not report it.
    pub bytes_received: u64,
}

/// Every established TCP connection whose remote end is one of `remotes`
/// (all when empty), IPv4 and IPv6.
///
/// # Errors
/// When the netlink socket cannot be opened or used, or a reply is
/// malformed or reports an error.
pub fn established_to(remotes: &[SocketAddr]) -> io::Result<Vec<TcpConnection>> {
    let mut connections = Vec::new();
    for family in [AF_INET, AF_INET6] {
        connections.extend(dump(family)?);
    }
    if !remotes.is_empty() {
        connections.retain(|c| {
            remotes
                .iter()
                .any(|r| canonical(*r).ip() == c.remote.ip() && r.port() == c.remote.port())
        });
    }
    Ok(connections)
}

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_TCP: u8 = 6;
const TCP_ESTABLISHED: u32 = 1;

const NLMSG_HEADER: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
/// `NLM_F_ROOT | NLM_F_MATCH`.
const NLM_F_DUMP: u16 = 0x300;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `INET_DIAG_INFO`: the extension bit asked for and the attribute type.
const INET_DIAG_INFO: u16 = 2;
/// `struct inet_diag_req_v2`.
const REQUEST_BODY: usize = 56;
/// `struct inet_diag_msg`.
const MESSAGE_BODY: usize = 72;
/// Offset of `tcpi_bytes_received` in `struct tcp_info`.
const BYTES_RECEIVED_AT: usize = 128;
/// The sequence number of our one request.
const SEQUENCE: u32 = 1;
/// Larger than any datagram the kernel sends a dump in (it fills up to 32 KiB).
const RECEIVE_BUFFER: usize = 64 * 1024;

/// One family's established TCP connections.
fn dump(family: u8) -> io::Result<Vec<TcpConnection>> {
    let socket = socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        Some(netlink::SOCK_DIAG),
    )?;
    // An unconnected netlink socket sends to the kernel (port 0).
    send(&socket, &request(family), SendFlags::empty())?;
    let mut reply = Reply::default();
    let mut buffer = vec![0u8; RECEIVE_BUFFER];
    loop {
        let (filled, length) = recv(&socket, &mut buffer[..], RecvFlags::empty())?;
        if length > filled {
            return Err(malformed("a datagram larger than the receive buffer"));
        }
        if reply.feed(&buffer[..filled])? {
            return Ok(reply.connections);
        }
    }
}

/// The dump request: every TCP socket of `family` in state ESTABLISHED,
/// with `tcp_info`.
fn request(family: u8) -> Vec<u8> {
    let length = NLMSG_HEADER + REQUEST_BODY;
    let mut bytes = Vec::with_capacity(length);
    bytes.extend_from_slice(&u32::try_from(length).unwrap_or(0).to_ne_bytes());
    bytes.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    bytes.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    bytes.extend_from_slice(&SEQUENCE.to_ne_bytes());
    bytes.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
    bytes.push(family);
    bytes.push(IPPROTO_TCP);
    bytes.push(1 << (INET_DIAG_INFO - 1)); // idiag_ext
    bytes.push(0);
    bytes.extend_from_slice(&(1u32 << TCP_ESTABLISHED).to_ne_bytes()); // idiag_states
    bytes.resize(length, 0); // inet_diag_sockid: ignored by a dump
    bytes
}

/// A dump being received: the connections so far.
#[derive(Debug, Default)]
struct Reply {
    connections: Vec<TcpConnection>,
}

impl Reply {
    /// Takes in one datagram; true when it ended the dump (`NLMSG_DONE`).
    fn feed(&mut self, mut datagram: &[u8]) -> io::Result<bool> {
        while !datagram.is_empty() {
            if datagram.len() < NLMSG_HEADER {
                return Err(malformed("a message shorter than its header"));
            }
            let length = usize::try_from(u32_at(datagram, 0)).unwrap_or(usize::MAX);
            let kind = u16_at(datagram, 4);
            let sequence = u32_at(datagram, 8);
            if length < NLMSG_HEADER || length > datagram.len() {
                return Err(malformed("a message length beyond the datagram"));
            }
            let body = &datagram[NLMSG_HEADER..length];
            match kind {
                _ if sequence != SEQUENCE => {}
                NLMSG_DONE => return Ok(true),
                NLMSG_ERROR => {
                    let errno = if body.len() >= 4 {
                        i32::from_ne_bytes([body[0], body[1], body[2], body[3]])
                    } else {
                        0
                    };
                    if errno == 0 {
                        // An acknowledgement, not an error.
                    } else {
                        return Err(io::Error::from_raw_os_error(-errno));
                    }
                }
                SOCK_DIAG_BY_FAMILY => {
                    if let Some(connection) = parse_message(body)? {
                        self.connections.push(connection);
                    }
                }
                _ => {}
            }
            datagram = &datagram[align(length).min(datagram.len())..];
        }
        Ok(false)
    }
}

/// One `inet_diag_msg` and its attributes; `None` for a family we do not
/// know (the kernel sends only what was asked, but a reply is not trusted).
fn parse_message(body: &[u8]) -> io::Result<Option<TcpConnection>> {
    if body.len() < MESSAGE_BODY {
        return Err(malformed("a socket message shorter than inet_diag_msg"));
    }
    let family = body[0];
    // inet_diag_sockid at 4: sport, dport (big-endian), src[16], dst[16].
    let local_port = u16::from_be_bytes([body[4], body[5]]);
    let remote_port = u16::from_be_bytes([body[6], body[7]]);
    let (Some(local_ip), Some(remote_ip)) = (
        address(family, &body[8..24]),
        address(family, &body[24..40]),
    ) else {
        return Ok(None);
    };
    let inode = u64::from(u32_at(body, 68));
    let mut bytes_received = 0;
    let mut attributes = &body[MESSAGE_BODY..];
    while attributes.len() >= 4 {
        let length = usize::from(u16_at(attributes, 0));
        let kind = u16_at(attributes, 2);
        if length < 4 || length > attributes.len() {
            return Err(malformed("an attribute length beyond its message"));
        }
        let payload = &attributes[4..length];
        if kind == INET_DIAG_INFO && payload.len() >= BYTES_RECEIVED_AT + 8 {
            let mut counter = [0u8; 8];
            counter.copy_from_slice(&payload[BYTES_RECEIVED_AT..BYTES_RECEIVED_AT + 8]);
            bytes_received = u64::from_ne_bytes(counter);
        }
        attributes = &attributes[align(length).min(attributes.len())..];
    }
    Ok(Some(TcpConnection {
        inode,
        local: canonical(SocketAddr::new(local_ip, local_port)),
        remote: canonical(SocketAddr::new(remote_ip, remote_port)),
        bytes_received,
    }))
}

/// The address in a `__be32[4]` field of family `family`.
fn address(family: u8, field: &[u8]) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::new(
            field[0], field[1], field[2], field[3],
        ))),
        AF_INET6 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(field);
            Some(IpAddr::V6(Ipv6Addr::from(octets)))
        }
        _ => None,
    }
}

/// `address` with an IPv4-mapped IPv6 address as the IPv4 one, and
/// without flow and scope: the form connections are compared in.
fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
}

/// Netlink messages and attributes start at 4-byte boundaries.
fn align(length: usize) -> usize {
    length.saturating_add(3) & !3
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed sock_diag reply: {what}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    /// A netlink message of `kind` with `body`, padded to alignment.
    fn message(kind: u16, sequence: u32, body: &[u8]) -> Vec<u8> {
        let length = NLMSG_HEADER + body.len();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&u32::try_from(length).unwrap().to_ne_bytes());
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&0x2u16.to_ne_bytes()); // NLM_F_MULTI
        bytes.extend_from_slice(&sequence.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        bytes.extend_from_slice(body);
        bytes.resize(align(bytes.len()), 0);
        bytes
    }

    /// An `inet_diag_msg` for an IPv4 connection with a `tcp_info` whose
    /// `tcpi_bytes_received` is `received`.
    fn socket_body(
        local: [u8; 4],
        remote: [u8; 4],
        ports: (u16, u16),
        inode: u32,
        received: u64,
    ) -> Vec<u8> {
        let mut body = vec![AF_INET, 1, 0, 0];
        body.extend_from_slice(&ports.0.to_be_bytes());
        body.extend_from_slice(&ports.1.to_be_bytes());
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&local);
        let mut dst = [0u8; 16];
        dst[..4].copy_from_slice(&remote);
        body.extend_from_slice(&src);
        body.extend_from_slice(&dst);
        body.resize(68, 0); // if, cookie, expires, queues, uid
        body.extend_from_slice(&inode.to_ne_bytes());
        let mut info = vec![0u8; 232];
        info[BYTES_RECEIVED_AT..BYTES_RECEIVED_AT + 8].copy_from_slice(&received.to_ne_bytes());
        body.extend_from_slice(&u16::try_from(4 + info.len()).unwrap().to_ne_bytes());
        body.extend_from_slice(&INET_DIAG_INFO.to_ne_bytes());
        body.extend_from_slice(&info);
        body
    }

    #[test]
    fn a_dump_spanning_datagrams_ends_at_done_with_every_connection() {
        let first = [
            message(
                SOCK_DIAG_BY_FAMILY,
                SEQUENCE,
                &socket_body([127, 0, 0, 1], [10, 0, 0, 5], (40000, 5004), 77, 1234),
            ),
            message(
                SOCK_DIAG_BY_FAMILY,
                SEQUENCE,
                &socket_body([127, 0, 0, 1], [10, 0, 0, 6], (40001, 80), 78, 0),
            ),
        ]
        .concat();
        let mut reply = Reply::default();
        assert!(!reply.feed(&first).unwrap());
        assert!(reply.feed(&message(NLMSG_DONE, SEQUENCE, &[0; 4])).unwrap());
        assert_eq!(reply.connections.len(), 2);
        let c = reply.connections[0];
        assert_eq!(c.inode, 77);
        assert_eq!(c.local, "127.0.0.1:40000".parse().unwrap());
        assert_eq!(c.remote, "10.0.0.5:5004".parse().unwrap());
        assert_eq!(c.bytes_received, 1234);
    }

    #[test]
    fn truncated_or_overlong_messages_are_errors_not_panics() {
        let whole = message(
            SOCK_DIAG_BY_FAMILY,
            SEQUENCE,
            &socket_body([1, 1, 1, 1], [2, 2, 2, 2], (1, 2), 3, 4),
        );
        for cut in [1, NLMSG_HEADER - 1, NLMSG_HEADER + 10, whole.len() - 300] {
            assert!(
                Reply::default().feed(&whole[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        // A header claiming more than the datagram holds.
        let mut lying = whole.clone();
        lying[..4].copy_from_slice(&u32::try_from(whole.len() + 8).unwrap().to_ne_bytes());
        assert!(Reply::default().feed(&lying).is_err());
        // An attribute claiming more than its message holds.
        let mut body = socket_body([1, 1, 1, 1], [2, 2, 2, 2], (1, 2), 3, 4);
        body[MESSAGE_BODY..MESSAGE_BODY + 2].copy_from_slice(&4000u16.to_ne_bytes());
        assert!(
            Reply::default()
                .feed(&message(SOCK_DIAG_BY_FAMILY, SEQUENCE, &body))
                .is_err()
        );
        // A header whose length is below the header's own.
        let mut tiny = message(NLMSG_DONE, SEQUENCE, &[0; 4]);
        tiny[..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(Reply::default().feed(&tiny).is_err());
    }

    #[test]
    fn an_error_message_is_the_requests_failure_and_an_ack_is_not() {
        let refused = message(NLMSG_ERROR, SEQUENCE, &(-libc::EPERM).to_ne_bytes());
        let error = Reply::default().feed(&refused).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EPERM));
        let ack = message(NLMSG_ERROR, SEQUENCE, &0i32.to_ne_bytes());
        assert!(!Reply::default().feed(&ack).unwrap());
    }

    #[test]
    fn messages_of_another_sequence_are_ignored() {
        let stray = message(NLMSG_DONE, SEQUENCE + 7, &[0; 4]);
        assert!(!Reply::default().feed(&stray).unwrap());
    }

    #[test]
    fn ipv4_mapped_addresses_are_reported_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:10.0.0.5]:5004".parse().unwrap();
        assert_eq!(canonical(mapped), "10.0.0.5:5004".parse().unwrap());
    }

    /// A loopback connection that has received exactly `count` bytes, as
    /// the kernel reports it: the client's inode is found, not assumed.
    fn check_loopback(listen: &str, count: usize) {
        let listener = TcpListener::bind(listen).unwrap();
        let server_address = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream.write_all(&vec![7u8; count]).unwrap();
            // Keep it open until the client has looked.
            let _ = stream.read(&mut [0u8; 1]);
        });
        let mut client = TcpStream::connect(server_address).unwrap();
        let mut received = vec![0u8; count];
        client.read_exact(&mut received).unwrap();
        let local = client.local_addr().unwrap();
        let found = established_to(&[server_address]).unwrap();
        let ours: Vec<_> = found
            .iter()
            .filter(|c| c.local == canonical(local))
            .collect();
        assert_eq!(ours.len(), 1, "{found:?}");
        assert_eq!(ours[0].bytes_received, count as u64);
        assert_eq!(ours[0].remote, canonical(server_address));
        let inode = std::fs::metadata(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&client)
        ))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
        assert_eq!(ours[0].inode, inode);
        // Only connections to the endpoint asked for.
        assert!(found.iter().all(|c| c.remote == canonical(server_address)));
        client.write_all(b"x").unwrap();
        server.join().unwrap();
    }

    #[test]
    fn a_loopback_connection_is_found_with_its_byte_count_over_ipv4() {
        check_loopback("127.0.0.1:0", 100_000);
    }

    #[test]
    fn a_loopback_connection_is_found_with_its_byte_count_over_ipv6() {
        check_loopback("[::1]:0", 4321);
    }
}
