//! Heartbeats handed off by connections, renewed in the background.
//!
//! A connection never waits on the store for a heartbeat: it records the session here and
//! answers at once, so a hung or slow Redis cannot stall its PTT audio or its mailbox. One
//! renewer task per router takes everything recorded and renews it. Memory is bounded by
//! the router's sessions: a session is recorded at most once, its latest heartbeat winning.
//!
//! Each heartbeat is recorded with the instant it arrived, and its lease runs from then
//! however long it waits here: so the renewer may gather heartbeats for a while (the
//! store's [`renewal_window`](crate::engine::PresenceStore::renewal_window)) and renew
//! them in one round trip, without moving any session's offline time.
//!
//! Per session, order is kept: ending a session first cancels its pending renewal and
//! waits for one in flight, so a renewal can never land after the disconnect and bring the
//! closed session back.

use std::{
    collections::{HashMap, HashSet},
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

use crate::presence::{Session, SessionId};

#[derive(Default)]
pub struct PendingRenewals {
    state: Mutex<State>,
    /// Wakes the renewer: something was recorded.
    ready: Notify,
    /// Wakes sessions ending: a renewal finished.
    settled: Notify,
    /// Wakes a gathering renewer: [`GATHER_ENOUGH`] are waiting.
    full: Notify,
}

/// Heartbeats that end a gathering before its window does: a batch this size already
/// costs Redis about a microsecond per heartbeat (docs/BENCHMARKS.md), so a busy router
/// renews them at once rather than holding them.
pub const GATHER_ENOUGH: usize = 128;

/// A recorded heartbeat: the session and when its heartbeat arrived.
pub type Heartbeat = (Session, Instant);

#[derive(Default)]
struct State {
    pending: HashMap<SessionId, Heartbeat>,
    in_flight: HashSet<SessionId>,
}

impl PendingRenewals {
    /// No code under the lock can panic; recover the guard rather than propagate one.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a heartbeat of `session` arriving now (replacing one not yet taken).
    pub fn push(&self, session: &Session) {
        let full = {
            let mut state = self.state();
            state.pending.insert(session.id.clone(), (session.clone(), Instant::now()));
            state.pending.len() >= GATHER_ENOUGH
        };
        self.ready.notify_one();
        if full {
            self.full.notify_one();
        }
    }

    /// Waits for a recorded heartbeat, then gathers for `window` more (less once
    /// [`GATHER_ENOUGH`] are waiting), and takes all that are waiting; each is in flight until
    /// [`done`](Self::done). A session ending meanwhile just drops its heartbeat.
    pub async fn take(&self, window: Duration) -> Vec<Heartbeat> {
        loop {
            self.wait_for_one().await;
            if !window.is_zero() {
                let full = self.full.notified();
                tokio::pin!(full);
                full.as_mut().enable();
                if self.state().pending.len() < GATHER_ENOUGH {
                    let _ = tokio::time::timeout(window, full).await;
                }
            }
            let mut state = self.state();
            if !state.pending.is_empty() {
                let taken: Vec<Heartbeat> = state.pending.drain().map(|(_, heartbeat)| heartbeat).collect();
                state.in_flight.extend(taken.iter().map(|(s, _)| s.id.clone()));
                return taken;
            }
        }
    }

    async fn wait_for_one(&self) {
        loop {
            let ready = self.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            if !self.state().pending.is_empty() {
                return;
            }
            ready.await;
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
        let mut taken = renewals.take(Duration::ZERO).await;
        taken.sort_by(|(a, _), (b, _)| a.id.as_str().cmp(b.id.as_str()));
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
        let taken = renewals.take(Duration::ZERO).await;
        assert_eq!(taken.iter().map(|(s, _)| s.id.as_str()).collect::<Vec<_>>(), ["r:4"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_gathers_heartbeats_each_stamped_when_it_arrived() {
        let renewals = Arc::new(PendingRenewals::default());
        let window = Duration::from_millis(100);
        let taking = tokio::spawn({
            let renewals = renewals.clone();
            async move { renewals.take(window).await }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        let first = Instant::now();
        renewals.push(&session(1));
        tokio::time::sleep(Duration::from_millis(60)).await;
        let second = Instant::now();
        renewals.push(&session(2));
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!taking.is_finished(), "still within the window of the first heartbeat");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut taken = taking.await.unwrap();
        taken.sort_by(|(a, _), (b, _)| a.id.as_str().cmp(b.id.as_str()));
        assert_eq!(
            taken.iter().map(|(s, at)| (s.id.as_str(), *at)).collect::<Vec<_>>(),
            [("r:1", first), ("r:2", second)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_gathering_is_taken_before_the_window_ends() {
        let renewals = Arc::new(PendingRenewals::default());
        let taking = tokio::spawn({
            let renewals = renewals.clone();
            async move { renewals.take(Duration::from_secs(3600)).await }
        });
        for n in 0..GATHER_ENOUGH as u64 {
            renewals.push(&session(n));
        }
        let taken = tokio::time::timeout(Duration::from_secs(1), taking).await.expect("taken at once").unwrap();
        assert_eq!(taken.len(), GATHER_ENOUGH);
    }
}
