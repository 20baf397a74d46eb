//! The certificate resolver rustls asks during each handshake.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::certs::Certs;

/// Resolves the certificate for a client hello by its server name (see
/// [`super::sni`]); leaves are minted or renewed here, on first use.
#[derive(Debug)]
pub struct Resolver {
    certs: Arc<Certs>,
}

impl Resolver {
    /// A resolver over `certs`.
    pub fn new(certs: Arc<Certs>) -> Self {
        Self { certs }
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let choice = self.certs.choose(hello.server_name());
        self.certs.certificate(&choice)
    }
}
