//! Which names the local CA may certify, and serial numbers.

use rcgen::SerialNumber;

/// The name a connection without SNI gets a certificate for.
pub const FALLBACK_NAME: &str = "localhost";

/// The DNS subtrees the CA's name constraints permit: a name is permitted when it is one
/// of them or lies below one (RFC 5280 4.2.1.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermittedNames {
    dns: Vec<String>,
}

impl PermittedNames {
    /// The subtrees, lowercased.
    pub fn new(dns: Vec<String>) -> Self {
        Self { dns }
    }

    /// What a new CA permits: the dev TLD and [`FALLBACK_NAME`].
    pub fn for_tld(tld: &str) -> Self {
        Self::new(vec![tld.to_ascii_lowercase(), FALLBACK_NAME.to_string()])
    }

    /// The subtrees.
    pub fn dns_names(&self) -> &[String] {
        &self.dns
    }

    /// Whether a certificate for `name` (lowercase; may start with `*.`) would satisfy the
    /// constraints.
    pub fn permits(&self, name: &str) -> bool {
        let name = name.strip_prefix("*.").unwrap_or(name);
        self.dns.iter().any(|base| is_at_or_below(name, base))
    }
}

/// Whether `name` is `base` or a name below it (`a.b.test` is below `test`).
pub fn is_at_or_below(name: &str, base: &str) -> bool {
    name == base
        || name
            .strip_suffix(base)
            .is_some_and(|head| head.len() > 1 && head.ends_with('.'))
}

/// A random positive serial number of 16 bytes (CA/B Forum: at least 64 random bits).
pub fn serial_number() -> SerialNumber {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    // The system RNG does not fail on Linux once it is seeded; zeros would still be a
    // valid (if not random) serial.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_at_or_below_a_subtree_are_permitted() {
        let permitted = PermittedNames::for_tld("test");
        for ok in ["test", "app.test", "a.b.test", "*.app.test", "localhost"] {
            assert!(permitted.permits(ok), "{ok}");
        }
        for refused in [
            "example.com",
            "atest",
            "test.com",
            "localhost.example",
            "a.localhostx",
        ] {
            assert!(!permitted.permits(refused), "{refused}");
        }
    }

    #[test]
    fn serials_are_positive_and_differ() {
        let a = serial_number().to_bytes();
        assert_eq!(a.len(), 16);
        assert!(a[0] & 0x80 == 0 && a[0] != 0);
        assert_ne!(a, serial_number().to_bytes());
    }
}
