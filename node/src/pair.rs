//! Two node directories that pin each other: the set-up shared by `consort demo`, `consort bench`
//! and the integration tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::{config, identity, setup};

pub const A: &str = "bank";
pub const B: &str = "partner";

/// Creates `root/bank` and `root/partner` node directories listening on loopback (free ports).
pub fn init_pair(root: &Path) -> Result<(PathBuf, PathBuf)> {
    let (a, b) = (root.join(A), root.join(B));
    identity::init(&a, A, "127.0.0.1:0")?;
    identity::init(&b, B, "127.0.0.1:0")?;
    Ok((a, b))
}

/// Pins each node's certificate in the other's config at the given (actual) addresses.
pub fn pin_pair(a: &Path, a_addr: SocketAddr, b: &Path, b_addr: SocketAddr) -> Result<()> {
    setup::peer_add(a, B, &b_addr.to_string(), &b.join(config::TLS_CERT_FILE), true)?;
    setup::peer_add(b, A, &a_addr.to_string(), &a.join(config::TLS_CERT_FILE), true)?;
    Ok(())
}
