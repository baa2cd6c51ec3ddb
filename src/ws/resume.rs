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
    presence::{Groups, PresenceUpdate},
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

/// The missed changes to send, and where they bring the dashboard.
struct Catchup {
    frames: Vec<Bytes>,
    resumption: Resumption,
    mark: ViewMark,
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
        let Catchup { frames, resumption, mark } = catchup;
        self.seq = resumption.seq;
        let changes = frames.len();
        for frame in frames {
            if let Some(exit) = self.timed(socket.feed(frame)).await {
                return Err(exit);
            }
        }
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

    /// The frames that bring a view at `from` up to the hub's view now, subscribed to the
    /// hub first; or why that cannot be told (the `result` label).
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
        let changes = match read.as_ref() {
            Ok(Ok((changes, _head))) => log_reads::after(changes, &position),
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
        let frames = latest_per_user(changes)
            .into_iter()
            .filter_map(|(update, before)| match self.scope.view_of(&update, &before) {
                View::AsIs => Some(update),
                View::Changed(shown) => Some(shown),
                View::Hidden => None,
            })
            .map(|update| protocol::update_frame(&update, resumption.seq, None))
            .collect();
        let mark = ViewMark { position: now.token(), view };
        Ok(Catchup { frames, resumption, mark })
    }
}

/// Each user's latest change, in the order of those, with the groups the user was in
/// before its first: what a view that missed them all must be shown.
fn latest_per_user(changes: Vec<LoggedChange>) -> Vec<(PresenceUpdate, Groups)> {
    let mut slots: HashMap<Id, usize> = HashMap::new();
    let mut latest: Vec<Option<(PresenceUpdate, Groups)>> = Vec::with_capacity(changes.len());
    for LoggedChange { update, before } in changes {
        let user = update.presence.user_id.clone();
        let before = match slots.get(&user).and_then(|&slot| latest[slot].take()) {
            Some((_, first_before)) => first_before,
            None => before,
        };
        slots.insert(user, latest.len());
        latest.push(Some((update, before)));
    }
    latest.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::{Cause, Status, UserPresence};

    fn change(user: &str, status: Status, before: &[&str]) -> LoggedChange {
        let mut presence = UserPresence::unknown(Id::parse(user).unwrap());
        presence.status = status;
        let update = PresenceUpdate { presence, cause: Cause::Connect, timestamp: 0, seq: None, shard: 0 };
        LoggedChange { update, before: before.iter().map(|g| Id::parse(g).unwrap()).collect() }
    }

    #[test]
    fn each_user_is_told_its_latest_change_with_the_groups_before_its_first() {
        let changes = vec![
            change("a", Status::Online, &["g1"]),
            change("b", Status::Online, &[]),
            change("a", Status::Offline, &["g2"]),
        ];
        let latest = latest_per_user(changes);
        let shown: Vec<(&str, Status, &str)> = latest
            .iter()
            .map(|(u, before)| (u.presence.user_id.as_str(), u.presence.status, before.first().map_or("", Id::as_str)))
            .collect();
        assert_eq!(shown, [("b", Status::Online, ""), ("a", Status::Offline, "g1")]);
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
