//! Leaf certificates: what the local CA signs for the names a connection asks for.
//!
//! `CA:FALSE`, key usage digitalSignature, EKU serverAuth, ECDSA P-256, valid
//! [`LEAF_VALIDITY`] (far below the 397 days browsers accept) and renewed once less than
//! [`RENEW_BEFORE`] is left, so a laptop asleep for weeks still wakes to a valid one.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::ca::{BACKDATE, CaError, LocalCa};
use super::names::serial_number;

/// How long a leaf is valid.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// A leaf with less than this left is replaced on the next handshake that uses it.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// A leaf as stored: its names, certificate and key, and the CA that signed it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredLeaf {
    /// The names it is valid for, first the subject's.
    pub names: Vec<String>,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// The key, PKCS#8 DER.
    pub key_pkcs8: Vec<u8>,
    /// When it expires (Unix seconds).
    pub not_after_unix: i64,
    /// The signing CA's SHA-256 fingerprint.
    pub ca_fingerprint: String,
}

/// A leaf, ready for handshakes.
#[derive(Debug)]
pub struct Leaf {
    stored: StoredLeaf,
    certified: Arc<CertifiedKey>,
}

impl Leaf {
    /// Signs a new leaf for `names` (the first is the subject) with `ca`.
    pub fn mint(ca: &LocalCa, names: &[String]) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.not_before = now - BACKDATE;
        params.not_after = now + LEAF_VALIDITY;
        params.serial_number = Some(serial_number());
        let mut dn = DistinguishedName::new();
        if let Some(subject) = names.first() {
            dn.push(DnType::CommonName, subject.as_str());
        }
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .iter()
            .map(|name| Ok(SanType::DnsName(name.as_str().try_into()?)))
            .collect::<Result<_, rcgen::Error>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, ca.issuer())?;
        Self::load(StoredLeaf {
            names: names.to_vec(),
            cert_der: cert.der().to_vec(),
            key_pkcs8: key.serialize_der(),
            not_after_unix: params.not_after.unix_timestamp(),
            ca_fingerprint: ca.sha256_fingerprint(),
        })
    }

    /// A leaf from its stored form.
    pub fn load(stored: StoredLeaf) -> Result<Self, CaError> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(stored.key_pkcs8.clone()));
        let signing = rustls::crypto::ring::sign::any_ecdsa_type(&key)
            .map_err(|e| CaError::Parse(format!("leaf key: {e}")))?;
        let chain = vec![CertificateDer::from(stored.cert_der.clone())];
        Ok(Self {
            certified: Arc::new(CertifiedKey::new(chain, signing)),
            stored,
        })
    }

    /// What rustls serves.
    pub fn certified(&self) -> &Arc<CertifiedKey> {
        &self.certified
    }

    /// What to store.
    pub fn stored(&self) -> &StoredLeaf {
        &self.stored
    }

    /// When it expires (Unix seconds).
    pub fn not_after_unix(&self) -> i64 {
        self.stored.not_after_unix
    }

    /// Whether it can serve `names` from `ca` at `now` (Unix seconds) without renewal.
    pub fn fits(&self, names: &[String], ca_fingerprint: &str, now: i64) -> bool {
        let renew_at = self.stored.not_after_unix - RENEW_BEFORE.as_secs() as i64;
        self.stored.names == names && self.stored.ca_fingerprint == ca_fingerprint && now < renew_at
    }
}

/// Now, in Unix seconds.
pub fn unix_now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leaf_is_a_server_certificate_for_its_names_and_fits_until_renewal() {
        let ca = LocalCa::generate("test").unwrap();
        let names = vec!["app.test".to_string(), "*.app.test".to_string()];
        let leaf = Leaf::mint(&ca, &names).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&leaf.stored().cert_der).unwrap();
        let basic = cert.basic_constraints().unwrap().unwrap().value;
        assert!(!basic.ca);
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        assert!(cert.key_usage().unwrap().unwrap().value.digital_signature());
        let (_, ca_cert) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
        assert_eq!(cert.issuer(), ca_cert.subject());
        let days = (leaf.not_after_unix() - unix_now()) / 86400;
        assert!((89..=90).contains(&days), "{days}");

        let fingerprint = ca.sha256_fingerprint();
        let now = unix_now();
        assert!(leaf.fits(&names, &fingerprint, now));
        assert!(!leaf.fits(&names[..1], &fingerprint, now), "other names");
        assert!(!leaf.fits(&names, "other CA", now));
        let renewal = leaf.not_after_unix() - RENEW_BEFORE.as_secs() as i64;
        assert!(!leaf.fits(&names, &fingerprint, renewal));

        let again = Leaf::load(leaf.stored().clone()).unwrap();
        assert_eq!(again.certified().cert, leaf.certified().cert);
    }

    /// What a browser's verifier (webpki, which rustls uses) says of `cert` for `name`,
    /// with `ca` its only root.
    fn verify(ca: &LocalCa, cert: &CertificateDer<'_>, name: &str) -> Result<(), rustls::Error> {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::{ServerName, UnixTime};
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        let name = ServerName::try_from(name.to_string()).unwrap();
        verifier
            .verify_server_cert(cert, &[], &name, &[], UnixTime::now())
            .map(drop)
    }

    #[test]
    fn a_verifying_client_refuses_what_the_ca_signs_outside_its_constraints() {
        let ca = LocalCa::generate("test").unwrap();
        let mint = |names: &[&str]| {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            Leaf::mint(&ca, &names).unwrap().stored().cert_der.clone()
        };
        verify(&ca, &mint(&["app.test"]).into(), "app.test").unwrap();
        verify(&ca, &mint(&["localhost"]).into(), "localhost").unwrap();

        // Even signed by the CA's own key, a real domain is refused...
        let err = verify(&ca, &mint(&["example.com"]).into(), "example.com").unwrap_err();
        assert!(
            format!("{err:?}").contains("NameConstraintViolation"),
            "{err:?}"
        );
        // ...and poisons a certificate that also names a dev name.
        let mixed = mint(&["app.test", "www.example.com"]);
        assert!(verify(&ca, &mixed.into(), "app.test").is_err());

        // No IP address at all.
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = OffsetDateTime::now_utc() - BACKDATE;
        params.not_after = OffsetDateTime::now_utc() + LEAF_VALIDITY;
        let ip = params.signed_by(&key, ca.issuer()).unwrap();
        let err = verify(&ca, ip.der(), "127.0.0.1").unwrap_err();
        assert!(
            format!("{err:?}").contains("NameConstraintViolation"),
            "{err:?}"
        );
    }
}
