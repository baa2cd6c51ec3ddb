//! Per-group relay channels: a group's member frames (PTT and TEXT) go on the group's own
//! channel ([`Keyspace::group_channel`]), and each router subscribes only to the channels of the
//! groups it serves, those with a mobile member on it. As in centrifuge, the router tells
//! the broker when it gains a group's first member and loses its last
//! ([`Broker::serve_group`](crate::engine::Broker::serve_group)); the broker records the
//! set ([`Served`]) and its subscriber follows it ([`follow`]). With groups spread over
//! routers, an audio frame reaches the routers of its group's members, not every router.
//!
//! The set is bounded by the groups of this router's connections, and so are the
//! subscriptions: each is dropped when its group's last member leaves.

use std::{
    collections::HashSet,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use redis::aio::PubSubSink;
use tokio::sync::Notify;

use super::{Keyspace, inbox::Lost, subscriber::SUBSCRIBE_TIMEOUT};
use crate::{id::Id, metrics};

/// Most channels named in one SUBSCRIBE or UNSUBSCRIBE: a router serving many groups
/// subscribes to them in a few commands, none of them large.
const CHANNELS_PER_COMMAND: usize = 1000;

/// The groups this router serves, as the relay reports them; shared by the broker, which
/// records changes without waiting, and the subscriber, which follows them and confirms
/// the channels it holds, so that a new member can wait until its group's frames reach
/// this router ([`Served::until_subscribed`]).
#[derive(Default)]
pub(super) struct Served {
    groups: Mutex<HashSet<Id>>,
    /// Woken at each change; a change made while the subscriber is busy leaves a permit,
    /// so it is never missed, and a burst of changes is taken in one go.
    changed: Notify,
    /// The groups whose channels the subscription holds now, as its commands confirmed.
    subscribed: Mutex<HashSet<Id>>,
    /// Wakes every waiter when `subscribed` changes.
    confirmed: Notify,
}

impl Served {
    /// No code under the lock can panic; recover the guard rather than propagate one.
    fn groups(&self) -> MutexGuard<'_, HashSet<Id>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that this router serves `group` or no longer does, and wakes the subscriber.
    pub(super) fn set(&self, group: &Id, serving: bool) {
        let changed = {
            let mut groups = self.groups();
            if serving { groups.insert(group.clone()) } else { groups.remove(group) }
        };
        if !serving {
            // Its channel is on its way out: served again, it waits for the subscriber to
            // confirm it anew.
            self.subscribed.lock().unwrap_or_else(|e| e.into_inner()).remove(group);
        }
        if changed {
            self.changed.notify_one();
        }
    }

    /// Resolves at the next change (at once if one came since the last call).
    pub(super) async fn changed(&self) {
        self.changed.notified().await;
    }

    /// The subscription holds exactly the channels of `groups` now (none when it was lost).
    pub(super) fn confirm(&self, groups: &HashSet<Id>) {
        self.subscribed.lock().unwrap_or_else(|e| e.into_inner()).clone_from(groups);
        self.confirmed.notify_waiters();
    }

    /// Resolves once the subscription holds the channel of every one of `groups` that
    /// this router serves, or after `bound` (the subscription is being renewed, or Redis
    /// is out of reach: then frames may be missed, as the node's degraded state says).
    pub(super) async fn until_subscribed(&self, groups: &[Id], bound: Duration) {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let confirmed = self.confirmed.notified();
            tokio::pin!(confirmed);
            confirmed.as_mut().enable();
            {
                let served = self.groups();
                let subscribed = self.subscribed.lock().unwrap_or_else(|e| e.into_inner());
                if groups.iter().all(|group| subscribed.contains(group) || !served.contains(group)) {
                    return;
                }
            }
            if tokio::time::timeout_at(deadline, confirmed).await.is_err() {
                return;
            }
        }
    }

    /// The groups to subscribe to and those to unsubscribe from, for a connection that
    /// holds `subscribed`, to hold the served groups.
    pub(super) fn diff(&self, subscribed: &HashSet<Id>) -> (Vec<Id>, Vec<Id>) {
        let groups = self.groups();
        let joined = groups.difference(subscribed).cloned().collect();
        let left = subscribed.difference(&groups).cloned().collect();
        (joined, left)
    }
}

/// Keeps one subscription connection's group channels those of the served groups, from
/// none (a new connection holds none: after every resubscription, all of them are
/// subscribed again), until a command fails or goes unanswered: the connection is lost.
/// Changes that come while a command is under way are taken together by the next one.
/// `presence_broker_group_subscriptions` counts the channels held; the caller zeroes it
/// when the connection is lost.
pub(super) async fn follow(served: &Served, keys: &Keyspace, mut sink: PubSubSink) -> Lost {
    let mut subscribed = HashSet::new();
    served.confirm(&subscribed);
    loop {
        let (joined, left) = served.diff(&subscribed);
        for (groups, subscribe) in [(joined, true), (left, false)] {
            for chunk in groups.chunks(CHANNELS_PER_COMMAND) {
                let channels: Vec<String> = chunk.iter().map(|group| keys.group_channel(group.as_str())).collect();
                let command = async {
                    if subscribe { sink.subscribe(&channels).await } else { sink.unsubscribe(&channels).await }
                };
                match tokio::time::timeout(SUBSCRIBE_TIMEOUT, command).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Lost::Dropped,
                    Err(_) => return Lost::Silent,
                }
                for group in chunk {
                    if subscribe {
                        subscribed.insert(group.clone());
                    } else {
                        subscribed.remove(group);
                    }
                }
                ::metrics::gauge!(metrics::BROKER_GROUP_SUBSCRIPTIONS).set(subscribed.len() as f64);
            }
        }
        served.confirm(&subscribed);
        served.changed().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> HashSet<Id> {
        names.iter().map(|name| Id::parse(name).unwrap()).collect()
    }

    #[test]
    fn the_diff_takes_a_connection_to_the_served_groups() {
        let served = Served::default();
        for group in ids(&["a", "b", "c"]) {
            served.set(&group, true);
        }
        served.set(&Id::parse("c").unwrap(), false);
        let (joined, left) = served.diff(&ids(&["b", "x"]));
        assert_eq!((joined.into_iter().collect(), left.into_iter().collect()), (ids(&["a"]), ids(&["x"])));
        let (joined, left) = served.diff(&HashSet::new());
        assert_eq!((joined.into_iter().collect(), left), (ids(&["a", "b"]), Vec::new()), "a new connection takes all");
    }
}
