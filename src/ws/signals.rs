//! STATUS, ACTIVITY and INDICATOR frames, and the timers of a connection's indicators and
//! PTT floor.
//!
//! An indicator belongs to the connection that turned it on: the connection announces its
//! start once (refreshes only push its deadline, so ten rapid starts broadcast once), and
//! announces its end exactly once, on stop, on expiry or when the connection closes. The
//! store keeps a copy with the same lifetime for the group endpoint.
//!
//! An invisible user's indicators (and its talking) are kept but neither announced nor
//! stored: nobody, member or dashboard, sees them. A connection whose user turns invisible
//! announces the end of each of its live ones (and clears the store's copies); one whose
//! user is seen again announces the start of each still live. So an end is announced
//! exactly when its start was.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::{
    connection::{Connection, Exit},
    socket::Socket,
};
use crate::{
    id::Id,
    metrics,
    node::Write,
    presence::Mode,
    protocol::{
        self, ChannelType, ErrorCode, Frame,
        payload::{self, IndicatorKind},
    },
    transient::{Audience, Delivery},
};

/// Activity implied by other frames is written to the store at most once a second (or per tenth of
/// `AWAY_AFTER_MS` if that is shorter). Skipping is safe: a user seen active this recently
/// cannot be idle; `lastActivity` lags by at most this much.
const ACTIVITY_WRITE_INTERVAL: Duration = Duration::from_secs(1);

impl Connection {
    /// The ACK for an applied frame, or the connection's end if the write failed.
    pub(super) async fn ack(&mut self, socket: &mut Socket, frame: &Frame) -> Result<bool, Exit> {
        match self.write(socket, protocol::ack_frame(frame.message_type, frame.message_id.as_ref())).await {
            Some(exit) => Err(exit),
            None => Ok(false),
        }
    }

    async fn refuse_not_mobile(&mut self, socket: &mut Socket, frame: &Frame) -> Result<bool, Exit> {
        self.refuse(socket, frame, ErrorCode::NotAllowed, "only mobile sessions have presence, talk and type").await
    }

    /// STATUS: `{status, text}`; counts as activity.
    pub(super) async fn on_status(&mut self, socket: &mut Socket, frame: &Frame) -> Result<bool, Exit> {
        let Some(session) = self.tracked().cloned() else {
            return self.refuse_not_mobile(socket, frame).await;
        };
        let (mode, text, activity) = match payload::status(&frame.payload) {
            Ok(status) => status,
            Err(e) => return self.refuse(socket, frame, ErrorCode::InvalidPayload, &e.to_string()).await,
        };
        let Ok(choice) = self.app.node.set_status(&session, mode, text.as_deref(), &activity).await else {
            return self.refuse(socket, frame, ErrorCode::PresenceUnavailable, "presence store unavailable").await;
        };
        let invisible = mode == Mode::Invisible;
        self.set_invisible(invisible);
        // The user's other sessions, on every router, hide or show their own signals.
        let news = Audience::Visibility { user: self.user.clone(), invisible };
        self.app.node.send(Delivery { audience: news, except: None, frame: Bytes::new() });
        // Every later lease of this session carries the choice: a heartbeat that reaches a
        // Redis restarted empty before the router re-asserts must restore it, not reset it.
        if let Some(session) = self.session.as_mut() {
            session.choice = Some(choice);
        }
        self.activity_at = Instant::now();
        self.ack(socket, frame).await
    }

    /// ACTIVITY: the user is active (resets the away timer).
    pub(super) async fn on_activity(&mut self, socket: &mut Socket, frame: &Frame) -> Result<bool, Exit> {
        if self.tracked().is_none() {
            return self.refuse_not_mobile(socket, frame).await;
        }
        if !self.note_activity(true).await {
            return self.refuse(socket, frame, ErrorCode::PresenceUnavailable, "presence store unavailable").await;
        }
        self.ack(socket, frame).await
    }

    /// Records activity: an explicit ping always, activity implied by other frames unless
    /// this session recorded some very recently. False when the store is unreachable (the
    /// write is then not queued).
    pub(super) async fn note_activity(&mut self, explicit: bool) -> bool {
        let Some(session) = self.tracked().cloned() else { return true };
        let now = Instant::now();
        if !explicit && now - self.activity_at < ACTIVITY_WRITE_INTERVAL.min(self.app.limits.away_after / 10) {
            return true;
        }
        // Written behind: a slow store must not hold this connection (its talk, its mailbox).
        let queued = self.app.node.write_soon(Write::Activity(session));
        if queued {
            self.activity_at = now;
        }
        queued
    }

    /// INDICATOR: `[0, 37, userId, groupId, {type, isActive}]`.
    pub(super) async fn on_indicator(&mut self, socket: &mut Socket, frame: &Frame) -> Result<bool, Exit> {
        if self.session.is_none() {
            return self.refuse_not_mobile(socket, frame).await;
        }
        let group = match (frame.channel_type, &frame.to) {
            (ChannelType::Group, Some(group)) if self.member_of(group) => group.clone(),
            _ => {
                let message = "toId must be one of the token's groups, with channelType 0";
                return self.refuse(socket, frame, ErrorCode::NotAMember, message).await;
            }
        };
        let (kind, active) = match payload::indicator(&frame.payload) {
            Ok(indicator) => indicator,
            Err(e) => return self.refuse(socket, frame, ErrorCode::InvalidPayload, &e.to_string()).await,
        };
        if active {
            let ttl = match kind {
                IndicatorKind::Typing => self.app.limits.typing_ttl,
                _ => self.app.limits.recording_ttl,
            };
            self.start_indicator(kind, group, ttl).await;
            self.note_activity(false).await;
        } else {
            self.end_indicator(kind, group).await;
        }
        self.ack(socket, frame).await
    }

    /// Turns an indicator on for `ttl`, or pushes its deadline when it is on already.
    pub(super) async fn start_indicator(&mut self, kind: IndicatorKind, group: Id, ttl: Duration) {
        if self.invisible.is_none() {
            self.learn_choice().await;
        }
        let fresh = self.indicators.insert((kind, group.clone()), Instant::now() + ttl).is_none();
        if self.hidden() {
            return;
        }
        self.store_indicator(kind, group.clone(), Some(ttl));
        if fresh {
            self.announce_indicator(kind, group, true);
        }
    }

    pub(super) async fn end_indicator(&mut self, kind: IndicatorKind, group: Id) {
        if self.indicators.remove(&(kind, group.clone())).is_some() && !self.hidden() {
            self.store_indicator(kind, group.clone(), None);
            self.announce_indicator(kind, group, false);
        }
    }

    /// Whether this connection's signals are hidden: its user chose `invisible`, or the
    /// connection does not know what the user chose.
    fn hidden(&self) -> bool {
        self.invisible != Some(false)
    }

    /// Records what the user chose: invisible (every signal this connection has on ends,
    /// for everyone who saw it start) or seen (every one still live starts). Signals that
    /// lapsed while hidden were never shown: they go silently.
    pub(super) fn set_invisible(&mut self, invisible: bool) {
        let was_hidden = self.hidden();
        self.invisible = Some(invisible);
        if was_hidden == invisible {
            return;
        }
        let now = Instant::now();
        if !invisible {
            self.indicators.retain(|_, until| *until > now);
        }
        let live: Vec<((IndicatorKind, Id), Instant)> = self.indicators.iter().map(|(k, u)| (k.clone(), *u)).collect();
        for ((kind, group), until) in live {
            self.store_indicator(kind, group.clone(), (!invisible).then(|| until - now));
            self.announce_indicator(kind, group, !invisible);
        }
    }

    /// Asks the store what the user chose, for a connection that does not know (the store
    /// was unreachable when it connected). While the store is still unreachable the
    /// connection's signals stay hidden: an unknown choice may be `invisible`.
    async fn learn_choice(&mut self) {
        if self.app.node.is_degraded() {
            return;
        }
        if let Ok(choice) = self.app.node.choice(&self.user).await {
            self.set_invisible(choice.is_some_and(|c| c.mode == Mode::Invisible));
        }
    }

    /// Sets (`Some(ttl)`) or clears the store's copy of an indicator. Written behind: the
    /// copy only feeds the group endpoint, and the broadcast does not wait on it.
    fn store_indicator(&self, kind: IndicatorKind, group: Id, ttl: Option<Duration>) {
        self.app.node.write_soon(Write::Indicator { group, user: self.user.clone(), kind, ttl });
    }

    /// Ends the floor and every indicator this connection has (it is closing, for
    /// `reason`, the STOP's): neither may outlive its connection.
    pub(super) async fn end_signals(&mut self, reason: &'static str) {
        self.end_talk(Some(reason)).await;
        let keys: Vec<(IndicatorKind, Id)> = self.indicators.keys().cloned().collect();
        for (kind, group) in keys {
            self.end_indicator(kind, group).await;
        }
    }

    /// INDICATOR_UPDATE to the group's members and dashboards, never to the user itself;
    /// only while the user is seen (see the module documentation).
    fn announce_indicator(&self, kind: IndicatorKind, group: Id, active: bool) {
        ::metrics::counter!(metrics::INDICATORS, "type" => kind.as_str(), "active" => if active { "true" } else { "false" })
            .increment(1);
        let frame = protocol::indicator_frame(&group, &self.user, kind, active);
        let delivery =
            Delivery { audience: Audience::Group { group, dashboards: true }, except: Some(self.user.clone()), frame };
        self.app.node.send(delivery);
    }

    /// The earliest of the indicator deadlines and the floor's.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let talk = self.talk.as_ref().and_then(|t| t.deadline());
        self.indicators.values().copied().chain(talk).min()
    }

    /// Ends what lapsed: the floor after the maximum talk time, indicators not refreshed.
    pub(super) async fn on_deadline(&mut self, socket: &mut Socket) -> Option<Exit> {
        let now = Instant::now();
        if self.talk.as_ref().and_then(|t| t.deadline()).is_some_and(|until| until <= now)
            && let Some(exit) = self.cut_talk(socket).await
        {
            return Some(exit);
        }
        let due: Vec<(IndicatorKind, Id)> =
            self.indicators.iter().filter(|(_, until)| **until <= now).map(|(key, _)| key.clone()).collect();
        for (kind, group) in due {
            self.end_indicator(kind, group).await;
        }
        None
    }
}
