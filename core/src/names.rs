//! Domain-name rules shared by every daemon: labels, hostnames, the local TLD.

/// The longest domain name in text form, without the trailing dot (RFC 1035 2.3.4).
pub const MAX_NAME_LEN: usize = 253;
/// The longest label (RFC 1035 2.3.4).
pub const MAX_LABEL_LEN: usize = 63;

/// A hostname label: letters, digits and inner hyphens, 1 to 63 bytes.
pub fn is_dns_label(label: &str) -> bool {
    is_label(label, false)
}

fn is_label(label: &str, allow_underscore: bool) -> bool {
    !label.is_empty()
        && label.len() <= MAX_LABEL_LEN
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || (allow_underscore && b == b'_'))
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// The local TLD as compared everywhere: lowercase, without a trailing dot.
pub fn normalize_tld(tld: &str) -> String {
    tld.trim_end_matches('.').to_ascii_lowercase()
}

/// Checks a name of dot-separated labels (with `_` allowed when `allow_underscore`, as in
/// `_acme-challenge.app.test`) and returns it lowercased, without one trailing dot.
/// Otherwise returns what is wrong.
pub fn normalize_hostname(raw: &str, allow_underscore: bool) -> Result<String, String> {
    let trimmed = raw.strip_suffix('.').unwrap_or(raw);
    if trimmed.is_empty() {
        return Err("must not be empty".into());
    }
    if trimmed.len() > MAX_NAME_LEN {
        return Err(format!(
            "is {} bytes long; a name has at most {MAX_NAME_LEN}",
            trimmed.len()
        ));
    }
    let name = trimmed.to_ascii_lowercase();
    if let Some(label) = name.split('.').find(|l| !is_label(l, allow_underscore)) {
        return Err(format!(
            "{raw:?} is not a valid name (label {label:?}: letters, digits{} and inner hyphens, 1 to {MAX_LABEL_LEN} characters)",
            if allow_underscore {
                ", underscores"
            } else {
                ""
            }
        ));
    }
    Ok(name)
}

/// Whether `name` (normalised) is `tld` or below it.
pub fn is_within(name: &str, tld: &str) -> bool {
    name == tld
        || name
            .strip_suffix(tld)
            .is_some_and(|head| head.ends_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_lowercased_and_checked() {
        assert_eq!(normalize_hostname("App.Test.", false).unwrap(), "app.test");
        assert!(normalize_hostname("", false).is_err());
        assert!(normalize_hostname("a..b", false).is_err());
        assert!(normalize_hostname("-a.test", false).is_err());
        assert!(normalize_hostname("_acme.app.test", false).is_err());
        assert_eq!(
            normalize_hostname("_acme.app.test", true).unwrap(),
            "_acme.app.test"
        );
        assert!(normalize_hostname(&"a.".repeat(130), false).is_err());
    }

    #[test]
    fn within_the_tld_means_at_or_below_it() {
        assert!(is_within("test", "test"));
        assert!(is_within("a.b.test", "test"));
        assert!(!is_within("atest", "test"));
        assert!(!is_within("test.org", "test"));
    }
}
