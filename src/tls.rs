//! TLS configuration for the device listener (and for the bundled client).
//!
//! The crypto provider is `ring`, passed explicitly. TLS 1.3 and 1.2 are offered unless
//! `tls13_only` is set; 0-RTT is off; resumption uses stateless tickets so that a million
//! devices cost the server no session cache. Without a configured certificate, a
//! self-signed ECDSA P-256 certificate is generated into `<data_dir>/tls/` and reused.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};

use crate::config::TlsConfig;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Where the generated certificate and key live.
pub fn generated_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("tls");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// Builds the server configuration from `config`, generating a certificate if needed.
pub fn server_config(config: &TlsConfig, data_dir: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let (cert_file, key_file) = match (&config.cert_file, &config.key_file) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => ensure_generated(data_dir)?,
    };
    let certs = CertificateDer::pem_file_iter(&cert_file)
        .with_context(|| format!("reading {}", cert_file.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert_file.display()))?;
    let key = PrivateKeyDer::from_pem_file(&key_file)
        .with_context(|| format!("reading {}", key_file.display()))?;
    let versions: &[&rustls::SupportedProtocolVersion] = if config.tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    server.ticketer = rustls::crypto::ring::Ticketer::new()?;
    server.max_early_data_size = 0;
    Ok(Arc::new(server))
}

fn ensure_generated(data_dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert_file, key_file) = generated_paths(data_dir);
    if cert_file.exists() && key_file.exists() {
        return Ok((cert_file, key_file));
    }
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    let generated = rcgen::generate_simple_self_signed(names)?;
    std::fs::create_dir_all(cert_file.parent().expect("has a parent"))?;
    std::fs::write(&cert_file, generated.cert.pem())?;
    write_private(&key_file, generated.signing_key.serialize_pem().as_bytes())?;
    tracing::info!(cert = %cert_file.display(), "generated a self-signed TLS certificate");
    Ok((cert_file, key_file))
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

/// A client configuration trusting the certificates in `ca_file`, or, with `insecure`,
/// any certificate at all (for trying things out against a generated one).
pub fn client_config(ca_file: Option<&Path>, insecure: bool) -> anyhow::Result<Arc<ClientConfig>> {
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let mut config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
            .with_no_client_auth()
    } else {
        let ca_file = ca_file.context("TLS needs --ca FILE (or --insecure)")?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca_file)
            .with_context(|| format!("reading {}", ca_file.display()))?
        {
            roots.add(cert?)?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.resumption = rustls::client::Resumption::in_memory_sessions(64);
    Ok(Arc::new(config))
}

/// Accepts any server certificate, still checking that the handshake is signed by it.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
