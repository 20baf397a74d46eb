//! The local certificate authority: created once, on proxyd's first start, and kept in its
//! sled tree (see [`super::vault`]); it signs the leaves the resolver serves.
//!
//! A root valid [`CA_VALIDITY`], `CA:TRUE, pathlen:0`, key usage keyCertSign and cRLSign
//! only, ECDSA P-256, and name constraints (critical): DNS names only under the dev TLD and
//! `localhost`, no IP address at all. A leaked key therefore cannot mint a certificate
//! that a browser accepts for any real domain. The private key never leaves proxyd.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType, GeneralSubtree,
    IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use x509_parser::extensions::{GeneralName, ParsedExtension};

use super::names::{PermittedNames, serial_number};

/// How long the root is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How far back a certificate's validity starts, for clocks a little behind proxyd's.
pub const BACKDATE: Duration = Duration::from_secs(3600);
/// The name every local CA's subject starts with (a random suffix tells installs apart).
pub const CA_NAME: &str = "Securely local development CA";

/// Why the CA could not be created or loaded, or a certificate not signed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// rcgen refused the parameters or failed to sign.
    #[error("cannot make a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// The stored CA does not parse.
    #[error("the stored CA certificate does not parse: {0}")]
    Parse(String),
}

/// The CA as stored in the tree: its certificate and its private key (PKCS#8), DER.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredCa {
    /// The certificate.
    pub cert_der: Vec<u8>,
    /// The private key.
    pub key_pkcs8: Vec<u8>,
}

/// The CA, ready to sign.
pub struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    stored: StoredCa,
    not_after: OffsetDateTime,
    permitted: PermittedNames,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa")
            .field("fingerprint", &self.sha256_fingerprint())
            .field("permitted", &self.permitted)
            .finish_non_exhaustive()
    }
}

impl LocalCa {
    /// A new CA whose name constraints permit `tld` and `localhost`.
    pub fn generate(tld: &str) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(serial_number());
        let mut dn = DistinguishedName::new();
        let suffix = hex(&serial_number().to_bytes()[..4]);
        dn.push(DnType::CommonName, format!("{CA_NAME} {suffix}"));
        dn.push(DnType::OrganizationName, "Securely (local development)");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: PermittedNames::for_tld(tld)
                .dns_names()
                .iter()
                .map(|name| GeneralSubtree::DnsName(name.clone()))
                .collect(),
            excluded_subtrees: vec![
                GeneralSubtree::IpAddress(CidrSubnet::V4([0; 4], [0; 4])),
                GeneralSubtree::IpAddress(CidrSubnet::V6([0; 16], [0; 16])),
            ],
        });
        let cert = params.self_signed(&key)?;
        Self::load(&StoredCa {
            cert_der: cert.der().to_vec(),
            key_pkcs8: key.serialize_der(),
        })
    }

    /// The CA from its stored form.
    pub fn load(stored: &StoredCa) -> Result<Self, CaError> {
        let key = KeyPair::try_from(stored.key_pkcs8.as_slice())?;
        let cert_der = CertificateDer::from(stored.cert_der.clone());
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| CaError::Parse(e.to_string()))?;
        let not_after = parsed.validity().not_after.to_datetime();
        let mut permitted = Vec::new();
        for extension in parsed.extensions() {
            if let ParsedExtension::NameConstraints(constraints) = extension.parsed_extension() {
                for subtree in constraints.permitted_subtrees.iter().flatten() {
                    if let GeneralName::DNSName(name) = subtree.base {
                        permitted.push(name.to_ascii_lowercase());
                    }
                }
            }
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(Self {
            issuer,
            cert_der,
            stored: stored.clone(),
            not_after,
            permitted: PermittedNames::new(permitted),
        })
    }

    /// What to store.
    pub fn stored(&self) -> &StoredCa {
        &self.stored
    }

    /// The signer of leaves.
    pub fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// The certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The certificate, PEM.
    pub fn pem(&self) -> String {
        let body = base64(&self.cert_der);
        let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
        for line in body.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
        pem
    }

    /// SHA-256 of the certificate, as `AB:CD:...`.
    pub fn sha256_fingerprint(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.cert_der);
        digest
            .as_ref()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// When the certificate expires.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// The DNS names its constraints permit.
    pub fn permitted(&self) -> &PermittedNames {
        &self.permitted
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Standard base64 with padding (PEM's alphabet).
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_ca_is_constrained_to_the_tld_and_localhost_and_survives_storing() {
        let ca = LocalCa::generate("test").unwrap();
        assert_eq!(ca.permitted().dns_names(), ["test", "localhost"]);
        let (_, cert) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
        let constraints = cert.basic_constraints().unwrap().unwrap();
        assert!(constraints.critical && constraints.value.ca);
        assert_eq!(constraints.value.path_len_constraint, Some(0));
        let usage = cert.key_usage().unwrap().unwrap().value;
        assert!(usage.key_cert_sign() && usage.crl_sign() && !usage.digital_signature());
        let names = cert.name_constraints().unwrap().unwrap();
        assert!(names.critical);
        assert_eq!(names.value.excluded_subtrees.as_ref().unwrap().len(), 2);
        let lifetime = ca.not_after() - OffsetDateTime::now_utc();
        assert!(lifetime > time::Duration::days(3649), "{lifetime}");

        let again = LocalCa::load(ca.stored()).unwrap();
        assert_eq!(again.sha256_fingerprint(), ca.sha256_fingerprint());
        assert_eq!(again.sha256_fingerprint().len(), 32 * 3 - 1);
        assert!(ca.pem().starts_with("-----BEGIN CERTIFICATE-----\nMII"));
        assert!(ca.pem().ends_with("-----END CERTIFICATE-----\n"));
    }

    #[test]
    fn base64_pads_like_pem_does() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
