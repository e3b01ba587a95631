//! HTTPS: the certificate and key named by `[server] tls_cert` and `tls_key`, held
//! so that SIGHUP can swap them without a restart and without dropping connections.
//! A pair that does not load, or whose key does not match its certificate, is refused,
//! and the pair in use stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS certificate {path}: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("cannot read the TLS key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("the TLS key {key} does not belong to the certificate {cert}: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// The certificate in use, swappable while the server runs.
#[derive(Debug)]
pub struct Certificates {
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificates {
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Certificates>, TlsError> {
        Ok(Arc::new(Certificates {
            current: RwLock::new(Arc::new(certified_key(cert, key)?)),
        }))
    }

    /// Reads the pair again; on any error the pair in use stays.
    pub fn reload(&self, cert: &Path, key: &Path) -> Result<(), TlsError> {
        let next = Arc::new(certified_key(cert, key)?);
        *self.current.write() = next;
        Ok(())
    }

    /// rustls' server settings, with this as the source of the certificate. No ALPN
    /// protocols here: actix offers HTTP/2 and HTTP/1.1 (HTTP/2 first), so that
    /// several open pages of the UI share one connection rather than using up a
    /// browser's six per host.
    pub fn server_config(self: &Arc<Self>) -> rustls::ServerConfig {
        rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|_| {
                // ring supports both default versions; this cannot fail with it.
                rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .unwrap_or_else(|_| unreachable!("ring supports TLS 1.3"))
            })
            .with_no_client_auth()
            .with_cert_resolver(self.clone())
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| TlsError::Certificate {
            path: cert.to_owned(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Certificate {
            path: cert.to_owned(),
            reason: "no PEM certificate in it".into(),
        });
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    let certified =
        CertifiedKey::from_der(chain, private, &provider()).map_err(|e| TlsError::Mismatch {
            cert: cert.to_owned(),
            key: key.to_owned(),
            reason: e.to_string(),
        })?;
    // from_der lets a key of unknown consistency through; a pair served must match.
    certified.keys_match().map_err(|e| TlsError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(certified)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    #[test]
    fn a_bad_pair_is_refused_and_the_old_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_a, key_a) = pair(dir.path(), "a");
        let (cert_b, key_b) = pair(dir.path(), "b");
        let certificates = Certificates::load(&cert_a, &key_a).unwrap();
        let in_use = |c: &Certificates| c.current.read().cert[0].clone();
        let first = in_use(&certificates);

        let mismatch = certificates.reload(&cert_a, &key_b).unwrap_err();
        assert!(matches!(mismatch, TlsError::Mismatch { .. }), "{mismatch}");
        let missing = certificates
            .reload(&dir.path().join("none.crt"), &key_a)
            .unwrap_err();
        assert!(missing.to_string().contains("none.crt"), "{missing}");
        std::fs::write(dir.path().join("junk.key"), "not a key").unwrap();
        assert!(
            certificates
                .reload(&cert_a, &dir.path().join("junk.key"))
                .is_err()
        );
        assert_eq!(in_use(&certificates), first, "the pair in use stays");

        certificates.reload(&cert_b, &key_b).unwrap();
        assert_ne!(in_use(&certificates), first);
    }
}
