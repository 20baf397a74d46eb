//! dnsd's hold on its sled tree ([`RecordTenant`], its part in the lifecycle driver
//! [`securely_core::lifecycle`]): the record store's tree and the gRPC services over it
//! (`DnsAdmin`), which a hand-over moves while DNS (the data plane) goes on answering
//! from the in-memory records.
//!
//! The store starts detached (it holds no tree). Opening a tenure attaches the tree and
//! loads the records and the serial from it (the instance that failed to take over may
//! have changed them, on a `RESUME`); closing it detaches the tree: flush, drop every sled
//! handle, waiting for a write still running. The records keep being served from memory
//! meanwhile; changes fail with UNAVAILABLE until the next attach.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use securely_core::rpc::Access;
use securely_core::tenure::{BoxError, CloseError, Tenant};
use tonic::service::Routes;

use crate::admin::AdminService;
use crate::record_spec::ZoneNames;
use crate::records::RecordStore;

/// How dnsd describes itself in its ready status.
pub struct Summary {
    /// The zone's apex.
    pub apex: String,
    /// The DNS sockets, as `udp://ADDR` and `tcp://ADDR`.
    pub listeners: Vec<String>,
    /// Where other names go.
    pub forwarding: String,
}

/// The record store and what its gRPC service needs.
pub struct RecordTenant {
    /// The store the data plane answers from, attached during a tenure.
    pub store: Arc<RecordStore>,
    /// The zone's names.
    pub names: ZoneNames,
    /// The tree's directory.
    pub tree: PathBuf,
    /// What a TTL of 0 means.
    pub default_ttl: u32,
    /// Who may change records.
    pub access: Access,
    /// For the ready status.
    pub summary: Summary,
}

/// A tenure: the store is attached to its tree.
pub struct Attached;

impl Tenant for RecordTenant {
    type Tenure = Attached;

    async fn open(&mut self) -> Result<Attached, BoxError> {
        let path = self.tree.clone();
        tracing::info!(path = %path.display(), "opening the record store");
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let db = securely_core::store::open_tree(&path, securely_core::store::OPEN_DEADLINE)?;
            store.attach(db, &path).context("loading the records")
        })
        .await
        .context("opening the record store")??;
        Ok(Attached)
    }

    fn routes(&self, _tenure: &Attached) -> Routes {
        let admin = AdminService::new(
            self.store.clone(),
            self.names.clone(),
            self.default_ttl,
            self.access.clone(),
        );
        Routes::new(admin.into_server())
    }

    fn status(&self, _tenure: &Attached) -> String {
        let Summary {
            apex,
            listeners,
            forwarding,
        } = &self.summary;
        format!(
            "serving {apex} on {}; {} explicit records; {forwarding}",
            listeners.join(" "),
            self.store.len()
        )
    }

    async fn close(
        &mut self,
        _tenure: Attached,
        _cut_short: impl Future<Output = ()>,
    ) -> Result<(), CloseError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.detach())
            .await
            .map_err(|e| CloseError::Failed(e.into()))?
            .context("flushing the record store")
            .map_err(|e| CloseError::Failed(e.into()))?;
        tracing::info!(
            records = self.store.len(),
            "record store closed; answering DNS from memory"
        );
        Ok(())
    }
}
