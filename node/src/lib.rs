//! The consort node: gRPC services, TLS identity, config, policy, and the `consort` CLI.
//!
//! This is the only crate that knows about the network. Protocols run in `consort-protocols`
//! over a [`consort_protocols::Channel`]; the node plugs a gRPC bidirectional stream into it
//! ([`transport::GrpcChannel`]).

pub mod audit;
pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod control;
pub mod demo;
pub mod identity;
pub mod jobs;
pub mod lr_cli;
pub mod lr_dealer;
pub mod lr_demo;
pub mod lr_job;
pub mod node;
pub mod pair;
pub mod peer;
pub mod setup;
pub mod tls;
pub mod transport;

/// Generated protobuf/gRPC code (`proto/consort.proto`).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("consort.v1");
}

/// Largest gRPC message a node accepts or sends. Protocol frames are ~1 MiB; tonic's default 4 MiB
/// limit is raised on purpose to leave room, and memory stays bounded by the stream buffers below.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// Frames buffered per direction and job before senders wait (flow control).
pub const FRAME_BUFFER: usize = 8;
