//! Who may read whose presence: one rule for WebSocket and HTTP alike.
//!
//! A token reads the presence of users who share one of its `groups`. A token without the
//! claim reads everyone only with role `dashboard` or `service`; any other role without
//! groups reads only its own user. A user outside the scope reads exactly like an unknown
//! id (offline, never seen): the API is no oracle of who exists. Within the scope, the
//! names of groups outside it are removed from what is shown. `docs/SECURITY.md` has the
//! table of roles and claims.

use crate::{
    auth::{Claims, Role},
    id::Id,
    presence::{Groups, PresenceUpdate, Status, UserPresence, visible},
};

/// What one token may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The token's own user, always readable; `None` for [`Scope::everyone`].
    user: Option<Id>,
    /// The groups whose members it reads; `None`: everyone.
    allowed: Option<Groups>,
}

impl Scope {
    pub fn of(claims: &Claims) -> Scope {
        let allowed = match (&claims.groups, claims.role) {
            (Some(groups), _) => Some(Groups::from(groups.clone())),
            (None, Role::Dashboard | Role::Service) => None,
            (None, Role::Mobile | Role::Web) => Some(Groups::default()),
        };
        Scope { user: Some(claims.sub.clone()), allowed }
    }

    /// Reads everyone: an unscoped dashboard or service.
    pub fn everyone() -> Scope {
        Scope { user: None, allowed: None }
    }

    /// Reads the current members of `group` only: a group listing shows a participant
    /// that has since moved to other groups like an unknown id, its presence now
    /// belonging to those groups.
    pub fn members_of(group: &Id) -> Scope {
        Scope { user: None, allowed: Some(Groups::from([group.clone()])) }
    }

    /// Reads the current members of any of `groups` only: what a dashboard that chose
    /// its groups (SUBSCRIBE) is shown in full, within its token's scope.
    pub fn members_of_any(groups: Groups) -> Scope {
        Scope { user: None, allowed: Some(groups) }
    }

    /// The token's own user, which it always reads; `None` for [`Scope::everyone`].
    pub fn user(&self) -> Option<&Id> {
        self.user.as_ref()
    }

    /// The groups whose members this token reads; `None`: everyone.
    pub fn allowed(&self) -> Option<&[Id]> {
        self.allowed.as_deref()
    }

    /// Whether `group` is within the scope (its participants may be listed).
    pub fn covers_group(&self, group: &Id) -> bool {
        self.allowed().is_none_or(|allowed| allowed.contains(group))
    }

    /// Whether a user in `groups` is within the scope.
    pub fn sees(&self, user: &Id, groups: &[Id]) -> bool {
        self.user.as_ref() == Some(user) || visible(groups, self.allowed())
    }

    /// `presence` as this token may read it: an unknown user when it is out of scope,
    /// otherwise without the names of groups outside the scope.
    pub fn read(&self, presence: UserPresence) -> UserPresence {
        if !self.sees(&presence.user_id, &presence.groups) {
            return UserPresence::unknown(presence.user_id);
        }
        self.redact(presence)
    }

    /// Removes the names of groups outside the scope.
    pub fn redact(&self, mut presence: UserPresence) -> UserPresence {
        if let Some(allowed) = self.allowed()
            && presence.groups.iter().any(|g| !allowed.contains(g))
        {
            presence.groups = within(&presence.groups, allowed);
        }
        presence
    }

    /// What a watcher with this scope is shown of a transition, given the groups the user
    /// was in before it: the update itself (groups outside the scope removed) while the
    /// user is within the scope (the token's own user always is, whatever its groups);
    /// when the transition takes the user out of the scope, the user going offline there;
    /// nothing when it was out of scope before and after.
    pub fn view_of(&self, update: &PresenceUpdate, before: &[Id]) -> View {
        let Some(allowed) = self.allowed() else { return View::AsIs };
        let user = &update.presence;
        if self.user.as_ref() == Some(&user.user_id) || visible(&user.groups, Some(allowed)) {
            if user.groups.iter().all(|g| allowed.contains(g)) {
                return View::AsIs;
            }
            let mut redacted = update.clone();
            redacted.presence.groups = within(&user.groups, allowed);
            return View::Changed(redacted);
        }
        if !visible(before, Some(allowed)) {
            return View::Hidden;
        }
        let mut left = update.clone();
        let presence = &mut left.presence;
        presence.status = Status::Offline;
        presence.groups = within(before, allowed);
        presence.device_id = None;
        presence.status_text = None;
        presence.last_activity = None;
        presence.activity = None;
        View::Changed(left)
    }
}

/// How a transition is shown to one watcher.
#[derive(Debug, PartialEq)]
pub enum View {
    AsIs,
    Changed(PresenceUpdate),
    Hidden,
}

fn within(groups: &[Id], allowed: &[Id]) -> Groups {
    Groups::from(groups.iter().filter(|g| allowed.contains(g)).cloned().collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::Cause;

    fn id(s: &str) -> Id {
        Id::parse(s).unwrap()
    }

    fn claims(role: Role, groups: Option<&[&str]>) -> Claims {
        Claims {
            sub: id("me"),
            role,
            exp: Some(u64::MAX),
            iat: None,
            groups: groups.map(|g| g.iter().map(|s| id(s)).collect()),
        }
    }

    fn user(name: &str, groups: &[&str]) -> UserPresence {
        let mut p = UserPresence::unknown(id(name));
        p.status = Status::Online;
        p.device_id = Some("phone".into());
        p.groups = Groups::from(groups.iter().map(|s| id(s)).collect::<Vec<_>>());
        p
    }

    #[test]
    fn roles_and_claims() {
        let outsider = user("u", &["g9"]);
        let in_g1 = user("v", &["g1", "g9"]);
        for (role, groups, sees_outsider, sees_g1) in [
            (Role::Dashboard, None, true, true),
            (Role::Service, None, true, true),
            (Role::Web, None, false, false),
            (Role::Mobile, None, false, false),
            (Role::Mobile, Some(&["g1"][..]), false, true),
            (Role::Dashboard, Some(&["g1"][..]), false, true),
        ] {
            let scope = Scope::of(&claims(role, groups));
            assert_eq!(scope.sees(&outsider.user_id, &outsider.groups), sees_outsider, "{role:?} {groups:?}");
            assert_eq!(scope.sees(&in_g1.user_id, &in_g1.groups), sees_g1, "{role:?} {groups:?}");
        }
        // A mobile without groups reads itself.
        let scope = Scope::of(&claims(Role::Mobile, None));
        assert!(scope.sees(&id("me"), &[]));
        assert!(!scope.covers_group(&id("g1")));
        assert!(Scope::of(&claims(Role::Dashboard, None)).covers_group(&id("g1")));
    }

    #[test]
    fn out_of_scope_reads_as_unknown_and_other_groups_are_removed() {
        let scope = Scope::of(&claims(Role::Dashboard, Some(&["g1"])));
        assert_eq!(scope.read(user("u", &["g9"])), UserPresence::unknown(id("u")));
        let read = scope.read(user("v", &["g1", "g9"]));
        assert_eq!(read.groups.iter().map(Id::as_str).collect::<Vec<_>>(), ["g1"]);
        assert_eq!(read.device_id.as_deref(), Some("phone"));
    }

    #[test]
    fn leaving_the_scope_shows_as_offline_there() {
        let scope = Scope::of(&claims(Role::Dashboard, Some(&["g1"])));
        let update = |groups: &[&str]| PresenceUpdate {
            presence: user("u", groups),
            cause: Cause::Connect,
            timestamp: 1,
            seq: None,
            shard: 0,
        };
        assert_eq!(scope.view_of(&update(&["g1"]), &[]), View::AsIs);
        assert_eq!(scope.view_of(&update(&["g2"]), &[]), View::Hidden);
        let View::Changed(left) = scope.view_of(&update(&["g2"]), &[id("g1"), id("g3")]) else { panic!() };
        assert_eq!(left.presence.status, Status::Offline);
        assert_eq!(left.presence.groups.iter().map(Id::as_str).collect::<Vec<_>>(), ["g1"]);
        assert_eq!(left.presence.device_id, None);
        let View::Changed(redacted) = scope.view_of(&update(&["g1", "g2"]), &[]) else { panic!() };
        assert_eq!(redacted.presence.status, Status::Online);
        assert_eq!(redacted.presence.groups.iter().map(Id::as_str).collect::<Vec<_>>(), ["g1"]);
        assert_eq!(Scope::of(&claims(Role::Dashboard, None)).view_of(&update(&["g2"]), &[]), View::AsIs);
    }

    #[test]
    fn the_tokens_own_user_is_shown_whatever_its_groups() {
        let scope = Scope::of(&claims(Role::Dashboard, Some(&["g1"])));
        let mut offline = user("me", &["g2"]);
        offline.status = Status::Offline;
        let update = PresenceUpdate { presence: offline, cause: Cause::Disconnect, timestamp: 1, seq: None, shard: 0 };
        let View::Changed(shown) = scope.view_of(&update, &[id("g2")]) else { panic!("its own user is never hidden") };
        assert_eq!(shown.presence.status, Status::Offline);
        assert!(shown.presence.groups.is_empty(), "groups outside the scope are still removed");
    }
}
