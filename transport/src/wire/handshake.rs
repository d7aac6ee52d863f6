//! The handshake: the client's [`Hello`] (protocol version, page size, page encodings it will use,
//! its largest run, a session id), answered by the server with its own `Hello` (same session id,
//! the agreed encodings and run limit) or a `Reject` with a reason.
//!
//! [`answer_hello`] is the server's decision and [`check_answer`] the client's check of the
//! answer; both are pure functions, so the negotiation is tested without sockets. A Hello from a
//! different protocol version is rejected while decoding ([`WireError::VersionMismatch`]), before
//! the rest of its body is interpreted.

use std::fmt;

use bytes::{BufMut, BytesMut};

use super::error::WireError;
use super::frame::BodyReader;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 3;

/// First four bytes of every Hello body: `PGST`.
pub const HELLO_MAGIC: u32 = u32::from_le_bytes(*b"PGST");

/// Size of a version-1 Hello body: magic, version, page size, codecs, max run pages, session id.
pub const HELLO_BODY_LEN: usize = 4 + 2 + 8 + 1 + 4 + 16;

/// The smallest page size the protocol accepts.
pub const MIN_PAGE_SIZE: u64 = 256;
/// The largest page size the protocol accepts.
pub const MAX_PAGE_SIZE: u64 = 1 << 20;

/// Checks that `page_size` is a power of two in [`MIN_PAGE_SIZE`]`..=`[`MAX_PAGE_SIZE`].
pub fn check_page_size(page_size: u64) -> Result<u64, WireError> {
    if page_size.is_power_of_two() && (MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size) {
        Ok(page_size)
    } else {
        Err(WireError::InvalidPageSize { page_size })
    }
}

/// A set of page encodings (a bit set on the wire). Zero runs need no codec and are always
/// allowed; raw is mandatory for both peers, so that incompressible pages can always be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Codecs(u8);

impl Codecs {
    /// Pages as they are.
    pub const RAW: Codecs = Codecs(1);
    /// One LZ4 block per run (lz4_flex block format).
    pub const LZ4: Codecs = Codecs(2);
    /// Every encoding this build knows.
    pub const ALL: Codecs = Codecs(3);

    /// The set from its wire byte; bits this build does not know are dropped (a newer peer may
    /// offer more, and negotiation picks the common ones).
    pub fn from_bits_truncate(bits: u8) -> Codecs {
        Codecs(bits & Codecs::ALL.0)
    }

    /// The wire byte.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// Whether every encoding of `other` is in `self`.
    pub fn contains(self, other: Codecs) -> bool {
        self.0 & other.0 == other.0
    }

    /// The encodings in both sets.
    pub fn intersection(self, other: Codecs) -> Codecs {
        Codecs(self.0 & other.0)
    }
}

impl std::ops::BitOr for Codecs {
    type Output = Codecs;
    fn bitor(self, rhs: Codecs) -> Codecs {
        Codecs(self.0 | rhs.0)
    }
}

impl fmt::Display for Codecs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [(Codecs::RAW, "raw"), (Codecs::LZ4, "lz4")]
            .into_iter()
            .filter(|(c, _)| self.contains(*c))
            .map(|(_, n)| n)
            .collect();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join("+"))
        }
    }
}

/// The first frame each side sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hello {
    /// Protocol version ([`PROTOCOL_VERSION`]).
    pub version: u16,
    /// The sender's page size; both sides must agree.
    pub page_size: u64,
    /// Client: encodings it will use. Server: the agreed encodings.
    pub codecs: Codecs,
    /// Client: its longest run. Server: the agreed limit (never more than the client's).
    pub max_run_pages: u32,
    /// Chosen by the client; the server echoes it.
    pub session_id: [u8; 16],
}

impl Hello {
    /// A Hello of this build's protocol version.
    pub fn new(page_size: u64, codecs: Codecs, max_run_pages: u32, session_id: [u8; 16]) -> Hello {
        Hello { version: PROTOCOL_VERSION, page_size, codecs, max_run_pages, session_id }
    }

    /// Appends the body (without the frame header).
    pub fn encode_body(&self, out: &mut BytesMut) {
        out.put_u32_le(HELLO_MAGIC);
        out.put_u16_le(self.version);
        out.put_u64_le(self.page_size);
        out.put_u8(self.codecs.bits());
        out.put_u32_le(self.max_run_pages);
        out.put_slice(&self.session_id);
    }

    /// Parses a body: magic, then version (a different version is refused here, whatever
    /// follows), then exactly [`HELLO_BODY_LEN`] bytes with a valid page size.
    pub fn decode_body(body: &[u8]) -> Result<Hello, WireError> {
        let short = || WireError::BadLength { frame: "Hello", got: body.len(), want: HELLO_BODY_LEN };
        let mut r = BodyReader::new("Hello", body);
        let magic = r.u32().map_err(|_| short())?;
        if magic != HELLO_MAGIC {
            return Err(WireError::BadMagic { got: magic, want: HELLO_MAGIC });
        }
        let version = r.u16().map_err(|_| short())?;
        if version != PROTOCOL_VERSION {
            return Err(WireError::VersionMismatch { ours: PROTOCOL_VERSION, theirs: version });
        }
        if body.len() != HELLO_BODY_LEN {
            return Err(short());
        }
        let page_size = check_page_size(r.u64()?)?;
        let codecs = Codecs::from_bits_truncate(r.u8()?);
        let max_run_pages = r.u32()?;
        let session_id = r.bytes16()?;
        r.finish()?;
        Ok(Hello { version, page_size, codecs, max_run_pages, session_id })
    }
}

/// What both sides agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    /// The page size.
    pub page_size: u64,
    /// Encodings the client may use (always contains raw).
    pub codecs: Codecs,
    /// The longest run the client may send.
    pub max_run_pages: u32,
    /// The session id.
    pub session_id: [u8; 16],
}

fn negotiate(ours: &Hello, theirs: &Hello) -> Result<Agreement, WireError> {
    if theirs.version != ours.version {
        return Err(WireError::VersionMismatch { ours: ours.version, theirs: theirs.version });
    }
    if theirs.page_size != ours.page_size {
        return Err(WireError::PageSizeMismatch { ours: ours.page_size, theirs: theirs.page_size });
    }
    let codecs = ours.codecs.intersection(theirs.codecs);
    if !codecs.contains(Codecs::RAW) {
        return Err(WireError::NoCommonCodec { ours: ours.codecs.to_string(), theirs: theirs.codecs.to_string() });
    }
    let max_run_pages = ours.max_run_pages.min(theirs.max_run_pages);
    if max_run_pages == 0 {
        return Err(WireError::InvalidRunLimit {
            max_run_pages: 0,
            page_size: ours.page_size,
            limit: u64::from(ours.max_run_pages.max(theirs.max_run_pages)),
        });
    }
    Ok(Agreement { page_size: ours.page_size, codecs, max_run_pages, session_id: theirs.session_id })
}

/// The server's answer to the client's Hello: `Ok((reply, agreement))` to go on with `reply`
/// sent back, or `Err` whose message goes back in a Reject.
pub fn answer_hello(server: &Hello, client: &Hello) -> Result<(Hello, Agreement), WireError> {
    let agreement = negotiate(server, client)?;
    let reply = Hello {
        version: server.version,
        page_size: server.page_size,
        codecs: agreement.codecs,
        max_run_pages: agreement.max_run_pages,
        session_id: client.session_id,
    };
    Ok((reply, agreement))
}

/// The client's check of the server's Hello: same version and page size, the session id echoed,
/// agreed encodings and run limit within what the client offered.
pub fn check_answer(client: &Hello, server: &Hello) -> Result<Agreement, WireError> {
    if server.session_id != client.session_id {
        return Err(WireError::SessionMismatch);
    }
    let agreement = negotiate(client, server)?;
    Ok(Agreement { session_id: client.session_id, ..agreement })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(page_size: u64, codecs: Codecs, max: u32) -> Hello {
        Hello::new(page_size, codecs, max, [7; 16])
    }

    #[test]
    fn agreement_takes_common_codecs_and_smaller_runs() {
        let (reply, a) = answer_hello(&hello(4096, Codecs::RAW, 256), &hello(4096, Codecs::ALL, 1024)).unwrap();
        assert_eq!(a.codecs, Codecs::RAW);
        assert_eq!(a.max_run_pages, 256);
        assert_eq!(reply.session_id, [7; 16]);
        assert_eq!(check_answer(&hello(4096, Codecs::ALL, 1024), &reply).unwrap(), a);
    }

    #[test]
    fn mismatches_are_refused_with_clear_messages() {
        let e = answer_hello(&hello(4096, Codecs::ALL, 1024), &hello(16384, Codecs::ALL, 1024)).unwrap_err();
        assert_eq!(e.to_string(), "page size mismatch: this side uses 4096-byte pages, the peer 16384-byte pages");
        let e = answer_hello(&hello(4096, Codecs::ALL, 1024), &hello(4096, Codecs::LZ4, 1024)).unwrap_err();
        assert_eq!(e.to_string(), "no common page encoding: this side offers raw+lz4, the peer lz4");
        let e = answer_hello(&hello(4096, Codecs::ALL, 1024), &hello(4096, Codecs::ALL, 0)).unwrap_err();
        assert!(matches!(e, WireError::InvalidRunLimit { .. }), "{e}");
        let mut other = hello(4096, Codecs::ALL, 1024);
        other.session_id = [8; 16];
        assert_eq!(check_answer(&hello(4096, Codecs::ALL, 1024), &other), Err(WireError::SessionMismatch));
    }

    #[test]
    fn body_checks() {
        let h = hello(4096, Codecs::ALL, 1024);
        let mut body = BytesMut::new();
        h.encode_body(&mut body);
        assert_eq!(body.len(), HELLO_BODY_LEN);
        assert_eq!(Hello::decode_body(&body), Ok(h));
        assert_eq!(
            Hello::decode_body(&body[..HELLO_BODY_LEN - 1]).unwrap_err(),
            WireError::BadLength { frame: "Hello", got: HELLO_BODY_LEN - 1, want: HELLO_BODY_LEN }
        );
        let mut next = body.clone();
        next[4..6].copy_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());
        next.extend_from_slice(&[0; 9]);
        assert_eq!(
            Hello::decode_body(&next),
            Err(WireError::VersionMismatch { ours: PROTOCOL_VERSION, theirs: PROTOCOL_VERSION + 1 })
        );
        let mut bad_magic = body.clone();
        bad_magic[0] = b'X';
        assert!(matches!(Hello::decode_body(&bad_magic), Err(WireError::BadMagic { .. })));
        let mut bad_ps = body.clone();
        bad_ps[6..14].copy_from_slice(&4097u64.to_le_bytes());
        assert_eq!(Hello::decode_body(&bad_ps), Err(WireError::InvalidPageSize { page_size: 4097 }));
        let mut future_bits = body;
        future_bits[14] = 0xff;
        assert_eq!(Hello::decode_body(&future_bits).map(|h| h.codecs), Ok(Codecs::ALL));
    }
}
