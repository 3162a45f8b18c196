//! What the fuzz targets share: a peer that replays frames from the fuzzer's input (so every
//! protocol decoder is reached through the protocol's own public `run`, in the order a real peer
//! would drive it), a way to record a real peer's frames as seeds, and scratch directories.
//!
//! Script format (protocol targets): one options byte, then frames, each a little-endian u32
//! length and that many bytes (a length past the end takes the rest). Bit 31 of a length sends the
//! frame to the second peer (LR's dealer mode: party A's and party B's channels).

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use consort_protocols::{Channel, ChannelError};

/// The frames of a script, per peer.
pub struct Script {
    pub options: u8,
    pub first: Vec<Bytes>,
    pub second: Vec<Bytes>,
}

impl Script {
    pub fn parse(data: &[u8]) -> Option<Script> {
        let (&options, mut rest) = data.split_first()?;
        let (mut first, mut second) = (Vec::new(), Vec::new());
        while rest.len() >= 4 {
            let word = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
            rest = &rest[4..];
            let len = ((word & 0x7fff_ffff) as usize).min(rest.len());
            let frame = Bytes::copy_from_slice(&rest[..len]);
            rest = &rest[len..];
            if word >> 31 == 1 { second.push(frame) } else { first.push(frame) }
        }
        Some(Script { options, first, second })
    }
}

/// Writes a script (for seeds): `first` and `second` frames in the order given.
pub fn encode_script(options: u8, frames: &[(bool, Bytes)]) -> Vec<u8> {
    let mut out = vec![options];
    for (second, frame) in frames {
        let word = frame.len() as u32 | if *second { 1 << 31 } else { 0 };
        out.extend_from_slice(&word.to_le_bytes());
        out.extend_from_slice(frame);
    }
    out
}

/// A peer that sends the script's frames in order, whatever it is sent (sent frames are dropped),
/// and has closed the channel once the script is exhausted.
pub struct ScriptedPeer {
    frames: Mutex<VecDeque<Bytes>>,
}

impl ScriptedPeer {
    pub fn new(frames: Vec<Bytes>) -> ScriptedPeer {
        ScriptedPeer { frames: Mutex::new(frames.into()) }
    }
}

impl Channel for ScriptedPeer {
    async fn send(&self, _frame: Bytes) -> Result<(), ChannelError> {
        Ok(())
    }
    async fn recv(&self) -> Result<Bytes, ChannelError> {
        self.frames.lock().expect("not poisoned").pop_front().ok_or(ChannelError::Closed)
    }
}

/// A channel that keeps a copy of every frame it receives (seed making: a real peer's frames).
pub struct Recording<C> {
    inner: C,
    pub received: Mutex<Vec<Bytes>>,
}

impl<C> Recording<C> {
    pub fn new(inner: C) -> Recording<C> {
        Recording { inner, received: Mutex::new(Vec::new()) }
    }
    pub fn frames(&self) -> Vec<Bytes> {
        self.received.lock().expect("not poisoned").clone()
    }
}

impl<C: Channel> Channel for Recording<C> {
    async fn send(&self, frame: Bytes) -> Result<(), ChannelError> {
        self.inner.send(frame).await
    }
    async fn recv(&self) -> Result<Bytes, ChannelError> {
        let frame = self.inner.recv().await?;
        self.received.lock().expect("not poisoned").push(frame.clone());
        Ok(frame)
    }
}

/// The announced set size of a PSI hello (big-endian u64 at bytes 21..29 in both protocols'
/// hellos), if the script's first frame is long enough to have one.
pub fn announced_size(script: &Script) -> Option<u64> {
    let hello = script.first.first()?;
    Some(u64::from_be_bytes(hello.get(21..29)?.try_into().ok()?))
}

/// A scratch directory for the life of the fuzzing process.
pub fn scratch() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temporary directory")).path()
}

/// Node `partner` of a pinned pair (as `consort demo` makes it), with a dataset `accounts` granted
/// to `bank` for psi, train and score: what a request is planned against on the responder.
pub fn node() -> &'static std::sync::Arc<consort_node::state::NodeState> {
    use consort_node::{pair, setup};
    static NODE: std::sync::OnceLock<std::sync::Arc<consort_node::state::NodeState>> = std::sync::OnceLock::new();
    NODE.get_or_init(|| {
        let root = scratch().join("nodes");
        std::fs::create_dir_all(&root).expect("scratch");
        let addr: std::net::SocketAddr = "127.0.0.1:9".parse().expect("an address");
        let (a, b) = pair::init_pair(&root).expect("init");
        pair::pin_pair(&a, addr, &b, addr).expect("pin");
        std::fs::write(root.join("b.csv"), "id,w\n3,x\n4,y\n").expect("dataset");
        let spec = consort_engine::DatasetSpec::new("accounts", root.join("b.csv"), &["id"]);
        let grant = setup::parse_grant(&format!("{}:psi,train,score", pair::A)).expect("grant");
        setup::dataset_add(&b, spec, vec![grant], true, true).expect("dataset add");
        runtime().block_on(consort_node::state::NodeState::open(&b, addr)).expect("open")
    })
}

/// One runtime for the process (opening a node's state is async).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt"))
}

/// Plans `params` as job kind `kind` the way the responder does once a request is admitted
/// (and the requester for its operator's parameters, where that reads no file the input names).
pub fn plan(kind: consort_api::JobKind, role: consort_protocols::Role, job_id: &str, params: &str) {
    use consort_node::job::{Ask, kind as find};
    let Some(spec) = find(kind) else { return };
    let ask = Ask {
        kind,
        role,
        job_id: job_id.into(),
        peer: consort_node::pair::A.into(),
        dataset: if spec.uses_dataset() { "accounts".into() } else { String::new() },
        peer_dataset: String::new(),
        protocol: None,
        reveal: None,
        out: Some(scratch().join("out")),
        params: params.into(),
    };
    let _ = spec.plan(node(), &ask);
}

/// The signing key of the audit logs of the seeds and targets (fixed, so seeded logs verify).
pub fn audit_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[7; 32])
}

/// The LR fixture of the `lr` target and of its seeds (one definition, so the seeds are frames of
/// the very runs the target replays against).
pub mod lr {
    use consort_protocols::mpc::Party;
    use consort_protocols::mpc::lr::{LrConfig, LrInput};
    use consort_protocols::mpc::ot_mul::Matrix;

    /// Aligned rows of both parties.
    pub const ROWS: usize = 8;

    pub fn config() -> LrConfig {
        LrConfig { epochs: 2, batch_size: 4, ..LrConfig::default() }
    }

    /// Party A has 2 feature columns and the labels, B 1 column; rows 0..6 train, 6..8 holdout.
    pub fn input(party: Party, config: &LrConfig) -> LrInput {
        let cols = if party == Party::A { 2 } else { 1 };
        let values = (0..ROWS * cols).map(|i| config.encode_feature(i as f64 / 7.0 - 0.5)).collect();
        LrInput {
            party,
            features: Matrix::new(values, ROWS, cols, config.feature_bits).into(),
            labels: (party == Party::A).then(|| (0..ROWS).map(|i| (i % 2) as u8).collect()),
            train: (0..6).collect(),
            holdout: vec![6, 7],
            onehot: None,
        }
    }
}

/// The fixed list, key and query of the unbalanced PSI target and its seeds.
pub mod unbalanced {
    use std::sync::{Arc, OnceLock};

    use consort_protocols::psi::Payloads;
    use consort_protocols::psi::unbalanced::{FetchLimits, OprfKey, OprfSet, evaluate_set};

    pub const LIST: [&[u8]; 5] = [b"alice", b"bob", b"carol", b"dave", b"erin"];
    pub const QUERY: [&[u8]; 3] = [b"bob", b"zed", b"erin"];
    /// Small limits: an announcement above them must be refused before anything is sized.
    pub const LIMITS: FetchLimits = FetchLimits { max_items: 1 << 16, max_bytes: 1 << 22, max_label_bytes: 1 << 10 };

    type Fixed = (Arc<OprfSet>, Arc<OprfKey>);

    /// The owner's set (with labels or not) under a fixed key, and the key.
    pub fn set_and_key(labels: bool) -> &'static Fixed {
        static PLAIN: OnceLock<Fixed> = OnceLock::new();
        static LABELED: OnceLock<Fixed> = OnceLock::new();
        (if labels { &LABELED } else { &PLAIN }).get_or_init(|| {
            let key = OprfKey::from_bytes(&[7; 32]).expect("a valid key");
            let mut payloads = Payloads::new();
            for (i, _) in LIST.iter().enumerate() {
                payloads.push(format!("label-{i}").as_bytes());
            }
            let set = evaluate_set(&key, &LIST[..], labels.then_some(&payloads), 1 << 20).expect("a valid set");
            (Arc::new(set), Arc::new(key))
        })
    }
}

/// The SecureBoost fixture of the `sb` target and of its seeds: small binned inputs, a config per
/// options byte, and a fixed model for the prediction exchange.
pub mod sb {
    use std::sync::{Arc, OnceLock};

    use consort_protocols::he::{KeyPair, KeySize};
    use consort_protocols::mpc::Party;
    use consort_protocols::mpc::secureboost::{BinnedFeatures, Histograms, Node, SbConfig, SbInput, Split, Tree};
    use rand::SeedableRng;

    /// Aligned rows of both parties: rows 0..9 train, 9..12 holdout.
    pub const ROWS: usize = 12;
    /// Options: party B (else A).
    pub const PARTY_B: u8 = 1;
    /// Options: the `he` histograms (else `ot`).
    pub const HE: u8 = 2;
    /// Options: the prediction exchange (else training).
    pub const PREDICT: u8 = 4;
    /// Options: with `ot`, keep the one-hot trees expanded (the other kernel path).
    pub const KEEP: u8 = 8;
    /// Options: with `ot`, hide A's partitions from B (the privacy-enhanced mode).
    pub const HIDE: u8 = 16;

    pub fn party(options: u8) -> Party {
        if options & PARTY_B != 0 { Party::B } else { Party::A }
    }

    /// Two trees of depth 2 over at most 4 bins, early stopping on; kept leaves with `KEEP`,
    /// hidden partitions with `HIDE` (`ot` only).
    pub fn config(options: u8) -> SbConfig {
        SbConfig {
            trees: 2,
            max_depth: 2,
            max_bins: 4,
            tolerance: 1e-9,
            histograms: if options & HE != 0 { Histograms::He } else { Histograms::Ot },
            kept_leaves_bytes: if options & KEEP != 0 { 1 << 20 } else { 0 },
            hide_partitions: options & (HE | HIDE) == HIDE,
            ..SbConfig::default()
        }
    }

    /// A's 2048-bit key, made once from a fixed seed (the fuzzer needs runs to repeat).
    pub fn key() -> Arc<KeyPair> {
        static KEY: OnceLock<Arc<KeyPair>> = OnceLock::new();
        KEY.get_or_init(|| {
            Arc::new(KeyPair::generate_sized(&mut rand::rngs::StdRng::seed_from_u64(7), KeySize::Bits2048))
        })
        .clone()
    }

    /// A party's binned features: A two columns of 4 bins and the labels, B two columns of 3 and 4.
    pub fn features(party: Party) -> BinnedFeatures {
        let bins: &[u32] = if party == Party::A { &[4, 4] } else { &[3, 4] };
        let columns = bins
            .iter()
            .enumerate()
            .map(|(f, &b)| (0..ROWS).map(|r| ((r * (f + 2) + f) % b as usize) as u8).collect())
            .collect();
        BinnedFeatures { rows: ROWS, columns, bins: bins.to_vec() }
    }

    pub fn input(options: u8) -> SbInput {
        let party = party(options);
        let a = party == Party::A;
        SbInput {
            party,
            features: features(party),
            labels: a.then(|| (0..ROWS).map(|r| u8::from(r % 3 == 0)).collect()),
            train: (0..9).collect(),
            holdout: (9..ROWS as u32).collect(),
            key: (a && options & HE != 0).then(key),
        }
    }

    /// One tree split on B's feature 0 at bin 1 (A's view: a peer split and two leaves; B's: its
    /// split), and one split on A's own feature 1.
    pub fn model(party: Party) -> Vec<Tree> {
        let node = |id, split| Node { id, split, gain: 0.0 };
        let leaf = |id, weight| node(id, Split::Leaf { weight });
        match party {
            Party::A => vec![
                Tree { nodes: vec![node(0, Split::Peer { feature: 0, bin: 1 }), leaf(1, 0.5), leaf(2, -0.5)] },
                Tree { nodes: vec![node(0, Split::Own { feature: 1, bin: 2 }), leaf(1, 0.25), leaf(2, -0.25)] },
            ],
            Party::B => vec![Tree { nodes: vec![node(0, Split::Own { feature: 0, bin: 1 })] }, Tree::default()],
        }
    }
}
