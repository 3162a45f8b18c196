//! `consort init`: create a node directory, or rotate its TLS key.

use std::path::PathBuf;

use anyhow::Result;
use serde_json::json;

use super::print_json;
use crate::{config, identity};

#[derive(clap::Args)]
pub struct InitArgs {
    /// Node directory to create.
    dir: PathBuf,
    /// This node's name (peers pin it under this name).
    #[arg(long, required_unless_present = "rotate_key")]
    name: Option<String>,
    /// Address for the peer service, HOST:PORT (port 0 picks a free port at start).
    #[arg(long, required_unless_present = "rotate_key")]
    listen: Option<String>,
    /// Rotate an existing node's TLS key: make the next key and certificate (peers pin it
    /// with `peer add --rotate`), then with --activate make it the node's key.
    #[arg(long, conflicts_with_all = ["name", "listen"])]
    rotate_key: bool,
    /// With --rotate-key: switch to the prepared key (used from the node's next start).
    #[arg(long, requires = "rotate_key")]
    activate: bool,
    /// Print a JSON object (the certificate and its fingerprint) instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: InitArgs) -> Result<()> {
    let dir = args.dir;
    if args.rotate_key {
        return rotate(dir, args.activate, args.json);
    }
    let (name, listen) = (args.name.unwrap_or_default(), args.listen.unwrap_or_default());
    identity::init(&dir, &name, &listen)?;
    let cert_path = dir.join(config::TLS_CERT_FILE);
    let fingerprint = identity::fingerprint(&identity::read_cert(&cert_path)?);
    if args.json {
        return print_json(&json!({
            "name": name,
            "dir": dir,
            "listen": listen,
            "cert": cert_path,
            "fingerprint": fingerprint,
        }));
    }
    println!("created node '{name}' in {}", dir.display());
    println!("certificate for peers to pin: {} ({fingerprint})", cert_path.display());
    Ok(())
}

fn rotate(dir: PathBuf, activate: bool, json: bool) -> Result<()> {
    match identity::rotate_tls_key(&dir, activate)? {
        identity::Rotation::Prepared { cert, fingerprint } => {
            if json {
                return print_json(&json!({"rotation": "prepared", "cert": cert, "fingerprint": fingerprint}));
            }
            println!("prepared the next TLS key: {} ({fingerprint})", cert.display());
            println!(
                "give it to each peer to pin with `consort peer add DIR --name {} --addr ... --cert {} --rotate`, then run `consort init {} --rotate-key --activate`",
                config::NodeConfig::load(&dir)?.name,
                cert.display(),
                dir.display()
            );
        }
        identity::Rotation::Activated { fingerprint, previous } => {
            if json {
                return print_json(&json!({"rotation": "activated", "fingerprint": fingerprint, "previous": previous}));
            }
            println!("the node's TLS key is now {fingerprint} (was {previous}); restart the node to present it");
        }
    }
    Ok(())
}
