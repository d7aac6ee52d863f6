//! QUIC endpoints tuned for moving memory fast: UDP sockets with 4 MiB kernel buffers (socket2,
//! handed to `quinn::Endpoint::new`), flow-control windows sized for a fast link, a 10 s idle
//! timeout with keep-alives, and the stream limits of pagestream's session (one control stream,
//! up to [`MAX_DATA_STREAMS`] data streams, nothing opened by the server).
//!
//! quinn's defaults (1.25 MB per stream) suit 100 Mbit/s at 100 ms RTT; a data stream here may
//! hold 16 MiB in flight and the connection 64 MiB, enough for 10 Gbit/s at ~50 ms or loopback.
//!
//! MTU discovery keeps quinn's bounds (1200 up to 1452-byte packets) on real paths. Larger packets
//! discovered on loopback did not help: under load the kernel dropped datagrams, quinn's
//! black-hole detection took that for a too-small path MTU and fell back to 1200 bytes. Towards a
//! loopback peer the MTU is known, so the sender uses [`LOOPBACK_MTU`]-byte packets as its
//! minimum (no discovery, no fallback).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use quinn::{Endpoint, EndpointConfig, IdleTimeout, TransportConfig, VarInt};
use socket2::{Domain, Protocol, Socket, Type};

use super::error::TransportError;

/// Kernel send and receive buffer of every UDP socket.
pub const SOCKET_BUFFER_BYTES: usize = 4 << 20;
/// Receive window of one stream.
pub const STREAM_RECEIVE_WINDOW: u32 = 16 << 20;
/// Receive window of the whole connection.
pub const CONNECTION_RECEIVE_WINDOW: u32 = 64 << 20;
/// Bytes the sender may have unacknowledged over all streams.
pub const SEND_WINDOW: u64 = 64 << 20;
/// The connection dies after this long without hearing from the peer.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most data streams a receiver accepts in one session.
pub const MAX_DATA_STREAMS: usize = 16;
/// The packet size towards a loopback peer: the loopback interface's MTU (64 KiB) is known, so
/// no discovery is needed and no loss can be mistaken for a too-small path MTU. quinn sends up to
/// 10 packets in one GSO batch, which the kernel limits to 64 KiB in all: with 16 KiB packets no
/// connection came up, and at 6400 bytes (batches just under 64 KiB) a sender's closing packet
/// was sometimes lost (the receiver then only noticed at the idle timeout). 4000 leaves room.
pub const LOOPBACK_MTU: u16 = 4000;
/// The largest UDP payload an endpoint accepts (advertised to the peer; a sender still keeps to
/// what its path allows).
pub const MAX_UDP_PAYLOAD: u16 = LOOPBACK_MTU;

/// Which side an endpoint is on (the server accepts the streams the client opens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The sender.
    Client,
    /// The receiver.
    Server,
}

/// The transport parameters of a pagestream connection.
pub fn transport_config(side: Side, idle_timeout: Duration) -> Result<TransportConfig, TransportError> {
    let mut t = TransportConfig::default();
    let idle = IdleTimeout::try_from(idle_timeout)
        .map_err(|_| TransportError::Config(format!("idle timeout {idle_timeout:?} is too long")))?;
    t.max_idle_timeout(Some(idle));
    t.keep_alive_interval(Some((idle_timeout / 4).max(Duration::from_millis(100))));
    t.stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW));
    t.receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW));
    t.send_window(SEND_WINDOW);
    match side {
        Side::Server => {
            t.max_concurrent_bidi_streams(VarInt::from_u32(1));
            t.max_concurrent_uni_streams(VarInt::from_u32(MAX_DATA_STREAMS as u32));
        }
        Side::Client => {
            t.max_concurrent_bidi_streams(VarInt::from_u32(0));
            t.max_concurrent_uni_streams(VarInt::from_u32(0));
        }
    }
    Ok(t)
}

/// A non-blocking UDP socket bound to `addr` with [`SOCKET_BUFFER_BYTES`] kernel buffers (a
/// warning is logged when the kernel grants less, e.g. a low `net.core.rmem_max`).
pub fn udp_socket(addr: SocketAddr) -> Result<UdpSocket, TransportError> {
    let io = |what: &str, e| TransportError::io(format!("{what} UDP socket {addr}"), e);
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(|e| io("creating", e))?;
    if addr.is_ipv6() {
        // Accept IPv4-mapped peers on [::] as well, where the system allows it.
        let _ = socket.set_only_v6(false);
    }
    let (set_recv, get_recv) = (Socket::set_recv_buffer_size, Socket::recv_buffer_size);
    tune_buffer(&socket, addr, "receive", "rmem_max", set_recv, get_recv);
    tune_buffer(&socket, addr, "send", "wmem_max", Socket::set_send_buffer_size, Socket::send_buffer_size);
    socket.set_nonblocking(true).map_err(|e| io("configuring", e))?;
    socket.bind(&addr.into()).map_err(|e| io("binding", e))?;
    Ok(socket.into())
}

fn tune_buffer(
    socket: &Socket,
    addr: SocketAddr,
    what: &str,
    sysctl: &str,
    set: impl Fn(&Socket, usize) -> std::io::Result<()>,
    get: impl Fn(&Socket) -> std::io::Result<usize>,
) {
    if let Err(e) = set(socket, SOCKET_BUFFER_BYTES) {
        tracing::warn!("cannot set the UDP {what} buffer of {addr} to {SOCKET_BUFFER_BYTES} bytes: {e}");
    }
    // Linux reports twice the size it grants (its bookkeeping included).
    match get(socket) {
        Ok(got) if got < SOCKET_BUFFER_BYTES => tracing::warn!(
            "UDP {what} buffer of {addr} is {got} bytes, less than {SOCKET_BUFFER_BYTES} (raise net.core.{sysctl})"
        ),
        Ok(got) => tracing::debug!("UDP {what} buffer of {addr}: {got} bytes"),
        Err(e) => tracing::debug!("cannot read the UDP {what} buffer size of {addr}: {e}"),
    }
}

/// The unspecified address of `peer`'s family, port 0: where a client binds.
pub fn client_bind_addr(peer: SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

/// A quinn endpoint on a tuned socket bound to `bind`; a server when `server` is given. Must be
/// called inside a tokio runtime context.
pub fn make_endpoint(bind: SocketAddr, server: Option<quinn::ServerConfig>) -> Result<Endpoint, TransportError> {
    let socket = udp_socket(bind)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| TransportError::Config("no async runtime for the QUIC endpoint".into()))?;
    let mut config = EndpointConfig::default();
    config
        .max_udp_payload_size(MAX_UDP_PAYLOAD)
        .map_err(|e| TransportError::Config(format!("UDP payload size {MAX_UDP_PAYLOAD}: {e}")))?;
    Endpoint::new(config, server, socket, runtime)
        .map_err(|e| TransportError::io(format!("starting the QUIC endpoint on {bind}"), e))
}

/// A tokio runtime that runs only while its owner thread is inside `block_on` (for a side
/// whose one thread both waits for its own events and drives the connection).
pub fn current_thread_runtime() -> Result<tokio::runtime::Runtime, TransportError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| TransportError::io("starting a current-thread runtime".to_string(), e))
}

/// A multi-threaded tokio runtime for one side of a session (`threads` workers).
pub fn runtime(name: &str, threads: usize) -> Result<tokio::runtime::Runtime, TransportError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name(name)
        .enable_all()
        .build()
        .map_err(|e| TransportError::io(format!("starting the {name} runtime"), e))
}

/// The transport parameters of a sender dialing `peer`: [`transport_config`], with packets of
/// [`LOOPBACK_MTU`] bytes when `peer` is on this host (fewer packets to seal, send and
/// acknowledge per byte).
pub fn client_transport(peer: SocketAddr, idle_timeout: Duration) -> Result<Arc<TransportConfig>, TransportError> {
    Ok(Arc::new(client_transport_config(peer, idle_timeout)?))
}

/// [`client_transport`], not yet shared (for callers that change more).
pub fn client_transport_config(peer: SocketAddr, idle_timeout: Duration) -> Result<TransportConfig, TransportError> {
    let mut t = transport_config(Side::Client, idle_timeout)?;
    if peer.ip().is_loopback() {
        t.initial_mtu(LOOPBACK_MTU).min_mtu(LOOPBACK_MTU).mtu_discovery_config(None);
    }
    Ok(t)
}

/// A shared transport config, ready for quinn.
pub fn shared_transport(side: Side, idle_timeout: Duration) -> Result<Arc<TransportConfig>, TransportError> {
    Ok(Arc::new(transport_config(side, idle_timeout)?))
}
