//! A dashboard that reconnects with the position its last view reached (the `position`
//! and `view` query parameters of the handshake, as its last PRESENCE_SNAPSHOT,
//! PRESENCE_UPDATE and RESUMED gave them) is sent only what changed since, read from the
//! store's change log, which every router reads alike: one PRESENCE_UPDATE per user that
//! changed (its latest state, as the dashboard's scope reads it), then RESUMED. When that
//! cannot be told exactly, it gets a full snapshot instead, never an error: a position of
//! another history (Redis lost its data, the memory engine restarted), older than the log
//! keeps, of another scope (`view` differs from this token's), malformed, or a store out
//! of reach. `presence_dashboard_resumes_total{result}` counts both outcomes.

use std::collections::HashMap;

use bytes::Bytes;
use tokio::sync::broadcast;

use super::{connection::Connection, connection::Exit, socket::Socket};
use crate::{
    engine::log::{LoggedChange, Unserved},
    hub::{HubEvent, Resumption},
    id::Id,
    metrics,
    node::log_reads,
    position::{Malformed, Position, view_of},
    protocol::{self, ViewMark},
    scope::View,
};

/// What a dashboard presented to resume from.
pub(super) struct ResumeFrom {
    position: Result<Position, Malformed>,
    view: String,
}

impl ResumeFrom {
    /// From the handshake's query string: `position` (required) and `view`
    /// (percent-encoded, as `encodeURIComponent` writes them). `None` without a position.
    pub(super) fn from_query(query: Option<&str>) -> Option<Box<ResumeFrom>> {
        let (mut position, mut view) = (None, String::new());
        for (key, value) in form_urlencoded::parse(query?.as_bytes()) {
            match key.as_ref() {
                "position" => position = Some(Position::parse(&value)),
                "view" => view = value.into_owned(),
                _ => {}
            }
        }
        Some(Box::new(ResumeFrom { position: position?, view }))
    }
}

/// The missed changes to send, and where they bring the dashboard. The changes stay in
/// the log read that every dashboard resuming with it shares; each frame is encoded as the
/// socket takes it, so a dashboard that never reads holds a list of indices, not a copy of
/// every missed change.
struct Catchup {
    read: log_reads::Read,
    /// Per user that changed: its latest change and its first (whose `before` groups tell
    /// what the dashboard last saw of it), indices into `read`'s changes, in the order of
    /// the latest.
    picks: Vec<(usize, usize)>,
    resumption: Resumption,
    mark: ViewMark,
}

impl Catchup {
    /// The frames of the picked changes, as this scope reads each.
    fn frames<'a>(&'a self, scope: &'a crate::scope::Scope) -> impl Iterator<Item = Bytes> + 'a {
        let changes: &[LoggedChange] = match self.read.as_ref() {
            Ok(Ok((changes, _))) => changes,
            _ => &[],
        };
        self.picks.iter().filter_map(move |&(latest, first)| {
            let update = &changes[latest].update;
            let shown = match scope.view_of(update, &changes[first].before) {
                View::AsIs => protocol::update_frame(update, self.resumption.seq, None),
                View::Changed(shown) => protocol::update_frame(&shown, self.resumption.seq, None),
                View::Hidden => return None,
            };
            Some(shown)
        })
    }
}

impl Connection {
    /// Resumes from `from` if it can be told exactly: returns the stream of the changes
    /// after it, or `None` when the caller must send a snapshot instead.
    pub(super) async fn resume(
        &mut self,
        socket: &mut Socket,
        from: ResumeFrom,
    ) -> Result<Option<broadcast::Receiver<HubEvent>>, Exit> {
        let catchup = match self.catch_up(from).await {
            Ok(catchup) => catchup,
            Err(result) => {
                ::metrics::counter!(metrics::DASHBOARD_RESUMES, "result" => result).increment(1);
                tracing::debug!(result, "dashboard position not resumed; sending a snapshot");
                return Ok(None);
            }
        };
        ::metrics::counter!(metrics::DASHBOARD_RESUMES, "result" => "resumed").increment(1);
        self.seq = catchup.resumption.seq;
        let mut changes = 0;
        let scope = self.scope.clone();
        for frame in catchup.frames(&scope) {
            changes += 1;
            if let Some(exit) = self.timed(socket.feed(frame)).await {
                return Err(exit);
            }
        }
        let Catchup { resumption, mark, .. } = catchup;
        let resumed = protocol::resumed_frame(resumption.seq, &mark, changes, &resumption.indicators);
        if let Some(exit) = self.write(socket, resumed).await {
            return Err(exit);
        }
        // The view is stale: what it caught up to is what it last knew, and says so at once.
        if let Some(exit) = self.write_stale(socket, resumption.stale).await {
            return Err(exit);
        }
        Ok(Some(resumption.events))
    }

    /// What brings a view at `from` up to the hub's view now, subscribed to the hub first;
    /// or why that cannot be told (the `result` label).
    async fn catch_up(&self, from: ResumeFrom) -> Result<Catchup, &'static str> {
        let position = from.position.map_err(|Malformed| "malformed")?;
        let view = view_of(&self.scope);
        if from.view != view {
            return Err("scope");
        }
        let resumption = self.app.node.hub().resumption(&self.scope);
        let Some(now) = resumption.position.as_ref() else { return Err("unavailable") };
        if now.epoch != position.epoch || now.seqs.len() != position.seqs.len() {
            return Err("epoch");
        }
        let read = self.app.node.changes_since(&position).await;
        let picks = match read.as_ref() {
            Ok(Ok((changes, _head))) => latest_per_user(changes, &position),
            Ok(Err(Unserved::Epoch)) => {
                // The view's history is the dashboard's, the store's is another: the store
                // started a new one (lost its epoch) without the sequence showing it. The
                // view is rebuilt, and its dashboards get a snapshot of the new history.
                self.app.node.hub().request_resync();
                return Err(Unserved::Epoch.as_str());
            }
            Ok(Err(unserved)) => return Err(unserved.as_str()),
            Err(_) => return Err("unavailable"),
        };
        let mark = ViewMark { position: now.token(), view };
        Ok(Catchup { read, picks, resumption, mark })
    }
}

/// Of the changes after `from` (every change is numbered, with its shard; a read shared
/// by several resumes starts at the oldest of their positions), each user's latest, in the
/// order of those, with its first: what a view that missed them all must be shown is the
/// latest as a scope reads it given the groups the user was in before the first.
fn latest_per_user(changes: &[LoggedChange], from: &Position) -> Vec<(usize, usize)> {
    let mut slots: HashMap<&Id, usize> = HashMap::new();
    let mut latest: Vec<Option<(usize, usize)>> = Vec::new();
    for (at, LoggedChange { update, .. }) in changes.iter().enumerate() {
        if !log_reads::is_after(update, from) {
            continue;
        }
        let user = &update.presence.user_id;
        let first = match slots.get(user).and_then(|&slot| latest[slot].take()) {
            Some((_, first)) => first,
            None => at,
        };
        slots.insert(user, latest.len());
        latest.push(Some((at, first)));
    }
    latest.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::{Cause, PresenceUpdate, Status, UserPresence};

    fn change(user: &str, status: Status, before: &[&str]) -> LoggedChange {
        let mut presence = UserPresence::unknown(Id::parse(user).unwrap());
        presence.status = status;
        let update = PresenceUpdate { presence, cause: Cause::Connect, timestamp: 0, seq: None, shard: 0 };
        LoggedChange { update, before: before.iter().map(|g| Id::parse(g).unwrap()).collect() }
    }

    #[test]
    fn each_user_is_told_its_latest_change_with_the_groups_before_its_first() {
        let mut changes = vec![
            change("z", Status::Online, &[]),
            change("a", Status::Online, &["g1"]),
            change("b", Status::Online, &[]),
            change("a", Status::Offline, &["g2"]),
        ];
        for (seq, change) in changes.iter_mut().enumerate() {
            change.update.seq = Some(seq as u64 + 1);
        }
        let from = Position { epoch: 1, seqs: vec![1] };
        let picks = latest_per_user(&changes, &from);
        let shown: Vec<(&str, Status, &str)> = picks
            .iter()
            .map(|&(latest, first)| {
                let (update, before) = (&changes[latest].update, &changes[first].before);
                (update.presence.user_id.as_str(), update.presence.status, before.first().map_or("", Id::as_str))
            })
            .collect();
        assert_eq!(shown, [("b", Status::Online, ""), ("a", Status::Offline, "g1")], "z was seen at the position");
    }

    #[test]
    fn a_query_names_the_position_and_view() {
        let from = ResumeFrom::from_query(Some("a=1&position=00000000000000ff%3A12.3&view=%2A")).unwrap();
        assert_eq!(from.position, Ok(Position { epoch: 255, seqs: vec![12, 3] }));
        assert_eq!(from.view, "*");
        assert!(ResumeFrom::from_query(Some("view=*")).is_none());
        assert!(ResumeFrom::from_query(None).is_none());
        assert_eq!(ResumeFrom::from_query(Some("position=bad")).unwrap().position, Err(Malformed));
    }
}
