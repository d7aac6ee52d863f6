//! [`PluginConfig`]: what the plugin is told through environment variables (CRIU passes plugins
//! nothing else). Missing or malformed settings are errors that name the variable, so `init`
//! fails with a clear line in CRIU's log instead of dumping to nowhere.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use pagestream_transport::quic::{Security, TlsFiles};

/// Where the destination (`pagestream receive --criu-sessions`) listens: `HOST:PORT`.
pub const TO: &str = "PAGESTREAM_TO";
/// Where the plugin listens for CRIU: the address and port given to `criu dump --page-server
/// --address A --port P`, as `A:P`.
pub const LISTEN: &str = "PAGESTREAM_LISTEN";
/// CA certificate (PEM) the destination's certificate must be signed by.
pub const TLS_CACERT: &str = "PAGESTREAM_TLS_CACERT";
/// The plugin's own certificate (PEM).
pub const TLS_CERT: &str = "PAGESTREAM_TLS_CERT";
/// The plugin's private key (PEM).
pub const TLS_KEY: &str = "PAGESTREAM_TLS_KEY";
/// `1`: no TLS authentication (trusted test networks only).
pub const INSECURE: &str = "PAGESTREAM_INSECURE";
/// The name the destination's certificate must carry (default: the host of `PAGESTREAM_TO`).
pub const SERVER_NAME: &str = "PAGESTREAM_TLS_SERVER_NAME";
/// Seconds to wait for the destination's commit at the end of a dump (default 300).
pub const COMMIT_TIMEOUT: &str = "PAGESTREAM_COMMIT_TIMEOUT";
/// `0`: send page data uncompressed (zero pages are still elided).
pub const LZ4: &str = "PAGESTREAM_LZ4";

/// The plugin's settings for a dump or pre-dump.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// The destination.
    pub to: SocketAddr,
    /// The TLS name of the destination.
    pub server_name: String,
    /// Where CRIU connects.
    pub listen: SocketAddr,
    /// TLS towards the destination.
    pub security: Security,
    /// How long the end of a dump waits for the commit.
    pub commit_timeout: Duration,
    /// Compress page data.
    pub lz4: bool,
}

impl PluginConfig {
    /// The settings from the process environment.
    pub fn from_env() -> Result<PluginConfig, String> {
        let vars: HashMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, _)| k.starts_with("PAGESTREAM_"))
            .collect();
        PluginConfig::from_vars(&vars)
    }

    /// The settings from `vars` (name → value).
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<PluginConfig, String> {
        let get = |name: &str| vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        let required = |name: &str, what: &str| get(name).ok_or_else(|| format!("{name} is not set ({what})"));
        let to_text = required(TO, "HOST:PORT of `pagestream receive --criu-sessions` on the destination")?;
        let to = resolve(TO, to_text)?;
        let listen_text = required(LISTEN, "ADDR:PORT matching criu's --page-server --address/--port")?;
        let listen: SocketAddr =
            listen_text.parse().map_err(|_| format!("{LISTEN}={listen_text:?} is not an IP address and port"))?;
        let host = to_text.rsplit_once(':').map_or(to_text, |(h, _)| h).trim_matches(['[', ']']);
        let server_name = get(SERVER_NAME).unwrap_or(host).to_string();
        let security = match (flag(vars, INSECURE)?, get(TLS_CACERT), get(TLS_CERT), get(TLS_KEY)) {
            (true, None, None, None) => Security::Insecure,
            (true, ..) => return Err(format!("{INSECURE}=1 conflicts with {TLS_CACERT}/{TLS_CERT}/{TLS_KEY}")),
            (false, Some(ca), Some(cert), Some(key)) => Security::MutualTls(TlsFiles {
                cacert: PathBuf::from(ca),
                cert: PathBuf::from(cert),
                key: PathBuf::from(key),
            }),
            (false, ..) => {
                return Err(format!(
                    "mutual TLS needs {TLS_CACERT}, {TLS_CERT} and {TLS_KEY} (PEM files, e.g. from `pagestream certs DIR`), \
                     or {INSECURE}=1"
                ))
            }
        };
        let commit_timeout = match get(COMMIT_TIMEOUT) {
            None => Duration::from_secs(300),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|&s| s > 0)
                .map(Duration::from_secs)
                .ok_or_else(|| format!("{COMMIT_TIMEOUT}={v:?} is not a positive number of seconds"))?,
        };
        let lz4 = !matches!(get(LZ4), Some("0"));
        Ok(PluginConfig { to, server_name, listen, security, commit_timeout, lz4 })
    }
}

fn flag(vars: &HashMap<String, String>, name: &str) -> Result<bool, String> {
    match vars.get(name).map(|v| v.trim()) {
        None | Some("") | Some("0") => Ok(false),
        Some("1") => Ok(true),
        Some(v) => Err(format!("{name}={v:?}: expected 0 or 1")),
    }
}

fn resolve(name: &str, text: &str) -> Result<SocketAddr, String> {
    text.to_socket_addrs()
        .map_err(|e| format!("{name}={text:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{name}={text:?} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_complete_configuration_parses() {
        let cfg = PluginConfig::from_vars(&vars(&[
            (TO, "127.0.0.1:7000"),
            (LISTEN, "127.0.0.1:27000"),
            (TLS_CACERT, "/c/ca.pem"),
            (TLS_CERT, "/c/a.pem"),
            (TLS_KEY, "/c/a.key"),
            (COMMIT_TIMEOUT, "5"),
        ]))
        .unwrap();
        assert_eq!(cfg.to.port(), 7000);
        assert_eq!(cfg.listen.port(), 27000);
        assert_eq!(cfg.server_name, "127.0.0.1");
        assert_eq!(cfg.commit_timeout, Duration::from_secs(5));
        assert!(matches!(cfg.security, Security::MutualTls(_)));
        assert!(cfg.lz4);
    }

    #[test]
    fn missing_or_bad_settings_name_the_variable() {
        let err = |pairs: &[(&str, &str)]| PluginConfig::from_vars(&vars(pairs)).unwrap_err();
        assert!(err(&[]).contains("PAGESTREAM_TO is not set"));
        assert!(err(&[(TO, "127.0.0.1:7000")]).contains("PAGESTREAM_LISTEN is not set"));
        assert!(err(&[(TO, "127.0.0.1:7000"), (LISTEN, "localhost:1")]).contains("not an IP address and port"));
        let base = [(TO, "127.0.0.1:7000"), (LISTEN, "127.0.0.1:1")];
        assert!(err(&base).contains("mutual TLS needs"));
        assert!(err(&[base[0], base[1], (INSECURE, "yes")]).contains("expected 0 or 1"));
        assert!(err(&[base[0], base[1], (INSECURE, "1"), (TLS_KEY, "k")]).contains("conflicts"));
        assert!(err(&[base[0], base[1], (INSECURE, "1"), (COMMIT_TIMEOUT, "0")]).contains("positive number"));
        assert!(err(&[(TO, "no-port"), (LISTEN, "127.0.0.1:1")]).contains("PAGESTREAM_TO=\"no-port\""));
    }
}
