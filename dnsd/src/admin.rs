//! The `DnsAdmin` gRPC service: explicit records, changed live. A change that reaches
//! the store while its tree is handed over fails with `UNAVAILABLE`.

use std::sync::Arc;

use securely_core::admin::blocking_call;
use securely_core::rpc::Access;
use securely_proto::dns::dns_admin_server::{DnsAdmin, DnsAdminServer};
use securely_proto::dns::{
    ListRecordsReply, ListRecordsRequest, Record, SetRecordRequest, UnsetRecordReply,
    UnsetRecordRequest,
};
use tonic::{Request, Response, Status};

use crate::record_spec::{InvalidArgument, RecordSpec, ZoneNames, parse_kind};
use crate::records::{RecordStore, StoreError};

/// The admin service over the record store.
pub struct AdminService {
    store: Arc<RecordStore>,
    names: ZoneNames,
    default_ttl: u32,
    access: Access,
}

impl AdminService {
    /// A service changing `store` for the zone `names`; `default_ttl` is what a TTL of 0
    /// means, `access` who may change records.
    pub fn new(
        store: Arc<RecordStore>,
        names: ZoneNames,
        default_ttl: u32,
        access: Access,
    ) -> Self {
        Self {
            store,
            names,
            default_ttl,
            access,
        }
    }

    /// The tonic service.
    pub fn into_server(self) -> DnsAdminServer<Self> {
        DnsAdminServer::new(self)
    }

    fn to_proto(&self, spec: RecordSpec) -> Record {
        Record {
            name: spec.name,
            r#type: spec.kind.as_str().to_string(),
            value: spec.value,
            ttl: if spec.ttl == 0 {
                self.default_ttl
            } else {
                spec.ttl
            },
        }
    }

    /// Runs a store write off the async workers (it waits for the disk).
    async fn write<T: Send + 'static>(
        &self,
        change: impl FnOnce(&RecordStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Status> {
        let store = self.store.clone();
        blocking_call(move || change(&store), store_status).await
    }
}

fn invalid(error: InvalidArgument) -> Status {
    Status::invalid_argument(error.to_string())
}

fn store_status(error: StoreError) -> Status {
    match error {
        StoreError::Conflict(message) => Status::failed_precondition(message),
        StoreError::Invalid(error) => invalid(error),
        // Only between a hand-over's release and the process's exit or resume, when no
        // gRPC server should be running.
        StoreError::Detached => Status::unavailable(StoreError::Detached.to_string()),
        other => {
            tracing::error!(error = %other, "record store failed");
            Status::internal(other.to_string())
        }
    }
}

#[tonic::async_trait]
impl DnsAdmin for AdminService {
    async fn set_record(
        &self,
        request: Request<SetRecordRequest>,
    ) -> Result<Response<Record>, Status> {
        self.access.authorize(&request)?;
        let r = request.into_inner();
        let spec =
            RecordSpec::parse(&self.names, &r.name, &r.r#type, &r.value, r.ttl).map_err(invalid)?;
        let stored = spec.clone();
        self.write(move |store| store.set(stored)).await?;
        tracing::info!(name = %spec.name, r#type = spec.kind.as_str(), value = %spec.value, "record set");
        Ok(Response::new(self.to_proto(spec)))
    }

    async fn unset_record(
        &self,
        request: Request<UnsetRecordRequest>,
    ) -> Result<Response<UnsetRecordReply>, Status> {
        self.access.authorize(&request)?;
        let r = request.into_inner();
        let name = self.names.owner("name", &r.name).map_err(invalid)?;
        let kind = if r.r#type.trim().is_empty() {
            None
        } else {
            Some(parse_kind(&r.r#type).map_err(invalid)?)
        };
        let target = name.clone();
        let removed = self.write(move |store| store.unset(&target, kind)).await?;
        tracing::info!(%name, r#type = kind.map_or("*", |k| k.as_str()), removed, "records unset");
        Ok(Response::new(UnsetRecordReply { removed }))
    }

    async fn list_records(
        &self,
        _request: Request<ListRecordsRequest>,
    ) -> Result<Response<ListRecordsReply>, Status> {
        let records = self
            .store
            .list()
            .into_iter()
            .map(|spec| self.to_proto(spec))
            .collect();
        Ok(Response::new(ListRecordsReply { records }))
    }
}
