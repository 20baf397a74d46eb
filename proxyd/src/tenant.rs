//! proxyd's part in the lifecycle driver ([`securely_core::lifecycle`]) for its sled
//! tree: [`SiteTenant`] opens the tree into the [`StoreSlot`] (loading the sites, which
//! publishes the routing table), serves `ProxyAdmin` over it, and closes it again
//! ([`tenure::release`]) while the proxy keeps serving HTTP from the routing table.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use securely_core::rpc::Access;
use securely_core::store::{OPEN_DEADLINE, open_tree};
use securely_core::tenure::{BoxError, CloseError, Tenant};
use tonic::service::Routes;

use crate::admin::AdminService;
use crate::store::StoreSetup;
use crate::tenure::{self, StoreSlot, TenureError};

/// The site store's slot and what opening it and serving over it take.
pub struct SiteTenant {
    /// Where the admin service finds the store; empty between tenures.
    pub slot: Arc<StoreSlot>,
    /// What the store is opened with (its tree, the routing table it publishes).
    pub setup: StoreSetup,
    /// Who may make mutating calls.
    pub access: Access,
    /// The HTTP listeners' addresses, for the ready status.
    pub http: Vec<SocketAddr>,
    /// The https listeners' addresses, for the ready status.
    pub https: Vec<SocketAddr>,
    /// The gRPC socket, for the ready status.
    pub socket: PathBuf,
}

/// A tenure: the store is in its slot.
pub struct Held;

impl Tenant for SiteTenant {
    type Tenure = Held;

    async fn open(&mut self) -> Result<Held, BoxError> {
        let tree = self.setup.tree.clone();
        let sites = tenure::reopen(&self.slot, self.setup.clone(), move || {
            Ok(open_tree(&tree, OPEN_DEADLINE)?)
        })
        .await?;
        tracing::info!(sites, "opened the site store");
        Ok(Held)
    }

    fn routes(&self, _tenure: &Held) -> Routes {
        Routes::new(AdminService::new(self.slot.clone(), self.access.clone()).into_server())
    }

    fn status(&self, _tenure: &Held) -> String {
        let sites = self.slot.get().map_or(0, |store| store.len());
        status_line(sites, &self.http, &self.https, &self.socket)
    }

    async fn close(
        &mut self,
        _tenure: Held,
        cut_short: impl Future<Output = ()>,
    ) -> Result<(), CloseError> {
        match tenure::release(&self.slot, cut_short).await {
            Ok(()) => {
                tracing::info!("site store closed; still proxying HTTP");
                Ok(())
            }
            // The store is back in its slot; the control thread closes it once its
            // runtime is gone.
            Err(TenureError::Interrupted) => Err(CloseError::CutShort),
            Err(e) => Err(CloseError::Failed(e.into())),
        }
    }
}

/// The status line sent with `READY=1`.
fn status_line(sites: usize, http: &[SocketAddr], https: &[SocketAddr], grpc: &Path) -> String {
    let list = |addrs: &[SocketAddr]| {
        addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let https = match https {
        [] => String::new(),
        some => format!("; https on {}", list(some)),
    };
    format!(
        "{sites} site(s); HTTP on {}{https}; gRPC on {}",
        list(http),
        grpc.display()
    )
}
