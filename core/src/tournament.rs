//! The reference application: a small Swiss-style tournament.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::protocol::{FORBIDDEN, quote};
use crate::wire_enum;
use crate::{App, Member, Rejection};

/// Longest player name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Most players one tournament holds (dropped players included).
pub const MAX_PLAYERS: usize = 4096;
/// Most match results one tournament holds.
pub const MAX_MATCHES: usize = 65_536;
/// The role that may do every op.
pub const ORGANIZER: &str = "organizer";
/// The role that may register and drop only the player named as it is, and
/// record only results of its own matches. Every other role (`spectator`,
/// say) may fetch and follows the forwards, but may do no op.
pub const PLAYER: &str = "player";

/// Whether `by` may do `op` at all (the op may still be refused on its
/// merits).
fn may(by: &Member, op: &TournamentOp) -> Result<(), Rejection> {
    let own = |name: &str| by.id == name;
    match (by.role(), op) {
        (None | Some(ORGANIZER), _) => Ok(()),
        (
            Some(PLAYER),
            TournamentOp::RegisterPlayer { name } | TournamentOp::DropPlayer { name },
        ) if own(name) => Ok(()),
        (Some(PLAYER), TournamentOp::RecordResult { a, b, .. }) if own(a) || own(b) => Ok(()),
        (Some(PLAYER), TournamentOp::RecordResult { .. }) => Err(Rejection::new(
            FORBIDDEN,
            format!(
                "player {} may record only results of matches it plays in",
                quote(&by.id)
            ),
        )),
        (Some(PLAYER), _) => Err(Rejection::new(
            FORBIDDEN,
            format!("player {} may register and drop only itself", quote(&by.id)),
        )),
        (Some(role), _) => Err(Rejection::new(
            FORBIDDEN,
            format!(
                "role {} may follow the tournament but not change it",
                quote(role)
            ),
        )),
    }
}

wire_enum! {
    /// An operation on a [`Tournament`].
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum TournamentOp {
        /// Register a new player.
        RegisterPlayer { name: String },
        /// Drop a player: they keep their record but play no more matches.
        DropPlayer { name: String },
        /// Record a match between `a` and `b`; `winner` is one of them, or
        /// absent for a draw.
        RecordResult { a: String, b: String, winner: Option<String> },
    }
}

/// One player's record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Player {
    /// Matches won.
    pub wins: u32,
    /// Matches lost.
    pub losses: u32,
    /// Matches drawn.
    pub draws: u32,
    /// Whether the player has dropped out.
    pub dropped: bool,
}

impl Player {
    /// Match points: 3 per win, 1 per draw.
    pub fn points(&self) -> u32 {
        self.wins.saturating_mul(3).saturating_add(self.draws)
    }
}

/// One recorded match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchRecord {
    /// First player.
    pub a: String,
    /// Second player.
    pub b: String,
    /// The winner, or `None` for a draw.
    pub winner: Option<String>,
}

/// A tournament: its players and the results recorded so far.
///
/// Every op is validated completely before anything changes, so a rejected op
/// leaves the tournament untouched (the [`App`] contract).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tournament {
    /// Players by name.
    pub players: BTreeMap<String, Player>,
    /// Results in the order they were recorded.
    pub matches: Vec<MatchRecord>,
}

/// One line of the standings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Standing {
    /// Player name.
    pub name: String,
    /// Match points.
    pub points: u32,
    /// The player's record.
    pub record: Player,
}

impl Tournament {
    /// Players ordered by points, then wins, then name.
    pub fn standings(&self) -> Vec<Standing> {
        let mut rows: Vec<Standing> = self
            .players
            .iter()
            .map(|(name, p)| Standing {
                name: name.clone(),
                points: p.points(),
                record: p.clone(),
            })
            .collect();
        rows.sort_by(|x, y| {
            (y.points, y.record.wins)
                .cmp(&(x.points, x.record.wins))
                .then_with(|| x.name.cmp(&y.name))
        });
        rows
    }

    fn active(&self, name: &str) -> Result<(), Rejection> {
        match self.players.get(name) {
            None => Err(Rejection::new(
                "unknown_player",
                format!("no player named {} is registered", quote(name)),
            )),
            Some(p) if p.dropped => Err(Rejection::new(
                "player_dropped",
                format!("{} has dropped out of the tournament", quote(name)),
            )),
            Some(_) => Ok(()),
        }
    }

    fn record(&mut self, a: &str, b: &str, winner: Option<&str>) {
        for (name, outcome) in [(a, winner.map(|w| w == a)), (b, winner.map(|w| w == b))] {
            if let Some(p) = self.players.get_mut(name) {
                match outcome {
                    Some(true) => p.wins = p.wins.saturating_add(1),
                    Some(false) => p.losses = p.losses.saturating_add(1),
                    None => p.draws = p.draws.saturating_add(1),
                }
            }
        }
        self.matches.push(MatchRecord {
            a: a.to_owned(),
            b: b.to_owned(),
            winner: winner.map(str::to_owned),
        });
    }
}

fn check_name(name: &str) -> Result<(), Rejection> {
    if name.trim().is_empty() {
        return Err(Rejection::new(
            "invalid_name",
            "a player name must not be blank",
        ));
    }
    if name.trim() != name {
        return Err(Rejection::new(
            "invalid_name",
            "a player name must not start or end with spaces",
        ));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(Rejection::new(
            "invalid_name",
            format!("a player name has at most {MAX_NAME_CHARS} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(Rejection::new(
            "invalid_name",
            "a player name must not contain control characters",
        ));
    }
    Ok(())
}

/// What a tournament member shows the others: the player it is looking at
/// (their record, their next match), or none for the standings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TournamentPresence {
    /// A player's name, or `None`.
    pub looking_at: Option<String>,
}

impl App for Tournament {
    const NAME: &'static str = "tournament";
    type Op = TournamentOp;
    type Presence = TournamentPresence;

    fn apply(&mut self, by: &Member, op: &TournamentOp) -> Result<(), Rejection> {
        may(by, op)?;
        match op {
            TournamentOp::RegisterPlayer { name } => {
                check_name(name)?;
                if self.players.contains_key(name) {
                    return Err(Rejection::new(
                        "duplicate_player",
                        format!("a player named {} is already registered", quote(name)),
                    ));
                }
                if self.players.len() >= MAX_PLAYERS {
                    return Err(Rejection::new(
                        "limit_reached",
                        format!("a tournament holds at most {MAX_PLAYERS} players"),
                    ));
                }
                self.players.insert(name.clone(), Player::default());
            }
            TournamentOp::DropPlayer { name } => {
                self.active(name)?;
                if let Some(p) = self.players.get_mut(name) {
                    p.dropped = true;
                }
            }
            TournamentOp::RecordResult { a, b, winner } => {
                if a == b {
                    return Err(Rejection::new(
                        "same_player",
                        format!("{} cannot play against themselves", quote(a)),
                    ));
                }
                self.active(a)?;
                self.active(b)?;
                if let Some(w) = winner
                    && w != a
                    && w != b
                {
                    return Err(Rejection::new(
                        "invalid_winner",
                        format!("the winner {} did not play in this match", quote(w)),
                    ));
                }
                if self.matches.len() >= MAX_MATCHES {
                    return Err(Rejection::new(
                        "limit_reached",
                        format!("a tournament holds at most {MAX_MATCHES} results"),
                    ));
                }
                self.record(a, b, winner.as_deref());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConnId;

    #[test]
    fn roles_decide_who_may_do_which_op() {
        let organizer = Member::new("Org", ORGANIZER);
        let ada = Member::new("Ada", PLAYER);
        let viewer = Member::new("Vic", "spectator");
        let register = |name: &str| TournamentOp::RegisterPlayer { name: name.into() };
        let drop = |name: &str| TournamentOp::DropPlayer { name: name.into() };
        let result = |a: &str, b: &str| TournamentOp::RecordResult {
            a: a.into(),
            b: b.into(),
            winner: Some(a.into()),
        };
        let mut t = Tournament::default();
        let code = |r: Result<(), Rejection>| r.map_err(|e| e.code);

        // A player registers itself only; an organizer anyone.
        assert_eq!(code(t.apply(&ada, &register("Bob"))), Err(FORBIDDEN));
        assert_eq!(code(t.apply(&ada, &register("Ada"))), Ok(()));
        for name in ["Bob", "Cy"] {
            assert_eq!(code(t.apply(&organizer, &register(name))), Ok(()));
        }
        // Results of its own matches only.
        assert_eq!(code(t.apply(&ada, &result("Bob", "Cy"))), Err(FORBIDDEN));
        assert_eq!(code(t.apply(&ada, &result("Bob", "Ada"))), Ok(()));
        // Drops itself only.
        assert_eq!(code(t.apply(&ada, &drop("Bob"))), Err(FORBIDDEN));
        // A spectator (any other role) changes nothing; an open server's
        // member may do everything.
        for op in [register("Dee"), drop("Cy"), result("Bob", "Cy")] {
            assert_eq!(code(t.apply(&viewer, &op)), Err(FORBIDDEN));
        }
        let before = t.clone();
        assert_eq!(t, before, "refusals change nothing");
        assert_eq!(code(t.apply(&ada, &drop("Ada"))), Ok(()));
        assert_eq!(
            code(t.apply(&Member::open(ConnId(3)), &drop("Bob"))),
            Ok(())
        );
        assert!(t.players["Ada"].dropped && t.players["Bob"].dropped);
        assert_eq!(t.matches.len(), 1);
    }

    fn reg(t: &mut Tournament, name: &str) -> Result<(), Rejection> {
        t.apply(
            &Member::open(ConnId(1)),
            &TournamentOp::RegisterPlayer { name: name.into() },
        )
    }

    fn result(t: &mut Tournament, a: &str, b: &str, w: Option<&str>) -> Result<(), Rejection> {
        let op = TournamentOp::RecordResult {
            a: a.into(),
            b: b.into(),
            winner: w.map(Into::into),
        };
        t.apply(&Member::open(ConnId(1)), &op)
    }

    #[test]
    fn standings_follow_results() {
        let mut t = Tournament::default();
        for n in ["Ada", "Bob", "Cy"] {
            reg(&mut t, n).unwrap();
        }
        result(&mut t, "Ada", "Bob", Some("Bob")).unwrap();
        result(&mut t, "Ada", "Cy", None).unwrap();
        let names: Vec<_> = t
            .standings()
            .into_iter()
            .map(|s| (s.name, s.points))
            .collect();
        assert_eq!(
            names,
            [("Bob".into(), 3), ("Ada".into(), 1), ("Cy".into(), 1)]
        );
    }

    #[test]
    fn rejected_ops_change_nothing_and_say_why() {
        let mut t = Tournament::default();
        reg(&mut t, "Ada").unwrap();
        reg(&mut t, "Bob").unwrap();
        t.apply(
            &Member::open(ConnId(1)),
            &TournamentOp::DropPlayer { name: "Bob".into() },
        )
        .unwrap();
        let before = t.clone();
        let cases = [
            (reg(&mut t, ""), "invalid_name"),
            (reg(&mut t, " Ada"), "invalid_name"),
            (reg(&mut t, "Ada"), "duplicate_player"),
            (reg(&mut t, &"x".repeat(65)), "invalid_name"),
            (result(&mut t, "Ada", "Ada", None), "same_player"),
            (result(&mut t, "Ada", "Zed", None), "unknown_player"),
            (result(&mut t, "Ada", "Bob", None), "player_dropped"),
            (
                t.apply(
                    &Member::open(ConnId(1)),
                    &TournamentOp::DropPlayer { name: "Bob".into() },
                ),
                "player_dropped",
            ),
        ];
        for (got, code) in cases {
            assert_eq!(got.unwrap_err().code, code);
        }
        reg(&mut t, "Cy").unwrap();
        assert_eq!(
            result(&mut t, "Ada", "Cy", Some("Bob")).unwrap_err().code,
            "invalid_winner"
        );
        t.players.remove("Cy");
        assert_eq!(t, before);
    }
}
