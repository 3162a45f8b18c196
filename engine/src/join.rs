//! Join types of a PSI job's outputs: `inner` (the intersection, as the protocols give it),
//! `left`, `right`, `full` and `difference`. "Left" is the requester, "right" the responder;
//! each side writes its own output file.
//!
//! # Layout of the outputs
//!
//! - `inner`: each learning side's rows of the intersection in the joint order (unchanged).
//! - `left`, `right`, `full`: a first column `_side` (`both`, `left`, `right`) says where a row
//!   comes from. The intersection rows come first (`both`, joint order), then the `left` section,
//!   then the `right` section. A side writes its own unmatched rows (file order) in its section
//!   and, in the other side's section, one placeholder row per row of the peer's (the `_side`
//!   value, all other fields empty), so row k of both outputs always corresponds. `left` shows
//!   only the requester's section, `right` only the responder's, `full` both.
//! - `difference`: each learning side's rows not in the intersection, file order, no `_side`.
//!
//! With `dedup` a key's first row stands for it (its other rows are in no section). A payload
//! join (RR22, `--peer-columns`) runs `inner`, `left` and `difference` on the requester; its
//! unmatched rows get empty peer columns.
//!
//! # What each side learns (beyond the PSI's)
//!
//! Both PSI hellos already announce each side's set size (its kept rows; on the streaming RR22
//! path its rows before `dedup`), so both sides always know the peer's set size. With
//! `--reveal both` and a side's rows shown as placeholders on the other, the side that writes
//! the placeholders receives one message: the count of the peer's unmatched rows (its distinct
//! keys minus the intersection; on the streaming path this also tells the peer how many rows
//! `dedup` dropped). `difference` and `left` with `--reveal requester-only` add no message.
//! A malicious peer can announce a wrong count (checked against its announced set size minus
//! the intersection, so the placeholders written are bounded by its grant), which misaligns only
//! the placeholders it is shown as — it can always lie about its own set anyway.
use consort_protocols::{Channel, Reveal, Role};

use crate::error::EngineError;

/// A PSI job's join type (named in job parameters and on the command line as `inner`, `left`,
/// `right`, `full`, `difference`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JoinType {
    #[default]
    Inner,
    Left,
    Right,
    Full,
    Difference,
}

/// Where a row of a tagged output comes from (its `_side` value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Both,
    Left,
    Right,
}

impl Side {
    /// The row's first field and its delimiter.
    pub fn tag(self) -> &'static [u8] {
        match self {
            Side::Both => b"both,",
            Side::Left => b"left,",
            Side::Right => b"right,",
        }
    }

    fn of(role: Role) -> Side {
        match role {
            Role::Requester => Side::Left,
            Role::Responder => Side::Right,
        }
    }
}

/// The header's first field of a tagged output, with its delimiter.
pub const SIDE_HEADER: &[u8] = b"_side,";

/// One section of an output after the intersection rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// This side's rows not in the intersection, in file order.
    Own(Side),
    /// That many placeholder rows (the peer's unmatched rows).
    Fill(Side, u64),
}

impl JoinType {
    pub const ALL: [JoinType; 5] =
        [JoinType::Inner, JoinType::Left, JoinType::Right, JoinType::Full, JoinType::Difference];

    pub fn name(self) -> &'static str {
        match self {
            JoinType::Inner => "inner",
            JoinType::Left => "left",
            JoinType::Right => "right",
            JoinType::Full => "full",
            JoinType::Difference => "difference",
        }
    }

    pub fn parse(s: &str) -> Option<JoinType> {
        JoinType::ALL.into_iter().find(|j| j.name() == s)
    }

    pub fn is_inner(&self) -> bool {
        *self == JoinType::Inner
    }

    /// Whether rows carry the `_side` column.
    pub fn tagged(self) -> bool {
        matches!(self, JoinType::Left | JoinType::Right | JoinType::Full)
    }

    /// Refuses a join the reveal mode cannot give: `right` and `full` write the responder's
    /// unmatched rows (and the requester's placeholders for them), so both sides must learn.
    pub fn check(self, reveal: Reveal) -> Result<(), String> {
        if matches!(self, JoinType::Right | JoinType::Full) && reveal != Reveal::Both {
            return Err(format!(
                "a {} join needs --reveal both (both sides write aligned outputs); use left, inner or difference with requester-only",
                self.name()
            ));
        }
        Ok(())
    }

    /// Whether `role`'s own unmatched rows appear in its output.
    fn shows_own(self, role: Role) -> bool {
        match self {
            JoinType::Inner => false,
            JoinType::Left => role == Role::Requester,
            JoinType::Right => role == Role::Responder,
            JoinType::Full | JoinType::Difference => true,
        }
    }

    /// Whether this side writes the intersection rows.
    pub fn writes_intersection(self) -> bool {
        self != JoinType::Difference
    }

    /// Whether this side needs its own unmatched rows (a pass over its rows after the
    /// intersection).
    pub fn needs_unmatched(self, role: Role) -> bool {
        self.shows_own(role)
    }

    /// Whether `role` tells the peer its unmatched count (its rows are the peer's placeholders).
    fn sends_count(self, role: Role, reveal: Reveal) -> bool {
        reveal == Reveal::Both && self.tagged() && self.shows_own(role)
    }

    /// Whether `role` writes placeholders for the peer's unmatched rows.
    fn receives_count(self, role: Role, reveal: Reveal) -> bool {
        let peer = match role {
            Role::Requester => Role::Responder,
            Role::Responder => Role::Requester,
        };
        reveal == Reveal::Both && self.tagged() && self.shows_own(peer)
    }

    /// The sections after the intersection, in order, for `role` with `own` unmatched rows
    /// (`peer_unmatched` the peer's, as [`exchange_counts`] gave it).
    pub fn sections(self, role: Role, reveal: Reveal, peer_unmatched: u64) -> Vec<Section> {
        let mut out = Vec::new();
        for side in [Side::Left, Side::Right] {
            if side == Side::of(role) {
                if self.shows_own(role) {
                    out.push(Section::Own(side));
                }
            } else if self.receives_count(role, reveal) {
                out.push(Section::Fill(side, peer_unmatched));
            }
        }
        out
    }
}

/// Tells the peer this side's unmatched count and hears the peer's, as the join needs (no
/// message for `inner`, `difference`, or with requester-only reveal). The peer's count is refused
/// above its announced set size minus the intersection. Returns the peer's count (0 if none).
pub async fn exchange_counts<C: Channel>(
    channel: &C,
    join: JoinType,
    role: Role,
    reveal: Reveal,
    own_unmatched: u64,
    peer_announced: u64,
    intersection: u64,
) -> Result<u64, EngineError> {
    let closed = |e| EngineError::Peer(format!("the join's row count could not be exchanged: {e}"));
    if join.sends_count(role, reveal) {
        channel.send(bytes::Bytes::copy_from_slice(&own_unmatched.to_le_bytes())).await.map_err(closed)?;
    }
    if !join.receives_count(role, reveal) {
        return Ok(0);
    }
    let frame = channel.recv().await.map_err(closed)?;
    let count = <[u8; 8]>::try_from(&frame[..])
        .map(u64::from_le_bytes)
        .map_err(|_| EngineError::Peer("the join's row count message is malformed".into()))?;
    let most = peer_announced.saturating_sub(intersection);
    if count > most {
        return Err(EngineError::Peer(format!(
            "the peer's unmatched row count exceeds its announced set size minus the intersection ({most})"
        )));
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use consort_protocols::memory_pair;

    use super::*;

    #[test]
    fn names_round_trip_and_reveal_rules() {
        for j in JoinType::ALL {
            assert_eq!(JoinType::parse(j.name()), Some(j));
            assert!(j.check(Reveal::Both).is_ok());
        }
        assert_eq!(JoinType::parse("outer"), None);
        for (j, ok) in [
            (JoinType::Inner, true),
            (JoinType::Left, true),
            (JoinType::Right, false),
            (JoinType::Full, false),
            (JoinType::Difference, true),
        ] {
            assert_eq!(j.check(Reveal::RequesterOnly).is_ok(), ok, "{j:?}");
        }
    }

    #[test]
    fn sections_align_row_for_row() {
        use Section::*;
        use Side as S;
        let (b, req, resp) = (Reveal::Both, Role::Requester, Role::Responder);
        assert_eq!(JoinType::Inner.sections(req, b, 0), []);
        assert_eq!(JoinType::Left.sections(req, b, 0), [Own(S::Left)]);
        assert_eq!(JoinType::Left.sections(resp, b, 4), [Fill(S::Left, 4)]);
        assert_eq!(JoinType::Left.sections(req, Reveal::RequesterOnly, 0), [Own(S::Left)]);
        assert_eq!(JoinType::Right.sections(req, b, 3), [Fill(S::Right, 3)]);
        assert_eq!(JoinType::Right.sections(resp, b, 0), [Own(S::Right)]);
        assert_eq!(JoinType::Full.sections(req, b, 3), [Own(S::Left), Fill(S::Right, 3)]);
        assert_eq!(JoinType::Full.sections(resp, b, 4), [Fill(S::Left, 4), Own(S::Right)]);
        assert_eq!(JoinType::Difference.sections(resp, b, 0), [Own(S::Right)]);
    }

    /// A malicious peer's count message: short, long, or above its announced size are refused.
    #[tokio::test]
    async fn a_bad_count_from_the_peer_is_refused() {
        for (frame, expect) in [
            (vec![1u8; 7], "malformed"),
            (vec![0u8; 9], "malformed"),
            (11u64.to_le_bytes().to_vec(), "exceeds its announced set size"),
        ] {
            let (ca, cb) = memory_pair(4);
            cb.send(bytes::Bytes::from(frame)).await.unwrap();
            // The responder of a left join hears the requester's count: announced 15, 5 shared.
            let e = exchange_counts(&ca, JoinType::Left, Role::Responder, Reveal::Both, 0, 15, 5).await.unwrap_err();
            assert!(e.to_string().contains(expect), "{e}");
        }
        let (ca, cb) = memory_pair(4);
        cb.send(bytes::Bytes::copy_from_slice(&10u64.to_le_bytes())).await.unwrap();
        let got = exchange_counts(&ca, JoinType::Left, Role::Responder, Reveal::Both, 0, 15, 5).await.unwrap();
        assert_eq!(got, 10);
        // A closed channel is an error, not a hang or a panic.
        let (ca, cb) = memory_pair(4);
        drop(cb);
        assert!(exchange_counts(&ca, JoinType::Full, Role::Requester, Reveal::Both, 1, 15, 5).await.is_err());
    }
}

#[cfg(test)]
#[path = "join_tests.rs"]
mod plaintext_tests;
