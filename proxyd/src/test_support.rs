//! Helpers shared by the unit tests.

use pingora::http::RequestHeader;

/// A `GET /` request header with `headers`.
pub fn request(headers: &[(&str, &str)]) -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/", None).expect("a valid request line");
    for (name, value) in headers {
        req.append_header(name.to_string(), *value)
            .expect("a valid header");
    }
    req
}
