//! pagestream's own QUIC protocol as a sans-IO codec: bytes in, typed frames out (and back).
//! Nothing here touches a socket; [`crate::quic`] moves the bytes.
//!
//! A session is one QUIC connection from the sender (client) to the receiver (server):
//!
//! * **control stream** — the first bidirectional stream, opened by the client. The client sends
//!   a [`Hello`]; the server answers with its own Hello (the agreement) or a Reject. Then
//!   `RoundBegin`, `RoundEnd{round, data_pages, zero_pages, digest}` → `RoundAck{round, commit_ms}` once the server
//!   holds every page of the round, `Commit{final_round, total_pages}` → `CommitAck{location,
//!   pages}` once the image is durable, optional `Stats`, and `Abort{reason}` from either side.
//! * **data streams** — several unidirectional streams from the client, each a sequence of Run
//!   frames (a [`RunHeader`] and one LZ4 block, raw pages, or nothing for a zero run). Runs of a
//!   round may arrive on any stream in any order; each carries its round.
//!
//! Every frame is `[u8 type][u32 body length][body]`, all integers little-endian
//! ([`frame`]). Decoders check each size before buffering or allocating for it: the frame length
//! against the limit of its type, then a run's page count, alignment, wrap, encoding and payload
//! length against the agreed [`DataLimits`], and an LZ4 block decompresses only into a buffer of
//! exactly the run's size. Decoders never panic on arbitrary bytes and stay failed after an
//! error.
//!
//! * [`frame`] — framing, [`FrameType`], body helpers.
//! * [`handshake`] — [`Hello`], [`Codecs`], [`answer_hello`], [`check_answer`].
//! * [`control`] — [`ControlFrame`], [`encode_control`], [`ControlDecoder`].
//! * [`data`] — [`RunHeader`], [`DataLimits`], [`RunEncoder`], [`DataDecoder`].
//! * [`error`] — [`WireError`].

pub mod control;
pub mod data;
pub mod error;
pub mod frame;
pub mod handshake;

pub use control::{bounded_reason, encode_control, ControlDecoder, ControlFrame, StatsReport, NO_COMMIT_ESTIMATE};
pub use data::{
    DataDecoder, DataLimits, DataRun, Encoding, RunContent, RunEncoder, RunHeader, DEFAULT_MAX_RUN_PAGES,
    MAX_RUN_BYTES, RUN_HEADER_LEN,
};
pub use error::WireError;
pub use frame::{FrameType, FRAME_HEADER_LEN, MAX_CONTROL_BODY, MAX_STRING_LEN};
pub use handshake::{answer_hello, check_answer, Agreement, Codecs, Hello, HELLO_BODY_LEN, PROTOCOL_VERSION};
