//! https for local development, across processes: the local CA as `securelyctl ca:export`
//! prints it, and `site:secure` / `site:unsecure`.

use securely_tests::Stack;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::parse_x509_pem;

/// The dev TLD of a test stack.
const TLD: &str = "test";

#[test]
fn the_local_ca_is_name_constrained_to_the_tld_and_kept_across_a_restart() {
    let stack = Stack::start();
    let pem = stack.ctl_ok(&["ca:export"]);
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"), "{pem}");
    assert!(pem.ends_with("-----END CERTIFICATE-----\n"), "{pem}");

    let (_, block) = parse_x509_pem(pem.as_bytes()).expect("one PEM block");
    let cert = block.parse_x509().expect("an X.509 certificate");
    let basic = cert
        .basic_constraints()
        .unwrap()
        .expect("basic constraints");
    assert!(basic.critical && basic.value.ca);
    assert_eq!(basic.value.path_len_constraint, Some(0));
    let usage = cert.key_usage().unwrap().expect("key usage").value;
    assert!(usage.key_cert_sign() && usage.crl_sign());
    assert!(!usage.digital_signature() && !usage.key_encipherment());
    let constraints = cert.name_constraints().unwrap().expect("name constraints");
    assert!(constraints.critical);
    let permitted: Vec<String> = constraints
        .value
        .permitted_subtrees
        .iter()
        .flatten()
        .map(|subtree| match subtree.base {
            GeneralName::DNSName(name) => name.to_string(),
            ref other => panic!("unexpected permitted subtree {other:?}"),
        })
        .collect();
    assert_eq!(permitted, [TLD, "localhost"]);
    let excluded = constraints
        .value
        .excluded_subtrees
        .as_ref()
        .expect("IPs excluded");
    assert!(
        excluded
            .iter()
            .all(|s| matches!(s.base, GeneralName::IPAddress(_))),
        "{excluded:?}"
    );
    let years = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp())
        / (365 * 24 * 3600);
    assert_eq!(years, 10);
    assert_eq!(
        cert.public_key().algorithm.algorithm.to_id_string(),
        "1.2.840.10045.2.1",
        "an EC key"
    );

    stack.ctl_ok(&["restart", "proxyd", "--quiet"]);
    assert_eq!(stack.ctl_ok(&["ca:export"]), pem, "the CA is kept");
}

#[test]
fn securing_needs_a_site_by_a_valid_name() {
    let stack = Stack::start();
    let out = stack.ctl(&["site:secure", "nothing"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not found") && err.contains("nothing"),
        "{err}"
    );

    let out = stack.ctl(&["site:secure", "not_a.label"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid argument") && err.contains("name"),
        "{err}"
    );

    let out = stack.ctl(&["site:unsecure", "nothing"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not found"), "{err}");

    stack.ctl_ok(&["site:link", "app", "127.0.0.1:9"]);
    let out = stack.ctl_ok(&["site:secure", "app"]);
    assert!(out.contains("https://app.test"), "{out}");
    let list = stack.ctl_ok(&["site:list", "--json"]);
    let sites: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(sites[0]["secure"], true, "{list}");
    // Relinking keeps it secure; unsecuring is kept across a restart.
    stack.ctl_ok(&["site:link", "app", "127.0.0.1:10"]);
    let sites: serde_json::Value =
        serde_json::from_str(&stack.ctl_ok(&["site:list", "--json"])).unwrap();
    assert_eq!(sites[0]["secure"], true);
    stack.ctl_ok(&["site:unsecure", "app"]);
    stack.ctl_ok(&["restart", "proxyd", "--quiet"]);
    let sites: serde_json::Value =
        serde_json::from_str(&stack.ctl_ok(&["site:list", "--json"])).unwrap();
    assert_eq!(sites[0]["secure"], false);
}
