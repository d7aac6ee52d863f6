//! [`ReplyReader`]: the client side's blocking read loop over a page server's answers: decode
//! what is buffered, else read more from the socket. Used by pagestream's two CRIU-protocol
//! clients (`client_sink`, `lazy_client`), each mapping the errors to its own words.

use std::io::Read;
use std::net::TcpStream;

use bytes::BytesMut;

use super::{ClientInput, ProtocolError, ReplyDecoder, ReplyKind};

/// Bytes read from the socket per call.
const READ_CHUNK: usize = 256 << 10;

/// Why the next input could not be read.
#[derive(Debug)]
pub enum ReadFailure {
    /// The bytes are not the protocol.
    Protocol(ProtocolError),
    /// The socket failed.
    Io(std::io::Error),
    /// The server closed the connection.
    Closed,
}

/// Decoded answers from one socket.
pub struct ReplyReader {
    sock: TcpStream,
    replies: ReplyDecoder,
    buf: BytesMut,
    chunk: Vec<u8>,
}

impl ReplyReader {
    /// Reads answers from `sock` with `replies`.
    pub fn new(sock: TcpStream, replies: ReplyDecoder) -> ReplyReader {
        ReplyReader { sock, replies, buf: BytesMut::new(), chunk: vec![0u8; READ_CHUNK] }
    }

    /// The socket (to shut it down).
    pub fn socket(&self) -> &TcpStream {
        &self.sock
    }

    /// Announces the answer the next command is owed.
    pub fn expect(&mut self, kind: ReplyKind) {
        self.replies.expect(kind);
    }

    /// The next reply or page-data chunk.
    pub fn read_input(&mut self) -> Result<ClientInput, ReadFailure> {
        loop {
            if let Some(input) = self.replies.decode(&mut self.buf).map_err(ReadFailure::Protocol)? {
                return Ok(input);
            }
            let n = self.sock.read(&mut self.chunk).map_err(ReadFailure::Io)?;
            if n == 0 {
                return Err(ReadFailure::Closed);
            }
            self.buf.extend_from_slice(&self.chunk[..n]);
        }
    }
}
