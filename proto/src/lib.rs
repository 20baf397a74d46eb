//! The gRPC contracts between Securely's processes.
//!
//! Processes meet only here: the supervisor's control service, the control service every
//! daemon implements, and each daemon's own admin API. Every socket also serves
//! `grpc.health.v1.Health` and server reflection (see [`FILE_DESCRIPTOR_SET`]).

#![forbid(unsafe_code)]

/// The supervisor's control service (`control.sock`).
pub mod supervisor {
    tonic::include_proto!("securely.supervisor.v1");
}

/// The control service every daemon implements (`<daemon>.sock`).
pub mod daemon {
    tonic::include_proto!("securely.daemon.v1");
}

/// proxyd's admin API (`proxyd.sock`).
pub mod proxy {
    tonic::include_proto!("securely.proxy.v1");
}

/// dnsd's admin API (`dnsd.sock`).
pub mod dns {
    tonic::include_proto!("securely.dns.v1");
}

/// queued's API (`queued.sock`).
pub mod queue {
    tonic::include_proto!("securely.queue.v1");
}

/// The encoded descriptors of every service above, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("securely_descriptor");
