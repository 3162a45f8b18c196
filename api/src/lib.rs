//! consort's API: the gRPC services between nodes (`Peer`) and between an operator and its node
//! (`Control`), their generated types, the vocabulary enums and the control-socket client.
//!
//! Embedders (the SDK, the Python package) depend on this crate and never on the node: it pulls in
//! no CLI, no progress bars and no TLS server.

pub mod client;
pub mod vocab;

/// Generated protobuf/gRPC code (`proto/consort.proto`).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("consort.v1");
}

pub use client::{ClientError, NodeClient};
pub use proto::{JobKind, JobState};

/// The node directory's control socket (mode 0600, while the node runs).
pub const CONTROL_SOCKET: &str = "control.sock";

/// Version of the job-level exchange in [`proto::JobRequest::version`]; bumped on incompatible
/// changes (2: typed kind, protocol and reveal; `dataset` renamed `responder_dataset`).
pub const JOB_PROTOCOL_VERSION: u32 = 2;
