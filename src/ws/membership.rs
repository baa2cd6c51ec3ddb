//! USER_ADD (15) and USER_REMOVE (16): a mobile session joins and leaves groups at run
//! time, in VoicePing's frame `[0, 15 | 16, me, group]` (a payload, if any, is ignored).
//!
//! A session's groups start as its token's. USER_REMOVE leaves a group: always allowed,
//! since it only narrows what the session reaches. USER_ADD joins a group the token names
//! (back); a group the token does not name only with `--user-add-any-group`, and only
//! while the session holds fewer than `--max-session-groups`; it is then held exactly as
//! if the token named it. Either change moves everything the groups decide, through the
//! path a REFRESH naming other groups takes ([`Connection::regroup`]): the store and the
//! dashboards of the group, the relay (and the group's relay channel on the cluster
//! engine), floors and indicators in a group left.
//!
//! The changes belong to the session. A REFRESH replaces the token's part and keeps them
//! on top: a group left stays left while the new token names it (a token that stops
//! naming it has taken it away anyway), a group joined beyond the token stays joined. A new
//! session (a reconnect, a device's replacement) starts from its token's groups.

use super::{
    connection::{Connection, Exit},
    socket::Socket,
};
use crate::{
    id::Id,
    metrics,
    presence::Groups,
    protocol::{ChannelType, ErrorCode, Frame, message_type::USER_ADD},
};

/// A session's changes to its token's groups. Each list holds a group at most once, and
/// never one in both: `left` only groups the token names, `joined` at most
/// `--max-session-groups` (each was held when joined).
#[derive(Debug)]
pub(super) struct Membership {
    /// The token's groups (`None`: the token has no `groups` claim).
    token: Option<Groups>,
    /// Groups joined with USER_ADD that the token did not name, in the order joined.
    joined: Vec<Id>,
    /// Groups of the token left with USER_REMOVE.
    left: Vec<Id>,
}

impl Membership {
    fn new(token: Option<Groups>) -> Self {
        Membership { token, joined: Vec::new(), left: Vec::new() }
    }

    fn token_names(&self, group: &Id) -> bool {
        self.token.as_deref().is_some_and(|token| token.contains(group))
    }

    /// The session's groups: the token's less those left, then those joined. `None` only
    /// when the token has no `groups` claim and the session joined none.
    fn groups(&self) -> Option<Groups> {
        let token = self.token.as_deref().unwrap_or_default();
        let mut groups: Vec<Id> = token.iter().filter(|group| !self.left.contains(group)).cloned().collect();
        groups.extend(self.joined.iter().filter(|group| !token.contains(group)).cloned());
        (self.token.is_some() || !groups.is_empty()).then(|| Groups::from(groups))
    }

    /// Joins `group`, which the session does not hold.
    fn join(&mut self, group: &Id) {
        self.left.retain(|left| left != group);
        if !self.token_names(group) {
            self.joined.push(group.clone());
        }
    }

    /// Leaves `group`, which the session holds.
    fn leave(&mut self, group: &Id) {
        self.joined.retain(|joined| joined != group);
        if self.token_names(group) {
            self.left.push(group.clone());
        }
    }

    /// A REFRESH's token replaces the token's part.
    fn retoken(&mut self, token: Option<Groups>) {
        self.left.retain(|group| token.as_deref().is_some_and(|token| token.contains(group)));
        self.token = token;
    }

    /// Whether the session holds exactly its token's groups.
    fn is_empty(&self) -> bool {
        self.joined.is_empty() && self.left.is_empty()
    }
}

impl Connection {
    /// USER_ADD and USER_REMOVE: ACK when applied (or already so), ERROR when refused.
    pub(super) async fn on_membership(&mut self, socket: &mut Socket, frame: &Frame) -> Result<bool, Exit> {
        let kind = if frame.message_type == USER_ADD { "user_add" } else { "user_remove" };
        let result = match self.membership_change(frame) {
            Ok(None) => "unchanged",
            Ok(Some(groups)) => {
                if let Some(exit) = self.regroup(socket, groups).await {
                    return Err(exit);
                }
                "applied"
            }
            Err((code, message)) => {
                ::metrics::counter!(metrics::MEMBERSHIP_CHANGES, "type" => kind, "result" => code.as_str())
                    .increment(1);
                return self.refuse(socket, frame, code, message).await;
            }
        };
        ::metrics::counter!(metrics::MEMBERSHIP_CHANGES, "type" => kind, "result" => result).increment(1);
        self.ack(socket, frame).await
    }

    /// Records the change `frame` asks for and returns the session's groups after it;
    /// `None` when the session is in (or out of) the group already.
    fn membership_change(&mut self, frame: &Frame) -> Result<Option<Option<Groups>>, (ErrorCode, &'static str)> {
        if self.session.is_none() {
            return Err((ErrorCode::NotAllowed, "only mobile sessions are members of groups"));
        }
        let (ChannelType::Group, Some(group)) = (frame.channel_type, &frame.to) else {
            return Err((ErrorCode::InvalidFrame, "toId must name a group, with channelType 0"));
        };
        let join = frame.message_type == USER_ADD;
        if self.member_of(group) == join {
            return Ok(None);
        }
        // Without changes the session holds exactly its token's groups.
        let token_names =
            self.membership.as_ref().map_or_else(|| self.member_of(group), |membership| membership.token_names(group));
        if join && !token_names {
            if !self.app.limits.user_add_any_group {
                return Err((ErrorCode::NotAMember, "the token does not name this group"));
            }
            let held = self.groups.as_deref().map_or(0, <[Id]>::len);
            if held >= self.app.limits.max_session_groups {
                return Err((ErrorCode::TooManyGroups, "the session holds as many groups as it may"));
            }
        }
        let token = self.groups.clone();
        let membership = self.membership.get_or_insert_with(|| Box::new(Membership::new(token)));
        if join {
            membership.join(group)
        } else {
            membership.leave(group)
        }
        let groups = membership.groups();
        if membership.is_empty() {
            self.membership = None;
        }
        Ok(Some(groups))
    }

    /// The session's groups under a REFRESH's `token` groups: those, with the session's
    /// changes on top.
    pub(super) fn with_changes(&mut self, token: Option<Groups>) -> Option<Groups> {
        let Some(membership) = self.membership.as_mut() else { return token };
        membership.retoken(token);
        let groups = membership.groups();
        if membership.is_empty() {
            self.membership = None;
        }
        groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<Id> {
        names.iter().map(|name| Id::parse(name).unwrap()).collect()
    }

    fn groups(membership: &Membership) -> Option<Vec<Id>> {
        membership.groups().map(|groups| groups.to_vec())
    }

    #[test]
    fn changes_apply_on_top_of_the_token() {
        let mut membership = Membership::new(Some(ids(&["a", "b"]).into()));
        membership.leave(&ids(&["a"])[0]);
        membership.join(&ids(&["x"])[0]);
        assert_eq!(groups(&membership), Some(ids(&["b", "x"])));
        membership.join(&ids(&["a"])[0]);
        membership.leave(&ids(&["x"])[0]);
        assert_eq!(groups(&membership), Some(ids(&["a", "b"])));
        assert!(membership.is_empty(), "back to the token's groups");
    }

    #[test]
    fn a_new_token_keeps_the_changes_it_still_allows() {
        let mut membership = Membership::new(Some(ids(&["a", "b"]).into()));
        membership.leave(&ids(&["a"])[0]);
        membership.leave(&ids(&["b"])[0]);
        membership.join(&ids(&["x"])[0]);
        membership.retoken(Some(ids(&["a", "c", "x"]).into()));
        assert_eq!(groups(&membership), Some(ids(&["c", "x"])), "a stays left, b went with the token");
        // A later token naming b again grants it anew; x stays joined when no token names it.
        membership.retoken(Some(ids(&["a", "b"]).into()));
        assert_eq!(groups(&membership), Some(ids(&["b", "x"])));
        // Leaving a group both joined and named by the token leaves it.
        membership.retoken(Some(ids(&["x"]).into()));
        membership.leave(&ids(&["x"])[0]);
        assert_eq!(groups(&membership), Some(Vec::new()));
    }

    #[test]
    fn no_claim_and_nothing_joined_is_no_groups() {
        let mut membership = Membership::new(None);
        membership.join(&ids(&["x"])[0]);
        assert_eq!(groups(&membership), Some(ids(&["x"])));
        membership.leave(&ids(&["x"])[0]);
        assert_eq!(groups(&membership), None);
        assert!(membership.is_empty());
    }
}
