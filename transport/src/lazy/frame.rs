//! The lazy-pages protocol's frames (sans-IO). A destination's lazy-pages daemon
//! (`pagestream lazy-pages --from`) talks to a source (`pagestream serve-lazy`) over one QUIC
//! connection: an *urgent* bidirectional stream (highest priority) carries Hello / Welcome, the
//! daemon's Fetch requests for faulted pages and their answers; a unidirectional *push* stream
//! from the source carries every other lazy page in the background.
//!
//! Every frame is `[u8 type][u32 body length, LE][body]`, integers little-endian:
//!
//! | type | frame | direction | body |
//! | --- | --- | --- | --- |
//! | 0x01 | [`LazyFrame::Hello`] | daemon → source | `u32 version`, `u64 page_size`, `u64 session` (0: new) |
//! | 0x02 | [`LazyFrame::Welcome`] | source → daemon | `u64 session`, `u64 lazy_pages` |
//! | 0x03 | [`LazyFrame::Fetch`] | daemon → source | `u32 req`, pagemap, `u64 vaddr`, `u32 nr_pages` |
//! | 0x04 | [`LazyFrame::Pages`] | source → daemon | `u32 req` (0: pushed), pagemap, `u64 vaddr`, `u32 nr_pages`, `u8 encoding`, payload |
//! | 0x05 | [`LazyFrame::Failed`] | source → daemon | `u32 req`, UTF-8 reason |
//! | 0x06 | [`LazyFrame::Done`] | daemon → source | (empty): every lazy page is installed |
//!
//! A pagemap is `u8 kind` (0 task, 1 shmem) and `u64 id`. Pages' payload is the run's
//! `nr_pages * page_size` bytes: encoding 0 (all zero, no payload), 1 (raw) or 2 (one LZ4 block
//! that decompresses to exactly that size). Runs are at most [`MAX_RUN_PAGES`] pages. The decoder
//! knows the page size, checks every length before buffering and never panics on arbitrary
//! bytes; it stays failed after its first error.

use crate::sticky::Sticky;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use lz4_flex::block::{compress_into, decompress_into, get_maximum_output_size};
use pagestream_engine::criu::PagemapId;
use pagestream_engine::PageRun;

/// The protocol version of Hello.
pub const LAZY_VERSION: u32 = 1;
/// The most pages one Fetch or Pages frame covers.
pub const MAX_RUN_PAGES: u64 = 64;
/// The largest page size accepted.
pub const MAX_PAGE_SIZE: u64 = 64 << 10;
/// The longest reason of a Failed frame.
pub const MAX_REASON: usize = 1024;
const HEADER: usize = 5;
const RUN_HEAD: usize = 4 + 9 + 8 + 4;

const HELLO: u8 = 0x01;
const WELCOME: u8 = 0x02;
const FETCH: u8 = 0x03;
const PAGES: u8 = 0x04;
const FAILED: u8 = 0x05;
const DONE: u8 = 0x06;

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LazyFrame {
    /// The daemon starts (session 0) or resumes a session.
    Hello { version: u32, page_size: u64, session: u64 },
    /// The source's answer: the session number and how many lazy pages it will push.
    Welcome { session: u64, lazy_pages: u64 },
    /// The daemon needs `run` of `id` now (a fault).
    Fetch { req: u32, id: PagemapId, run: PageRun },
    /// Pages of `run` of `id` (decoded); `req` answers a Fetch, 0 is the background push.
    Pages { req: u32, id: PagemapId, run: PageRun, data: Bytes },
    /// The source cannot answer Fetch `req`.
    Failed { req: u32, reason: String },
    /// The daemon has installed every lazy page: the source may let the session go.
    Done,
}

impl LazyFrame {
    /// The frame's name in messages.
    pub fn name(&self) -> &'static str {
        match self {
            LazyFrame::Hello { .. } => "Hello",
            LazyFrame::Welcome { .. } => "Welcome",
            LazyFrame::Fetch { .. } => "Fetch",
            LazyFrame::Pages { .. } => "Pages",
            LazyFrame::Failed { .. } => "Failed",
            LazyFrame::Done => "Done",
        }
    }
}

/// Why a frame could not be decoded or encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LazyFrameError {
    #[error("unknown lazy-pages frame type {ty:#04x}")]
    UnknownType { ty: u8 },
    #[error("{frame} frame body of {len} bytes (allowed {min}..={max})")]
    BadLength { frame: &'static str, len: u64, min: u64, max: u64 },
    #[error("{frame} frame: {reason}")]
    BadBody { frame: &'static str, reason: String },
    #[error("the lazy-pages stream ended inside a frame ({got} bytes buffered)")]
    Truncated { got: u64 },
}

fn bad(frame: &'static str, reason: impl Into<String>) -> LazyFrameError {
    LazyFrameError::BadBody { frame, reason: reason.into() }
}

fn put_header(out: &mut BytesMut, ty: u8, len: usize) {
    out.put_u8(ty);
    out.put_u32_le(len as u32);
}

fn put_run_head(out: &mut BytesMut, req: u32, id: PagemapId, run: PageRun) {
    out.put_u32_le(req);
    let (kind, n) = match id {
        PagemapId::Task(n) => (0u8, n),
        PagemapId::Shmem(n) => (1u8, n),
    };
    out.put_u8(kind);
    out.put_u64_le(n);
    out.put_u64_le(run.vaddr);
    out.put_u32_le(run.nr_pages as u32);
}

fn check_run(frame: &'static str, run: PageRun, page_size: u64) -> Result<(), LazyFrameError> {
    if run.nr_pages == 0 || run.nr_pages > MAX_RUN_PAGES {
        return Err(bad(frame, format!("run of {} pages (allowed 1..={MAX_RUN_PAGES})", run.nr_pages)));
    }
    if run.vaddr % page_size != 0 || run.vaddr.checked_add(run.nr_pages * page_size).is_none() {
        return Err(bad(frame, format!("run at {:#x} is not page aligned or wraps", run.vaddr)));
    }
    Ok(())
}

/// Encodes frames for one page size; keeps LZ4's scratch buffer.
pub struct LazyEncoder {
    page_size: u64,
    lz4: bool,
    scratch: Vec<u8>,
}

impl LazyEncoder {
    /// An encoder; `lz4: false` sends page data raw (all-zero runs are still elided).
    pub fn new(page_size: u64, lz4: bool) -> LazyEncoder {
        LazyEncoder { page_size, lz4, scratch: Vec::new() }
    }

    /// Appends `frame` to `out`; writes nothing on error.
    pub fn encode(&mut self, frame: &LazyFrame, out: &mut BytesMut) -> Result<(), LazyFrameError> {
        match frame {
            LazyFrame::Hello { version, page_size, session } => {
                put_header(out, HELLO, 20);
                out.put_u32_le(*version);
                out.put_u64_le(*page_size);
                out.put_u64_le(*session);
            }
            LazyFrame::Welcome { session, lazy_pages } => {
                put_header(out, WELCOME, 16);
                out.put_u64_le(*session);
                out.put_u64_le(*lazy_pages);
            }
            LazyFrame::Fetch { req, id, run } => {
                check_run("Fetch", *run, self.page_size)?;
                put_header(out, FETCH, RUN_HEAD);
                put_run_head(out, *req, *id, *run);
            }
            LazyFrame::Pages { req, id, run, data } => {
                check_run("Pages", *run, self.page_size)?;
                if data.len() as u64 != run.nr_pages * self.page_size {
                    return Err(bad("Pages", format!("{} bytes for {} pages", data.len(), run.nr_pages)));
                }
                let (encoding, payload): (u8, &[u8]) = if pagestream_engine::page::is_zero(data) {
                    (0, &[])
                } else if self.lz4 {
                    self.scratch.resize(get_maximum_output_size(data.len()), 0);
                    match compress_into(data, &mut self.scratch) {
                        Ok(n) if n > 0 && n < data.len() => (2, &self.scratch[..n]),
                        _ => (1, data),
                    }
                } else {
                    (1, data)
                };
                put_header(out, PAGES, RUN_HEAD + 1 + payload.len());
                put_run_head(out, *req, *id, *run);
                out.put_u8(encoding);
                out.put_slice(payload);
            }
            LazyFrame::Failed { req, reason } => {
                let reason = &reason.as_bytes()[..reason.len().min(MAX_REASON)];
                let reason = match std::str::from_utf8(reason) {
                    Ok(r) => r.as_bytes(),
                    Err(e) => &reason[..e.valid_up_to()],
                };
                put_header(out, FAILED, 4 + reason.len());
                out.put_u32_le(*req);
                out.put_slice(reason);
            }
            LazyFrame::Done => put_header(out, DONE, 0),
        }
        Ok(())
    }
}

/// Streaming decoder for one page size. Poisoned by its first error.
#[derive(Debug, Clone)]
pub struct LazyDecoder {
    page_size: u64,
    sticky: Sticky<LazyFrameError>,
}

impl LazyDecoder {
    /// A decoder for pages of `page_size` bytes (a power of two, 256 ..= 64 KiB).
    pub fn new(page_size: u64) -> Result<LazyDecoder, LazyFrameError> {
        if !page_size.is_power_of_two() || !(256..=MAX_PAGE_SIZE).contains(&page_size) {
            return Err(bad("Hello", format!("page size {page_size} is not a power of two in 256..=65536")));
        }
        Ok(LazyDecoder { page_size, sticky: Sticky::default() })
    }

    /// The next complete frame at the front of `buf`; `Ok(None)`: more bytes needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<LazyFrame>, LazyFrameError> {
        let mut sticky = std::mem::take(&mut self.sticky);
        let result = sticky.decode(buf, |buf| self.step(buf));
        self.sticky = sticky;
        result
    }

    /// At the end of the stream: an error if it ended inside a frame.
    pub fn finish(&self) -> Result<(), LazyFrameError> {
        self.sticky.finish(|got| LazyFrameError::Truncated { got: got as u64 })
    }

    fn limits(&self, ty: u8) -> Option<(&'static str, usize, usize)> {
        let max_pages = (MAX_RUN_PAGES * self.page_size) as usize;
        Some(match ty {
            HELLO => ("Hello", 20, 20),
            WELCOME => ("Welcome", 16, 16),
            FETCH => ("Fetch", RUN_HEAD, RUN_HEAD),
            PAGES => ("Pages", RUN_HEAD + 1, RUN_HEAD + 1 + max_pages),
            FAILED => ("Failed", 4, 4 + MAX_REASON),
            DONE => ("Done", 0, 0),
            _ => return None,
        })
    }

    fn step(&mut self, buf: &mut BytesMut) -> Result<Option<LazyFrame>, LazyFrameError> {
        let Some(head) = buf.get(..HEADER) else { return Ok(None) };
        let ty = head[0];
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let (frame, min, max) = self.limits(ty).ok_or(LazyFrameError::UnknownType { ty })?;
        if len < min || len > max {
            return Err(LazyFrameError::BadLength { frame, len: len as u64, min: min as u64, max: max as u64 });
        }
        if buf.len() < HEADER + len {
            return Ok(None);
        }
        buf.advance(HEADER);
        let mut body = buf.split_to(len).freeze();
        Ok(Some(match ty {
            HELLO => LazyFrame::Hello {
                version: body.get_u32_le(),
                page_size: body.get_u64_le(),
                session: body.get_u64_le(),
            },
            WELCOME => LazyFrame::Welcome { session: body.get_u64_le(), lazy_pages: body.get_u64_le() },
            FETCH => {
                let (req, id, run) = self.run_head(frame, &mut body)?;
                LazyFrame::Fetch { req, id, run }
            }
            PAGES => {
                let (req, id, run) = self.run_head(frame, &mut body)?;
                let data = self.payload(run, body.get_u8(), body)?;
                LazyFrame::Pages { req, id, run, data }
            }
            FAILED => {
                let req = body.get_u32_le();
                let reason = String::from_utf8(body.to_vec()).map_err(|_| bad(frame, "reason is not UTF-8"))?;
                LazyFrame::Failed { req, reason }
            }
            _ => LazyFrame::Done,
        }))
    }

    fn run_head(&self, frame: &'static str, body: &mut Bytes) -> Result<(u32, PagemapId, PageRun), LazyFrameError> {
        let req = body.get_u32_le();
        let id = match (body.get_u8(), body.get_u64_le()) {
            (0, n) => PagemapId::Task(n),
            (1, n) => PagemapId::Shmem(n),
            (k, _) => return Err(bad(frame, format!("unknown pagemap kind {k}"))),
        };
        let run = PageRun::new(body.get_u64_le(), u64::from(body.get_u32_le()));
        check_run(frame, run, self.page_size)?;
        Ok((req, id, run))
    }

    fn payload(&self, run: PageRun, encoding: u8, payload: Bytes) -> Result<Bytes, LazyFrameError> {
        let len = (run.nr_pages * self.page_size) as usize;
        match encoding {
            0 if payload.is_empty() => Ok(Bytes::from(vec![0u8; len])),
            1 if payload.len() == len => Ok(payload),
            2 if !payload.is_empty() && payload.len() < len => {
                let mut out = vec![0u8; len];
                match decompress_into(&payload, &mut out) {
                    Ok(n) if n == len => Ok(Bytes::from(out)),
                    Ok(n) => Err(bad("Pages", format!("LZ4 run decompressed to {n} bytes, not {len}"))),
                    Err(e) => Err(bad("Pages", format!("corrupt LZ4 run: {e}"))),
                }
            }
            e @ 0..=2 => Err(bad("Pages", format!("encoding {e} with {} payload bytes for {len}", payload.len()))),
            e => Err(bad("Pages", format!("unknown encoding {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PS: u64 = 4096;

    fn arb_frame() -> impl Strategy<Value = LazyFrame> {
        let id = prop_oneof![
            any::<u32>().prop_map(|n| PagemapId::Task(n.into())),
            any::<u32>().prop_map(|n| PagemapId::Shmem(n.into()))
        ];
        let run = (0u64..1 << 30, 1u64..=MAX_RUN_PAGES).prop_map(|(p, n)| PageRun::new(p * PS, n));
        prop_oneof![
            (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(version, page_size, session)| LazyFrame::Hello {
                version,
                page_size,
                session
            }),
            (any::<u64>(), any::<u64>()).prop_map(|(session, lazy_pages)| LazyFrame::Welcome { session, lazy_pages }),
            (any::<u32>(), id.clone(), run.clone()).prop_map(|(req, id, run)| LazyFrame::Fetch { req, id, run }),
            (any::<u32>(), id, run, 0u8..3).prop_map(|(req, id, run, kind)| {
                let len = (run.nr_pages * PS) as usize;
                let data: Vec<u8> = match kind {
                    0 => vec![0; len],
                    1 => (0..len).map(|i| (i % 13) as u8).collect(),
                    _ => (0..len).map(|i| (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes()[7]).collect(),
                };
                LazyFrame::Pages { req, id, run, data: Bytes::from(data) }
            }),
            (any::<u32>(), "\\PC{0,100}").prop_map(|(req, reason)| LazyFrame::Failed { req, reason }),
            Just(LazyFrame::Done),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn frames_round_trip_in_pieces(frames in proptest::collection::vec(arb_frame(), 1..5), step in 1usize..5000) {
            let mut enc = LazyEncoder::new(PS, true);
            let mut bytes = BytesMut::new();
            for f in &frames {
                enc.encode(f, &mut bytes).unwrap();
            }
            let mut dec = LazyDecoder::new(PS).unwrap();
            let (mut buf, mut got) = (BytesMut::new(), Vec::new());
            for piece in bytes.chunks(step) {
                buf.extend_from_slice(piece);
                while let Some(f) = dec.decode(&mut buf).unwrap() {
                    got.push(f);
                }
            }
            dec.finish().unwrap();
            prop_assert_eq!(got, frames);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut dec = LazyDecoder::new(PS).unwrap();
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = dec.decode(&mut buf) {}
            let _ = dec.finish();
        }
    }

    #[test]
    fn bad_frames_are_refused() {
        let mut dec = LazyDecoder::new(PS).unwrap();
        let mut buf = BytesMut::new();
        put_header(&mut buf, PAGES, RUN_HEAD + 1 + (MAX_RUN_PAGES * PS) as usize + 1);
        assert!(dec.decode(&mut buf).unwrap_err().to_string().contains("Pages frame body"), "checked before buffering");
        let mut enc = LazyEncoder::new(PS, false);
        let mut out = BytesMut::new();
        let too_long = LazyFrame::Fetch { req: 1, id: PagemapId::Task(1), run: PageRun::new(0, MAX_RUN_PAGES + 1) };
        assert!(enc.encode(&too_long, &mut out).is_err() && out.is_empty());
        let unaligned = LazyFrame::Fetch { req: 1, id: PagemapId::Task(1), run: PageRun::new(7, 1) };
        assert!(enc.encode(&unaligned, &mut out).is_err());
        let mut raw = BytesMut::new();
        put_header(&mut raw, PAGES, RUN_HEAD + 1 + 10);
        put_run_head(&mut raw, 0, PagemapId::Task(1), PageRun::new(0, 1));
        raw.put_u8(1);
        raw.put_slice(&[1; 10]);
        let mut dec = LazyDecoder::new(PS).unwrap();
        assert!(dec.decode(&mut raw).unwrap_err().to_string().contains("encoding 1 with 10 payload bytes"));
        assert!(LazyDecoder::new(4000).is_err());
    }
}
