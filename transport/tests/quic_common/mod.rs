//! Helpers of the QUIC transport tests: development certificates in temporary directories, a
//! receiver serving one session on a thread (with a bounded wait for its result), page content
//! (random, text-like, zero) and the read-back check of an image directory.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use pagestream_engine::criu::{ImageChain, PageLookup, PagemapId};
use pagestream_transport::quic::{
    make_dev_certs, DevCerts, Receiver, ReceiverConfig, ReceiverEvent, Security, SenderConfig, SessionReport,
    TransportError,
};

/// Certificates of one CA in their own temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub certs: DevCerts,
}

pub fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = make_dev_certs(dir.path(), &[]).expect("dev certs");
    Pki { dir, certs }
}

pub fn server_security(pki: &Pki) -> Security {
    Security::MutualTls(pki.certs.server_tls())
}

pub fn client_security(pki: &Pki) -> Security {
    Security::MutualTls(pki.certs.client_tls())
}

pub fn sender_config(security: Security) -> SenderConfig {
    let mut cfg = SenderConfig::new(security);
    cfg.ack_timeout = Duration::from_secs(30);
    cfg
}

/// A receiver serving one session on its own thread.
pub struct Serving {
    pub receiver: Arc<Receiver>,
    pub addr: SocketAddr,
    pub images_dir: PathBuf,
    result: mpsc::Receiver<(Result<SessionReport, TransportError>, Vec<ReceiverEvent>)>,
}

impl Serving {
    pub fn start(cfg: ReceiverConfig, images_dir: PathBuf) -> Serving {
        let receiver = Arc::new(Receiver::bind_with("127.0.0.1:0".parse().expect("addr"), cfg).expect("bind"));
        let addr = receiver.local_addr();
        let (tx, rx) = mpsc::channel();
        let serving = receiver.clone();
        let dir = images_dir.clone();
        std::thread::spawn(move || {
            let mut events = Vec::new();
            let result = serving.serve_one(&dir, |e| events.push(e));
            let _ = tx.send((result, events));
        });
        Serving { receiver, addr, images_dir, result: rx }
    }

    /// The session's result, waiting at most `limit`.
    pub fn wait(self, limit: Duration) -> (Result<SessionReport, TransportError>, Vec<ReceiverEvent>) {
        self.result.recv_timeout(limit).expect("the receiver did not finish in time")
    }
}

/// Receiver configuration with mutual TLS from `pki`.
pub fn receiver_config(pki: &Pki) -> ReceiverConfig {
    ReceiverConfig::new(server_security(pki))
}

/// Deterministic page content of one of three kinds, by `seed % 3`: random bytes, text-like,
/// or all zero (sent with data, like a zero page a tracker did not filter).
pub fn page(seed: u64, ps: u64) -> Vec<u8> {
    let len = ps as usize;
    match seed % 3 {
        0 => {
            let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        }
        1 => format!("page {seed}: the quick brown fox jumps over the lazy dog. ")
            .into_bytes()
            .into_iter()
            .cycle()
            .take(len)
            .collect(),
        _ => vec![0; len],
    }
}

/// The newest content of every page sent, as the image must hold it.
pub type Expected = BTreeMap<(PagemapId, u64), Vec<u8>>;

/// Reads every expected page back from the image directory and compares; a page that was
/// never sent must be absent.
pub fn verify_image(dir: &Path, ps: u64, expected: &Expected, absent: &[(PagemapId, u64)]) {
    let chain = ImageChain::open(dir, None, ps).expect("open image");
    chain.verify().expect("image verifies");
    for ((id, vaddr), want) in expected {
        match chain.page_at(*id, *vaddr).expect("page_at") {
            PageLookup::Data(got) => assert!(got == *want, "page {id} {vaddr:#x} differs"),
            other => panic!("page {id} {vaddr:#x}: expected data, found {other:?}"),
        }
    }
    for (id, vaddr) in absent {
        assert!(matches!(chain.page_at(*id, *vaddr).expect("page_at"), PageLookup::Absent), "{id} {vaddr:#x}");
    }
}

/// Entries of a directory (to prove nothing was left behind).
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
