//! `consort peer add|remove|list`: the peers this node pins.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use serde_json::json;

use super::admin::reloaded_note;
use super::print_json;
use crate::config::NodeConfig;
use crate::setup;

#[derive(Subcommand)]
pub enum PeerCommand {
    /// Pin a peer's certificate (its DIR/node.crt, obtained out of band) under a name.
    Add {
        dir: PathBuf,
        #[arg(long)]
        name: String,
        /// The peer's peer-service address, HOST:PORT.
        #[arg(long)]
        addr: String,
        /// The peer's certificate (PEM).
        #[arg(long)]
        cert: PathBuf,
        /// Replace an existing pin of the same name (open connections with the old certificate
        /// are closed).
        #[arg(long, conflicts_with = "rotate")]
        replace: bool,
        /// Pin the peer's new certificate and keep accepting its current one for
        /// --window-days (the peer rotates its key with `consort init --rotate-key`).
        #[arg(long)]
        rotate: bool,
        /// Days the previous certificate stays accepted after --rotate.
        #[arg(long, default_value_t = 7, requires = "rotate")]
        window_days: u64,
        /// Print a JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Unpin a peer: its certificates, its grants and its place in dealer lists go, and a
    /// running node closes its connections.
    Remove {
        dir: PathBuf,
        #[arg(long)]
        name: String,
        /// Print a JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List pinned peers with their certificate fingerprints.
    List {
        dir: PathBuf,
        /// Print a JSON array (one object per peer, as config.toml holds it) instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: PeerCommand) -> Result<()> {
    match cmd {
        PeerCommand::Add { dir, name, addr, cert, replace, rotate, window_days, json } => {
            let change = match (replace, rotate) {
                (_, true) => setup::PinChange::Rotate(window_days.saturating_mul(24 * 60 * 60)),
                (true, false) => setup::PinChange::Replace,
                (false, false) => setup::PinChange::New,
            };
            let fingerprint = setup::peer_pin(&dir, &name, &addr, &cert, change)?;
            let reloaded = setup::notify_node(&dir).await?;
            if json {
                return print_json(&json!({
                    "name": name,
                    "addr": addr,
                    "fingerprint": fingerprint,
                    "change": if rotate { "rotate" } else if replace { "replace" } else { "new" },
                    "previous_accepted_days": rotate.then_some(window_days),
                    "reloaded": reloaded,
                }));
            }
            let also =
                if rotate { format!(", previous certificate accepted for {window_days} days") } else { String::new() };
            println!("pinned peer '{name}' at {addr}: {fingerprint}{also}{}", reloaded_note(reloaded));
        }
        PeerCommand::Remove { dir, name, json } => {
            let removed = setup::peer_remove(&dir, &name)?;
            let reloaded = setup::notify_node(&dir).await?;
            if json {
                return print_json(&json!({"name": name, "removed": removed, "reloaded": reloaded}));
            }
            println!("removed peer '{name}': {}{}", removed.join(", "), reloaded_note(reloaded));
        }
        PeerCommand::List { dir, json } => {
            let peers = NodeConfig::load(&dir)?.peers;
            if json {
                return print_json(&peers);
            }
            for p in peers {
                println!("{}\t{}\t{}", p.name, p.addr, p.fingerprint);
            }
        }
    }
    Ok(())
}
