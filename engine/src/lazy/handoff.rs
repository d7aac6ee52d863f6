//! The `lazy-pages.socket` handoff between `criu restore --lazy-pages` and the lazy-pages daemon.
//!
//! Per task, in restore order, the restorer sends the pid as a native `int`, then (pid > 0) one
//! `sendmsg` with a 1-byte payload carrying the task's userfaultfd as `SCM_RIGHTS`; zombies are
//! sent as `-pid` with no descriptor. At the end it sends the u32 [`RESTORE_FINISHED`] and closes.
//! [`HandoffDecoder`] is the sans-IO parser (bytes and received descriptors in, events out);
//! [`HandoffListener`] / [`HandoffConnection`] are the daemon's socket and [`HandoffClient`] the
//! restorer's.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::sys::scm_rights;

/// The socket's name inside the work directory (`LAZY_PAGES_SOCK_NAME`).
pub const SOCKET_NAME: &str = "lazy-pages.socket";
/// `LAZY_PAGES_RESTORE_FINISHED`: sent instead of a pid when the restore is complete.
pub const RESTORE_FINISHED: u32 = 0x5253_5446;

/// One step of the handoff.
#[derive(Debug)]
pub enum HandoffEvent {
    /// A live task and its userfaultfd.
    Task { pid: i32, uffd: OwnedFd },
    /// A zombie: no memory, no descriptor.
    Zombie { pid: i32 },
    /// The restore finished; nothing else may follow.
    Finished,
}

/// A violation of the handoff protocol.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// The restorer hung up before the finish marker.
    #[error("the restorer hung up before the finish marker {RESTORE_FINISHED:#x} ({tasks} task(s) handed over, {pending} byte(s) of a message pending)")]
    HungUp { tasks: usize, pending: usize },
    /// A pid of 0.
    #[error("pid 0 in the handoff")]
    ZeroPid,
    /// The 1-byte message of a task came without a descriptor.
    #[error("task {pid}: the message after the pid carried no userfaultfd")]
    NoDescriptor { pid: i32 },
    /// Bytes or descriptors after the finish marker.
    #[error("data after the finish marker")]
    AfterFinish,
    /// Socket failure.
    #[error("lazy-pages socket: {0}")]
    Io(#[from] io::Error),
}

#[derive(Debug)]
enum State {
    Pid,
    FdByte { pid: i32 },
    Done,
}

/// Sans-IO parser of the restorer's byte stream and the descriptors that came with it.
#[derive(Debug)]
pub struct HandoffDecoder {
    bytes: VecDeque<u8>,
    fds: VecDeque<OwnedFd>,
    state: State,
    tasks: usize,
}

impl Default for HandoffDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl HandoffDecoder {
    /// A decoder expecting the first pid.
    pub fn new() -> Self {
        Self { bytes: VecDeque::new(), fds: VecDeque::new(), state: State::Pid, tasks: 0 }
    }

    /// Feeds bytes received and the descriptors received with them.
    pub fn push(&mut self, bytes: &[u8], fds: impl IntoIterator<Item = OwnedFd>) {
        self.bytes.extend(bytes);
        self.fds.extend(fds);
    }

    /// Whether the finish marker was seen.
    pub fn finished(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Live tasks handed over so far.
    pub fn tasks(&self) -> usize {
        self.tasks
    }

    /// The next complete event, if the bytes so far hold one.
    pub fn next_event(&mut self) -> Result<Option<HandoffEvent>, HandoffError> {
        match self.state {
            State::Done if !self.bytes.is_empty() || !self.fds.is_empty() => Err(HandoffError::AfterFinish),
            State::Done => Ok(None),
            State::Pid if self.bytes.len() < 4 => Ok(None),
            State::Pid => {
                let raw: [u8; 4] = std::array::from_fn(|_| self.bytes.pop_front().unwrap_or(0));
                if u32::from_ne_bytes(raw) == RESTORE_FINISHED {
                    self.state = State::Done;
                    return self.next_event().map(|_| Some(HandoffEvent::Finished));
                }
                match i32::from_ne_bytes(raw) {
                    0 => Err(HandoffError::ZeroPid),
                    pid if pid < 0 => Ok(Some(HandoffEvent::Zombie { pid: pid.checked_neg().unwrap_or(i32::MAX) })),
                    pid => {
                        self.state = State::FdByte { pid };
                        self.next_event()
                    }
                }
            }
            State::FdByte { .. } if self.bytes.is_empty() => Ok(None),
            State::FdByte { pid } => {
                self.bytes.pop_front();
                let uffd = self.fds.pop_front().ok_or(HandoffError::NoDescriptor { pid })?;
                self.state = State::Pid;
                self.tasks += 1;
                Ok(Some(HandoffEvent::Task { pid, uffd }))
            }
        }
    }

    /// The stream ended: an error unless the finish marker came.
    pub fn end_of_stream(&self) -> Result<(), HandoffError> {
        if self.finished() {
            Ok(())
        } else {
            Err(HandoffError::HungUp { tasks: self.tasks, pending: self.bytes.len() })
        }
    }
}

/// The daemon's listening socket, `WORKDIR/lazy-pages.socket` (removed on drop).
pub struct HandoffListener {
    listener: UnixListener,
    path: PathBuf,
}

impl HandoffListener {
    /// Removes a stale socket and binds a new one in `work_dir`.
    pub fn bind(work_dir: &Path) -> io::Result<Self> {
        let path = work_dir.join(SOCKET_NAME);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener =
            UnixListener::bind(&path).map_err(|e| io::Error::new(e.kind(), format!("bind {}: {e}", path.display())))?;
        Ok(Self { listener, path })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the restorer's connection.
    pub fn accept(&self) -> io::Result<HandoffConnection> {
        let (stream, _) = self.listener.accept()?;
        Ok(HandoffConnection { stream, decoder: HandoffDecoder::new(), eof: false })
    }
}

impl AsFd for HandoffListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }
}

impl Drop for HandoffListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The daemon's end of one restorer connection.
pub struct HandoffConnection {
    stream: UnixStream,
    decoder: HandoffDecoder,
    eof: bool,
}

impl HandoffConnection {
    /// Reads what is available (blocking until something is) and returns the complete events.
    /// At end of stream, an error unless the finish marker came.
    pub fn read_events(&mut self, out: &mut Vec<HandoffEvent>) -> Result<(), HandoffError> {
        let mut buf = [0u8; 64];
        let mut fds = Vec::new();
        let n = scm_rights::recv_with_fds(self.stream.as_fd(), &mut buf, &mut fds)?;
        self.decoder.push(&buf[..n], fds);
        while let Some(ev) = self.decoder.next_event()? {
            out.push(ev);
        }
        if n == 0 {
            self.eof = true;
            self.decoder.end_of_stream()?;
        }
        Ok(())
    }

    /// Whether the restorer closed its end.
    pub fn at_eof(&self) -> bool {
        self.eof
    }

    /// Whether the finish marker was seen.
    pub fn finished(&self) -> bool {
        self.decoder.finished()
    }
}

impl AsFd for HandoffConnection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

/// The restorer's end: connects to `WORKDIR/lazy-pages.socket` and hands tasks over.
pub struct HandoffClient {
    stream: UnixStream,
}

impl HandoffClient {
    /// Connects to the daemon's socket in `work_dir`.
    pub fn connect(work_dir: &Path) -> io::Result<Self> {
        let path = work_dir.join(SOCKET_NAME);
        let stream = UnixStream::connect(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("connect to {}: {e}", path.display())))?;
        Ok(Self { stream })
    }

    fn send_all(&self, data: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let n = scm_rights::send_with_fd(self.stream.as_fd(), data, fd)?;
        if n != data.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short send on lazy-pages socket"));
        }
        Ok(())
    }

    /// Hands over a live task's userfaultfd: `send(pid)`, then 1 byte with the descriptor.
    pub fn send_task(&self, pid: i32, uffd: BorrowedFd<'_>) -> io::Result<()> {
        self.send_all(&pid.to_ne_bytes(), None)?;
        self.send_all(&[0], Some(uffd))
    }

    /// Announces a zombie (`-pid`, no descriptor).
    pub fn send_zombie(&self, pid: i32) -> io::Result<()> {
        self.send_all(&pid.saturating_neg().to_ne_bytes(), None)
    }

    /// Sends the finish marker and closes the connection.
    pub fn finish(self) -> io::Result<()> {
        self.send_all(&RESTORE_FINISHED.to_ne_bytes(), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> OwnedFd {
        OwnedFd::from(std::fs::File::open("/dev/null").unwrap())
    }

    #[test]
    fn decodes_byte_by_byte() {
        let mut d = HandoffDecoder::new();
        let mut stream = Vec::new();
        stream.extend(41i32.to_ne_bytes());
        stream.push(0);
        stream.extend((-42i32).to_ne_bytes());
        stream.extend(RESTORE_FINISHED.to_ne_bytes());
        let mut events = Vec::new();
        for (i, b) in stream.iter().enumerate() {
            d.push(&[*b], if i == 4 { vec![fd()] } else { vec![] });
            while let Some(ev) = d.next_event().unwrap() {
                events.push(ev);
            }
        }
        assert!(matches!(events[0], HandoffEvent::Task { pid: 41, .. }));
        assert!(matches!(events[1], HandoffEvent::Zombie { pid: 42 }));
        assert!(matches!(events[2], HandoffEvent::Finished));
        assert_eq!(events.len(), 3);
        d.end_of_stream().unwrap();
    }

    #[test]
    fn refuses_violations() {
        let mut d = HandoffDecoder::new();
        d.push(&7i32.to_ne_bytes(), []);
        assert!(d.next_event().unwrap().is_none());
        let err = d.end_of_stream().unwrap_err().to_string();
        assert!(err.contains("hung up before the finish marker 0x52535446"), "{err}");
        d.push(&[0], []);
        assert!(matches!(d.next_event(), Err(HandoffError::NoDescriptor { pid: 7 })));
        let mut d = HandoffDecoder::new();
        d.push(&0i32.to_ne_bytes(), []);
        assert!(matches!(d.next_event(), Err(HandoffError::ZeroPid)));
        let mut d = HandoffDecoder::new();
        d.push(&RESTORE_FINISHED.to_ne_bytes(), []);
        d.push(&[1], []);
        assert!(matches!(d.next_event(), Err(HandoffError::AfterFinish)));
    }

    #[test]
    fn socket_round_trip_passes_the_descriptor() {
        let tmp = tempfile::tempdir().unwrap();
        let listener = HandoffListener::bind(tmp.path()).unwrap();
        let client = HandoffClient::connect(tmp.path()).unwrap();
        let file = tempfile::tempfile().unwrap();
        file.set_len(12345).unwrap();
        client.send_task(5, file.as_fd()).unwrap();
        client.send_zombie(6).unwrap();
        client.finish().unwrap();
        let mut conn = listener.accept().unwrap();
        let mut events = Vec::new();
        while !conn.at_eof() {
            conn.read_events(&mut events).unwrap();
        }
        let HandoffEvent::Task { pid: 5, uffd } = events.remove(0) else { panic!("{events:?}") };
        assert_eq!(std::fs::File::from(uffd).metadata().unwrap().len(), 12345);
        assert!(matches!(events[..], [HandoffEvent::Zombie { pid: 6 }, HandoffEvent::Finished]));
    }
}
