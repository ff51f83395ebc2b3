//! A throw-away PKI for TLS tests: a CA, a server certificate for `localhost`/`127.0.0.1`, a
//! client certificate the CA issued, and a rogue client certificate it did not; files written
//! with owner-only permissions (as the services require) into a fresh temp directory.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use sha2::{Digest, Sha256};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use waybill_service_kit::security::{ClientCerts, TlsFiles};

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct Pem {
    /// The certificate.
    pub cert: String,
    /// Its private key.
    pub key: String,
    /// Hex SHA-256 of the certificate's DER (what the credentials file maps to a caller).
    pub sha256: String,
}

/// See the module docs.
#[derive(Debug)]
pub struct TestPki {
    /// The CA certificate (PEM) clients and servers trust.
    pub ca_cert: String,
    /// The server's certificate.
    pub server: Pem,
    /// A client certificate issued by the CA (common name `ops-console`).
    pub client: Pem,
    /// Another client certificate issued by the CA (common name `shop.example.com`).
    pub storefront_client: Pem,
    /// A client certificate from a CA nobody trusts.
    pub rogue_client: Pem,
    /// Where the files are.
    pub dir: PathBuf,
}

fn leaf(
    name: &str,
    sans: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'_, KeyPair>,
) -> Pem {
    let key = KeyPair::generate().expect("key pair");
    let mut params = CertificateParams::new(sans).expect("params");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, issuer).expect("sign");
    Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
        sha256: hex::encode(Sha256::digest(cert.der())),
    }
}

fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("key pair");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).expect("self-signed");
    (cert.pem(), Issuer::new(params, key))
}

/// Writes `contents` to `path` readable by the owner only.
pub fn write_private(path: &Path, contents: &str) {
    std::fs::write(path, contents).expect("write");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
}

impl TestPki {
    /// A fresh PKI with its files written.
    pub fn new() -> Self {
        let (ca_cert, issuer) = ca("waybill test ca");
        let server = leaf(
            "localhost",
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            &issuer,
        );
        let client = leaf(
            "ops-console",
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
            &issuer,
        );
        let storefront_client = leaf(
            "shop.example.com",
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
            &issuer,
        );
        let (_, rogue_issuer) = ca("rogue ca");
        let rogue_client = leaf(
            "ops-console",
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
            &rogue_issuer,
        );
        let dir = std::env::temp_dir().join(format!("waybill-pki-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        write_private(&dir.join("ca.pem"), &ca_cert);
        write_private(&dir.join("server.pem"), &server.cert);
        write_private(&dir.join("server.key"), &server.key);
        write_private(&dir.join("client.pem"), &client.cert);
        write_private(&dir.join("client.key"), &client.key);
        Self {
            ca_cert,
            server,
            client,
            storefront_client,
            rogue_client,
            dir,
        }
    }

    /// The server's TLS files; `mtls` requires client certificates issued by the CA.
    pub fn server_files(&self, mtls: bool) -> TlsFiles {
        TlsFiles {
            cert: self.dir.join("server.pem"),
            key: self.dir.join("server.key"),
            client_ca: mtls.then(|| self.dir.join("ca.pem")),
            client_certs: ClientCerts::Required,
        }
    }

    /// The server's files for a listener on which a client certificate (from the CA) is
    /// optional.
    pub fn optional_mtls_files(&self) -> TlsFiles {
        TlsFiles {
            client_certs: ClientCerts::Optional,
            ..self.server_files(true)
        }
    }

    /// A client configuration trusting the CA, presenting `identity` if given.
    pub fn client_config(&self, identity: Option<&Pem>) -> ClientTlsConfig {
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_cert))
            .domain_name("localhost");
        match identity {
            Some(pem) => config.identity(Identity::from_pem(&pem.cert, &pem.key)),
            None => config,
        }
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
