//! [`WireError`]: everything that can be wrong with pagestream's own QUIC protocol, on decode
//! (the peer sent something invalid) and on encode (a value that cannot go on the wire).
//!
//! Messages name the frame and the offending value so that a log line alone tells what the peer
//! sent. Errors are `Clone` because a decoder that failed is poisoned and keeps returning the same
//! error.

use thiserror::Error;

use super::data::Encoding;

/// An invalid pagestream frame, or a handshake that cannot succeed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    /// The frame type byte is not one pagestream defines.
    #[error("unknown frame type {ty:#04x}")]
    UnknownFrameType {
        /// The type byte.
        ty: u8,
    },

    /// A known frame on a stream where it does not belong (e.g. a data frame on the control
    /// stream).
    #[error("{frame} frame is not allowed on the {stream} stream")]
    UnexpectedFrame {
        /// The frame's name.
        frame: &'static str,
        /// Which stream it arrived on ("control" or "data").
        stream: &'static str,
    },

    /// The frame header announces a body larger than the limit for its type.
    #[error("{frame} frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The frame's name.
        frame: &'static str,
        /// The announced body length.
        len: u64,
        /// The limit.
        max: u64,
    },

    /// A fixed-size body of the wrong size.
    #[error("{frame} frame body is {got} bytes, expected {want}")]
    BadLength {
        /// The frame's name.
        frame: &'static str,
        /// Body length received.
        got: usize,
        /// Body length the frame has.
        want: usize,
    },

    /// A variable-size body that ends before its fields do.
    #[error("{frame} frame body ends inside its fields")]
    ShortBody {
        /// The frame's name.
        frame: &'static str,
    },

    /// A variable-size body with bytes after its last field.
    #[error("{frame} frame body has {extra} bytes after its last field")]
    TrailingBytes {
        /// The frame's name.
        frame: &'static str,
        /// How many.
        extra: usize,
    },

    /// A string longer than [`MAX_STRING_LEN`](super::MAX_STRING_LEN).
    #[error("{frame} string of {len} bytes exceeds the limit of {max} bytes")]
    StringTooLong {
        /// The frame's name.
        frame: &'static str,
        /// The string's length.
        len: usize,
        /// The limit.
        max: usize,
    },

    /// A string that is not UTF-8.
    #[error("{frame} string is not valid UTF-8")]
    NotUtf8 {
        /// The frame's name.
        frame: &'static str,
    },

    /// A Hello that does not start with the pagestream magic: not a pagestream peer.
    #[error("handshake magic {got:#010x} is not pagestream's {want:#010x}")]
    BadMagic {
        /// The magic received.
        got: u32,
        /// The magic expected.
        want: u32,
    },

    /// The peers speak different protocol versions.
    #[error("protocol version mismatch: this side speaks version {ours}, the peer version {theirs}")]
    VersionMismatch {
        /// Our version.
        ours: u16,
        /// The peer's version.
        theirs: u16,
    },

    /// The peers have different page sizes: the images would not restore on this host.
    #[error("page size mismatch: this side uses {ours}-byte pages, the peer {theirs}-byte pages")]
    PageSizeMismatch {
        /// Our page size.
        ours: u64,
        /// The peer's page size.
        theirs: u64,
    },

    /// An unusable page size (not a power of two between 256 bytes and 1 MiB).
    #[error("page size {page_size} is not a power of two between 256 and 1048576")]
    InvalidPageSize {
        /// The page size.
        page_size: u64,
    },

    /// Unusable run limits (0 pages, or runs too large for one frame).
    #[error("a limit of {max_run_pages} pages per run of {page_size} bytes is not usable (1 ..= {limit} pages)")]
    InvalidRunLimit {
        /// The requested pages per run.
        max_run_pages: u64,
        /// The page size.
        page_size: u64,
        /// The largest usable value for this page size.
        limit: u64,
    },

    /// The peers share no page encoding (raw is required on both sides).
    #[error("no common page encoding: this side offers {ours}, the peer {theirs}")]
    NoCommonCodec {
        /// Ours, as text.
        ours: String,
        /// The peer's, as text.
        theirs: String,
    },

    /// The server's Hello does not echo the client's session id.
    #[error("the server answered for another session")]
    SessionMismatch,

    /// A pagemap kind byte that is neither task (0) nor shmem (1).
    #[error("unknown pagemap kind {kind}")]
    UnknownPagemapKind {
        /// The kind byte.
        kind: u8,
    },

    /// An encoding byte that is not zero (0), raw (1) or LZ4 (2).
    #[error("unknown page encoding {encoding}")]
    UnknownEncoding {
        /// The encoding byte.
        encoding: u8,
    },

    /// An encoding the handshake did not agree on.
    #[error("page encoding {encoding} was not negotiated")]
    EncodingNotNegotiated {
        /// The encoding used.
        encoding: Encoding,
    },

    /// A run of 0 pages.
    #[error("run at {vaddr:#x} has 0 pages")]
    EmptyRun {
        /// The run's address.
        vaddr: u64,
    },

    /// A run longer than the agreed limit.
    #[error("run at {vaddr:#x} has {nr_pages} pages, more than the limit of {max}")]
    TooManyPages {
        /// The run's address.
        vaddr: u64,
        /// Its page count.
        nr_pages: u64,
        /// The limit.
        max: u64,
    },

    /// A run address that is not page aligned.
    #[error("run address {vaddr:#x} is not aligned to the {page_size}-byte page size")]
    Unaligned {
        /// The address.
        vaddr: u64,
        /// The page size.
        page_size: u64,
    },

    /// A run that wraps past the end of the 64-bit address space.
    #[error("run at {vaddr:#x} of {nr_pages} pages wraps past the end of the address space")]
    RunWraps {
        /// The address.
        vaddr: u64,
        /// Its page count.
        nr_pages: u64,
    },

    /// A payload length that does not fit the run and its encoding.
    #[error("{encoding} payload of {got} bytes for a run of {run_bytes} bytes ({rule})")]
    BadPayloadLen {
        /// The run's encoding.
        encoding: Encoding,
        /// The payload length announced.
        got: u64,
        /// The run's size in bytes.
        run_bytes: u64,
        /// What the length must be.
        rule: &'static str,
    },

    /// The frame length does not match the run header's payload length.
    #[error("data frame body of {frame_len} bytes does not match header + payload ({want} bytes)")]
    FrameLenMismatch {
        /// The body length in the frame header.
        frame_len: u64,
        /// Run header plus payload length.
        want: u64,
    },

    /// The LZ4 block is corrupt or decompresses to more than the run.
    #[error("LZ4 block of the run at {vaddr:#x} is corrupt: {reason}")]
    Lz4Corrupt {
        /// The run's address.
        vaddr: u64,
        /// lz4_flex's description.
        reason: String,
    },

    /// The LZ4 block decompresses to fewer bytes than the run has.
    #[error("LZ4 block of the run at {vaddr:#x} decompresses to {got} bytes, the run has {want}")]
    Lz4Size {
        /// The run's address.
        vaddr: u64,
        /// Bytes produced.
        got: usize,
        /// Bytes the run has.
        want: usize,
    },

    /// Encoding refused: the page data does not match the run's size.
    #[error("run at {vaddr:#x} of {nr_pages} pages needs {want} bytes of data, got {got}")]
    DataLenMismatch {
        /// The run's address.
        vaddr: u64,
        /// Its page count.
        nr_pages: u64,
        /// Bytes given.
        got: usize,
        /// Bytes needed.
        want: u64,
    },

    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({got} of {need} bytes)")]
    Truncated {
        /// Bytes of the frame received.
        got: u64,
        /// Bytes the frame needs (or the header, if it was not complete).
        need: u64,
    },
}
