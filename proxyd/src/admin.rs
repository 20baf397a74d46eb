//! The `ProxyAdmin` gRPC service: link, unlink and list sites, live.

use std::sync::Arc;

use securely_core::rpc::Access;
use securely_proto::proxy::proxy_admin_server::{ProxyAdmin, ProxyAdminServer};
use securely_proto::proxy::{
    LinkSiteRequest, ListSitesReply, ListSitesRequest, Site as SiteMessage, UnlinkSiteReply,
    UnlinkSiteRequest,
};
use tonic::{Request, Response, Status};

use crate::sites::Site;
use crate::store::{SiteStore, StoreError};

/// The admin service over the site store.
pub struct AdminService {
    store: Arc<SiteStore>,
    access: Access,
}

impl AdminService {
    /// An admin service changing `store`, allowing mutating calls to `access`.
    pub fn new(store: Arc<SiteStore>, access: Access) -> Self {
        Self { store, access }
    }

    /// The tonic service.
    pub fn into_server(self) -> ProxyAdminServer<Self> {
        ProxyAdminServer::new(self)
    }

    fn message(&self, site: &Site) -> SiteMessage {
        SiteMessage {
            name: site.name.clone(),
            target: site.target.to_string(),
            hostnames: site.hostnames.clone(),
            serves: site.serves(self.store.tld()),
        }
    }

    /// Runs a store operation (sled writes and a flush) off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        op: impl FnOnce(&SiteStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Status> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || op(&store))
            .await
            .map_err(|e| Status::internal(format!("site store task failed: {e}")))?
            .map_err(status)
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
        let site = self
            .blocking(move |store| store.link(&name, &target, &hostnames))
            .await?;
        tracing::info!(site = %site.name, target = %site.target, "site linked");
        Ok(Response::new(self.message(&site)))
    }

    async fn unlink_site(
        &self,
        request: Request<UnlinkSiteRequest>,
    ) -> Result<Response<UnlinkSiteReply>, Status> {
        self.access.authorize(&request)?;
        let name = request.into_inner().name;
        let site = self.blocking(move |store| store.unlink(&name)).await?;
        tracing::info!(site = %site.name, "site unlinked");
        Ok(Response::new(UnlinkSiteReply {}))
    }

    async fn list_sites(
        &self,
        _request: Request<ListSitesRequest>,
    ) -> Result<Response<ListSitesReply>, Status> {
        let sites = self.store.list().iter().map(|s| self.message(s)).collect();
        Ok(Response::new(ListSitesReply { sites }))
    }
}

fn status(e: StoreError) -> Status {
    match e {
        StoreError::Invalid(_) => Status::invalid_argument(e.to_string()),
        StoreError::Taken { .. } => Status::already_exists(e.to_string()),
        StoreError::NotFound(_) => Status::not_found(e.to_string()),
        StoreError::Storage(_) | StoreError::Encode(_) => {
            tracing::error!("{e}");
            Status::internal(e.to_string())
        }
    }
}
