//! [`CommandDecoder`]: the server side's streaming decoder of the client → server byte stream.
//!
//! Feed it whatever bytes arrived; it returns one [`ServerInput`] per call: a command, or a chunk
//! of the current command's page data as soon as any is buffered (never more than the command
//! still owes, never empty). The chunks of one command concatenate to exactly
//! [`PsCommand::payload_len`] bytes. Checks on a header (command, pagemap type, page-count
//! overflow, the per-command limit) run before any of its bytes are consumed. After an error the
//! decoder is poisoned and returns that error forever.
//!
//! ```text
//! loop { read into buf; while let Some(input) = dec.decode(&mut buf)? { handle(input) } }
//! at EOF: dec.finish()?   // fails inside a header or inside page data
//! ```

use bytes::{Buf, Bytes, BytesMut};

use super::command::{check_page_size, PsCommand};
use super::error::ProtocolError;
use super::header::{detect_layout, HeaderLayout, RawIov, DETECT_LEN};

/// The default of [`CommandDecoder::with_max_pages_per_command`]: 2^32 pages (16 TiB of 4 KiB
/// pages), just above the largest count a CRIU ≤ 4.1.1 client can express (`u32::MAX`).
/// CRIU ≥ 4.2 could send more for a single huge range; raise the limit if that matters.
pub const DEFAULT_MAX_PAGES_PER_COMMAND: u64 = 1 << 32;

/// How the decoder knows the header layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayoutChoice {
    /// Configured; no detection.
    Fixed(HeaderLayout),
    /// Guessed from the first header with [`detect_layout`](super::detect_layout), then fixed.
    Detect,
}

/// One step of the client → server stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerInput {
    /// A command header. If [`PsCommand::payload_len`] is non-zero, [`ServerInput::PageData`]
    /// chunks follow until it is covered.
    Command(PsCommand),
    /// The next bytes of the current command's page data (never empty).
    PageData(Bytes),
}

#[derive(Debug, Clone)]
enum State {
    /// Between commands.
    Header,
    /// Inside the page data of `command`.
    Payload { command: &'static str, total: u64, remaining: u64 },
    /// After CLOSE / FORCE_CLOSE; `discard` more bytes may be dropped silently (the tail of a
    /// 32-byte CLOSE that detection read as 24 bytes).
    Closed { command: &'static str, discard: usize },
    /// Poisoned.
    Failed(ProtocolError),
}

/// Streaming decoder of the client → server byte stream (sans-IO).
#[derive(Debug, Clone)]
pub struct CommandDecoder {
    page_size: u64,
    layout: Option<HeaderLayout>,
    detected: bool,
    max_pages: u64,
    commands: u64,
    /// Bytes left in the caller's buffer when `decode` last returned.
    buffered: usize,
    state: State,
}

impl CommandDecoder {
    /// A decoder for pages of `page_size` bytes (a power of two ≥ 256; 4096 on x86_64).
    pub fn new(layout: LayoutChoice, page_size: u64) -> Result<CommandDecoder, ProtocolError> {
        Ok(CommandDecoder {
            page_size: check_page_size(page_size)?,
            layout: match layout {
                LayoutChoice::Fixed(l) => Some(l),
                LayoutChoice::Detect => None,
            },
            detected: false,
            max_pages: DEFAULT_MAX_PAGES_PER_COMMAND,
            commands: 0,
            buffered: 0,
            state: State::Header,
        })
    }

    /// Rejects ADD, HOLE, ADD_F and GET with more than `max` pages
    /// ([`ProtocolError::TooManyPages`]). Default: [`DEFAULT_MAX_PAGES_PER_COMMAND`].
    pub fn with_max_pages_per_command(mut self, max: u64) -> CommandDecoder {
        self.max_pages = max;
        self
    }

    /// The per-command page limit.
    pub fn max_pages_per_command(&self) -> u64 {
        self.max_pages
    }

    /// The page size.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// The header layout, once configured or detected.
    pub fn layout(&self) -> Option<HeaderLayout> {
        self.layout
    }

    /// Page-data bytes the current command still owes (0 between commands).
    pub fn payload_remaining(&self) -> u64 {
        match self.state {
            State::Payload { remaining, .. } => remaining,
            _ => 0,
        }
    }

    /// Whether CLOSE or FORCE_CLOSE was decoded. The session ends there; CRIU's server treats an
    /// EOF before it as an error once pages were sent ("The data were not flushed"), which is the
    /// caller's decision to make.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed { .. })
    }

    /// How many commands were decoded.
    pub fn commands_decoded(&self) -> u64 {
        self.commands
    }

    /// Decodes the next command or page-data chunk from the front of `buf`, consuming exactly
    /// its bytes. `Ok(None)` means more bytes are needed (or, after CLOSE, that nothing is left).
    ///
    /// Bytes after CLOSE / FORCE_CLOSE are an error ([`ProtocolError::DataAfterClose`]), except
    /// the 8 trailing bytes of a 32-byte CLOSE read as the first header in detect mode.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<ServerInput>, ProtocolError> {
        let result = self.step(buf);
        self.buffered = buf.len();
        if let Err(err) = &result {
            self.state = State::Failed(err.clone());
        }
        result
    }

    /// Call at EOF, after [`decode`](Self::decode) has returned `Ok(None)` for the final bytes:
    /// fails if the stream ended inside a header or inside page data (or the decoder failed).
    /// An EOF between commands is not an error here; see [`is_closed`](Self::is_closed).
    pub fn finish(&self) -> Result<(), ProtocolError> {
        match &self.state {
            State::Failed(err) => Err(err.clone()),
            State::Payload { command, total, remaining } => {
                Err(ProtocolError::TruncatedPayload { command, got: total - remaining, total: *total })
            }
            State::Header if self.buffered > 0 => Err(ProtocolError::TruncatedHeader {
                got: self.buffered,
                need: self.layout.map_or(DETECT_LEN, HeaderLayout::len),
            }),
            State::Header | State::Closed { .. } => Ok(()),
        }
    }

    fn step(&mut self, buf: &mut BytesMut) -> Result<Option<ServerInput>, ProtocolError> {
        match &mut self.state {
            State::Failed(err) => Err(err.clone()),
            State::Header => self.header(buf),
            State::Payload { remaining, .. } => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = usize::try_from(*remaining).map_or(buf.len(), |r| r.min(buf.len()));
                let chunk = buf.split_to(n).freeze();
                *remaining -= n as u64;
                if *remaining == 0 {
                    self.state = State::Header;
                }
                Ok(Some(ServerInput::PageData(chunk)))
            }
            State::Closed { command, discard } => {
                let n = (*discard).min(buf.len());
                buf.advance(n);
                *discard -= n;
                if buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ProtocolError::DataAfterClose { command, bytes: buf.len() })
                }
            }
        }
    }

    fn header(&mut self, buf: &mut BytesMut) -> Result<Option<ServerInput>, ProtocolError> {
        let layout = match self.layout {
            Some(layout) => layout,
            None => match detect_layout(buf, self.page_size)? {
                None => return Ok(None),
                Some(layout) => {
                    tracing::debug!(?layout, "detected the page-server header layout");
                    self.layout = Some(layout);
                    self.detected = true;
                    layout
                }
            },
        };
        let Some(raw) = RawIov::decode(layout, buf) else {
            return Ok(None);
        };
        let command = PsCommand::from_raw(&raw)?;
        command.check_range(self.page_size)?;
        if let Some((_, nr_pages)) = command.range() {
            if nr_pages > self.max_pages {
                return Err(ProtocolError::TooManyPages { command: command.name(), nr_pages, max: self.max_pages });
            }
        }
        let total = command.payload_len(self.page_size)?;
        buf.advance(layout.len());
        let first = self.commands == 0;
        self.commands += 1;
        tracing::trace!(?command, "page-server command");
        match command {
            PsCommand::Close | PsCommand::ForceClose => {
                let discard =
                    if first && self.detected { HeaderLayout::Wide32.len() - HeaderLayout::Legacy24.len() } else { 0 };
                self.state = State::Closed { command: command.name(), discard };
            }
            _ if total > 0 => self.state = State::Payload { command: command.name(), total, remaining: total },
            _ => {}
        }
        Ok(Some(ServerInput::Command(command)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::criu_ps::{encode_command, DstId};
    use pagestream_engine::criu::PageFlags;

    const PS: u64 = 4096;

    fn wire(layout: HeaderLayout, commands: &[PsCommand]) -> BytesMut {
        let mut out = BytesMut::new();
        for c in commands {
            encode_command(c, layout, &mut out).unwrap();
            out.extend_from_slice(&vec![0xA5; c.payload_len(PS).unwrap() as usize]);
        }
        out
    }

    fn drain(dec: &mut CommandDecoder, buf: &mut BytesMut) -> Result<Vec<ServerInput>, ProtocolError> {
        let mut out = Vec::new();
        while let Some(input) = dec.decode(buf)? {
            out.push(input);
        }
        Ok(out)
    }

    fn detect_first(layout: HeaderLayout, command: PsCommand) -> (Option<HeaderLayout>, Vec<ServerInput>) {
        let mut dec = CommandDecoder::new(LayoutChoice::Detect, PS).unwrap();
        let mut buf = wire(layout, &[command, PsCommand::Close]);
        let inputs = drain(&mut dec, &mut buf).unwrap();
        dec.finish().unwrap();
        (dec.layout(), inputs)
    }

    #[test]
    fn detects_layout_from_each_first_command() {
        let dst = DstId::task(1234);
        let shm = DstId::shmem(7);
        let firsts = [
            PsCommand::Open2 { dst },
            PsCommand::Open2 { dst: shm },
            PsCommand::Parent { dst },
            PsCommand::Open { dst },
            PsCommand::Add { dst, vaddr: 0x7f00_0000_0000, nr_pages: 1 },
            PsCommand::Hole { dst, vaddr: 0x1000, nr_pages: 5 },
            PsCommand::AddF { dst: shm, vaddr: 0, nr_pages: 2, flags: PageFlags::PRESENT },
            PsCommand::AddF { dst, vaddr: 0x40_0000, nr_pages: 2, flags: PageFlags::LAZY },
            PsCommand::Get { pid: 1234, vaddr: 0x1000, nr_pages: 1 },
            PsCommand::Get { pid: 99, vaddr: 0x7fff_ffff_f000, nr_pages: 1024 },
        ];
        for layout in [HeaderLayout::Legacy24, HeaderLayout::Wide32] {
            for first in firsts {
                let (detected, inputs) = detect_first(layout, first);
                assert_eq!(detected, Some(layout), "{first:?}");
                assert_eq!(inputs.first(), Some(&ServerInput::Command(first)));
                assert_eq!(inputs.last(), Some(&ServerInput::Command(PsCommand::Close)));
            }
        }
    }

    #[test]
    fn close_first_is_read_as_legacy_and_wide_tail_discarded() {
        for layout in [HeaderLayout::Legacy24, HeaderLayout::Wide32] {
            for close in [PsCommand::Close, PsCommand::ForceClose] {
                let (detected, inputs) = detect_first_only(layout, close);
                assert_eq!(detected, Some(HeaderLayout::Legacy24));
                assert_eq!(inputs, [ServerInput::Command(close)]);
            }
        }
        // Only those 8 bytes: a ninth is an error.
        let mut dec = CommandDecoder::new(LayoutChoice::Detect, PS).unwrap();
        let mut buf = wire(HeaderLayout::Wide32, &[PsCommand::Close]);
        buf.extend_from_slice(&[0]);
        assert_eq!(dec.decode(&mut buf), Ok(Some(ServerInput::Command(PsCommand::Close))));
        assert_eq!(dec.decode(&mut buf), Err(ProtocolError::DataAfterClose { command: "CLOSE", bytes: 1 }));
    }

    fn detect_first_only(layout: HeaderLayout, command: PsCommand) -> (Option<HeaderLayout>, Vec<ServerInput>) {
        let mut dec = CommandDecoder::new(LayoutChoice::Detect, PS).unwrap();
        let mut buf = wire(layout, &[command]);
        let inputs = drain(&mut dec, &mut buf).unwrap();
        assert!(buf.is_empty());
        dec.finish().unwrap();
        assert!(dec.is_closed());
        (dec.layout(), inputs)
    }

    #[test]
    fn data_after_close_with_fixed_layout() {
        let mut dec = CommandDecoder::new(LayoutChoice::Fixed(HeaderLayout::Wide32), PS).unwrap();
        let mut buf = wire(HeaderLayout::Wide32, &[PsCommand::Close, PsCommand::Close]);
        assert_eq!(dec.decode(&mut buf), Ok(Some(ServerInput::Command(PsCommand::Close))));
        assert_eq!(dec.decode(&mut buf), Err(ProtocolError::DataAfterClose { command: "CLOSE", bytes: 32 }));
    }

    #[test]
    fn detection_waits_for_24_bytes_and_rejects_unknown_first_command() {
        let mut dec = CommandDecoder::new(LayoutChoice::Detect, PS).unwrap();
        let full = wire(HeaderLayout::Wide32, &[PsCommand::Open2 { dst: DstId::task(1) }]);
        let mut buf = BytesMut::from(&full[..23]);
        assert_eq!(dec.decode(&mut buf), Ok(None));
        assert_eq!(dec.layout(), None);
        buf.extend_from_slice(&full[23..24]);
        assert_eq!(dec.decode(&mut buf), Ok(None));
        assert_eq!(dec.layout(), Some(HeaderLayout::Wide32));
        assert_eq!(dec.finish(), Err(ProtocolError::TruncatedHeader { got: 24, need: 32 }));

        let mut dec = CommandDecoder::new(LayoutChoice::Detect, PS).unwrap();
        let mut buf =
            BytesMut::from(&[0x77u8, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0][..]);
        let err = dec.decode(&mut buf).unwrap_err();
        assert_eq!(err.to_string(), "unknown page-server command 0x77 (command word 0x00000077)");
    }

    #[test]
    fn page_data_chunks_never_exceed_the_payload() {
        let dst = DstId::task(1);
        let cmds = [
            PsCommand::AddF { dst, vaddr: 0x1000, nr_pages: 2, flags: PageFlags::PRESENT | PageFlags::LAZY },
            PsCommand::Hole { dst, vaddr: 0x3000, nr_pages: 1 },
        ];
        let mut buf = wire(HeaderLayout::Legacy24, &cmds);
        let mut dec = CommandDecoder::new(LayoutChoice::Fixed(HeaderLayout::Legacy24), PS).unwrap();
        assert_eq!(dec.decode(&mut buf), Ok(Some(ServerInput::Command(cmds[0]))));
        assert_eq!(dec.payload_remaining(), 8192);
        match dec.decode(&mut buf) {
            Ok(Some(ServerInput::PageData(chunk))) => assert_eq!(chunk.len(), 8192),
            other => panic!("expected page data, got {other:?}"),
        }
        assert_eq!(dec.payload_remaining(), 0);
        assert_eq!(dec.decode(&mut buf), Ok(Some(ServerInput::Command(cmds[1]))));
        assert_eq!(dec.decode(&mut buf), Ok(None));
        assert_eq!(dec.commands_decoded(), 2);
    }

    #[test]
    fn rejects_bad_page_sizes() {
        assert!(CommandDecoder::new(LayoutChoice::Detect, 4095).is_err());
        assert!(CommandDecoder::new(LayoutChoice::Detect, 0).is_err());
        assert_eq!(CommandDecoder::new(LayoutChoice::Detect, 16384).unwrap().page_size(), 16384);
    }
}
