//! [`CriuLazySource`]: pages from a real CRIU lazy page server (what `criu dump --lazy-pages
//! --address A --port P` becomes once it has dumped everything else), fetched with PS_IOV_GET, as
//! `criu lazy-pages --page-server` does. `pagestream serve-lazy --criu-page-server` re-serves
//! them over QUIC with its urgent stream and background push.
//!
//! One request at a time; CRIU may answer with fewer pages than asked (the end of a pipe
//! buffer), and the rest is asked for again. CRIU serves a page as often as it is asked (it
//! `tee`s from its page pipes). Dropping the source sends CLOSE, which lets CRIU's dump finish.

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use pagestream_engine::criu::PagemapId;
use pagestream_engine::lazy::{PageSource, SourceError};
use pagestream_engine::page::is_zero;
use pagestream_engine::PageRun;

use super::reply_reader::{ReadFailure, ReplyReader};
use super::{encode_command, ClientInput, HeaderLayout, PsCommand, Reply, ReplyDecoder, ReplyKind};

/// How long one answer may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// A [`PageSource`] over CRIU's lazy page server; see the module documentation.
pub struct CriuLazySource {
    input: ReplyReader,
    addr: SocketAddr,
    layout: HeaderLayout,
    page_size: u64,
    closed: bool,
}

fn other(msg: String) -> SourceError {
    SourceError::Other(msg)
}

impl CriuLazySource {
    /// Connects to CRIU's lazy page server at `addr`, which speaks header `layout`.
    pub fn connect(addr: SocketAddr, layout: HeaderLayout, page_size: u64) -> Result<CriuLazySource, SourceError> {
        let sock =
            TcpStream::connect(addr).map_err(|e| other(format!("connecting to CRIU's page server {addr}: {e}")))?;
        sock.set_nodelay(true).map_err(|e| other(format!("TCP_NODELAY: {e}")))?;
        sock.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(|e| other(format!("socket timeout: {e}")))?;
        let replies = ReplyDecoder::new(layout, page_size).map_err(|e| other(e.to_string()))?;
        Ok(CriuLazySource { input: ReplyReader::new(sock, replies), addr, layout, page_size, closed: false })
    }

    fn send(&mut self, command: PsCommand) -> Result<(), SourceError> {
        let mut out = Vec::with_capacity(32);
        encode_command(&command, self.layout, &mut out).map_err(|e| other(e.to_string()))?;
        (&mut self.input.socket()).write_all(&out).map_err(|e| other(format!("writing to {}: {e}", self.addr)))
    }

    fn next_input(&mut self) -> Result<ClientInput, SourceError> {
        self.input.read_input().map_err(|failure| match failure {
            ReadFailure::Protocol(e) => other(format!("CRIU's answer: {e}")),
            ReadFailure::Io(e) => other(format!("reading from {}: {e}", self.addr)),
            ReadFailure::Closed => other(format!("CRIU's page server {} closed the connection", self.addr)),
        })
    }

    /// GETs `nr_pages` at `vaddr` of `pid` into `out`; returns how many pages CRIU sent (>= 1).
    fn get(&mut self, pid: u64, vaddr: u64, nr_pages: u64, out: &mut [u8]) -> Result<u64, SourceError> {
        self.send(PsCommand::Get { pid, vaddr, nr_pages })?;
        self.input.expect(ReplyKind::Get { pid, vaddr, nr_pages });
        let got = match self.next_input()? {
            ClientInput::Reply(Reply::Get { nr_pages: got, .. }) => got,
            other_input => return Err(other(format!("expected a GET answer, got {other_input:?}"))),
        };
        let mut filled = 0usize;
        let want = (got * self.page_size) as usize;
        while filled < want {
            match self.next_input()? {
                ClientInput::PageData(data) if filled + data.len() <= want => {
                    out[filled..filled + data.len()].copy_from_slice(&data);
                    filled += data.len();
                }
                other_input => return Err(other(format!("expected page data, got {other_input:?}"))),
            }
        }
        Ok(got)
    }

    /// Sends CLOSE and waits for CRIU's status (its dump then finishes).
    pub fn close(&mut self) -> Result<(), SourceError> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        self.send(PsCommand::Close)?;
        self.input.expect(ReplyKind::Close);
        let result = match self.next_input()? {
            ClientInput::Reply(Reply::Close { .. }) => Ok(()),
            other_input => Err(other(format!("expected the CLOSE status, got {other_input:?}"))),
        };
        let _ = self.input.socket().shutdown(Shutdown::Write);
        result
    }
}

impl PageSource for CriuLazySource {
    fn page_size(&self) -> u64 {
        self.page_size
    }

    fn read_run(&mut self, id: PagemapId, run: PageRun, out: &mut [u8], zero: &mut [bool]) -> Result<(), SourceError> {
        let ps = self.page_size;
        if out.len() as u64 != run.nr_pages * ps || zero.len() as u64 != run.nr_pages {
            return Err(SourceError::BadBuffer { have: out.len(), nr_pages: run.nr_pages });
        }
        let PagemapId::Task(pid) = id else {
            return Err(other(format!("{id}: CRIU's lazy page server serves task memory only")));
        };
        let mut done = 0u64;
        while done < run.nr_pages {
            let at = (done * ps) as usize;
            done += self.get(pid, run.vaddr + done * ps, run.nr_pages - done, &mut out[at..])?;
        }
        for (i, z) in zero.iter_mut().enumerate() {
            *z = is_zero(&out[i * ps as usize..(i + 1) * ps as usize]);
        }
        Ok(())
    }
}

impl Drop for CriuLazySource {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!("closing CRIU's page server {}: {e}", self.addr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::criu_ps::{encode_reply, CommandDecoder, LayoutChoice, ServerInput};
    use bytes::BytesMut;
    use std::io::Read;
    use std::net::TcpListener;

    const PS: u64 = 4096;

    fn page(vaddr: u64) -> Vec<u8> {
        if vaddr % (3 * PS) == 0 {
            return vec![0; PS as usize];
        }
        (0..PS).map(|i| (vaddr / PS + i) as u8).collect()
    }

    /// A CRIU-like lazy page server that answers each GET with at most 2 pages, then CLOSE.
    fn fake_criu(listener: TcpListener) -> std::thread::JoinHandle<Vec<(u64, u64)>> {
        std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().unwrap();
            let mut dec = CommandDecoder::new(LayoutChoice::Fixed(HeaderLayout::Legacy24), PS).unwrap();
            let (mut buf, mut chunk, mut asked) = (BytesMut::new(), [0u8; 4096], Vec::new());
            loop {
                while let Some(input) = dec.decode(&mut buf).unwrap() {
                    let mut out = Vec::new();
                    match input {
                        ServerInput::Command(PsCommand::Get { pid, vaddr, nr_pages }) => {
                            asked.push((vaddr, nr_pages));
                            let k = nr_pages.min(2);
                            encode_reply(&Reply::Get { pid, vaddr, nr_pages: k }, HeaderLayout::Legacy24, PS, &mut out)
                                .unwrap();
                            for i in 0..k {
                                out.extend_from_slice(&page(vaddr + i * PS));
                            }
                        }
                        ServerInput::Command(PsCommand::Close) => {
                            encode_reply(&Reply::Close { status: 0 }, HeaderLayout::Legacy24, PS, &mut out).unwrap();
                            sock.write_all(&out).unwrap();
                            return asked;
                        }
                        other => panic!("{other:?}"),
                    }
                    sock.write_all(&out).unwrap();
                }
                let n = sock.read(&mut chunk).unwrap();
                assert!(n > 0, "the client hung up without CLOSE");
                buf.extend_from_slice(&chunk[..n]);
            }
        })
    }

    #[test]
    fn short_answers_are_asked_again_and_close_ends_the_session() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = fake_criu(listener);
        let mut src = CriuLazySource::connect(addr, HeaderLayout::Legacy24, PS).unwrap();
        let base = 0x7f00_0000_0000;
        let mut out = vec![0u8; 5 * PS as usize];
        let mut zero = vec![false; 5];
        src.read_run(PagemapId::Task(42), PageRun::new(base, 5), &mut out, &mut zero).unwrap();
        for i in 0..5u64 {
            let want = page(base + i * PS);
            assert_eq!(&out[(i * PS) as usize..((i + 1) * PS) as usize], &want[..]);
            assert_eq!(zero[i as usize], want.iter().all(|&b| b == 0));
        }
        let err = src.read_run(PagemapId::Shmem(1), PageRun::new(base, 1), &mut out[..PS as usize], &mut zero[..1]);
        assert!(err.unwrap_err().to_string().contains("task memory only"));
        drop(src);
        let asked = server.join().unwrap();
        assert_eq!(asked, [(base, 5), (base + 2 * PS, 3), (base + 4 * PS, 1)]);
    }
}
