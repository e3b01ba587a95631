//! The connection URL and TLS to the database.
//!
//! tokio-postgres knows `sslmode=disable|prefer|require` only, and never verifies a
//! certificate itself: the TLS connector does. So the libpq words it does not know
//! (`verify-ca`, `verify-full`, `sslrootcert`) are taken out of the URL here, and the
//! rustls connector is built to match them.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme,
};

/// How much the server's certificate is checked, as libpq's `sslmode` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// `disable`, `prefer`, `require`: encrypted when TLS is used, nothing verified.
    Nothing,
    /// `verify-ca`: the chain up to a trusted root, not the host name.
    Chain,
    /// `verify-full`: the chain and the host name.
    Full,
}

/// A URL with the words tokio-postgres does not know taken out.
#[derive(Debug)]
pub struct Split {
    /// What tokio-postgres parses.
    pub url: String,
    pub verify: Verify,
    /// `sslrootcert`: the CA file; without it, the Mozilla roots of webpki-roots.
    pub root_cert: Option<PathBuf>,
}

/// Takes `sslmode=verify-ca|verify-full` (replaced by `require`) and `sslrootcert`
/// out of a `postgres://` URL or a `key=value` connection string.
pub fn split_url(url: &str) -> Result<Split, String> {
    let mut verify = Verify::Nothing;
    let mut root_cert = None;
    let mut take = |key: &str, value: &str| -> Result<Option<String>, String> {
        match (key, value) {
            ("sslmode", "verify-full") => {
                verify = Verify::Full;
                Ok(Some("require".into()))
            }
            ("sslmode", "verify-ca") => {
                verify = Verify::Chain;
                Ok(Some("require".into()))
            }
            ("sslrootcert", path) => {
                if path.is_empty() {
                    return Err("sslrootcert is empty".into());
                }
                root_cert = Some(PathBuf::from(path));
                Ok(None)
            }
            (_, value) => Ok(Some(value.to_owned())),
        }
    };
    let cleaned = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, query),
            None => (url, ""),
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decoded = percent_encoding::percent_decode_str(value)
                .decode_utf8()
                .map_err(|_| format!("the value of '{key}' in the database URL is not UTF-8"))?;
            if let Some(new) = take(key, &decoded)? {
                if new == decoded {
                    kept.push(pair.to_owned());
                } else {
                    kept.push(format!("{key}={new}"));
                }
            }
        }
        if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        }
    } else {
        // key=value form; values with spaces must be quoted and are kept as they are.
        let mut kept = Vec::new();
        for word in url.split_whitespace() {
            match word.split_once('=') {
                Some((key, value)) if !value.starts_with('\'') => {
                    if let Some(new) = take(key.trim(), value)? {
                        kept.push(format!("{key}={new}"));
                    }
                }
                _ => kept.push(word.to_owned()),
            }
        }
        kept.join(" ")
    };
    Ok(Split {
        url: cleaned,
        verify,
        root_cert,
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls client config for `verify`, trusting `root_cert` (PEM) or, without
/// it, the Mozilla roots that webpki-roots carries.
pub fn client_config(verify: Verify, root_cert: Option<&PathBuf>) -> Result<ClientConfig, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        Verify::Nothing => Arc::new(NoVerification(provider.signature_verification_algorithms)),
        Verify::Chain | Verify::Full => {
            let mut roots = RootCertStore::empty();
            match root_cert {
                Some(path) => {
                    let certs = CertificateDer::pem_file_iter(path)
                        .map_err(|e| format!("reading sslrootcert {} failed: {e}", path.display()))?
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| {
                            format!("reading sslrootcert {} failed: {e}", path.display())
                        })?;
                    if certs.is_empty() {
                        return Err(format!(
                            "sslrootcert {} holds no certificate",
                            path.display()
                        ));
                    }
                    for cert in certs {
                        roots.add(cert).map_err(|e| {
                            format!(
                                "a certificate in sslrootcert {} is unusable: {e}",
                                path.display()
                            )
                        })?;
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("TLS setup failed: {e}"))?;
            if verify == Verify::Full {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// `require`: encryption against a passive listener, as libpq gives without a root
/// certificate; the handshake's signatures are still checked.
#[derive(Debug)]
struct NoVerification(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not compared.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(TlsError::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(TlsError::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_words_are_taken_out_of_a_url() {
        let split =
            split_url("postgres://u:p%40ss@db:5432/cat?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x")
                .unwrap();
        assert_eq!(
            split.url,
            "postgres://u:p%40ss@db:5432/cat?sslmode=require&application_name=x"
        );
        assert_eq!(split.verify, Verify::Full);
        assert_eq!(split.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        let plain = split_url("postgres://u@db/cat?sslmode=require").unwrap();
        assert_eq!(plain.url, "postgres://u@db/cat?sslmode=require");
        assert_eq!(plain.verify, Verify::Nothing);
        let bare = split_url("postgresql://u@db/cat?sslrootcert=ca.pem").unwrap();
        assert_eq!(bare.url, "postgresql://u@db/cat");
        let ca = split_url("postgres://db/cat?sslmode=verify-ca").unwrap();
        assert_eq!(ca.verify, Verify::Chain);
    }

    #[test]
    fn verify_words_are_taken_out_of_key_value_strings() {
        let split = split_url("host=db user=u sslmode=verify-full sslrootcert=/ca.pem").unwrap();
        assert_eq!(split.url, "host=db user=u sslmode=require");
        assert_eq!(split.verify, Verify::Full);
        assert_eq!(split.root_cert, Some(PathBuf::from("/ca.pem")));
    }

    #[test]
    fn a_missing_root_file_is_named() {
        let err =
            client_config(Verify::Full, Some(&PathBuf::from("/nonexistent/ca.pem"))).unwrap_err();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        assert!(client_config(Verify::Full, None).is_ok(), "webpki roots");
        assert!(client_config(Verify::Nothing, None).is_ok());
    }
}
