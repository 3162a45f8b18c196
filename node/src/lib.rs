//! The consort node: gRPC services, TLS identity, config, policy, the job envelope and the
//! `consort` CLI.
//!
//! This is the only crate that knows about the network. Protocols run in `consort-protocols`
//! over a [`consort_protocols::Channel`]; the node plugs a job's gRPC bidirectional stream into it
//! ([`job::JobChannel`]). Every job kind goes through one envelope ([`job::envelope`]).

pub mod at_rest;
pub mod audit;
pub mod cli;
pub mod config;
pub mod control;
pub mod identity;
pub mod job;
pub mod metrics;
pub mod monitor;
pub mod multi;
pub mod node;
pub mod pair;
pub mod policy;
pub mod setup;
pub mod state;
pub mod table;
pub mod tls;
pub mod worker;

/// The API crate's generated protobuf/gRPC code and control-socket client, re-exported.
pub use consort_api::{client, proto};

/// Largest gRPC message a node accepts or sends. Protocol frames are ~1 MiB; tonic's default 4 MiB
/// limit is raised on purpose to leave room, and memory stays bounded by the stream buffers below.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// Frames buffered per direction and job before senders wait (flow control).
pub const FRAME_BUFFER: usize = 8;
