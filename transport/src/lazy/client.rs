//! [`RemotePageSource`]: the engine's [`PageSource`] over QUIC, for `pagestream lazy-pages
//! --from`. A run the daemon needs is taken from the [`PushCache`] when every page of it has
//! arrived; when the push is about to deliver it (just beyond the push's frontier) the daemon
//! waits for it up to [`RemoteConfig::push_wait`]; else it is fetched on the urgent stream (one
//! request at a time: the daemon is one thread).
//!
//! The connection lives on a current-thread runtime that the daemon's thread drives: inside
//! each fetch, and while the daemon waits for its userfaultfds ([`PageSource::wait_readable`],
//! see [`super::fd_wait`]); a fault wakes the thread that sends its Fetch and reads the answer,
//! and no runtime worker has to be scheduled on the way. The push stream is read by a task on
//! that runtime into the cache, bounded by [`RemoteConfig::cache_bytes`]: when it is full the
//! task stops reading and QUIC flow control holds the source back.
//!
//! A broken connection (noticed within [`RemoteConfig::idle_timeout`]) is reopened with the same
//! session; the faulting threads of the restored process just wait. After
//! [`RemoteConfig::resume_timeout`] without a working connection the fetch fails.

use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use pagestream_engine::criu::PagemapId;
use pagestream_engine::lazy::{PageSource, SourceError};
use pagestream_engine::page::is_zero;
use pagestream_engine::PageRun;
use quinn::{Connection, Endpoint, SendStream, VarInt};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use super::frame::{LazyEncoder, LazyFrame, LAZY_VERSION};
use super::push_cache::PushCache;
use super::push_reader::read_push;
use super::server::URGENT_PRIORITY;
use super::stream::FrameReader;
use super::LAZY_ALPN;
use crate::quic::endpoint::{client_bind_addr, client_transport_config, current_thread_runtime, make_endpoint};
use crate::quic::tls::client_crypto;
use crate::quic::{Security, TransportError};

/// How the remote source behaves.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// TLS towards the source.
    pub security: Security,
    /// The name the source's certificate must carry.
    pub server_name: String,
    /// How long faults may wait for a lost source to come back before the restore fails.
    pub resume_timeout: Duration,
    /// QUIC idle timeout: how soon a silent link counts as broken.
    pub idle_timeout: Duration,
    /// The most pushed bytes held before the daemon installs them.
    pub cache_bytes: usize,
    /// The most push data in flight (the stream's flow-control window). A fault's answer queues
    /// behind it, so it bounds fault latency by `push_window / bandwidth`; it also bounds the
    /// push's throughput by `push_window / RTT`. Raise it for long fat links.
    pub push_window: u32,
    /// How long a fault just beyond the push's frontier waits for the push before it fetches.
    /// A fetch's answer queues behind the push data in flight, so waiting is faster unless the
    /// push has stalled.
    pub push_wait: Duration,
}

impl RemoteConfig {
    /// 60 s resume timeout, 3 s idle timeout, 64 MiB cache, 1 MiB push window, 2 ms push wait.
    pub fn new(security: Security, server_name: String) -> RemoteConfig {
        RemoteConfig {
            security,
            server_name,
            resume_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(3),
            cache_bytes: 64 << 20,
            push_window: 1 << 20,
            push_wait: Duration::from_millis(2),
        }
    }
}

/// What the remote source did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RemoteStats {
    /// Fetch requests (faults the cache could not answer).
    pub fetches: u64,
    /// Pages they brought.
    pub fetched_pages: u64,
    /// Pushed pages received.
    pub pushed_pages_received: u64,
    /// Pushed pages the daemon installed from the cache.
    pub pushed_pages_used: u64,
    /// Runs (of faults or push steps) taken after waiting for the push rather than fetching.
    pub push_waits: u64,
    /// Pushed pages dropped (already installed).
    pub pushed_pages_dropped: u64,
    /// Connections reopened after a break.
    pub reconnects: u64,
    /// The longest time without a working connection while pages were needed (ms).
    pub longest_outage_ms: u64,
    /// The lazy pages the source announced.
    pub source_lazy_pages: u64,
}

struct Link {
    conn: Connection,
    send: SendStream,
    frames: FrameReader,
    push: JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.push.abort();
        self.conn.close(VarInt::from_u32(0), b"link dropped");
    }
}

/// Why one fetch attempt failed.
enum Attempt {
    /// The source answered Failed: final.
    Refused(String),
    /// The link broke: reconnect and retry.
    Link(String),
}

/// The lazy-pages source over QUIC; see the module documentation.
pub struct RemotePageSource {
    addr: SocketAddr,
    cfg: RemoteConfig,
    client: quinn::ClientConfig,
    page_size: u64,
    session: u64,
    link: Option<Link>,
    cache: PushCache,
    /// The cache's generation when the daemon last looked for pushed pages.
    seen_generation: u64,
    enc: LazyEncoder,
    next_req: u32,
    stats: RemoteStats,
    endpoint: Endpoint,
    // Declared last: dropped after the endpoint that lives on it.
    rt: Runtime,
}

impl RemotePageSource {
    /// Connects to `pagestream serve-lazy` at `addr` and starts a session.
    pub fn connect(addr: SocketAddr, cfg: RemoteConfig, page_size: u64) -> Result<RemotePageSource, TransportError> {
        let mut crypto = client_crypto(&cfg.security)?;
        crypto.alpn_protocols = vec![LAZY_ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
            .map_err(|e| TransportError::TlsConfig(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = client_transport_config(addr, cfg.idle_timeout)?;
        // The source opens the push stream towards us; what it may have in flight is bounded so
        // that a fault's answer does not queue behind much push data.
        transport.max_concurrent_uni_streams(VarInt::from_u32(1));
        transport.stream_receive_window(VarInt::from_u32(cfg.push_window));
        transport.receive_window(VarInt::from_u32(cfg.push_window.saturating_mul(2)));
        client.transport_config(Arc::new(transport));
        let rt = current_thread_runtime()?;
        let endpoint = {
            let _guard = rt.enter();
            make_endpoint(client_bind_addr(addr), None)?
        };
        let mut source = RemotePageSource {
            addr,
            client,
            page_size,
            session: 0,
            link: None,
            cache: PushCache::new(page_size, cfg.cache_bytes),
            seen_generation: 0,
            enc: LazyEncoder::new(page_size, false),
            next_req: 1,
            stats: RemoteStats::default(),
            endpoint,
            rt,
            cfg,
        };
        let link = source.open_link().map_err(|e| TransportError::Connect { addr, reason: e })?;
        source.link = Some(link);
        Ok(source)
    }

    /// What happened so far.
    pub fn stats(&self) -> RemoteStats {
        let mut s = self.stats;
        (s.pushed_pages_received, s.pushed_pages_dropped) = self.cache.counts();
        s
    }

    /// The session number the source gave.
    pub fn session(&self) -> u64 {
        self.session
    }

    /// Tells the source that every lazy page is installed (it may let the session go).
    pub fn finish(mut self) -> RemoteStats {
        let stats = self.stats();
        if let Some(link) = self.link.as_mut() {
            let mut out = BytesMut::new();
            if self.enc.encode(&LazyFrame::Done, &mut out).is_ok() {
                let send = &mut link.send;
                let _ = self.rt.block_on(async {
                    tokio::time::timeout(Duration::from_secs(2), async {
                        send.write_all(&out).await.ok()?;
                        send.finish().ok()?;
                        link.conn.closed().await;
                        Some(())
                    })
                    .await
                });
            }
        }
        stats
    }

    fn open_link(&mut self) -> Result<Link, String> {
        let (addr, ps, session, idle) = (self.addr, self.page_size, self.session, self.cfg.idle_timeout);
        let cache = self.cache.clone();
        let connecting = {
            // quinn starts the connection's driver on the runtime it is called from.
            let _guard = self.rt.enter();
            self.endpoint.connect_with(self.client.clone(), addr, &self.cfg.server_name).map_err(|e| e.to_string())?
        };
        let (link, welcome) = self.rt.block_on(async move {
            let conn = tokio::time::timeout(idle, connecting)
                .await
                .map_err(|_| format!("no answer from {addr} within {idle:?}"))?
                .map_err(|e| e.to_string())?;
            let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            let _ = send.set_priority(URGENT_PRIORITY);
            let mut out = BytesMut::new();
            LazyEncoder::new(ps, false)
                .encode(&LazyFrame::Hello { version: LAZY_VERSION, page_size: ps, session }, &mut out)
                .map_err(|e| e.to_string())?;
            send.write_all(&out).await.map_err(|e| e.to_string())?;
            let frames = FrameReader::new(recv, ps)?;
            let push = tokio::spawn(std::future::ready(()));
            let mut link = Link { conn: conn.clone(), send, frames, push };
            let welcome =
                tokio::time::timeout(idle, link.frames.next()).await.map_err(|_| "no Welcome".to_string())??;
            // The push stream shows up with its first bytes; the reader waits for it.
            link.push = tokio::spawn(async move {
                if let Ok(push) = conn.accept_uni().await {
                    read_push(push, cache).await;
                }
            });
            Ok::<_, String>((link, welcome))
        })?;
        match welcome {
            Some(LazyFrame::Welcome { session, lazy_pages }) => {
                self.session = session;
                self.stats.source_lazy_pages = lazy_pages;
                Ok(link)
            }
            other => Err(format!("expected Welcome, got {:?}", other.map(|f| f.name()))),
        }
    }

    fn fetch_once(&mut self, id: PagemapId, run: PageRun) -> Result<Bytes, Attempt> {
        let req = self.next_req;
        self.next_req = self.next_req.wrapping_add(1).max(1);
        let mut out = BytesMut::new();
        self.enc.encode(&LazyFrame::Fetch { req, id, run }, &mut out).map_err(|e| Attempt::Refused(e.to_string()))?;
        let Some(link) = self.link.as_mut() else { return Err(Attempt::Link("no connection".into())) };
        self.rt.block_on(async {
            link.send.write_all(&out).await.map_err(|e| Attempt::Link(e.to_string()))?;
            loop {
                match link.frames.next().await.map_err(Attempt::Link)? {
                    Some(LazyFrame::Pages { req: r, id: i, run: got, data }) if r == req && i == id && got == run => {
                        return Ok(data)
                    }
                    Some(LazyFrame::Failed { req: r, reason }) if r == req => return Err(Attempt::Refused(reason)),
                    Some(LazyFrame::Pages { req: r, .. } | LazyFrame::Failed { req: r, .. }) if r != req => continue,
                    Some(other) => return Err(Attempt::Refused(format!("unexpected {} frame", other.name()))),
                    None => return Err(Attempt::Link("the source ended the urgent stream".into())),
                }
            }
        })
    }

    /// Fetches `run`, reconnecting as long as the resume timeout allows.
    fn fetch(&mut self, id: PagemapId, run: PageRun) -> Result<Bytes, SourceError> {
        let mut outage: Option<(Instant, String)> = None;
        loop {
            if self.link.is_some() {
                match self.fetch_once(id, run) {
                    Ok(data) => {
                        if let Some((since, _)) = outage {
                            let ms = since.elapsed().as_millis() as u64;
                            self.stats.longest_outage_ms = self.stats.longest_outage_ms.max(ms);
                        }
                        return Ok(data);
                    }
                    Err(Attempt::Refused(reason)) => return Err(SourceError::Other(format!("the source: {reason}"))),
                    Err(Attempt::Link(e)) => {
                        tracing::warn!("lazy-pages link to {} broke: {e}; reconnecting", self.addr);
                        self.link = None;
                        outage.get_or_insert((Instant::now(), e));
                    }
                }
            }
            let (since, why) = outage.get_or_insert_with(|| (Instant::now(), "no connection".into()));
            if since.elapsed() > self.cfg.resume_timeout {
                return Err(SourceError::Other(format!(
                    "the source at {} was unreachable for {:?} (resume timeout; last error: {why})",
                    self.addr, self.cfg.resume_timeout
                )));
            }
            match self.open_link() {
                Ok(link) => {
                    self.stats.reconnects += 1;
                    tracing::info!(session = self.session, "lazy-pages link to {} resumed", self.addr);
                    self.link = Some(link);
                }
                Err(e) => {
                    tracing::debug!("reconnecting to {}: {e}", self.addr);
                    *why = e;
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
}

impl PageSource for RemotePageSource {
    fn page_size(&self) -> u64 {
        self.page_size
    }

    fn wait_readable(&mut self, fds: &[BorrowedFd<'_>], timeout_ms: i32, ready: &mut Vec<bool>) -> std::io::Result<()> {
        // A bounded wait is the daemon waiting for the push: pushed pages end it, and so does
        // an arrival since the daemon last looked. Other waits only need the fds.
        let (timeout_ms, wake) = match timeout_ms {
            t if t > 0 && self.cache.generation() != self.seen_generation => (0, None),
            t if t > 0 => (t, Some(self.cache.arrivals())),
            t => (t, None),
        };
        super::fd_wait::wait_driving(&self.rt, fds, timeout_ms, ready, wake)
    }

    fn next_ready(&mut self, id: PagemapId, wanted: &mut dyn FnMut(u64) -> bool) -> Option<u64> {
        self.seen_generation = self.cache.generation();
        self.cache.first_wanted(id, wanted)
    }

    fn release(&mut self, id: PagemapId) {
        self.cache.release(id);
    }

    fn push_pending(&self) -> bool {
        self.link.is_some() && self.cache.pending()
    }

    fn read_run(&mut self, id: PagemapId, run: PageRun, out: &mut [u8], zero: &mut [bool]) -> Result<(), SourceError> {
        let ps = self.page_size as usize;
        let n = run.nr_pages as usize;
        if out.len() != n * ps || zero.len() != n {
            return Err(SourceError::BadBuffer { have: out.len(), nr_pages: run.nr_pages });
        }
        let mut pushed = self.cache.take(id, run, out);
        if !pushed
            && self.cache.expects(id, run, u64::from(self.cfg.push_window))
            && self.rt.block_on(self.cache.wait_for(id, run, self.cfg.push_wait))
        {
            pushed = self.cache.take(id, run, out);
            self.stats.push_waits += u64::from(pushed);
        }
        if pushed {
            self.stats.pushed_pages_used += run.nr_pages;
        } else {
            let data = self.fetch(id, run)?;
            self.stats.fetches += 1;
            self.stats.fetched_pages += run.nr_pages;
            out.copy_from_slice(&data);
            self.cache.served_elsewhere(id, run);
        }
        for (i, z) in zero.iter_mut().enumerate() {
            *z = is_zero(&out[i * ps..(i + 1) * ps]);
        }
        Ok(())
    }
}
