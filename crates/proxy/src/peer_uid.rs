//! Which Unix uid owns the client end of a loopback TCP connection (the relay's `wrong-peer`
//! check, issue 12).
//!
//! A Unix socket tells its peer's credentials (`SO_PEERCRED`); a TCP socket does not, even on
//! loopback. The kernel does know the other end, though: on loopback the client's socket is in
//! this network namespace's TCP table, and `NETLINK_SOCK_DIAG` (inet_diag, what `ss` uses) looks
//! one socket up by its exact 4-tuple and reports its uid. That is one request and one answer,
//! no dump of the table and no walk of `/proc/net/tcp`; it needs no capability.
//!
//! The uid reported is the socket's `sk_uid`: the fsuid of the process that created the socket.
//! A socket handed over to another process (fd passing) keeps its creator's uid.
//!
//! A socket that no process holds any more has no owner. The kernel still finds a closed
//! client's socket for a while: orphaned (FIN_WAIT1, its own uid) and then as a TIME_WAIT
//! socket, answered with uid 0, which would read as root. Both have inode 0 (no open file
//! behind them), as have request sockets; every answer without an inode is therefore
//! `Ok(None)`, like a 4-tuple the kernel does not know (ENOENT).
//!
//! One netlink socket per call. A private socket can only ever hold the answer to its own
//! request, so concurrent callers need no lock and a call that failed half-way leaves no stale
//! answer for the next one. The kernel handles a sock_diag request synchronously inside
//! `sendto`, so the answer is already queued when `sendto` returns: the socket is non-blocking
//! and a missing answer is an error, never a hang on this blocking call path.
//!
//! Cost, measured with the ignored test `lookup_cost` (1000 lookups of a live loopback
//! connection, 2-core VM): 20–35 µs per lookup in a debug or a release build, of which about
//! 12 µs is opening and closing the netlink socket. A socket kept per thread would save that
//! much; against one relayed LLM request it is not worth the state.

use std::io;
use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_packet_sock_diag::{SockDiagMessage, inet::InetResponse};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;

/// `INET_DIAG_NOCOOKIE`: an exact lookup checks the socket cookie unless it is all ones.
const NO_COOKIE: [u8; 8] = [0xff; 8];

/// Sequence number of our one request, checked in the answer.
const SEQUENCE: u32 = 1;

/// The answer to one socket with no extensions asked is about 100 bytes; anything filling this
/// buffer is not what we asked for.
const RECEIVE_BUFFER: usize = 8192;

/// The uid owning the TCP socket at `peer` that is connected to `local` (this process's
/// accepted socket's local address), looked up with NETLINK_SOCK_DIAG (inet_diag, exact
/// 4-tuple, no dump). Ok(None): no such socket (it closed). Loopback TCP has no SO_PEERCRED,
/// hence this.
///
/// The socket looked up is the client's own: source `peer`, destination `local`. IPv4-mapped
/// IPv6 addresses (a dual-stack listener) are looked up as IPv4. A socket no process holds any
/// more (closed: TIME_WAIT, orphaned) is `Ok(None)`. `Err`: the two addresses are of different
/// families, or netlink failed or answered something unexpected. 20–35 µs a call (module doc).
pub(crate) fn tcp_peer_uid(local: SocketAddr, peer: SocketAddr) -> io::Result<Option<u32>> {
    let request = socket_id(local, peer)?;
    let family = match request.source_address {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    };

    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    header.sequence_number = SEQUENCE;
    let mut message = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            // Every state: whether a process still holds the socket is decided by its inode.
            states: StateFlags::all(),
            socket_id: request.clone(),
        })
        .into(),
    );
    message.finalize();
    let mut bytes = vec![0; message.buffer_len()];
    message.serialize(&mut bytes);

    let socket = netlink_sys::Socket::new(NETLINK_SOCK_DIAG)?;
    socket.set_non_blocking(true)?;
    let kernel = netlink_sys::SocketAddr::new(0, 0);
    let sent = socket.send_to(&bytes, &kernel, 0)?;
    if sent != bytes.len() {
        return Err(unexpected(format!("sent {sent} of {} bytes", bytes.len())));
    }
    let mut answer = Vec::with_capacity(RECEIVE_BUFFER);
    let received = match socket.recv(&mut answer, 0) {
        Ok(received) => received,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            return Err(unexpected("no answer queued after the request".to_owned()));
        }
        Err(e) => return Err(e),
    };
    if received >= RECEIVE_BUFFER || received != answer.len() {
        return Err(unexpected(format!("answer of {received} bytes")));
    }
    interpret(&answer, &request)
}

/// The socket id of the client's socket: source `peer`, destination `local`, both of one family.
fn socket_id(local: SocketAddr, peer: SocketAddr) -> io::Result<SocketId> {
    let (source, destination) = (peer.ip().to_canonical(), local.ip().to_canonical());
    if source.is_ipv4() != destination.is_ipv4() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("peer {peer} and local {local} are of different address families"),
        ));
    }
    // A link-local peer's socket is bound to its interface; the lookup must name it.
    let interface_id = match peer {
        SocketAddr::V6(peer) if source.is_ipv6() => peer.scope_id(),
        _ => 0,
    };
    Ok(SocketId {
        source_port: peer.port(),
        destination_port: local.port(),
        source_address: source,
        destination_address: destination,
        interface_id,
        cookie: NO_COOKIE,
    })
}

/// The uid in the kernel's answer to the request for `asked`.
fn interpret(answer: &[u8], asked: &SocketId) -> io::Result<Option<u32>> {
    let message = NetlinkMessage::<SockDiagMessage>::deserialize(answer)
        .map_err(|e| unexpected(format!("undecodable answer: {e}")))?;
    if message.header.sequence_number != SEQUENCE {
        return Err(unexpected(format!(
            "answer to request {}",
            message.header.sequence_number
        )));
    }
    match message.payload {
        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
            owner(&response, asked)
        }
        NetlinkPayload::Error(error) if error.code.is_none() => Err(unexpected(
            "an acknowledgement instead of an answer".to_owned(),
        )),
        NetlinkPayload::Error(error) => match error.to_io() {
            // ENOENT: no socket with that 4-tuple (any more).
            e if e.kind() == io::ErrorKind::NotFound => Ok(None),
            e => Err(e),
        },
        other => Err(unexpected(format!("answer {other:?}"))),
    }
}

/// The owner reported in `response`, if a process still holds the socket.
fn owner(response: &InetResponse, asked: &SocketId) -> io::Result<Option<u32>> {
    let found = &response.header.socket_id;
    let same = found.source_address == asked.source_address
        && found.destination_address == asked.destination_address
        && found.source_port == asked.source_port
        && found.destination_port == asked.destination_port;
    if !same {
        return Err(unexpected(format!(
            "answer about another socket: {found:?}"
        )));
    }
    // TIME_WAIT and orphaned sockets (closed by their process) and request sockets have no
    // inode, and the kernel reports uid 0 for the first and last: no owner.
    if response.header.inode == 0 {
        return Ok(None);
    }
    Ok(Some(response.header.uid))
}

fn unexpected(what: String) -> io::Error {
    io::Error::other(format!("sock_diag lookup: {what}"))
}

#[cfg(test)]
mod tests {
    use super::tcp_peer_uid;
    use std::io::ErrorKind;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::os::unix::fs::MetadataExt;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    /// This process's effective uid: the owner of /proc/self.
    fn euid() -> u32 {
        match std::fs::metadata("/proc/self") {
            Ok(meta) => meta.uid(),
            Err(e) => panic!("reading /proc/self: {e}"),
        }
    }

    fn listen(address: &str) -> std::io::Result<TcpListener> {
        TcpListener::bind(address)
    }

    /// A connection from this process: (the accepted socket's local address, the client's
    /// address as the accepted socket sees it, the client, the accepted socket).
    fn connect(listener: &TcpListener) -> (SocketAddr, SocketAddr, TcpStream, TcpStream) {
        let target = listener.local_addr().expect("listener address");
        let client = TcpStream::connect(target).expect("connect");
        let (accepted, peer) = listener.accept().expect("accept");
        let local = accepted.local_addr().expect("accepted local address");
        assert_eq!(peer, client.local_addr().expect("client address"));
        (local, peer, client, accepted)
    }

    #[test]
    fn own_ipv4_client_is_ours() {
        let listener = listen("127.0.0.1:0").expect("bind 127.0.0.1");
        let (local, peer, _client, _accepted) = connect(&listener);
        assert_eq!(tcp_peer_uid(local, peer).expect("lookup"), Some(euid()));
    }

    #[test]
    fn own_ipv6_client_is_ours() {
        let listener = match listen("[::1]:0") {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("skipped: ::1 is unavailable here ({e})");
                return;
            }
        };
        let (local, peer, _client, _accepted) = connect(&listener);
        assert!(peer.is_ipv6());
        assert_eq!(tcp_peer_uid(local, peer).expect("lookup"), Some(euid()));
    }

    #[test]
    fn ipv4_mapped_addresses_are_looked_up_as_ipv4() {
        let listener = listen("127.0.0.1:0").expect("bind 127.0.0.1");
        let (local, peer, _client, _accepted) = connect(&listener);
        let mapped = |a: SocketAddr| match a {
            SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
            SocketAddr::V6(_) => a,
        };
        assert_eq!(
            tcp_peer_uid(mapped(local), mapped(peer)).expect("lookup"),
            Some(euid())
        );
        let mixed = tcp_peer_uid(local, "[::1]:1".parse().expect("address"));
        assert_eq!(
            mixed.expect_err("mixed families").kind(),
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn closed_client_has_no_owner() {
        let listener = listen("127.0.0.1:0").expect("bind 127.0.0.1");
        let (local, peer, client, _accepted) = connect(&listener);
        assert_eq!(tcp_peer_uid(local, peer).expect("lookup"), Some(euid()));
        drop(client);
        // The client's socket lingers (FIN_WAIT2, then TIME_WAIT) with uid 0 in the kernel's
        // answer: that must not read as root. Allow the FIN a moment to be processed.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found = tcp_peer_uid(local, peer).expect("lookup");
            if found.is_none() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "closed client still owned: {found:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn unknown_four_tuple_has_no_owner() {
        // A listener that nobody connected to: no socket has it as its destination.
        let listener = listen("127.0.0.1:0").expect("bind 127.0.0.1");
        let local = listener.local_addr().expect("listener address");
        let peer: SocketAddr = "127.0.0.1:9".parse().expect("address");
        assert_eq!(tcp_peer_uid(local, peer).expect("lookup"), None);
    }

    #[test]
    fn client_of_another_uid_is_theirs() {
        if euid() != 0 {
            eprintln!("skipped: needs root to start a client as uid 65534");
            return;
        }
        let listener = listen("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().expect("listener address").port();
        let script = format!("exec 3<>/dev/tcp/127.0.0.1/{port}; exec sleep 5");
        let mut child = Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .args(["bash", "-c", &script])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn setpriv (util-linux)");

        listener.set_nonblocking(true).expect("nonblocking");
        let deadline = Instant::now() + Duration::from_secs(10);
        let accepted = loop {
            match listener.accept() {
                Ok(accepted) => break Ok(accepted),
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => break Err(e),
            }
        };
        let found = accepted.and_then(|(stream, peer)| {
            let local = stream.local_addr()?;
            tcp_peer_uid(local, peer)
        });
        // Child::kill signals the child's own PID (bash exec'd sleep, which holds the socket).
        let killed = child.kill();
        let _ = child.wait();
        killed.expect("kill the client");
        assert_eq!(found.expect("accept and lookup"), Some(65534));
    }

    /// The figure in the module doc: `cargo test -p gatehouse-proxy peer_uid -- --ignored
    /// --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn lookup_cost() {
        let listener = listen("127.0.0.1:0").expect("bind 127.0.0.1");
        let (local, peer, _client, _accepted) = connect(&listener);
        let (rounds, me) = (1000, Some(euid()));
        let start = Instant::now();
        for _ in 0..rounds {
            assert_eq!(tcp_peer_uid(local, peer).expect("lookup"), me);
        }
        let each = start.elapsed() / rounds;
        eprintln!("tcp_peer_uid: {} ns per lookup", each.as_nanos());
    }
}
