//! Data frames: one run of pages per frame, on the client's unidirectional data streams.
//!
//! A Run frame's body is a 30-byte [`RunHeader`] (little-endian `round: u32`, pagemap kind `u8`
//! (0 task, 1 shmem) and id `u64`, `vaddr: u64`, `nr_pages: u32`, encoding `u8`,
//! `payload_len: u32`) and then the payload: one LZ4 block of the run's pages (lz4_flex block
//! format), the raw pages when LZ4 does not make them smaller, or nothing for a zero run.
//!
//! [`DataLimits`] holds what the handshake agreed (page size, longest run, encodings) and checks
//! a header against every size rule. [`DataDecoder`] applies it as soon as a frame header and a
//! run header are buffered, before the payload is waited for, and decompresses only into a
//! buffer of exactly the run's size. [`RunEncoder`] builds frames, compressing with a reused
//! hash table.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use lz4_flex::block::{compress_into_with_table, decompress_into, get_maximum_output_size, CompressTable};
use pagestream_engine::criu::PagemapId;
use pagestream_engine::PageRun;

use super::error::WireError;
use super::frame::{peek_header, put_header, FrameType, FRAME_HEADER_LEN};
use super::handshake::{check_page_size, Codecs};
use crate::sticky::Sticky;

/// Bytes of a run header.
pub const RUN_HEADER_LEN: usize = 30;

/// The default longest run: 1024 pages (4 MiB of 4 KiB pages).
pub const DEFAULT_MAX_RUN_PAGES: u32 = 1024;

/// No run may carry more than this many bytes of pages, whatever the page size.
pub const MAX_RUN_BYTES: u64 = 64 << 20;

/// How a run's pages travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Encoding {
    /// All-zero pages: no payload.
    Zero = 0,
    /// The pages as they are.
    Raw = 1,
    /// One LZ4 block that decompresses to exactly the run's pages.
    Lz4 = 2,
    /// The pages no longer exist at the source (unmapped): the receiver drops them. No payload;
    /// not counted among the round's pages.
    Discard = 3,
}

impl Encoding {
    /// The encoding of a wire byte.
    pub fn from_byte(byte: u8) -> Result<Encoding, WireError> {
        match byte {
            0 => Ok(Encoding::Zero),
            1 => Ok(Encoding::Raw),
            2 => Ok(Encoding::Lz4),
            3 => Ok(Encoding::Discard),
            encoding => Err(WireError::UnknownEncoding { encoding }),
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Encoding::Zero => "zero",
            Encoding::Raw => "raw",
            Encoding::Lz4 => "lz4",
            Encoding::Discard => "discard",
        })
    }
}

/// The fixed part of a Run frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RunHeader {
    /// The round the pages belong to.
    pub round: u32,
    /// Which pagemap.
    pub pagemap: PagemapId,
    /// First byte of the first page.
    pub vaddr: u64,
    /// Pages in the run.
    pub nr_pages: u32,
    /// How the payload is encoded.
    pub encoding: Encoding,
    /// Bytes of payload after the header.
    pub payload_len: u32,
}

impl RunHeader {
    /// Appends the 30 header bytes.
    pub fn encode(&self, out: &mut BytesMut) {
        let (kind, id) = match self.pagemap {
            PagemapId::Task(id) => (0u8, id),
            PagemapId::Shmem(id) => (1u8, id),
        };
        out.put_u32_le(self.round);
        out.put_u8(kind);
        out.put_u64_le(id);
        out.put_u64_le(self.vaddr);
        out.put_u32_le(self.nr_pages);
        out.put_u8(self.encoding as u8);
        out.put_u32_le(self.payload_len);
    }

    /// Parses 30 header bytes; only the kind and encoding bytes are checked here (sizes are
    /// [`DataLimits::check`]'s job).
    pub fn decode(b: &[u8; RUN_HEADER_LEN]) -> Result<RunHeader, WireError> {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let id = u64_at(5);
        let pagemap = match b[4] {
            0 => PagemapId::Task(id),
            1 => PagemapId::Shmem(id),
            kind => return Err(WireError::UnknownPagemapKind { kind }),
        };
        Ok(RunHeader {
            round: u32_at(0),
            pagemap,
            vaddr: u64_at(13),
            nr_pages: u32_at(21),
            encoding: Encoding::from_byte(b[25])?,
            payload_len: u32_at(26),
        })
    }

    /// The pages the header covers.
    pub fn run(&self) -> PageRun {
        PageRun::new(self.vaddr, u64::from(self.nr_pages))
    }
}

/// What the handshake agreed for data frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataLimits {
    page_size: u64,
    max_run_pages: u32,
    codecs: Codecs,
}

impl DataLimits {
    /// Limits for `page_size`-byte pages, runs of at most `max_run_pages`, encodings `codecs`
    /// (zero runs are always allowed).
    pub fn new(page_size: u64, max_run_pages: u32, codecs: Codecs) -> Result<DataLimits, WireError> {
        check_page_size(page_size)?;
        let limit = Self::run_pages_limit(page_size);
        if max_run_pages == 0 || u64::from(max_run_pages) > limit {
            return Err(WireError::InvalidRunLimit { max_run_pages: u64::from(max_run_pages), page_size, limit });
        }
        Ok(DataLimits { page_size, max_run_pages, codecs })
    }

    /// The largest `max_run_pages` for a page size: runs of at most [`MAX_RUN_BYTES`].
    pub fn run_pages_limit(page_size: u64) -> u64 {
        MAX_RUN_BYTES / page_size.max(1)
    }

    /// The page size.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// The longest run.
    pub fn max_run_pages(&self) -> u32 {
        self.max_run_pages
    }

    /// The agreed encodings.
    pub fn codecs(&self) -> Codecs {
        self.codecs
    }

    /// The largest Run frame body these limits allow.
    pub fn max_body_len(&self) -> u64 {
        RUN_HEADER_LEN as u64 + u64::from(self.max_run_pages) * self.page_size
    }

    /// Checks a run header against every rule: 1..=max pages, page-aligned start, no wrap, a
    /// negotiated encoding, and a payload length that fits the encoding (none for zero runs,
    /// exactly the run for raw, 1..=the run for LZ4).
    pub fn check(&self, h: &RunHeader) -> Result<(), WireError> {
        let (vaddr, nr_pages) = (h.vaddr, u64::from(h.nr_pages));
        if nr_pages == 0 {
            return Err(WireError::EmptyRun { vaddr });
        }
        if h.nr_pages > self.max_run_pages {
            return Err(WireError::TooManyPages { vaddr, nr_pages, max: u64::from(self.max_run_pages) });
        }
        if vaddr % self.page_size != 0 {
            return Err(WireError::Unaligned { vaddr, page_size: self.page_size });
        }
        // nr_pages <= MAX_RUN_BYTES / page_size, so the product cannot overflow.
        let run_bytes = nr_pages * self.page_size;
        if vaddr.checked_add(run_bytes).is_none() {
            return Err(WireError::RunWraps { vaddr, nr_pages });
        }
        let needed = match h.encoding {
            Encoding::Zero | Encoding::Discard => None,
            Encoding::Raw => Some(Codecs::RAW),
            Encoding::Lz4 => Some(Codecs::LZ4),
        };
        if needed.is_some_and(|c| !self.codecs.contains(c)) {
            return Err(WireError::EncodingNotNegotiated { encoding: h.encoding });
        }
        let got = u64::from(h.payload_len);
        let bad = |rule| Err(WireError::BadPayloadLen { encoding: h.encoding, got, run_bytes, rule });
        match h.encoding {
            Encoding::Zero if got != 0 => bad("a zero run has no payload"),
            Encoding::Discard if got != 0 => bad("a discard has no payload"),
            Encoding::Raw if got != run_bytes => bad("must equal the run"),
            Encoding::Lz4 if got == 0 || got > run_bytes => bad("must be 1 ..= the run"),
            _ => Ok(()),
        }
    }
}

/// A run's pages, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunContent {
    /// `nr_pages * page_size` bytes of page data.
    Data(Bytes),
    /// All zero.
    Zero,
    /// Gone at the source: drop them.
    Discard,
}

/// One decoded Run frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRun {
    /// The round.
    pub round: u32,
    /// The pagemap.
    pub pagemap: PagemapId,
    /// The pages.
    pub run: PageRun,
    /// Their content.
    pub content: RunContent,
    /// How they travelled.
    pub encoding: Encoding,
    /// Frame bytes on the wire (header included).
    pub wire_len: u64,
}

/// Builds Run frames under agreed limits: LZ4 when negotiated and smaller, raw otherwise.
pub struct RunEncoder {
    limits: DataLimits,
    table: CompressTable,
    scratch: Vec<u8>,
}

impl RunEncoder {
    /// An encoder that compresses iff `limits` allow LZ4.
    pub fn new(limits: DataLimits) -> RunEncoder {
        RunEncoder { limits, table: CompressTable::large(), scratch: Vec::new() }
    }

    /// The limits.
    pub fn limits(&self) -> &DataLimits {
        &self.limits
    }

    fn header(&self, round: u32, pagemap: PagemapId, run: PageRun) -> Result<RunHeader, WireError> {
        let (vaddr, nr_pages) = (run.vaddr, run.nr_pages);
        let max = u64::from(self.limits.max_run_pages);
        if nr_pages > max {
            return Err(WireError::TooManyPages { vaddr, nr_pages, max });
        }
        Ok(RunHeader { round, pagemap, vaddr, nr_pages: nr_pages as u32, encoding: Encoding::Zero, payload_len: 0 })
    }

    fn put_frame(out: &mut BytesMut, h: &RunHeader, payload: &[u8]) -> usize {
        let len = FRAME_HEADER_LEN + RUN_HEADER_LEN + payload.len();
        out.reserve(len);
        put_header(out, FrameType::Run, (RUN_HEADER_LEN + payload.len()) as u32);
        h.encode(out);
        out.put_slice(payload);
        len
    }

    fn frame(h: &RunHeader, payload: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(FRAME_HEADER_LEN + RUN_HEADER_LEN + payload.len());
        Self::put_frame(&mut out, h, payload);
        out.freeze()
    }

    /// The most bytes a frame of `nr_pages` pages can take (raw pages and headers).
    pub fn max_frame_len(&self, nr_pages: u64) -> u64 {
        (FRAME_HEADER_LEN + RUN_HEADER_LEN) as u64 + nr_pages * self.limits.page_size
    }

    /// One frame of `run`'s pages, whose data is `data` (`nr_pages * page_size` bytes).
    pub fn encode_pages(
        &mut self,
        round: u32,
        pagemap: PagemapId,
        run: PageRun,
        data: &[u8],
    ) -> Result<Bytes, WireError> {
        let mut out = BytesMut::new();
        self.encode_pages_into(round, pagemap, run, data, &mut out)?;
        Ok(out.freeze())
    }

    /// Like [`encode_pages`](Self::encode_pages), appending the frame to `out`; returns its length.
    pub fn encode_pages_into(
        &mut self,
        round: u32,
        pagemap: PagemapId,
        run: PageRun,
        data: &[u8],
        out: &mut BytesMut,
    ) -> Result<usize, WireError> {
        let mut h = self.header(round, pagemap, run)?;
        let want = run.nr_pages * self.limits.page_size;
        if data.len() as u64 != want {
            return Err(WireError::DataLenMismatch { vaddr: run.vaddr, nr_pages: run.nr_pages, got: data.len(), want });
        }
        self.limits.check(&RunHeader { encoding: Encoding::Raw, payload_len: want as u32, ..h })?;
        if self.limits.codecs.contains(Codecs::LZ4) {
            self.scratch.resize(get_maximum_output_size(data.len()), 0);
            if let Ok(n) = compress_into_with_table(data, &mut self.scratch, &mut self.table) {
                if n > 0 && n < data.len() {
                    h.encoding = Encoding::Lz4;
                    h.payload_len = n as u32;
                    return Ok(Self::put_frame(out, &h, &self.scratch[..n]));
                }
            }
        }
        h.encoding = Encoding::Raw;
        h.payload_len = want as u32;
        Ok(Self::put_frame(out, &h, data))
    }

    /// One frame saying `run`'s pages are zero.
    pub fn encode_zero(&mut self, round: u32, pagemap: PagemapId, run: PageRun) -> Result<Bytes, WireError> {
        let h = self.header(round, pagemap, run)?;
        self.limits.check(&h)?;
        Ok(Self::frame(&h, &[]))
    }

    /// Like [`encode_zero`](Self::encode_zero), appending the frame to `out`; returns its length.
    pub fn encode_zero_into(
        &mut self,
        round: u32,
        pagemap: PagemapId,
        run: PageRun,
        out: &mut BytesMut,
    ) -> Result<usize, WireError> {
        let h = self.header(round, pagemap, run)?;
        self.limits.check(&h)?;
        Ok(Self::put_frame(out, &h, &[]))
    }

    /// Appends a Discard frame for `run` (pages unmapped at the source); returns its length.
    pub fn encode_discard_into(
        &mut self,
        round: u32,
        pagemap: PagemapId,
        run: PageRun,
        out: &mut BytesMut,
    ) -> Result<usize, WireError> {
        let h = RunHeader { encoding: Encoding::Discard, ..self.header(round, pagemap, run)? };
        self.limits.check(&h)?;
        Ok(Self::put_frame(out, &h, &[]))
    }
}

/// Streaming decoder of one data stream. Poisoned by its first error.
#[derive(Debug, Clone)]
pub struct DataDecoder {
    limits: DataLimits,
    sticky: Sticky<WireError>,
    need: usize,
    runs: u64,
}

impl DataDecoder {
    /// A decoder for a stream under `limits`.
    pub fn new(limits: DataLimits) -> DataDecoder {
        DataDecoder { limits, sticky: Sticky::default(), need: FRAME_HEADER_LEN, runs: 0 }
    }

    /// Runs decoded so far.
    pub fn runs_decoded(&self) -> u64 {
        self.runs
    }

    /// Takes the next complete run from the front of `buf`. `Ok(None)`: more bytes needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<DataRun>, WireError> {
        let mut sticky = std::mem::take(&mut self.sticky);
        let result = sticky.decode(buf, |buf| self.step(buf));
        self.sticky = sticky;
        result
    }

    fn step(&mut self, buf: &mut BytesMut) -> Result<Option<DataRun>, WireError> {
        self.need = FRAME_HEADER_LEN;
        let Some(fh) = peek_header(buf)? else { return Ok(None) };
        if fh.ty != FrameType::Run {
            return Err(WireError::UnexpectedFrame { frame: fh.ty.name(), stream: "data" });
        }
        let body_len = u64::from(fh.body_len);
        if body_len > self.limits.max_body_len() {
            return Err(WireError::FrameTooLarge { frame: "Run", len: body_len, max: self.limits.max_body_len() });
        }
        if body_len < RUN_HEADER_LEN as u64 {
            return Err(WireError::BadLength { frame: "Run", got: body_len as usize, want: RUN_HEADER_LEN });
        }
        self.need = FRAME_HEADER_LEN + RUN_HEADER_LEN;
        let Some(raw) = buf.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + RUN_HEADER_LEN) else { return Ok(None) };
        let mut fixed = [0u8; RUN_HEADER_LEN];
        fixed.copy_from_slice(raw);
        let h = RunHeader::decode(&fixed)?;
        self.limits.check(&h)?;
        let want = RUN_HEADER_LEN as u64 + u64::from(h.payload_len);
        if body_len != want {
            return Err(WireError::FrameLenMismatch { frame_len: body_len, want });
        }
        // body_len <= max_body_len <= 64 MiB + 30: fits usize.
        self.need = FRAME_HEADER_LEN + body_len as usize;
        if buf.len() < self.need {
            return Ok(None);
        }
        buf.advance(FRAME_HEADER_LEN + RUN_HEADER_LEN);
        let payload = buf.split_to(h.payload_len as usize).freeze();
        let run = h.run();
        let content = match h.encoding {
            Encoding::Zero => RunContent::Zero,
            Encoding::Discard => RunContent::Discard,
            Encoding::Raw => RunContent::Data(payload),
            Encoding::Lz4 => {
                RunContent::Data(self.decompress(h.vaddr, run.len_bytes(self.limits.page_size), &payload)?)
            }
        };
        self.runs += 1;
        self.need = FRAME_HEADER_LEN;
        Ok(Some(DataRun {
            round: h.round,
            pagemap: h.pagemap,
            run,
            content,
            encoding: h.encoding,
            wire_len: (FRAME_HEADER_LEN as u64) + body_len,
        }))
    }

    /// Decompresses into a buffer of exactly `run_bytes` (checked against the limits already).
    fn decompress(&self, vaddr: u64, run_bytes: u64, block: &[u8]) -> Result<Bytes, WireError> {
        let want = run_bytes as usize;
        let mut out = vec![0u8; want];
        match decompress_into(block, &mut out) {
            Ok(got) if got == want => Ok(Bytes::from(out)),
            Ok(got) => Err(WireError::Lz4Size { vaddr, got, want }),
            Err(e) => Err(WireError::Lz4Corrupt { vaddr, reason: e.to_string() }),
        }
    }

    /// Call at the end of the stream, after `decode` returned `Ok(None)`: fails if the stream
    /// ended inside a frame (or the decoder failed).
    pub fn finish(&self) -> Result<(), WireError> {
        self.sticky.finish(|got| WireError::Truncated { got: got as u64, need: self.need as u64 })
    }
}
