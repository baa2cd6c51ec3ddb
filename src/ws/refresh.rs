//! REFRESH (40): a new token for an open connection. Without one, the connection is closed
//! with 4001 once its token's `exp` (plus the leeway) passes.
//!
//! The new token must be valid and name the same user and role. It replaces the old one
//! at once: its expiry, and its groups (a mobile's USER_ADD / USER_REMOVE changes stay on
//! top of them: `membership.rs`). New groups move everything the groups decide: a
//! mobile's memberships (relayed frames, the floor and indicators in groups it left end, a
//! private talk ends when any group was left,
//! and its user's groups become the union over its live sessions with these, a transition
//! dashboards of the old and the new groups both see when the union changed); a watcher's
//! scope (it gets a fresh snapshot for the new scope).

use super::{
    connection::{Connection, Exit, expiry},
    socket::Socket,
};
use crate::{
    id::Id,
    metrics,
    presence::{self, Groups},
    protocol::{ErrorCode, Frame, payload},
    scope::Scope,
};

impl Connection {
    pub(super) async fn on_refresh(&mut self, socket: &mut Socket, frame: &Frame) -> Result<bool, Exit> {
        let token = match payload::refresh_token(&frame.payload) {
            Ok(token) => token,
            Err(e) => return self.refuse(socket, frame, ErrorCode::InvalidPayload, &e.to_string()).await,
        };
        let claims = match self.app.auth.verify(token).await {
            Ok(claims) => claims,
            Err(e) => {
                ::metrics::counter!(metrics::REFRESHES, "result" => e.code()).increment(1);
                return self.refuse(socket, frame, ErrorCode::Token(e.code()), &e.to_string()).await;
            }
        };
        if claims.sub != self.user || claims.role != self.role {
            ::metrics::counter!(metrics::REFRESHES, "result" => "token_mismatch").increment(1);
            let message = "a refresh token must name the connection's user and role";
            return self.refuse(socket, frame, ErrorCode::Token("token_mismatch"), message).await;
        }
        ::metrics::counter!(metrics::REFRESHES, "result" => "accepted").increment(1);
        self.expires_at = expiry(claims.exp);
        // A mobile's USER_ADD / USER_REMOVE changes stay on top of the new token's groups.
        let groups = self.with_changes(claims.groups.clone().map(Groups::from));
        if !same_groups(groups.as_deref(), self.groups.as_deref()) {
            self.scope = Scope::of(&claims);
            if let Some(exit) = self.regroup(socket, groups).await {
                return Err(exit);
            }
        }
        self.ack(socket, frame).await
    }

    /// Applies the connection's new `groups` (a REFRESH's, or a USER_ADD / USER_REMOVE
    /// change): see the module documentation. A watcher's scope must be set first.
    pub(super) async fn regroup(&mut self, socket: &mut Socket, groups: Option<Groups>) -> Option<Exit> {
        let before = std::mem::replace(&mut self.groups, groups).unwrap_or_default();
        let groups = self.groups.clone().unwrap_or_default();
        if let Some(session) = self.session.as_mut() {
            session.groups = groups.clone();
        }
        // Reachable in the new groups (and no longer in the old) before anything is
        // answered or stored (the node then waits for the new groups' channels).
        if let Some(registration) = self.registration.upgrade() {
            registration.rescope(self.member());
        }
        if self.session.is_some() {
            // A talk ends in a group left; on a private channel, when any group was left,
            // since the group shared with the listener may be among them (a new START
            // checks it again). First, as on a disconnect: listeners get the STOP before
            // `talking` ends.
            let lost_any = before.iter().any(|group| !groups.contains(group));
            let talk_ends = self.talk.as_ref().is_some_and(|talk| match talk.group() {
                Some(group) => !groups.contains(group),
                None => lost_any,
            });
            if talk_ends {
                self.end_talk(Some("not_a_member")).await;
            }
            let left: Vec<_> = self.indicators.keys().filter(|(_, group)| !groups.contains(group)).cloned().collect();
            for (kind, group) in left {
                self.end_indicator(kind, group).await;
            }
            if let Some(session) = self.tracked() {
                // Errors are counted by the node; the next heartbeat re-leases the session.
                let _ = self.app.node.regroup(session).await;
            }
            return None;
        }
        self.subscriptions_within_scope();
        self.subscriptions_resynced();
        let source = self.app.node.hub().snapshot_source(self.watched_scope());
        self.write_snapshot(socket, source).await
    }
}

/// Whether two `groups` claims name the same groups ([`presence::same_groups`]); a token
/// without the claim differs from one with an empty list.
fn same_groups(a: Option<&[Id]>, b: Option<&[Id]>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => presence::same_groups(a, b),
        (a, b) => a.is_none() && b.is_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_compare_as_sets() {
        let ids = |names: &[&str]| names.iter().map(|n| Id::parse(n).unwrap()).collect::<Vec<_>>();
        assert!(same_groups(Some(&ids(&["a", "b"])), Some(&ids(&["b", "a"]))));
        assert!(!same_groups(Some(&ids(&["a"])), Some(&ids(&["a", "b"]))));
        assert!(!same_groups(Some(&ids(&["a", "b"])), Some(&ids(&["a", "a"]))));
        assert!(!same_groups(Some(&ids(&["a", "a"])), Some(&ids(&["a", "b"]))));
        assert!(same_groups(Some(&ids(&["a", "a"])), Some(&ids(&["a"]))));
        assert!(!same_groups(None, Some(&[])));
        assert!(same_groups(None, None));
    }
}
