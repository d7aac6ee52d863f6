//! PS_IOV_GET served by `pagestream page-server`: a real `criu lazy-pages --page-server` (the
//! destination of a lazy restore) asks for the lazy pages of the newest session, `DIR/last`, and
//! its parent chain. A connection whose first command is GET is such a session: nothing is
//! written, each GET is answered in the order received with an `ADD_F|PE_PRESENT` header that
//! echoes the requested pid and vaddr and carries all the requested pages (never 0), and CLOSE
//! gets the status 0.

use std::io::Write;
use std::net::TcpStream;

use bytes::BytesMut;
use pagestream_engine::criu::session_dirs::{CommittedSession, SessionDirs};
use pagestream_engine::criu::PagemapId;
use pagestream_engine::lazy::{ImageSource, PageSource};
use pagestream_engine::PageRun;

use super::reply::{encode_reply, Reply};
use super::server_decoder::{CommandDecoder, ServerInput};
use super::tcp_server::{read_some, ConnectionError, ServerConfig};
use super::{HeaderLayout, PsCommand};

/// What a GET session served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LazyServed {
    /// GET requests answered.
    pub gets: u64,
    /// Pages sent.
    pub pages: u64,
}

fn refused(msg: String) -> ConnectionError {
    ConnectionError::Lazy(msg)
}

/// Serves GETs from `dirs`' newest session until CLOSE; `first` is the GET already decoded.
pub(crate) fn serve_gets(
    mut stream: &TcpStream,
    decoder: &mut CommandDecoder,
    buf: &mut BytesMut,
    first: PsCommand,
    dirs: &SessionDirs,
    cfg: &ServerConfig,
) -> Result<(CommittedSession, LazyServed), ConnectionError> {
    let last = dirs
        .last()
        .map_err(|e| refused(e.to_string()))?
        .ok_or_else(|| refused(format!("GET, but {} holds no committed session to serve", dirs.root().display())))?;
    let path = dirs.session_path(last);
    let mut source = ImageSource::open(&path, Some(dirs.root()), cfg.page_size)
        .map_err(|e| refused(format!("serving {}: {e}", path.display())))?;
    let layout = decoder.layout().unwrap_or(HeaderLayout::Legacy24);
    let mut served = LazyServed::default();
    let mut next = Some(first);
    let mut chunk = vec![0u8; 64 << 10];
    let mut out = Vec::new();
    loop {
        let command = match next.take() {
            Some(c) => c,
            None => match decoder.decode(buf).map_err(|e| refused(e.to_string()))? {
                Some(ServerInput::Command(c)) => c,
                Some(ServerInput::PageData(_)) => return Err(refused("page data in a GET session".into())),
                None => {
                    let n = read_some(stream, &mut chunk, cfg.idle_timeout)?;
                    if n == 0 {
                        return Err(refused(format!("the client left after {} GETs without CLOSE", served.gets)));
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    continue;
                }
            },
        };
        out.clear();
        match command {
            PsCommand::Get { pid, vaddr, nr_pages } => {
                answer_get(&mut source, layout, cfg.page_size, pid, vaddr, nr_pages, &mut out)?;
                served.gets += 1;
                served.pages += nr_pages;
            }
            PsCommand::Close | PsCommand::ForceClose => {
                encode_reply(&Reply::Close { status: 0 }, layout, cfg.page_size, &mut out)
                    .map_err(|e| refused(e.to_string()))?;
                stream.write_all(&out).map_err(|source| ConnectionError::Io { op: "write", source })?;
                return Ok((CommittedSession { number: last, path }, served));
            }
            other => return Err(refused(format!("{} in a GET session", other.name()))),
        }
        stream.write_all(&out).map_err(|source| ConnectionError::Io { op: "write", source })?;
    }
}

fn answer_get(
    source: &mut ImageSource,
    layout: HeaderLayout,
    ps: u64,
    pid: u64,
    vaddr: u64,
    nr_pages: u64,
    out: &mut Vec<u8>,
) -> Result<(), ConnectionError> {
    let run = PageRun::checked(vaddr, nr_pages, ps)
        .filter(|r| r.nr_pages <= 1 << 20)
        .ok_or_else(|| refused(format!("GET of {nr_pages} pages at {vaddr:#x}: not a valid run")))?;
    let data = source
        .read_run_bytes(PagemapId::Task(pid), run)
        .map_err(|e| refused(format!("GET pid {pid} {vaddr:#x}+{nr_pages}: {e}")))?;
    encode_reply(&Reply::Get { pid, vaddr, nr_pages }, layout, ps, out).map_err(|e| refused(e.to_string()))?;
    out.extend_from_slice(&data);
    Ok(())
}
