//! Test helpers for pagestream's page server: a CRIU-like client built from the codec
//! (`encode_command` / `ReplyDecoder`) over any stream socket, and a server on TCP loopback run in
//! a thread that reports each session through a channel.

#![allow(dead_code)] // each test file uses a different part

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::BytesMut;
use pagestream_transport::criu_ps::tcp_server::{self, ServeTotals, ServerConfig, SessionSummary};
use pagestream_transport::criu_ps::{
    encode_command, ClientInput, DstId, HeaderLayout, LayoutChoice, PsCommand, Reply, ReplyDecoder,
};

pub use pagestream_engine::criu::PageFlags;

/// The page size the server uses (this machine's).
pub fn ps() -> u64 {
    pagestream_engine::page_size()
}

/// A stream socket the client can half-close.
pub trait ClientSocket: Read + Write {
    fn shutdown_write(&self) -> std::io::Result<()>;
}

impl ClientSocket for TcpStream {
    fn shutdown_write(&self) -> std::io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

impl ClientSocket for UnixStream {
    fn shutdown_write(&self) -> std::io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

/// Plays the dumping CRIU's side of a session.
pub struct Client<S: ClientSocket> {
    sock: S,
    layout: HeaderLayout,
    replies: ReplyDecoder,
    buf: BytesMut,
}

impl Client<TcpStream> {
    /// Connects to `addr` and speaks `layout`.
    pub fn connect(addr: SocketAddr, layout: HeaderLayout) -> Self {
        let sock = TcpStream::connect(addr).expect("connect to the page server");
        sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Client::over(sock, layout)
    }
}

impl<S: ClientSocket> Client<S> {
    /// A client on an already connected socket.
    pub fn over(sock: S, layout: HeaderLayout) -> Self {
        Client { sock, layout, replies: ReplyDecoder::new(layout, ps()).unwrap(), buf: BytesMut::new() }
    }

    /// The header bytes of `command` in this client's layout.
    pub fn header(&self, command: PsCommand) -> Vec<u8> {
        let mut out = Vec::new();
        encode_command(&command, self.layout, &mut out).unwrap();
        out
    }

    /// Sends raw bytes.
    pub fn raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.sock.write_all(bytes)
    }

    /// Sends `command` and `data` after it (no reply is read).
    pub fn send(&mut self, command: PsCommand, data: &[u8]) {
        let mut out = self.header(command);
        out.extend_from_slice(data);
        self.raw(&out).expect("send to the page server");
    }

    /// Reads the reply the last command owes.
    fn reply(&mut self, command: &PsCommand) -> Reply {
        self.replies.expect(command.expected_reply().expect("a command with a reply"));
        loop {
            if let Some(ClientInput::Reply(r)) = self.replies.decode(&mut self.buf).unwrap() {
                return r;
            }
            let mut chunk = [0u8; 64];
            let n = self.sock.read(&mut chunk).expect("read a reply");
            assert!(n > 0, "the page server closed the connection instead of answering {}", command.name());
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// OPEN2: returns `has_parent`.
    pub fn open2(&mut self, dst: DstId) -> bool {
        let c = PsCommand::Open2 { dst };
        self.send(c, &[]);
        match self.reply(&c) {
            Reply::Open2 { has_parent } => has_parent,
            r => panic!("{r:?}"),
        }
    }

    /// PARENT: returns the answer.
    pub fn parent(&mut self, dst: DstId) -> bool {
        let c = PsCommand::Parent { dst };
        self.send(c, &[]);
        match self.reply(&c) {
            Reply::Parent { has_parent } => has_parent,
            r => panic!("{r:?}"),
        }
    }

    /// GET (as `criu lazy-pages --page-server` asks): returns the `nr_pages` pages of the answer,
    /// which must echo `pid` and `vaddr` and carry every page asked for.
    pub fn get(&mut self, pid: u64, vaddr: u64, nr_pages: u64) -> Vec<u8> {
        let c = PsCommand::Get { pid, vaddr, nr_pages };
        self.send(c, &[]);
        match self.reply(&c) {
            Reply::Get { pid: p, vaddr: v, nr_pages: n } => assert_eq!((p, v, n), (pid, vaddr, nr_pages)),
            r => panic!("{r:?}"),
        }
        let want = (nr_pages * ps()) as usize;
        let mut data = Vec::with_capacity(want);
        while data.len() < want {
            match self.replies.decode(&mut self.buf).unwrap() {
                Some(ClientInput::PageData(d)) => data.extend_from_slice(&d),
                Some(other) => panic!("{other:?} inside a GET answer"),
                None => {
                    let mut chunk = [0u8; 65536];
                    let n = self.sock.read(&mut chunk).expect("read a GET answer");
                    assert!(n > 0, "the page server closed the connection inside a GET answer");
                    self.buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
        data
    }

    /// ADD_F with `flags`; `data` (whole pages) only with `PE_PRESENT`, else `nr_pages` counts.
    pub fn add_f(&mut self, dst: DstId, vaddr: u64, nr_pages: u64, flags: PageFlags, data: &[u8]) {
        assert_eq!(data.len() as u64, if flags.is_present() { nr_pages * ps() } else { 0 });
        self.send(PsCommand::AddF { dst, vaddr, nr_pages, flags }, data);
    }

    /// CLOSE (or FORCE_CLOSE): returns the status, then half-closes and waits for the server's
    /// EOF, as CRIU does.
    pub fn close(mut self, force: bool) -> i32 {
        let c = if force { PsCommand::ForceClose } else { PsCommand::Close };
        self.send(c, &[]);
        let status = match self.reply(&c) {
            Reply::Close { status } => status,
            r => panic!("{r:?}"),
        };
        self.sock.shutdown_write().unwrap();
        let mut rest = Vec::new();
        self.sock.read_to_end(&mut rest).expect("EOF from the server after CLOSE");
        assert!(rest.is_empty(), "{} bytes after the CLOSE reply", rest.len());
        status
    }

    /// Half-closes and reads what the server sends until it closes; an error (reset) counts as
    /// nothing received. A failed session must produce no reply.
    pub fn hang_up(self) -> Vec<u8> {
        let _ = self.sock.shutdown_write();
        let mut rest = Vec::new();
        let mut sock = self.sock;
        let _ = sock.read_to_end(&mut rest);
        rest
    }
}

/// What the server reported for one session.
pub type Outcome = Result<SessionSummary, String>;

/// A page server on 127.0.0.1 in a thread.
pub struct Server {
    pub addr: SocketAddr,
    pub root: PathBuf,
    reports: mpsc::Receiver<(Option<u64>, Outcome)>,
    thread: Option<JoinHandle<ServeTotals>>,
}

impl Server {
    /// Serves `sessions` sessions into `root` with `layout`.
    pub fn start(root: &Path, layout: LayoutChoice, sessions: u64) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cfg = ServerConfig {
            layout,
            sessions: Some(sessions),
            idle_timeout: Some(Duration::from_secs(30)),
            close_wait: Duration::from_secs(10),
            ..ServerConfig::new(ps())
        };
        let (tx, reports) = mpsc::channel();
        let dir = root.to_path_buf();
        let thread = std::thread::spawn(move || {
            tcp_server::serve(&listener, &dir, &cfg, |r| {
                let outcome = r.result.as_ref().map(Clone::clone).map_err(|e| e.to_string());
                let _ = tx.send((r.number, outcome));
            })
            .expect("serve")
        });
        Server { addr, root: root.to_path_buf(), reports, thread: Some(thread) }
    }

    /// The next session's number and outcome.
    pub fn next(&self) -> (Option<u64>, Outcome) {
        self.reports.recv_timeout(Duration::from_secs(60)).expect("the server reported no session within 60 s")
    }

    /// Waits for the server to stop after its sessions.
    pub fn join(mut self) -> ServeTotals {
        self.thread.take().unwrap().join().expect("server thread")
    }
}

/// The names in `dir`, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|d| d.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// `pages` pages, page i filled from `seed + i` (a text-like pattern), except every page whose
/// index is a multiple of 3 is zero.
pub fn pattern(seed: u8, pages: u64) -> Vec<u8> {
    let ps = ps() as usize;
    let mut out = vec![0u8; ps * pages as usize];
    for (i, page) in out.chunks_mut(ps).enumerate() {
        if i % 3 != 0 {
            for (j, b) in page.iter_mut().enumerate() {
                *b = seed.wrapping_add(i as u8).wrapping_add((j % 251) as u8);
            }
        }
    }
    out
}
