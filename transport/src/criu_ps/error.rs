//! [`ProtocolError`]: everything that can go wrong while encoding or decoding the page-server
//! protocol.
//!
//! Every message names the command and the offending value, so that a log line alone is enough
//! to see what the peer sent. Errors are `Clone` because a decoder that failed keeps returning the
//! same error (it is poisoned).

use thiserror::Error;

/// An error in the page-server byte stream, or a message that cannot be put on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    /// The low 16 bits of `cmd` are not a command CRIU defines.
    #[error("unknown page-server command {command:#x} (command word {cmd:#010x})")]
    UnknownCommand {
        /// The low 16 bits of the command word.
        command: u32,
        /// The whole command word, flags included.
        cmd: u32,
    },

    /// The low byte of a `dst_id` is neither a current nor a legacy pagemap type.
    #[error("unknown pagemap type {ty} in dst_id {dst_id:#x} of {command}")]
    UnknownPagemapType {
        /// The command that carried the `dst_id`.
        command: &'static str,
        /// The type byte.
        ty: u8,
        /// The whole `dst_id`.
        dst_id: u64,
    },

    /// `nr_pages * page_size` does not fit in a `u64`.
    #[error("{command} nr_pages {nr_pages} * page size {page_size} overflows")]
    PagesOverflow {
        /// The command carrying the count.
        command: &'static str,
        /// The page count.
        nr_pages: u64,
        /// The codec's page size.
        page_size: u64,
    },

    /// `vaddr + nr_pages * page_size` does not fit in a `u64`.
    #[error(
        "{command} range at {vaddr:#x} of {nr_pages} pages of {page_size} bytes wraps past the end \
         of the 64-bit address space"
    )]
    RangeWraps {
        /// The command carrying the range.
        command: &'static str,
        /// The start of the range.
        vaddr: u64,
        /// The page count.
        nr_pages: u64,
        /// The codec's page size.
        page_size: u64,
    },

    /// A command carries more pages than the decoder was configured to accept.
    #[error("{command} nr_pages {nr_pages} exceeds the limit of {max} pages per command")]
    TooManyPages {
        /// The command carrying the count.
        command: &'static str,
        /// The page count.
        nr_pages: u64,
        /// The configured limit.
        max: u64,
    },

    /// The stream ended (see `finish`) part-way through a header.
    #[error("connection closed inside a header ({got} of {need} bytes)")]
    TruncatedHeader {
        /// Header bytes received.
        got: usize,
        /// Header bytes needed.
        need: usize,
    },

    /// The stream ended (see `finish`) part-way through a fixed-size reply.
    #[error("connection closed inside the {reply} reply ({got} of {need} bytes)")]
    TruncatedReply {
        /// The reply being received.
        reply: &'static str,
        /// Reply bytes received.
        got: usize,
        /// Reply bytes needed.
        need: usize,
    },

    /// The stream ended (see `finish`) part-way through page data.
    #[error("connection closed in the middle of page data of {command} ({got} of {total} bytes)")]
    TruncatedPayload {
        /// The command (or reply) the data belongs to.
        command: &'static str,
        /// Payload bytes received.
        got: u64,
        /// Payload bytes announced by the header.
        total: u64,
    },

    /// The client kept sending after CLOSE / FORCE_CLOSE (CRIU's server says "Unexpected data").
    #[error("{bytes} unexpected bytes after {command}")]
    DataAfterClose {
        /// CLOSE or FORCE_CLOSE.
        command: &'static str,
        /// How many unexpected bytes were seen.
        bytes: usize,
    },

    /// The server sent bytes while no reply was outstanding.
    #[error("{bytes} bytes from the page server while no reply was expected")]
    UnexpectedReplyData {
        /// How many bytes were waiting.
        bytes: usize,
    },

    /// The stream ended (see `finish`) while replies were still owed.
    #[error("connection closed with {outstanding} replies still outstanding")]
    RepliesOutstanding {
        /// Replies that were expected but never started.
        outstanding: usize,
    },

    /// An OPEN2 or PARENT reply that is neither 0 nor 1.
    #[error("{reply} reply {value} is not 0 or 1")]
    BadBoolReply {
        /// OPEN2 or PARENT.
        reply: &'static str,
        /// The value received.
        value: i64,
    },

    /// A GET reply whose command word is not `ADD_F | PE_PRESENT << 16` (0x00040006).
    #[error("GET reply has command word {cmd:#010x}, expected 0x00040006")]
    GetReplyCommand {
        /// The command word received.
        cmd: u32,
    },

    /// A GET reply with 0 pages or more pages than requested.
    #[error("GET reply carries {nr_pages} pages for a request of {requested} pages")]
    GetReplyPages {
        /// Pages in the reply.
        nr_pages: u64,
        /// Pages requested.
        requested: u64,
    },

    /// A GET reply for another address than the oldest outstanding request.
    #[error("GET reply for vaddr {vaddr:#x}, expected {expected:#x}")]
    GetReplyVaddr {
        /// Address in the reply.
        vaddr: u64,
        /// Address requested.
        expected: u64,
    },

    /// A GET reply for another pid than the oldest outstanding request.
    #[error("GET reply for pid {pid}, expected {expected}")]
    GetReplyPid {
        /// `dst_id` in the reply.
        pid: u64,
        /// Pid requested.
        expected: u64,
    },

    /// Encoding refused: a GET reply must carry at least one page (CRIU's client tears the
    /// session down otherwise).
    #[error("refusing to encode a GET reply with 0 pages")]
    EmptyGetReply,

    /// Encoding refused: the 24-byte header has a 32-bit page count.
    #[error("{command} nr_pages {nr_pages} does not fit the 32-bit count of the 24-byte header")]
    CountTooLargeForLayout {
        /// The command being encoded.
        command: &'static str,
        /// The page count.
        nr_pages: u64,
    },

    /// Encoding refused: ADD_F flags must fit in the 16 high bits of the command word.
    #[error("ADD_F flags {flags:#x} do not fit in 16 bits")]
    FlagsTooWide {
        /// The flag bits.
        flags: u32,
    },

    /// Encoding refused: a pagemap id must fit in the 56 high bits of `dst_id`.
    #[error("pagemap id {id} does not fit in the 56 bits of a dst_id")]
    IdTooLarge {
        /// The id.
        id: u64,
    },

    /// A codec was configured with an unusable page size.
    #[error("page size {page_size} is not a power of two of at least 256")]
    InvalidPageSize {
        /// The page size given.
        page_size: u64,
    },
}
