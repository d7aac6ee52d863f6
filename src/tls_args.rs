//! The TLS options shared by `send`, `receive` and the page server (named as CRIU names them):
//! mutual TLS by default, unauthenticated only with an explicit `--insecure`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use pagestream_transport::quic::{Security, TlsFiles};

/// `--tls-cacert/--tls-cert/--tls-key` or `--insecure`.
#[derive(clap::Args, Clone, Debug)]
pub struct TlsArgs {
    /// CA certificate (PEM) the peer's certificate must be signed by.
    #[arg(long, value_name = "PEM")]
    pub tls_cacert: Option<PathBuf>,
    /// This side's certificate (PEM).
    #[arg(long, value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// This side's private key (PEM).
    #[arg(long, value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// No authentication (still encrypted): anyone can connect. For trusted test networks only.
    #[arg(long, conflicts_with_all = ["tls_cacert", "tls_cert", "tls_key"])]
    pub insecure: bool,
}

impl TlsArgs {
    /// The transport's security setting, or a clear error naming what is missing.
    pub fn security(&self) -> Result<Security> {
        if self.insecure {
            tracing::warn!("--insecure: the peer is not authenticated; anyone who can reach the port can connect");
            return Ok(Security::Insecure);
        }
        match (&self.tls_cacert, &self.tls_cert, &self.tls_key) {
            (Some(cacert), Some(cert), Some(key)) => {
                Ok(Security::MutualTls(TlsFiles { cacert: cacert.clone(), cert: cert.clone(), key: key.clone() }))
            }
            _ => bail!(
                "mutual TLS needs --tls-cacert, --tls-cert and --tls-key (make a development set with `pagestream certs DIR`), or --insecure"
            ),
        }
    }
}
