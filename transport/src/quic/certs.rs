//! Development certificates for mutual TLS (`pagestream certs DIR`): a CA and a receiver and a
//! sender certificate signed by it, made with rcgen (ECDSA P-256).
//!
//! Files (PEM), named as the `--tls-*` options expect them:
//!
//! | file | what |
//! | --- | --- |
//! | `cacert.pem`, `cakey.pem` | the development CA |
//! | `server-cert.pem`, `server-key.pem` | the receiver: SANs `localhost`, `127.0.0.1`, `::1` and the extra names |
//! | `client-cert.pem`, `client-key.pem` | the sender (client authentication) |
//!
//! Keys are mode 0600. Each file is written to a temporary name, synced and then hard-linked
//! to its final name, which fails instead of overwriting; nothing is written when any of the six
//! exists already.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

use super::error::TransportError;
use super::tls::TlsFiles;

/// The six file names, in the order they are written.
pub const DEV_CERT_FILES: [&str; 6] =
    ["cacert.pem", "cakey.pem", "server-cert.pem", "server-key.pem", "client-cert.pem", "client-key.pem"];

/// Where [`make_dev_certs`] put the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevCerts {
    /// The directory.
    pub dir: PathBuf,
    /// The CA certificate.
    pub cacert: PathBuf,
    /// The CA key (keep it, or delete it once no more certificates are needed).
    pub cakey: PathBuf,
    /// The receiver's certificate.
    pub server_cert: PathBuf,
    /// The receiver's key.
    pub server_key: PathBuf,
    /// The sender's certificate.
    pub client_cert: PathBuf,
    /// The sender's key.
    pub client_key: PathBuf,
}

impl DevCerts {
    /// The receiver's `--tls-cacert/--tls-cert/--tls-key`.
    pub fn server_tls(&self) -> TlsFiles {
        TlsFiles { cacert: self.cacert.clone(), cert: self.server_cert.clone(), key: self.server_key.clone() }
    }

    /// The sender's `--tls-cacert/--tls-cert/--tls-key`.
    pub fn client_tls(&self) -> TlsFiles {
        TlsFiles { cacert: self.cacert.clone(), cert: self.client_cert.clone(), key: self.client_key.clone() }
    }
}

fn certs_err(what: &str, e: rcgen::Error) -> TransportError {
    TransportError::Certs(format!("{what}: {e}"))
}

fn leaf_params(
    common_name: &str,
    names: Vec<String>,
    eku: ExtendedKeyUsagePurpose,
) -> Result<CertificateParams, TransportError> {
    let mut params = CertificateParams::new(names).map_err(|e| certs_err(common_name, e))?;
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.distinguished_name.push(DnType::OrganizationName, "pagestream development");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![eku];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// Makes a development CA, a receiver certificate valid for `localhost`, `127.0.0.1`, `::1` and
/// `names` (host names or IP addresses), and a sender certificate, all in `dir` (created if
/// missing). Refuses, writing nothing, if any of the six files exists.
pub fn make_dev_certs(dir: &Path, names: &[String]) -> Result<DevCerts, TransportError> {
    fs::create_dir_all(dir).map_err(|e| TransportError::io(format!("creating {}", dir.display()), e))?;
    let existing: Vec<String> = DEV_CERT_FILES
        .iter()
        .map(|f| dir.join(f))
        .filter(|p| p.symlink_metadata().is_ok())
        .map(|p| p.display().to_string())
        .collect();
    if !existing.is_empty() {
        return Err(TransportError::Certs(format!("refusing to overwrite {}", existing.join(", "))));
    }

    let ca_key = KeyPair::generate().map_err(|e| certs_err("CA key", e))?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params.distinguished_name.push(DnType::CommonName, "pagestream development CA");
    ca_params.distinguished_name.push(DnType::OrganizationName, "pagestream development");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(|e| certs_err("CA certificate", e))?;
    let ca_pem = ca_cert.pem();
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let mut server_names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for name in names {
        let name = name.trim();
        if !name.is_empty() && !server_names.iter().any(|n| n == name) {
            server_names.push(name.to_owned());
        }
    }
    let server_key = KeyPair::generate().map_err(|e| certs_err("receiver key", e))?;
    let server_cert = leaf_params("pagestream receiver", server_names, ExtendedKeyUsagePurpose::ServerAuth)?
        .signed_by(&server_key, &issuer)
        .map_err(|e| certs_err("receiver certificate", e))?;
    let client_key = KeyPair::generate().map_err(|e| certs_err("sender key", e))?;
    let client_cert =
        leaf_params("pagestream sender", vec!["pagestream-sender".into()], ExtendedKeyUsagePurpose::ClientAuth)?
            .signed_by(&client_key, &issuer)
            .map_err(|e| certs_err("sender certificate", e))?;

    let contents = [
        (ca_pem, 0o644),
        (ca_key_pem, 0o600),
        (server_cert.pem(), 0o644),
        (server_key.serialize_pem(), 0o600),
        (client_cert.pem(), 0o644),
        (client_key.serialize_pem(), 0o600),
    ];
    let mut written: Vec<PathBuf> = Vec::new();
    for (name, (text, mode)) in DEV_CERT_FILES.iter().zip(contents) {
        match write_new(dir, name, text.as_bytes(), mode) {
            Ok(path) => written.push(path),
            Err(e) => {
                for path in &written {
                    let _ = fs::remove_file(path);
                }
                return Err(e);
            }
        }
    }
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    let at = |i: usize| dir.join(DEV_CERT_FILES[i]);
    Ok(DevCerts {
        dir: dir.to_owned(),
        cacert: at(0),
        cakey: at(1),
        server_cert: at(2),
        server_key: at(3),
        client_cert: at(4),
        client_key: at(5),
    })
}

/// Writes `dir/name` with `mode` through a synced temporary file, never replacing an existing
/// file (hard link, then unlink the temporary name).
fn write_new(dir: &Path, name: &str, data: &[u8], mode: u32) -> Result<PathBuf, TransportError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let io = |what: &str, p: &Path, e| TransportError::io(format!("{what} {}", p.display()), e);
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| io("creating", &tmp, e))?;
        file.write_all(data).map_err(|e| io("writing", &tmp, e))?;
        file.sync_all().map_err(|e| io("syncing", &tmp, e))?;
        fs::hard_link(&tmp, &path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                TransportError::Certs(format!("refusing to overwrite {}", path.display()))
            } else {
                io("linking", &path, e)
            }
        })
    })();
    let _ = fs::remove_file(&tmp);
    result.map(|()| path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_six_files_with_private_keys_0600_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let certs = make_dev_certs(dir.path(), &["migrate.example".into(), "10.1.2.3".into()]).unwrap();
        for (path, mode) in [
            (&certs.cacert, 0o644),
            (&certs.cakey, 0o600),
            (&certs.server_cert, 0o644),
            (&certs.server_key, 0o600),
            (&certs.client_cert, 0o644),
            (&certs.client_key, 0o600),
        ] {
            let md = fs::metadata(path).unwrap();
            assert_eq!(md.permissions().mode() & 0o777, mode, "{}", path.display());
        }
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 6, "no temporary files left: {names:?}");
        assert!(super::super::tls::load_certs(&certs.server_cert).is_ok());
        assert!(super::super::tls::load_key(&certs.client_key).is_ok());

        let before = fs::read(&certs.cakey).unwrap();
        let err = make_dev_certs(dir.path(), &[]).unwrap_err().to_string();
        assert!(err.contains("refusing to overwrite") && err.contains("cacert.pem"), "{err}");
        assert_eq!(fs::read(&certs.cakey).unwrap(), before);
    }

    #[test]
    fn one_existing_file_blocks_all() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("client-key.pem"), "mine").unwrap();
        let err = make_dev_certs(dir.path(), &[]).unwrap_err().to_string();
        assert!(err.contains("client-key.pem"), "{err}");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(make_dev_certs(dir.path(), &["bad name\u{e9}".into()]).is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
