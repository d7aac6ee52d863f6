//! pagestream-transport: the wire side of pagestream.
//!
//! * [`criu_ps`]: CRIU's page-server protocol as a sans-IO codec (bytes in, typed messages out).
//! * [`wire`]: pagestream's own QUIC protocol (handshake, control and data frames) as a sans-IO
//!   codec.
//! * [`quic`]: the QUIC page transport over it: [`quic::QuicSink`] (the sender, a blocking
//!   [`pagestream_engine::sink::PageSink`]) and [`quic::Receiver`] (lands a session as a CRIU
//!   image directory), mutual TLS 1.3 and development certificates.
//! * [`lazy`]: lazy (post-copy) restore over QUIC: `serve-lazy`'s server and the daemon's
//!   remote page source (urgent fault stream, background push, reconnection).
//! * [`relay`]: CRIU page-server sessions forwarded over QUIC (`pagestream page-server --to` to
//!   `pagestream receive --criu-sessions`).

pub mod criu_ps;
pub mod lazy;
pub mod quic;
pub mod relay;
mod sticky;
mod sys;
pub mod wire;
