//! https for local development.
//!
//! * [`ca`]: the local CA, name-constrained to the dev TLD, kept in proxyd's sled tree
//!   ([`vault`]);
//! * [`leaf`]: the certificates it signs, which [`certs`] mints on first use, renews and
//!   keeps, and [`sni`] picks by the name a client asks for ([`names`]: which names the
//!   CA may certify);
//! * [`accept`]: the handshake on the TLS listeners, through rustls's [`resolver`], into
//!   a [`stream`] pingora's HTTP app serves (h2 or HTTP/1.1 by ALPN).

pub mod accept;
pub mod ca;
pub mod certs;
pub mod leaf;
pub mod names;
pub mod resolver;
pub mod sni;
pub mod stream;
pub mod vault;
