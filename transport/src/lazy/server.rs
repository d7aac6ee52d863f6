//! [`LazyServer`]: the source of lazy restores over QUIC (`pagestream serve-lazy --images-dir`).
//! It serves the lazy pages (`PE_LAZY` entries of the newest directory's pagemaps; data from the
//! directory and its parents) to any number of daemons, one connection each, one task per
//! connection on a small tokio runtime.
//!
//! Per session (kept across reconnections until the daemon says Done): the pages not yet sent,
//! in a [`PushOrder`]. Fetches are answered on the urgent stream as they come; the push task
//! sends the unsent pages in that order, which follows each fetch (the process's own access
//! pattern, upwards or downwards), then the working set, then the rest. A page is sent once per session: after a broken
//! connection the pages lost in flight are fetched by the daemon when it needs them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use pagestream_engine::criu::PagemapId;
use pagestream_engine::lazy::{ImageSource, PageSource};
use pagestream_engine::{PageRun, PageRunSet};
use quinn::{Endpoint, SendStream, VarInt};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

use super::frame::{LazyEncoder, LazyFrame, LAZY_VERSION};
use super::push_order::{NextRun, PushOrder};
use super::stream::FrameReader;
use super::LAZY_ALPN;
use crate::quic::endpoint::{make_endpoint, runtime, transport_config, Side, DEFAULT_IDLE_TIMEOUT};
use crate::quic::tls::server_crypto;
use crate::quic::{Security, TransportError};

/// Priority of the urgent stream (quinn sends higher first); the push stream has 0.
pub const URGENT_PRIORITY: i32 = 100;

/// What the server reports for a session that ended with Done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LazyServerReport {
    /// The session number.
    pub session: u64,
    /// Pages answered to Fetch requests.
    pub fetched_pages: u64,
    /// Pages pushed in the background.
    pub pushed_pages: u64,
    /// Connections the session used (1 + reconnections).
    pub connections: u64,
    /// Pages pushed first because the working set named them.
    pub working_set_pages: u64,
}

struct SessionState {
    order: PushOrder,
    report: LazyServerReport,
}

struct Shared {
    images: Mutex<Box<dyn PageSource + Send>>,
    page_size: u64,
    lz4: bool,
    push: bool,
    /// The lazy pages of each pagemap, in a fixed order.
    plan: Vec<(PagemapId, PageRunSet)>,
    lazy_pages: u64,
    sessions: Mutex<HashMap<u64, Arc<Mutex<SessionState>>>>,
    next_session: AtomicU64,
    working_set: Vec<(PagemapId, PageRun)>,
}

/// The lazy-pages source; see the module documentation.
pub struct LazyServer {
    endpoint: Endpoint,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    // Declared last: dropped after the endpoint that lives on it.
    rt: Runtime,
}

impl LazyServer {
    /// Serves the lazy pages of image directory `dir` on `listen` (UDP).
    pub fn bind(listen: SocketAddr, security: &Security, dir: &Path, lz4: bool) -> Result<LazyServer, TransportError> {
        LazyServer::bind_source(listen, security, dir, None, lz4, true)
    }

    /// As [`bind`](Self::bind), with the pages' data from `data` instead of `dir` (e.g. CRIU's
    /// lazy page server) when given; `dir`'s pagemaps still say which pages are lazy. `push:
    /// false` serves faults only (no background push: for links too thin to share, or to
    /// measure the fault path alone).
    pub fn bind_source(
        listen: SocketAddr,
        security: &Security,
        dir: &Path,
        data: Option<Box<dyn PageSource + Send>>,
        lz4: bool,
        push: bool,
    ) -> Result<LazyServer, TransportError> {
        let ps = pagestream_engine::page_size();
        let images = ImageSource::open(dir, None, ps)
            .map_err(|e| TransportError::Config(format!("images in {}: {e}", dir.display())))?;
        let mut plan = Vec::new();
        if let Some(d) = images.dir() {
            for pm in d.pagemaps() {
                let runs =
                    pm.pagemap.entries.iter().filter(|e| e.flags.is_lazy()).map(|e| PageRun::new(e.vaddr, e.nr_pages));
                let set = PageRunSet::from_runs(ps, runs);
                if !set.is_empty() {
                    plan.push((pm.id, set));
                }
            }
        }
        let lazy_pages = plan.iter().map(|(_, s)| s.len_pages()).sum();
        let mut crypto = server_crypto(security)?;
        crypto.alpn_protocols = vec![LAZY_ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
            .map_err(|e| TransportError::TlsConfig(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = transport_config(Side::Server, DEFAULT_IDLE_TIMEOUT)?;
        // One urgent stream from the daemon; the push stream goes the other way.
        transport.max_concurrent_uni_streams(VarInt::from_u32(0));
        server.transport_config(Arc::new(transport));
        let rt = runtime("pagestream-lazy-src", 2)?;
        let endpoint = {
            let _guard = rt.enter();
            make_endpoint(listen, Some(server))?
        };
        let local_addr =
            endpoint.local_addr().map_err(|e| TransportError::io(format!("address of the endpoint on {listen}"), e))?;
        let data: Box<dyn PageSource + Send> = match data {
            Some(source) => source,
            None => Box::new(images),
        };
        let shared = Arc::new(Shared {
            images: Mutex::new(data),
            page_size: ps,
            lz4,
            push,
            plan,
            lazy_pages,
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            working_set: Vec::new(),
        });
        Ok(LazyServer { endpoint, local_addr, shared, rt })
    }

    /// Pushes the runs of `ws` first in every session (before serving: later calls, once a
    /// session holds the configuration, change nothing and return false).
    pub fn push_first(&mut self, ws: &pagestream_engine::lazy::WorkingSet) -> bool {
        match Arc::get_mut(&mut self.shared) {
            Some(shared) => {
                shared.working_set = ws.runs.clone();
                true
            }
            None => false,
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Lazy pages the images hold.
    pub fn lazy_pages(&self) -> u64 {
        self.shared.lazy_pages
    }

    /// Serves until `sessions` sessions ended with Done (`None`: forever), calling `on_done`
    /// for each; connection problems are logged and the session waits for its daemon to resume.
    pub fn serve(
        &self,
        sessions: Option<u64>,
        mut on_done: impl FnMut(&LazyServerReport),
    ) -> Result<(), TransportError> {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        self.rt.block_on(async {
            let mut done = 0u64;
            while sessions.is_none_or(|max| done < max) {
                tokio::select! {
                    incoming = self.endpoint.accept() => {
                        let Some(incoming) = incoming else {
                            return Err(TransportError::Accept("the server was closed".into()));
                        };
                        let shared = self.shared.clone();
                        let done_tx = done_tx.clone();
                        tokio::spawn(async move {
                            let peer = incoming.remote_address();
                            let result = match incoming.await {
                                Ok(conn) => connection(&shared, conn).await,
                                Err(e) => Err(format!("handshake: {e}")),
                            };
                            match result {
                                Ok(Some(report)) => {
                                    let _ = done_tx.send(report);
                                }
                                Ok(None) => {}
                                Err(e) => tracing::warn!(%peer, "lazy-pages connection ended: {e}"),
                            }
                        });
                    }
                    Some(report) = done_rx.recv() => {
                        done += 1;
                        on_done(&report);
                    }
                }
            }
            Ok(())
        })
    }
}

impl Drop for LazyServer {
    fn drop(&mut self) {
        self.endpoint.close(VarInt::from_u32(0), b"lazy-pages source stopped");
    }
}

async fn write(send: &mut SendStream, bytes: &[u8]) -> Result<(), String> {
    send.write_all(bytes).await.map_err(|e| e.to_string())
}

/// One daemon's connection; `Some` once its session ended with Done.
async fn connection(shared: &Arc<Shared>, conn: quinn::Connection) -> Result<Option<LazyServerReport>, String> {
    let ps = shared.page_size;
    let (mut send, recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
    let _ = send.set_priority(URGENT_PRIORITY);
    let mut frames = FrameReader::new(recv, ps)?;
    let mut enc = LazyEncoder::new(ps, shared.lz4);
    let state = match frames.next().await? {
        Some(LazyFrame::Hello { version, page_size, session }) => {
            if version != LAZY_VERSION || page_size != ps {
                return Err(format!(
                    "Hello version {version} page size {page_size}: this source speaks {LAZY_VERSION} / {ps}"
                ));
            }
            session_for(shared, session)?
        }
        other => return Err(format!("expected Hello, got {:?}", other.map(|f| f.name()))),
    };
    let session = {
        let mut st = state.lock().map_err(|_| "session state poisoned")?;
        st.report.connections += 1;
        st.report.session
    };
    let mut out = BytesMut::new();
    enc.encode(&LazyFrame::Welcome { session, lazy_pages: shared.lazy_pages }, &mut out).map_err(|e| e.to_string())?;
    write(&mut send, &out).await?;
    let push_task = if shared.push {
        let push = conn.open_uni().await.map_err(|e| e.to_string())?;
        tokio::spawn(push_loop(shared.clone(), state.clone(), push))
    } else {
        tokio::spawn(std::future::ready(()))
    };
    let result = loop {
        match frames.next().await {
            Ok(Some(LazyFrame::Fetch { req, id, run })) => {
                let frame = match read_pages(shared, id, run) {
                    Ok(data) => {
                        if let Ok(mut st) = state.lock() {
                            st.report.fetched_pages += run.nr_pages;
                            st.order.fetched(id, run);
                        }
                        LazyFrame::Pages { req, id, run, data }
                    }
                    Err(reason) => LazyFrame::Failed { req, reason },
                };
                out.clear();
                enc.encode(&frame, &mut out).map_err(|e| e.to_string())?;
                if let Err(e) = write(&mut send, &out).await {
                    break Err(e);
                }
            }
            Ok(Some(LazyFrame::Done)) => break Ok(true),
            Ok(Some(other)) => break Err(format!("unexpected {} frame", other.name())),
            Ok(None) => break Ok(false),
            Err(e) => break Err(e),
        }
    };
    push_task.abort();
    match result {
        Ok(true) => {
            let _ = send.finish();
            let report = state.lock().map(|st| st.report).map_err(|_| "session state poisoned")?;
            if let Ok(mut sessions) = shared.sessions.lock() {
                sessions.remove(&session);
            }
            conn.close(VarInt::from_u32(0), b"done");
            Ok(Some(report))
        }
        Ok(false) => Ok(None),
        Err(e) => Err(e),
    }
}

fn session_for(shared: &Shared, session: u64) -> Result<Arc<Mutex<SessionState>>, String> {
    let mut sessions = shared.sessions.lock().map_err(|_| "sessions poisoned")?;
    if session != 0 {
        return sessions
            .get(&session)
            .cloned()
            .ok_or_else(|| format!("no session {session} here (it ended or never was)"));
    }
    let number = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let state = Arc::new(Mutex::new(SessionState {
        order: PushOrder::new(shared.page_size, &shared.plan, &shared.working_set),
        report: LazyServerReport { session: number, ..Default::default() },
    }));
    sessions.insert(number, state.clone());
    Ok(state)
}

/// The pages of `run` (zero where the images hold none).
fn read_pages(shared: &Shared, id: PagemapId, run: PageRun) -> Result<Bytes, String> {
    let mut images = shared.images.lock().map_err(|_| "image source poisoned")?;
    images.read_run_bytes(id, run).map(Bytes::from).map_err(|e| e.to_string())
}

async fn push_loop(shared: Arc<Shared>, state: Arc<Mutex<SessionState>>, mut push: SendStream) {
    let _ = push.set_priority(0);
    let mut enc = LazyEncoder::new(shared.page_size, shared.lz4);
    let mut out = BytesMut::new();
    loop {
        let next = match state.lock() {
            Ok(mut st) => st.order.take_next(),
            Err(_) => return,
        };
        let Some(NextRun { id, run, working_set }) = next else { break };
        let Ok(data) = read_pages(&shared, id, run) else {
            // Not pushed: the daemon fetches it when it needs it, and learns why then.
            continue;
        };
        out.clear();
        if enc.encode(&LazyFrame::Pages { req: 0, id, run, data }, &mut out).is_err()
            || push.write_all(&out).await.is_err()
        {
            return;
        }
        if let Ok(mut st) = state.lock() {
            st.report.pushed_pages += run.nr_pages;
            if working_set {
                st.report.working_set_pages += run.nr_pages;
            }
        }
        // Let the urgent stream's task (maybe on this worker) answer a fault first.
        tokio::task::yield_now().await;
    }
    let _ = push.finish();
}
