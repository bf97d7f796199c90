//! DNS over TLS (RFC 7858): the listener's certificate and the upstream's trust anchors.
//!
//! rustls with the `ring` provider (no C++/cmake toolchain needed, unlike aws-lc-rs). Every file
//! is read and checked at startup: an unreadable or empty PEM file is an error naming the file,
//! never a silently empty trust store.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{ClientConfig, RootCertStore, ServerConfig, crypto::ring};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _};

/// The CA bundle used for DoT upstreams when none is configured (Debian's ca-certificates).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Errors of loading TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{what} {path}: {reason}")]
    Pem {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The parser's or the system's message.
        reason: String,
    },
    /// rustls refused the material (e.g. a key that does not match the certificate).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The name to verify the upstream's certificate against is not a DNS name or IP address.
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
}

fn pem_error(what: &'static str, path: &Path, reason: &dyn std::fmt::Display) -> TlsError {
    TlsError::Pem {
        what,
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Every certificate in a PEM file; none is an error.
pub fn load_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(what, path, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, path, &e))?;
    if certs.is_empty() {
        return Err(pem_error(what, path, &"no PEM certificate in the file"));
    }
    Ok(certs)
}

/// The listener's TLS configuration from a certificate chain and its private key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = load_certs(cert, "listen_cert")?;
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error("listen_cert_key", key, &e))?;
    let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// The upstream client configuration trusting the CAs in `ca_bundle` (the system bundle when
/// `None`).
pub fn client_config(ca_bundle: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let path = ca_bundle.unwrap_or(Path::new(SYSTEM_CA_BUNDLE));
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path, "fwd_tls_cert")? {
        roots
            .add(cert)
            .map_err(|e| pem_error("fwd_tls_cert", path, &e))?;
    }
    let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The name the upstream's certificate must carry: `name` when given (SNI is sent for DNS
/// names), otherwise the upstream's IP address (what the original could only do).
pub fn server_name(name: Option<&str>, ip: IpAddr) -> Result<ServerName<'static>, TlsError> {
    match name {
        Some(name) => {
            ServerName::try_from(name.to_owned()).map_err(|_| TlsError::ServerName(name.to_owned()))
        }
        None => Ok(ServerName::IpAddress(ip.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_ca_bundle_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = client_config(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("ca.pem"), "{err}");
        let missing = dir.path().join("missing.pem");
        let err = client_config(Some(&missing)).unwrap_err().to_string();
        assert!(err.contains("missing.pem"), "{err}");
    }

    #[test]
    fn generated_certificates_load() {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["dns.test".into()]).unwrap();
        let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
        server_config(&cert_path, &key_path).unwrap();
        client_config(Some(&cert_path)).unwrap();
        assert!(
            server_config(&cert_path, &cert_path).is_err(),
            "a certificate is not a key"
        );
    }

    #[test]
    fn server_names() {
        let ip: IpAddr = "192.0.2.53".parse().unwrap();
        assert!(matches!(
            server_name(None, ip).unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name(Some("dns.test"), ip).unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(server_name(Some("not a name!"), ip).is_err());
    }
}
