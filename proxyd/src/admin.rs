//! The `ProxyAdmin` gRPC service: link, unlink, list and secure sites, live, and export
//! the local CA's certificate.
//!
//! It reads the site store from its [`StoreSlot`] on every call and holds it only for
//! that call, so a hand-over can close the tree once the calls in flight are done. While
//! the tree is released there is no gRPC server at all; a call that slips in anyway is
//! answered `UNAVAILABLE`.

use std::sync::Arc;

use securely_core::admin::blocking_call;
use securely_core::rpc::Access;
use securely_proto::proxy::proxy_admin_server::{ProxyAdmin, ProxyAdminServer};
use securely_proto::proxy::{
    CaCertificate, ExportCaRequest, LinkSiteRequest, ListSitesReply, ListSitesRequest,
    SecureSiteRequest, Site as SiteMessage, UnlinkSiteReply, UnlinkSiteRequest,
    UnsecureSiteRequest,
};
use tonic::{Request, Response, Status};

use crate::sites::Site;
use crate::store::{SiteStore, StoreError};
use crate::tenure::StoreSlot;
use crate::tls::ca::LocalCa;

/// The admin service over the site store.
pub struct AdminService {
    slot: Arc<StoreSlot>,
    access: Access,
}

impl AdminService {
    /// An admin service changing the store in `slot`, allowing mutating calls to `access`.
    pub fn new(slot: Arc<StoreSlot>, access: Access) -> Self {
        Self { slot, access }
    }

    /// The tonic service.
    pub fn into_server(self) -> ProxyAdminServer<Self> {
        ProxyAdminServer::new(self)
    }

    /// The store, for this call only.
    fn store(&self) -> Result<Arc<SiteStore>, Status> {
        self.slot
            .get()
            .ok_or_else(|| Status::unavailable("proxyd has handed its site store over"))
    }

    /// Runs a store operation (sled writes and a commit) off the async workers.
    async fn blocking<T: Send + 'static>(
        store: Arc<SiteStore>,
        op: impl FnOnce(&SiteStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Status> {
        blocking_call(move || op(&store), status).await
    }
}

#[tonic::async_trait]
impl ProxyAdmin for AdminService {
    async fn link_site(
        &self,
        request: Request<LinkSiteRequest>,
    ) -> Result<Response<SiteMessage>, Status> {
        self.access.authorize(&request)?;
        let LinkSiteRequest {
            name,
            target,
            hostnames,
        } = request.into_inner();
        let store = self.store()?;
        let site = Self::blocking(store.clone(), move |store| {
            store.link(&name, &target, &hostnames)
        })
        .await?;
        tracing::info!(site = %site.name, target = %site.target, "site linked");
        Ok(Response::new(message(&site, &store)))
    }

    async fn unlink_site(
        &self,
        request: Request<UnlinkSiteRequest>,
    ) -> Result<Response<UnlinkSiteReply>, Status> {
        self.access.authorize(&request)?;
        let name = request.into_inner().name;
        let site = Self::blocking(self.store()?, move |store| store.unlink(&name)).await?;
        tracing::info!(site = %site.name, "site unlinked");
        Ok(Response::new(UnlinkSiteReply {}))
    }

    async fn list_sites(
        &self,
        _request: Request<ListSitesRequest>,
    ) -> Result<Response<ListSitesReply>, Status> {
        let store = self.store()?;
        let sites = store.list().iter().map(|s| message(s, &store)).collect();
        Ok(Response::new(ListSitesReply { sites }))
    }

    async fn secure_site(
        &self,
        request: Request<SecureSiteRequest>,
    ) -> Result<Response<SiteMessage>, Status> {
        self.access.authorize(&request)?;
        let name = request.into_inner().name;
        self.set_secure(name, true).await
    }

    async fn unsecure_site(
        &self,
        request: Request<UnsecureSiteRequest>,
    ) -> Result<Response<SiteMessage>, Status> {
        self.access.authorize(&request)?;
        let name = request.into_inner().name;
        self.set_secure(name, false).await
    }

    async fn export_ca(
        &self,
        _request: Request<ExportCaRequest>,
    ) -> Result<Response<CaCertificate>, Status> {
        Ok(Response::new(ca_message(self.store()?.ca())))
    }
}

impl AdminService {
    async fn set_secure(
        &self,
        name: String,
        secure: bool,
    ) -> Result<Response<SiteMessage>, Status> {
        let store = self.store()?;
        let site =
            Self::blocking(store.clone(), move |store| store.set_secure(&name, secure)).await?;
        tracing::info!(site = %site.name, secure, "site security changed");
        Ok(Response::new(message(&site, &store)))
    }
}

fn ca_message(ca: &LocalCa) -> CaCertificate {
    CaCertificate {
        pem: ca.pem(),
        sha256_fingerprint: ca.sha256_fingerprint(),
        not_after_unix: ca.not_after().unix_timestamp(),
        permitted_dns_names: ca.permitted().dns_names().to_vec(),
    }
}

fn message(site: &Site, store: &SiteStore) -> SiteMessage {
    let leaf_expiry = match site.secure {
        true => store.certs().site_expiry(&site.name),
        false => None,
    };
    SiteMessage {
        name: site.name.clone(),
        target: site.target.to_string(),
        hostnames: site.hostnames.clone(),
        serves: site.serves(store.tld()),
        secure: site.secure,
        leaf_not_after_unix: leaf_expiry.unwrap_or(0),
    }
}

fn status(e: StoreError) -> Status {
    match e {
        StoreError::Invalid(_) => Status::invalid_argument(e.to_string()),
        StoreError::Taken { .. } => Status::already_exists(e.to_string()),
        StoreError::NotFound(_) => Status::not_found(e.to_string()),
        StoreError::Storage(_)
        | StoreError::Encode(_)
        | StoreError::Sync(_)
        | StoreError::Tls(_) => {
            tracing::error!("{e}");
            Status::internal(e.to_string())
        }
    }
}
