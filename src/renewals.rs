//! Heartbeats handed off by connections, renewed in the background.
//!
//! A connection never waits on the store for a heartbeat: it records the session here and
//! answers at once, so a hung or slow Redis cannot stall its PTT audio or its mailbox. One
//! renewer task per router takes everything recorded and renews it. Memory is bounded by
//! the router's sessions: a session is recorded at most once, its latest heartbeat winning.
//!
//! Per session, order is kept: ending a session first cancels its pending renewal and
//! waits for one in flight, so a renewal can never land after the disconnect and bring the
//! closed session back.

use std::{
    collections::{HashMap, HashSet},
    sync::{Mutex, MutexGuard},
};

use tokio::sync::Notify;

use crate::presence::{Session, SessionId};

#[derive(Default)]
pub struct PendingRenewals {
    state: Mutex<State>,
    /// Wakes the renewer: something was recorded.
    ready: Notify,
    /// Wakes sessions ending: a renewal finished.
    settled: Notify,
}

#[derive(Default)]
struct State {
    pending: HashMap<SessionId, Session>,
    in_flight: HashSet<SessionId>,
}

impl PendingRenewals {
    /// No code under the lock can panic; recover the guard rather than propagate one.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a heartbeat of `session` (replacing one not yet taken).
    pub fn push(&self, session: &Session) {
        self.state().pending.insert(session.id.clone(), session.clone());
        self.ready.notify_one();
    }

    /// Waits for recorded heartbeats and takes them all; each is in flight until
    /// [`done`](Self::done).
    pub async fn take(&self) -> Vec<Session> {
        loop {
            {
                let mut state = self.state();
                if !state.pending.is_empty() {
                    let taken: Vec<Session> = state.pending.drain().map(|(_, session)| session).collect();
                    state.in_flight.extend(taken.iter().map(|s| s.id.clone()));
                    return taken;
                }
            }
            self.ready.notified().await;
        }
    }

    /// The renewal of `id` finished (or was skipped).
    pub fn done(&self, id: &SessionId) {
        self.state().in_flight.remove(id);
        self.settled.notify_waiters();
    }

    /// Before a session ends: drops its pending heartbeat and waits until none is in flight.
    pub async fn settle(&self, id: &SessionId) {
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.state();
                state.pending.remove(id);
                if !state.in_flight.contains(id) {
                    return;
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;
    use crate::{id::Id, presence::Groups};

    fn session(n: u64) -> Session {
        Session {
            id: SessionId::new("r", n),
            user: Id::parse("u").unwrap(),
            device_id: None,
            groups: Groups::default(),
            choice: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn latest_wins_and_an_ending_session_waits_for_its_renewal() {
        let renewals = Arc::new(PendingRenewals::default());
        renewals.push(&session(1));
        renewals.push(&session(1));
        renewals.push(&session(2));
        let mut taken = renewals.take().await;
        taken.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        assert_eq!(taken.len(), 2, "one entry per session");

        // Session 1 is in flight: ending it waits until its renewal is done.
        let ending = tokio::spawn({
            let renewals = renewals.clone();
            async move { renewals.settle(&SessionId::new("r", 1)).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!ending.is_finished());
        renewals.done(&SessionId::new("r", 2));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!ending.is_finished(), "another session's renewal does not release it");
        renewals.done(&SessionId::new("r", 1));
        ending.await.unwrap();

        // A pending heartbeat of an ending session is dropped.
        renewals.push(&session(3));
        renewals.settle(&SessionId::new("r", 3)).await;
        renewals.push(&session(4));
        let taken = renewals.take().await;
        assert_eq!(taken.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["r:4"]);
    }
}
