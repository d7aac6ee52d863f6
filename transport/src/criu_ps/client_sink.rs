//! [`CriuPageServerSink`]: pagestream as a *client* of CRIU's page-server protocol, so that
//! `pagestream send` can dump into a real `criu page-server -D DIR` (which then writes
//! `pagemap-<pid>.img` and `pages-<id>.img` as it would for `criu dump --page-server`).
//!
//! A CRIU page-server session is one pass: each pagemap's entries in ascending address order,
//! never rewritten, and the server ends after CLOSE. So this sink takes exactly one round (the
//! migration runs stop-and-copy: freeze, then everything once); a second round is refused. Runs
//! go out as ADD with their data, zero runs as ADD with zero bytes (CRIU's images have no zero
//! marker, and a page left out of the pagemap would restore from the file for a private file
//! mapping), discarded runs are left out. `commit` is CLOSE: the server's answer (status 0)
//! comes after it flushed its images.

use std::collections::HashMap;
use std::io::{BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use pagestream_engine::criu::PagemapId;
use pagestream_engine::sink::{CommitReceipt, PageSink, RoundSummary, SinkError, SinkStats};
use pagestream_engine::PageRun;

use super::reply_reader::{ReadFailure, ReplyReader};
use super::{encode_command, ClientInput, DstId, HeaderLayout, PsCommand, Reply, ReplyDecoder, ReplyKind};

/// How long the sink waits for one of the server's answers.
const REPLY_TIMEOUT: Duration = Duration::from_secs(300);

/// A one-round [`PageSink`] into a real CRIU page server; see the module documentation.
pub struct CriuPageServerSink {
    out: BufWriter<TcpStream>,
    input: ReplyReader,
    addr: SocketAddr,
    layout: HeaderLayout,
    page_size: u64,
    /// Per opened pagemap: the end of its last entry.
    opened: HashMap<PagemapId, u64>,
    zeros: Vec<u8>,
    pages: u64,
    stats: SinkStats,
    rounds: u32,
}

fn transport(context: &str, e: impl std::fmt::Display) -> SinkError {
    SinkError::Transport(format!("{context}: {e}"))
}

impl CriuPageServerSink {
    /// Connects to the CRIU page server at `addr`, which speaks header `layout` (24 bytes up to
    /// CRIU 4.1.1, 32 from 4.2).
    pub fn connect(addr: SocketAddr, layout: HeaderLayout, page_size: u64) -> Result<CriuPageServerSink, SinkError> {
        let sock = TcpStream::connect(addr).map_err(|e| transport(&format!("connecting to {addr}"), e))?;
        sock.set_nodelay(true).map_err(|e| transport("TCP_NODELAY", e))?;
        sock.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(|e| transport("socket timeout", e))?;
        let input = sock.try_clone().map_err(|e| transport("socket", e))?;
        let replies = ReplyDecoder::new(layout, page_size).map_err(|e| transport("page size", e))?;
        Ok(CriuPageServerSink {
            out: BufWriter::with_capacity(1 << 20, sock),
            input: ReplyReader::new(input, replies),
            addr,
            layout,
            page_size,
            opened: HashMap::new(),
            zeros: Vec::new(),
            pages: 0,
            stats: SinkStats::default(),
            rounds: 0,
        })
    }

    fn command(&mut self, command: PsCommand) -> Result<(), SinkError> {
        let mut header = Vec::with_capacity(32);
        encode_command(&command, self.layout, &mut header).map_err(|e| SinkError::Refused(e.to_string()))?;
        self.write(&header)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        self.out.write_all(bytes).map_err(|e| transport(&format!("writing to {}", self.addr), e))?;
        self.stats.wire_bytes += bytes.len() as u64;
        Ok(())
    }

    /// Flushes and reads the answer of kind `kind`.
    fn answer(&mut self, kind: ReplyKind) -> Result<Reply, SinkError> {
        self.out.flush().map_err(|e| transport(&format!("writing to {}", self.addr), e))?;
        self.input.expect(kind);
        match self.input.read_input() {
            Ok(ClientInput::Reply(reply)) => Ok(reply),
            Ok(ClientInput::PageData(_)) => Err(SinkError::Refused("page data in an answer".into())),
            Err(ReadFailure::Protocol(e)) => Err(transport(&format!("answer from {}", self.addr), e)),
            Err(ReadFailure::Io(e)) => Err(transport(&format!("reading from {}", self.addr), e)),
            Err(ReadFailure::Closed) => {
                Err(SinkError::Aborted(format!("{} closed the connection instead of answering", self.addr)))
            }
        }
    }

    /// Opens `id` on first use (OPEN2) and checks that `run` continues it in ascending order.
    fn entry(&mut self, id: PagemapId, run: PageRun) -> Result<DstId, SinkError> {
        let dst = match id {
            PagemapId::Task(pid) => DstId::task(pid),
            PagemapId::Shmem(shm) => DstId::shmem(shm),
        };
        if self.rounds != 1 {
            return Err(SinkError::Refused("pages outside a round".into()));
        }
        let end = match self.opened.get(&id) {
            Some(&end) => end,
            None => {
                self.command(PsCommand::Open2 { dst })?;
                self.answer(ReplyKind::Open2)?;
                self.opened.insert(id, 0);
                0
            }
        };
        if run.vaddr < end {
            return Err(SinkError::Refused(format!(
                "{id}: run at {:#x} after one ending at {end:#x}; a CRIU page server takes ascending runs only",
                run.vaddr
            )));
        }
        self.opened.insert(id, run.vaddr + run.nr_pages * self.page_size);
        Ok(dst)
    }
}

impl PageSink for CriuPageServerSink {
    fn begin_round(&mut self, round: u32) -> Result<(), SinkError> {
        if self.rounds > 0 {
            return Err(SinkError::Refused(format!(
                "round {round}: a CRIU page server takes one pass (migrate stop-and-copy)"
            )));
        }
        self.rounds = 1;
        Ok(())
    }

    fn send_pages(&mut self, id: PagemapId, run: PageRun, data: &[u8]) -> Result<(), SinkError> {
        if data.len() as u64 != run.nr_pages * self.page_size {
            return Err(SinkError::Refused(format!("{} bytes for {} pages", data.len(), run.nr_pages)));
        }
        let dst = self.entry(id, run)?;
        self.command(PsCommand::Add { dst, vaddr: run.vaddr, nr_pages: run.nr_pages })?;
        self.write(data)?;
        self.stats.raw_bytes += data.len() as u64;
        self.pages += run.nr_pages;
        Ok(())
    }

    fn send_zero(&mut self, id: PagemapId, run: PageRun) -> Result<(), SinkError> {
        let dst = self.entry(id, run)?;
        self.command(PsCommand::Add { dst, vaddr: run.vaddr, nr_pages: run.nr_pages })?;
        let mut left = run.nr_pages * self.page_size;
        while left > 0 {
            let n = left.min(1 << 20) as usize;
            if self.zeros.len() < n {
                self.zeros.resize(n, 0);
            }
            let zeros = std::mem::take(&mut self.zeros);
            let written = self.write(&zeros[..n]);
            self.zeros = zeros;
            written?;
            left -= n as u64;
        }
        self.pages += run.nr_pages;
        Ok(())
    }

    fn discard(&mut self, _id: PagemapId, _run: PageRun) -> Result<(), SinkError> {
        // One pass: nothing was sent before that could need dropping.
        Ok(())
    }

    fn end_round(&mut self, _summary: &RoundSummary) -> Result<(), SinkError> {
        self.out.flush().map_err(|e| transport(&format!("writing to {}", self.addr), e))
    }

    fn commit(&mut self) -> Result<CommitReceipt, SinkError> {
        self.command(PsCommand::Close)?;
        match self.answer(ReplyKind::Close)? {
            Reply::Close { status: 0 } => {}
            Reply::Close { status } => return Err(SinkError::Refused(format!("CLOSE answered with status {status}"))),
            other => return Err(SinkError::Refused(format!("{other:?} instead of the CLOSE status"))),
        }
        // As CRIU does: half-close and let the server close first.
        let _ = self.input.socket().shutdown(Shutdown::Write);
        let mut rest = [0u8; 16];
        let _ = (&mut self.input.socket()).read(&mut rest);
        Ok(CommitReceipt { location: format!("criu page-server at {}", self.addr), pages: self.pages })
    }

    fn abort(&mut self, _reason: &str) {
        // No CLOSE: the server sees the connection end mid-session and fails.
        let _ = self.input.socket().shutdown(Shutdown::Both);
    }

    fn stats(&self) -> SinkStats {
        self.stats
    }
}
