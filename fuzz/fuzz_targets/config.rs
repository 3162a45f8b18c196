//! `config.toml` as a node loads it: TOML into `NodeConfig` and its validation (names, peers,
//! datasets, grants, limits), through `NodeConfig::load` on a node directory.
#![no_main]

use consort_node::config::{CONFIG_FILE, NodeConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = consort_fuzz::scratch().join("config-node");
    std::fs::create_dir_all(&dir).expect("scratch");
    std::fs::write(dir.join(CONFIG_FILE), data).expect("scratch file");
    let _ = NodeConfig::load(&dir);
});
