//! One name per concept: the vocabulary enums' names as the CLI, config files, logs and docs spell
//! them, and conversions between the wire enums and the protocol crate's types.
//!
//! | concept  | CLI / config / JSON                         | wire (proto)      | Rust                                  |
//! |----------|---------------------------------------------|-------------------|---------------------------------------|
//! | job kind | `psi`, `train`, `score`, `deal`, `secureboost`, `secureboost-score`, `psi-fetch`, `psi-query` | `JobKind` | [`JobKind`]            |
//! | state    | `pending` … `refused`, `awaiting-approval`  | `JobState`        | [`JobState`]                          |
//! | role     | `requester`, `responder`                    | `Role`            | [`consort_protocols::Role`]           |
//! | protocol | `ecdh`, `rr22`                              | `PsiProtocol`     | [`PsiProtocol`]                       |
//! | reveal   | `both`, `requester-only` (alias `self`)     | `Reveal`          | [`consort_protocols::Reveal`]         |
//! | sigmoid  | `taylor1`, `poly3`                          | (in LR params)    | `consort_protocols::mpc::lr::Sigmoid` |

use std::fmt;
use std::str::FromStr;

use consort_protocols::psi::PsiProtocol;

use crate::proto;
pub use crate::proto::{JobKind, JobState};

/// A word that names no known value of a vocabulary enum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} '{word}' (known: {known})")]
pub struct UnknownName {
    pub what: &'static str,
    pub word: String,
    pub known: String,
}

/// A vocabulary enum: its values and their one name each.
pub trait Vocabulary: Sized + Copy + 'static {
    /// What the enum names, for error messages ("job kind").
    const WHAT: &'static str;
    /// Every meaningful value (never the wire's "unspecified").
    const ALL: &'static [Self];
    fn name(self) -> &'static str;
    /// Other accepted spellings of a value (kept for older command lines).
    fn aliases(self) -> &'static [&'static str] {
        &[]
    }

    fn parse_name(word: &str) -> Result<Self, UnknownName> {
        Self::ALL.iter().copied().find(|v| v.name() == word || v.aliases().contains(&word)).ok_or_else(|| UnknownName {
            what: Self::WHAT,
            word: word.chars().take(32).collect(),
            known: Self::ALL.iter().map(|v| v.name()).collect::<Vec<_>>().join(", "),
        })
    }
}

impl Vocabulary for JobKind {
    const WHAT: &'static str = "job kind";
    const ALL: &'static [Self] = &[
        JobKind::Psi,
        JobKind::Train,
        JobKind::Score,
        JobKind::Deal,
        JobKind::Secureboost,
        JobKind::SecureboostScore,
        JobKind::Bin,
        JobKind::PsiFetch,
        JobKind::PsiQuery,
    ];
    fn name(self) -> &'static str {
        match self {
            JobKind::Unspecified => "unspecified",
            JobKind::Psi => "psi",
            JobKind::Train => "train",
            JobKind::Score => "score",
            JobKind::Deal => "deal",
            JobKind::Secureboost => "secureboost",
            JobKind::SecureboostScore => "secureboost-score",
            JobKind::Bin => "bin",
            JobKind::PsiFetch => "psi-fetch",
            JobKind::PsiQuery => "psi-query",
        }
    }
}

impl Vocabulary for JobState {
    const WHAT: &'static str = "job state";
    const ALL: &'static [Self] = &[
        JobState::Pending,
        JobState::Running,
        JobState::Done,
        JobState::Failed,
        JobState::Interrupted,
        JobState::Refused,
        JobState::AwaitingApproval,
    ];
    fn name(self) -> &'static str {
        match self {
            JobState::Unspecified => "unspecified",
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Interrupted => "interrupted",
            JobState::Refused => "refused",
            JobState::AwaitingApproval => "awaiting-approval",
        }
    }
}

impl JobState {
    /// A state the job never leaves.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed | JobState::Interrupted | JobState::Refused)
    }
}

impl Vocabulary for consort_protocols::Role {
    const WHAT: &'static str = "role";
    const ALL: &'static [Self] = &[consort_protocols::Role::Requester, consort_protocols::Role::Responder];
    fn name(self) -> &'static str {
        match self {
            consort_protocols::Role::Requester => "requester",
            consort_protocols::Role::Responder => "responder",
        }
    }
}

impl Vocabulary for consort_protocols::Reveal {
    const WHAT: &'static str = "reveal mode";
    const ALL: &'static [Self] = &[consort_protocols::Reveal::Both, consort_protocols::Reveal::RequesterOnly];
    fn name(self) -> &'static str {
        match self {
            consort_protocols::Reveal::Both => "both",
            consort_protocols::Reveal::RequesterOnly => "requester-only",
        }
    }
    fn aliases(self) -> &'static [&'static str] {
        match self {
            consort_protocols::Reveal::RequesterOnly => &["self"],
            consort_protocols::Reveal::Both => &[],
        }
    }
}

impl Vocabulary for PsiProtocol {
    const WHAT: &'static str = "PSI protocol";
    const ALL: &'static [Self] = &[PsiProtocol::Ecdh, PsiProtocol::Rr22];
    fn name(self) -> &'static str {
        PsiProtocol::name(self)
    }
}

impl From<PsiProtocol> for proto::PsiProtocol {
    fn from(p: PsiProtocol) -> Self {
        match p {
            PsiProtocol::Ecdh => proto::PsiProtocol::Ecdh,
            PsiProtocol::Rr22 => proto::PsiProtocol::Rr22,
        }
    }
}

impl TryFrom<proto::PsiProtocol> for PsiProtocol {
    type Error = BadWireValue;
    fn try_from(p: proto::PsiProtocol) -> Result<Self, BadWireValue> {
        match p {
            proto::PsiProtocol::Ecdh => Ok(PsiProtocol::Ecdh),
            proto::PsiProtocol::Rr22 => Ok(PsiProtocol::Rr22),
            proto::PsiProtocol::Unspecified => Err(BadWireValue { what: "PSI protocol", value: 0 }),
        }
    }
}

/// A wire enum field that may be left unspecified (the job kind then picks its default); values
/// this build does not know are refused.
pub fn optional_wire<W, T>(what: &'static str, value: i32) -> Result<Option<T>, BadWireValue>
where
    W: TryFrom<i32>,
    T: TryFrom<W, Error = BadWireValue>,
{
    if value == 0 {
        return Ok(None);
    }
    let w = W::try_from(value).map_err(|_| BadWireValue { what, value })?;
    T::try_from(w).map(Some)
}

impl Vocabulary for consort_protocols::mpc::lr::Sigmoid {
    const WHAT: &'static str = "sigmoid approximation";
    const ALL: &'static [Self] =
        &[consort_protocols::mpc::lr::Sigmoid::Taylor1, consort_protocols::mpc::lr::Sigmoid::Poly3];
    fn name(self) -> &'static str {
        consort_protocols::mpc::lr::Sigmoid::name(self)
    }
}

macro_rules! display_fromstr {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(Vocabulary::name(*self))
            }
        }
        impl FromStr for $t {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, UnknownName> {
                <$t as Vocabulary>::parse_name(s)
            }
        }
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(Vocabulary::name(*self))
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
                <$t as Vocabulary>::parse_name(&s).map_err(serde::de::Error::custom)
            }
        }
        #[cfg(feature = "clap")]
        impl clap::ValueEnum for $t {
            fn value_variants<'a>() -> &'a [Self] {
                <$t as Vocabulary>::ALL
            }
            fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
                Some(clap::builder::PossibleValue::new(Vocabulary::name(*self)).aliases(self.aliases().iter().copied()))
            }
        }
    )*};
}
display_fromstr!(JobKind, JobState);

/// A wire enum whose value this node does not know (a newer peer, or a malformed request).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown or unspecified {what} (wire value {value})")]
pub struct BadWireValue {
    pub what: &'static str,
    pub value: i32,
}

/// Reads a wire enum field, refusing "unspecified" and values this build does not know.
pub fn wire<T: TryFrom<i32>>(what: &'static str, value: i32) -> Result<T, BadWireValue> {
    if value == 0 {
        return Err(BadWireValue { what, value });
    }
    T::try_from(value).map_err(|_| BadWireValue { what, value })
}

impl From<consort_protocols::Role> for proto::Role {
    fn from(r: consort_protocols::Role) -> Self {
        match r {
            consort_protocols::Role::Requester => proto::Role::Requester,
            consort_protocols::Role::Responder => proto::Role::Responder,
        }
    }
}

impl TryFrom<proto::Role> for consort_protocols::Role {
    type Error = BadWireValue;
    fn try_from(r: proto::Role) -> Result<Self, BadWireValue> {
        match r {
            proto::Role::Requester => Ok(consort_protocols::Role::Requester),
            proto::Role::Responder => Ok(consort_protocols::Role::Responder),
            proto::Role::Unspecified => Err(BadWireValue { what: "role", value: 0 }),
        }
    }
}

impl From<consort_protocols::Reveal> for proto::Reveal {
    fn from(r: consort_protocols::Reveal) -> Self {
        match r {
            consort_protocols::Reveal::Both => proto::Reveal::Both,
            consort_protocols::Reveal::RequesterOnly => proto::Reveal::RequesterOnly,
        }
    }
}

impl TryFrom<proto::Reveal> for consort_protocols::Reveal {
    type Error = BadWireValue;
    fn try_from(r: proto::Reveal) -> Result<Self, BadWireValue> {
        match r {
            proto::Reveal::Both => Ok(consort_protocols::Reveal::Both),
            proto::Reveal::RequesterOnly => Ok(consort_protocols::Reveal::RequesterOnly),
            proto::Reveal::Unspecified => Err(BadWireValue { what: "reveal mode", value: 0 }),
        }
    }
}

impl proto::SubmitRequest {
    /// A PSI job with `peer`: this node's `dataset` against the peer's `peer_dataset`; `out` is
    /// this node's output (an absolute path, or an empty path for the node's default under
    /// `DIR/outputs`).
    pub fn psi(
        peer: &str,
        dataset: &str,
        peer_dataset: &str,
        protocol: PsiProtocol,
        reveal: consort_protocols::Reveal,
        out: &std::path::Path,
    ) -> Self {
        proto::SubmitRequest {
            kind: JobKind::Psi as i32,
            peer: peer.into(),
            dataset: dataset.into(),
            peer_dataset: peer_dataset.into(),
            protocol: proto::PsiProtocol::from(protocol) as i32,
            reveal: proto::Reveal::from(reveal) as i32,
            out: out.display().to_string(),
            params: String::new(),
        }
    }
}

impl proto::JobStatus {
    /// The typed state (a record from a newer node with an unknown state reads as unspecified).
    pub fn job_state(&self) -> JobState {
        JobState::try_from(self.state).unwrap_or(JobState::Unspecified)
    }

    pub fn job_kind(&self) -> JobKind {
        JobKind::try_from(self.kind).unwrap_or(JobKind::Unspecified)
    }

    /// The role's name ("requester", "responder").
    pub fn role_name(&self) -> &'static str {
        match proto::Role::try_from(self.role) {
            Ok(proto::Role::Requester) => "requester",
            Ok(proto::Role::Responder) => "responder",
            _ => "?",
        }
    }

    /// The PSI protocol's name ("ecdh", "rr22"; "" if the job has none).
    pub fn protocol_name(&self) -> &'static str {
        optional_wire::<proto::PsiProtocol, PsiProtocol>("", self.protocol).ok().flatten().map_or("", Vocabulary::name)
    }

    /// The reveal mode's name ("" if the job has none).
    pub fn reveal_name(&self) -> &'static str {
        optional_wire::<proto::Reveal, consort_protocols::Reveal>("", self.reveal)
            .ok()
            .flatten()
            .map_or("", Vocabulary::name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use consort_protocols::Reveal;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for k in JobKind::ALL {
            assert_eq!(k.name().parse::<JobKind>().unwrap(), *k);
        }
        for s in JobState::ALL {
            assert_eq!(s.name().parse::<JobState>().unwrap(), *s);
        }
        assert_eq!(Reveal::parse_name("self").unwrap(), Reveal::RequesterOnly);
        assert_eq!(Reveal::parse_name("requester-only").unwrap(), Reveal::RequesterOnly);
        let e = "bogus".parse::<JobKind>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown job kind 'bogus' (known: psi, train, score, deal, secureboost, secureboost-score, bin, psi-fetch, psi-query)"
        );
        assert!("unspecified".parse::<JobKind>().is_err());
    }

    #[test]
    fn optional_wire_values_default_when_unspecified_and_refuse_unknown() {
        assert_eq!(optional_wire::<proto::PsiProtocol, PsiProtocol>("p", 0), Ok(None));
        assert_eq!(optional_wire::<proto::PsiProtocol, PsiProtocol>("p", 2), Ok(Some(PsiProtocol::Rr22)));
        assert!(optional_wire::<proto::PsiProtocol, PsiProtocol>("p", 7).is_err());
        assert_eq!(optional_wire::<proto::Reveal, Reveal>("r", 2), Ok(Some(Reveal::RequesterOnly)));
    }

    #[test]
    fn wire_values_refuse_unspecified_and_unknown() {
        assert_eq!(wire::<proto::JobKind>("job kind", 1).unwrap(), JobKind::Psi);
        assert!(wire::<proto::JobKind>("job kind", 0).is_err());
        assert!(wire::<proto::JobKind>("job kind", 99).is_err());
    }
}
