//! A CA shaped like proxyd's (CA:TRUE pathlen 0, certSign/cRLSign, name-constrained to
//! `test` and `localhost`), minted fresh for each test.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, GeneralSubtree, IsCa, KeyPair, KeyUsagePurpose,
    NameConstraints,
};

use super::Ca;

/// A new CA named `common_name`.
pub fn mint(common_name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: vec![
            GeneralSubtree::DnsName("test".into()),
            GeneralSubtree::DnsName("localhost".into()),
        ],
        excluded_subtrees: vec![],
    });
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed");
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.der());
    let hex: String = digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}:"))
        .collect();
    Ca::new(&cert.pem(), hex.trim_end_matches(':')).expect("a valid CA")
}
