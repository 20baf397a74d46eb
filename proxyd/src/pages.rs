//! The pages proxyd answers with itself: unknown host (404), no or bad Host (400),
//! backend unreachable (502), backend too slow (504), a request going round in a loop
//! (508), a secure site asked for over plain HTTP (308 to https) and a site that is not
//! secure asked for over https (421), and other failures. Everything interpolated is
//! HTML-escaped.

use bytes::Bytes;

/// The command that links a site, as the 404 page suggests it.
pub const LINK_COMMAND: &str = "securelyctl site:link NAME HOST:PORT";

/// A complete response: status and HTML body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The HTTP status.
    pub status: u16,
    /// The HTML document.
    pub body: Bytes,
    /// Where a redirect points (the `Location` header).
    pub location: Option<String>,
}

/// 404: no site serves `host`.
pub fn unknown_host(host: &str) -> Page {
    let host = escape_html(host);
    render(
        404,
        "Not Found",
        &format!(
            "<p>No site is linked for <code>{host}</code>.</p>\n\
             <p>Link one with <code>{LINK_COMMAND}</code>, for example \
             <code>securelyctl site:link myapp 127.0.0.1:3000</code>.</p>"
        ),
    )
}

/// 400: the request names no host (or an unreadable one).
pub fn missing_host(problem: &str) -> Page {
    render(
        400,
        "Bad Request",
        &format!(
            "<p>{}</p>\n<p>proxyd routes requests by their <code>Host</code> header.</p>",
            escape_html(problem)
        ),
    )
}

/// 502: the site's backend did not answer.
pub fn backend_unreachable(site: &str, target: &str, reason: &str) -> Page {
    render(
        502,
        "Bad Gateway",
        &format!(
            "<p>Site <code>{}</code> forwards to <code>{}</code>, but {}.</p>\n\
             <p>Is the app running and listening there?</p>",
            escape_html(site),
            escape_html(target),
            escape_html(reason)
        ),
    )
}

/// 504: the site's backend accepted the request but sent nothing for `timeout_secs`.
pub fn backend_timeout(site: &str, target: &str, timeout_secs: u64) -> Page {
    render(
        504,
        "Gateway Timeout",
        &format!(
            "<p>Site <code>{}</code> forwards to <code>{}</code>, which sent nothing for \
             {timeout_secs} seconds.</p>",
            escape_html(site),
            escape_html(target)
        ),
    )
}

/// 508: the request has been through proxyd already, so the site (when known) leads back
/// to proxyd itself.
pub fn loop_detected(host: &str, site: Option<(&str, &str)>) -> Page {
    let cause = match site {
        Some((site, target)) => format!(
            "Site <code>{}</code> forwards to <code>{}</code>, which leads back to proxyd.",
            escape_html(site),
            escape_html(target)
        ),
        None => "It was sent back to proxyd by a site that forwards to proxyd itself.".into(),
    };
    render(
        508,
        "Loop Detected",
        &format!(
            "<p>The request for <code>{}</code> has been through securely-proxyd already. \
             {cause}</p>\n<p>Link the site to the app's own address instead.</p>",
            escape_html(host)
        ),
    )
}

/// 308: the site is served over https; the same request goes to `location`.
pub fn to_https(location: &str) -> Page {
    let escaped = escape_html(location);
    let mut page = render(
        308,
        "Permanent Redirect",
        &format!("<p>This site is served over https: <a href=\"{escaped}\">{escaped}</a>.</p>"),
    );
    page.location = Some(location.to_string());
    page
}

/// 421: site `site` is asked for over https but served over plain HTTP only.
pub fn not_secure(host: &str, site: &str) -> Page {
    let host = escape_html(host);
    let site = escape_html(site);
    render(
        421,
        "Misdirected Request",
        &format!(
            "<p>Site <code>{site}</code> is served over plain HTTP only: use \
             <a href=\"http://{host}/\">http://{host}/</a>, or serve it over https with \
             <code>securelyctl site:secure {site}</code>.</p>"
        ),
    )
}

/// Any other failure that still lets proxyd answer (`status` 400-599).
pub fn failure(status: u16) -> Page {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    render(
        status,
        reason,
        "<p>proxyd could not complete this request.</p>",
    )
}

/// Escapes text for HTML element content and attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn render(status: u16, reason: &str, content: &str) -> Page {
    let body = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\">\
         <title>{status} {reason}</title></head>\n<body>\n<h1>{status} {reason}</h1>\n\
         {content}\n<hr><p>securely-proxyd</p>\n</body>\n</html>\n"
    );
    Page {
        status,
        body: Bytes::from(body),
        location: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(page: &Page) -> &str {
        std::str::from_utf8(&page.body).unwrap()
    }

    #[test]
    fn escaping_covers_the_five_special_characters() {
        assert_eq!(
            escape_html(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(escape_html("plain.test"), "plain.test");
    }

    #[test]
    fn the_404_page_names_the_escaped_host_and_the_link_command() {
        let page = unknown_host("<script>x</script>.test");
        assert_eq!(page.status, 404);
        assert!(text(&page).contains("&lt;script&gt;x&lt;/script&gt;.test"));
        assert!(!text(&page).contains("<script>"));
        assert!(text(&page).contains(LINK_COMMAND));
    }

    #[test]
    fn the_502_page_names_site_and_target() {
        let page = backend_unreachable("app", "127.0.0.1:9", "the connection was refused");
        assert_eq!(page.status, 502);
        assert!(text(&page).contains("<code>app</code>"));
        assert!(text(&page).contains("127.0.0.1:9"));
        assert!(text(&page).contains("refused"));
    }

    #[test]
    fn the_504_and_508_pages_explain_themselves() {
        let page = backend_timeout("app", "127.0.0.1:9", 300);
        assert_eq!(page.status, 504);
        assert!(text(&page).contains("504 Gateway Timeout"));
        assert!(text(&page).contains("nothing for 300 seconds"));

        let page = loop_detected("<app>.test", Some(("app", "127.0.0.1:8080")));
        assert_eq!(page.status, 508);
        assert!(text(&page).contains("508 Loop Detected"));
        assert!(text(&page).contains("&lt;app&gt;.test"));
        assert!(text(&page).contains("<code>127.0.0.1:8080</code>"));
        assert!(text(&loop_detected("x.test", None)).contains("x.test"));
    }

    #[test]
    fn the_https_pages_point_the_way() {
        let page = to_https("https://app.test:8443/a?b=<c>");
        assert_eq!(page.status, 308);
        assert_eq!(
            page.location.as_deref(),
            Some("https://app.test:8443/a?b=<c>")
        );
        assert!(text(&page).contains("b=&lt;c&gt;"));

        let page = not_secure("app.test", "app");
        assert_eq!(page.status, 421);
        assert!(text(&page).contains("securelyctl site:secure app"));
        assert!(page.location.is_none());
    }

    #[test]
    fn other_pages_carry_their_status() {
        assert_eq!(missing_host("no Host header").status, 400);
        assert!(text(&failure(500)).contains("500 Internal Server Error"));
    }
}
