//! One WebSocket connection: a single task that reads frames, writes replies, forwards
//! relayed frames (PTT, TEXT, indicators) from its mailbox and, for dashboards, the hub's
//! stream. Writes happen inline, so a connection never queues more than the hub's shared
//! ring and its bounded mailbox; a write that stalls past `--write-timeout-ms` ends the
//! connection as a slow consumer. PTT lives in `ptt.rs`, statuses and indicators in
//! `signals.rs`, changes of groups in `refresh.rs` and `membership.rs`.

use std::{
    collections::BTreeMap,
    sync::{Arc, Weak},
    time::Duration,
};

use bytes::Bytes;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::{
    sync::{
        OwnedSemaphorePermit, broadcast,
        broadcast::error::{RecvError, TryRecvError},
    },
    time::{Instant, sleep_until},
};

use super::{
    close,
    liveness::{self, Renewal},
    membership::Membership,
    ptt::{RefusedStart, Talk},
    rate_limit::Budget,
    resume::ResumeFrom,
    socket::{Incoming, Socket},
    subscriptions::Subscriptions,
};
use crate::{
    app::App,
    auth::{self, Claims, Role},
    hub::{HubEvent, Subscription},
    id::Id,
    metrics,
    presence::{Groups, Mode, Session, unix_ms},
    protocol::{self, ChannelType, ErrorCode, Frame, Slot, message_type, payload::IndicatorKind, voiceping},
    relay::{Mailbox, Member, Registration},
    scope::{Scope, View},
    server::ClientBudget,
};

/// Most queued hub events forwarded before one flush.
const EVENT_BATCH: usize = 256;

/// How long our Close frame may take to write before the connection is dropped anyway.
const CLOSE_WRITE_TIME: Duration = Duration::from_secs(1);

/// What woke the connection task.
enum Wake {
    Shutdown,
    Idle,
    /// A mobile that does not heartbeat has been silent for a ping interval.
    Ping,
    Incoming(Incoming),
    Event(Result<HubEvent, RecvError>),
    /// Relayed frames may be waiting in the mailbox.
    Relayed,
    Deadline,
    /// The token's `exp` (plus the leeway) passed without a REFRESH.
    Expired,
}

/// How a connection ended: with a close frame we send, or already gone.
pub(super) enum Exit {
    Close(u16, &'static str),
    /// The client closed with this code (or none): echo it.
    Echo(Option<u16>),
    Gone(&'static str),
}

pub struct Connection {
    pub(super) app: Arc<App>,
    pub(super) user: Id,
    pub(super) role: Role,
    /// When the token stops being valid (`exp` plus the leeway); a REFRESH moves it.
    pub(super) expires_at: Instant,
    /// Where the relay reaches this connection: its groups change there the moment they
    /// change (see [`Connection::regroup`]).
    pub(super) registration: Weak<Registration>,
    /// Mobile sessions only: PTT floors are held by it, and presence is kept for it while
    /// presence is enabled.
    pub(super) session: Option<Session>,
    /// When this session's lease was last handed over for renewal (connect counts).
    pub(super) stored_at: Instant,
    /// Whether this connection has sent a HEARTBEAT: from then on only heartbeats keep
    /// it; before, the router pings it and anything it sends keeps it (`liveness.rs`).
    heartbeats: bool,
    /// When the store last recorded activity of this session (connect counts).
    pub(super) activity_at: Instant,
    /// Dashboards: the sequence number their view includes.
    pub(super) seq: u64,
    /// Dashboards: the position they asked to resume from, until they start.
    pub(super) resume_from: Option<Box<ResumeFrom>>,
    /// Whose presence this connection may see (dashboards) or, over HTTP, read.
    pub(super) scope: Scope,
    /// A mobile's memberships: its token's groups, with its USER_ADD / USER_REMOVE
    /// changes; for a dashboard, the token's groups, the only ones whose members it sees
    /// (`None`: everyone).
    pub(super) groups: Option<Groups>,
    /// A mobile's changes to its token's groups (boxed: most sessions make none); `None`
    /// while it holds exactly its token's groups.
    pub(super) membership: Option<Box<Membership>>,
    /// Indicators this connection has on, and when each lapses without a refresh.
    pub(super) indicators: BTreeMap<(IndicatorKind, Id), Instant>,
    /// The PTT floor this connection holds (boxed: most connections never talk, and every
    /// byte here is in every idle connection's task).
    pub(super) talk: Option<Box<Talk>>,
    /// The START last refused, until the next START or STOP (boxed, like `talk`).
    pub(super) refused_start: Option<Box<RefusedStart>>,
    /// Whether the user chose `invisible`, as this connection last learnt it (from the
    /// store at connect, its own STATUS, or news of a STATUS on another of the user's
    /// sessions); `None` while unknown (the store was unreachable at connect). Its
    /// indicators and talking are announced and stored only while this is `Some(false)`.
    pub(super) invisible: Option<bool>,
    /// A dashboard's chosen groups (SUBSCRIBE), boxed: most never choose; `None`: it is
    /// sent everything its token reads.
    pub(super) subscriptions: Option<Box<Subscriptions>>,
}

impl Connection {
    pub fn new(app: Arc<App>, claims: Claims, device_id: Option<Arc<str>>) -> Self {
        let scope = Scope::of(&claims);
        let groups: Option<Groups> = claims.groups.map(Groups::from);
        let session = (claims.role == Role::Mobile)
            .then(|| app.node.session(claims.sub.clone(), device_id, groups.clone().unwrap_or_default()));
        // Without presence there is no status to choose: never invisible.
        let invisible = (session.is_none() || !app.presence_enabled).then_some(false);
        Connection {
            app,
            expires_at: expiry(claims.exp),
            registration: Weak::new(),
            user: claims.sub,
            role: claims.role,
            session,
            stored_at: Instant::now(),
            heartbeats: false,
            activity_at: Instant::now(),
            seq: 0,
            resume_from: None,
            scope,
            groups,
            membership: None,
            indicators: BTreeMap::new(),
            talk: None,
            refused_start: None,
            invisible,
            subscriptions: None,
        }
    }

    /// The session whose presence the store keeps: mobile, with presence enabled.
    pub(super) fn tracked(&self) -> Option<&Session> {
        self.session.as_ref().filter(|_| self.app.presence_enabled)
    }

    /// Whether the session is in `group`.
    pub(super) fn member_of(&self, group: &Id) -> bool {
        self.groups.as_deref().is_some_and(|groups| groups.contains(group))
    }

    /// Serves the connection once its HTTP upgrade completes: `client` is the client's
    /// per-address budget, penalized should this connection's own budget close it.
    pub async fn run(mut self, upgrade: OnUpgrade, client: Option<ClientBudget>, _permit: OwnedSemaphorePermit) {
        let upgraded = match upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => return tracing::debug!(error = %e, "upgrade failed"),
        };
        let limits = &self.app.limits;
        let budget = Budget::new(limits.frame_rate, limits.frame_burst, limits.byte_rate, limits.byte_burst())
            .penalizing(client);
        let mut socket = Socket::new(TokioIo::new(upgraded), budget, limits.max_frame_bytes, limits.frame_timeout);
        let role = self.role.as_str();
        ::metrics::gauge!(metrics::CONNECTIONS, "role" => role).increment(1.0);
        // Who it is (session, user, role, device, address) is on the span.
        let opened = Instant::now();
        tracing::info!("connection opened");

        // Reachable for relayed frames before anyone can see this user online; and, for a
        // session on a device, for its replacement until it has ended.
        let mut mailbox = self.app.node.relay().register(self.member());
        self.registration = mailbox.registration();
        let exit = self.serve(&mut socket, &mut mailbox).await;
        let (close, reason) = match exit {
            Exit::Close(code, reason) => (Some((code, reason)), reason),
            // The client's code is echoed (RFC 6455 section 5.5.1); no code reads as 1000.
            Exit::Echo(code) => (Some((code.unwrap_or(close::NORMAL), "")), "closed"),
            Exit::Gone(reason) => (None, reason),
        };
        // A replaced session's new session waits for its end, not for this socket: the
        // close comes last then.
        let replaced = mailbox.replaced();
        let mut closed = !replaced && Self::close(&mut socket, close).await;
        // A floor or an indicator must not outlive its connection.
        Box::pin(self.end_signals(if replaced { "replaced" } else { "disconnected" })).await;
        if let Some(session) = self.tracked() {
            // Presence errors are counted by the node; the lease will lapse on its own.
            // A router going down lets its sessions linger so that clients reconnecting
            // elsewhere do not flash offline on every dashboard. A replaced session is no
            // longer in the store: its end changes nothing there.
            let _ = if self.app.shutdown.is_cancelled() {
                self.app.node.linger(session, self.app.limits.shutdown_grace).await
            } else {
                self.app.node.disconnect(session).await
            };
        }
        // Checked again: it may have been replaced while it was ending.
        if mailbox.replaced()
            && let Some(session) = &self.session
        {
            self.app.node.replaced_session_ended(&session.id).await;
        }
        drop(mailbox);
        if replaced {
            let told =
                close.is_none_or(|(code, _)| code != close::REPLACED) || self.login_duplicated(&mut socket).await;
            closed = told && Self::close(&mut socket, close).await;
        }
        ::metrics::counter!(metrics::DISCONNECTS, "reason" => reason).increment(1);
        ::metrics::gauge!(metrics::CONNECTIONS, "role" => role).decrement(1.0);
        // The code is the one sent (or echoed); none when the connection was already gone.
        let duration_ms = u64::try_from(opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        tracing::info!(duration_ms, code = close.map(|(code, _)| code), reason, "connection closed");
        // Last, so that presence never waits for it: let the Close frame reach the client.
        if closed {
            socket.finish().await;
        }
    }

    /// Tells a replaced session, in VoicePing's LOGIN_DUPLICATED `[1, 9, 0, userId, text]`,
    /// that its device logged in again: VoicePing's apps stop reconnecting on it, where a
    /// close alone has them reconnect and replace the new session in turn. Whether it was
    /// written.
    async fn login_duplicated(&mut self, socket: &mut Socket) -> bool {
        let device = self.session.as_ref().and_then(|session| session.device_id.clone()).unwrap_or_default();
        let text = voiceping::login_duplicated(&self.user, &device);
        let frame = protocol::channel_frame(
            ChannelType::Private,
            message_type::LOGIN_DUPLICATED,
            None,
            Some(&self.user),
            Slot::Absent,
            &text,
        );
        self.write(socket, frame).await.is_none()
    }

    /// Sends our Close frame, if the connection ends with one, within [`CLOSE_WRITE_TIME`];
    /// whether it went out.
    async fn close(socket: &mut Socket, close: Option<(u16, &'static str)>) -> bool {
        match close {
            Some((code, reason)) => {
                tokio::time::timeout(CLOSE_WRITE_TIME, socket.close(code, reason)).await.is_ok_and(|r| r.is_ok())
            }
            None => false,
        }
    }

    /// What this connection is reachable as for relayed frames (and, as a mobile session,
    /// for its replacement and the loss of its floor).
    pub(super) fn member(&self) -> Member {
        match &self.session {
            Some(session) => {
                Member::Session { user: self.user.clone(), groups: session.groups.clone(), session: session.id.clone() }
            }
            None => Member::Watcher,
        }
    }

    async fn serve(&mut self, socket: &mut Socket, mailbox: &mut Mailbox) -> Exit {
        if let Some(session) = self.tracked() {
            match self.app.node.connect(session).await {
                Ok(choice) => {
                    self.invisible = Some(choice.as_ref().is_some_and(|c| c.mode == Mode::Invisible));
                    if let Some(session) = self.session.as_mut() {
                        session.choice = choice;
                    }
                }
                Err(_) => {
                    // The socket stays up; the next heartbeat registers the session again.
                    let message = "presence store unavailable";
                    let frame = protocol::error_frame(ErrorCode::PresenceUnavailable, message, None, None);
                    if let Some(exit) = self.write(socket, frame).await {
                        return exit;
                    }
                }
            }
        }
        let mut subscription = None;
        if self.role.watches_presence() {
            let resumed = match self.resume_from.take() {
                Some(from) => match Box::pin(self.resume(socket, *from)).await {
                    Ok(resumed) => resumed,
                    Err(exit) => return exit,
                },
                None => None,
            };
            let events = match resumed {
                Some(events) => events,
                None => {
                    let Subscription { snapshot, events, stale } = self.app.node.hub().subscribe(&self.scope);
                    if let Some(exit) = Box::pin(self.write_snapshot(socket, snapshot)).await {
                        return exit;
                    }
                    // The view is stale: the snapshot is what it last knew, and says so at once.
                    if let Some(exit) = self.write_stale(socket, stale).await {
                        return exit;
                    }
                    events
                }
            };
            subscription = Some(events);
        }
        // One timer serves liveness (the heartbeat timeout, pings) and the indicator/floor
        // deadlines: every byte of this task is paid by every idle connection.
        let mut heard_at = Instant::now();
        let timer = sleep_until(heard_at + self.app.limits.idle_timeout);
        tokio::pin!(timer);
        let shutdown = self.app.shutdown.clone();

        loop {
            let event = async {
                match subscription.as_mut() {
                    Some(events) => events.recv().await,
                    None => std::future::pending().await,
                }
            };
            let limits = &self.app.limits;
            let ping_every = (!self.heartbeats).then_some(limits.ping_interval);
            let idle = liveness::wake_at(heard_at, Instant::now(), limits.idle_timeout, ping_every);
            let wake_at = [self.next_deadline(), self.subscriptions_due()]
                .into_iter()
                .flatten()
                .fold(self.expires_at.min(idle), Instant::min);
            if timer.deadline() != wake_at {
                timer.as_mut().reset(wake_at);
            }
            let wake = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Wake::Shutdown,
                _ = &mut timer => {
                    let now = Instant::now();
                    if idle <= now {
                        match liveness::is_cut(heard_at, now, self.app.limits.idle_timeout) {
                            true => Wake::Idle,
                            false => Wake::Ping,
                        }
                    } else if self.expires_at <= now {
                        Wake::Expired
                    } else {
                        Wake::Deadline
                    }
                }
                incoming = socket.recv() => Wake::Incoming(incoming),
                () = mailbox.ready() => Wake::Relayed,
                event = event => Wake::Event(event),
            };
            // Anything the client sent is a sign of life; what it proves depends on whether
            // the client heartbeats.
            let heard = matches!(wake, Wake::Incoming(Incoming::Binary(_) | Incoming::Text | Incoming::Control));
            let mut heartbeat = false;
            let exit = match wake {
                Wake::Shutdown => Some(Exit::Close(close::SERVICE_RESTART, "router restarting")),
                Wake::Idle => Some(Exit::Close(close::HEARTBEAT_TIMEOUT, "heartbeat timeout")),
                Wake::Ping => {
                    ::metrics::counter!(metrics::PINGS).increment(1);
                    self.timed(socket.ping()).await
                }
                Wake::Incoming(Incoming::Control) => None,
                Wake::Expired => {
                    let message = "the token expired; send REFRESH with a new one before it does";
                    let frame = protocol::error_frame(ErrorCode::Token("token_expired"), message, None, None);
                    Some(self.write(socket, frame).await.unwrap_or(Exit::Close(close::TOKEN_EXPIRED, "token expired")))
                }
                Wake::Incoming(Incoming::Closed(code)) => Some(Exit::Echo(code)),
                Wake::Incoming(Incoming::Gone) => Some(Exit::Gone("read_failed")),
                Wake::Incoming(Incoming::Violation(violation)) => {
                    ::metrics::counter!(metrics::FRAME_ERRORS, "reason" => violation.reason()).increment(1);
                    Some(Exit::Close(violation.close_code(), violation.reason()))
                }
                Wake::Incoming(Incoming::RateLimited) => Some(Exit::Close(close::RATE_LIMITED, "rate limit exceeded")),
                Wake::Incoming(Incoming::Binary(bytes)) => {
                    let exit = self.on_binary(socket, &bytes, subscription.as_mut()).await;
                    heartbeat = matches!(exit, Ok(true));
                    exit.err()
                }
                Wake::Incoming(Incoming::Text) => {
                    ::metrics::counter!(metrics::FRAME_ERRORS, "reason" => "text").increment(1);
                    let frame =
                        protocol::error_frame(ErrorCode::TextNotSupported, "frames are binary msgpack", None, None);
                    self.write(socket, frame).await
                }
                Wake::Event(event) => match subscription.as_mut() {
                    Some(events) => self.on_events(socket, event, events).await,
                    None => None,
                },
                Wake::Relayed if mailbox.replaced() => Some(Exit::Close(close::REPLACED, "replaced")),
                Wake::Relayed if mailbox.overflowed() => Some(Exit::Close(close::SLOW_CONSUMER, "slow consumer")),
                Wake::Relayed => self.on_relayed(socket, mailbox).await,
                Wake::Deadline => match Box::pin(self.on_subscriptions_due(socket)).await {
                    Some(exit) => Some(exit),
                    None => Box::pin(self.on_deadline(socket)).await,
                },
            };
            if let Some(exit) = exit {
                return exit;
            }
            if heartbeat || (heard && !self.heartbeats) {
                heard_at = Instant::now();
            }
            if heard && !self.heartbeats {
                self.heard(heard_at);
            }
        }
    }

    /// Handles one binary message; `Ok(true)` when it was a heartbeat that counts as life.
    /// `events` is a dashboard's stream of changes.
    async fn on_binary(
        &mut self,
        socket: &mut Socket,
        bytes: &Bytes,
        events: Option<&mut broadcast::Receiver<HubEvent>>,
    ) -> Result<bool, Exit> {
        let frame = match protocol::decode(bytes) {
            Ok(frame) => frame,
            Err(e) => {
                ::metrics::counter!(metrics::FRAME_ERRORS, "reason" => e.reason()).increment(1);
                let reply = protocol::error_frame(ErrorCode::InvalidFrame, &e.to_string(), None, None);
                return self.write(socket, reply).await.map_or(Ok(false), Err);
            }
        };
        ::metrics::counter!(metrics::FRAMES_RECEIVED, "type" => message_type::label(frame.message_type)).increment(1);
        if self.after_refused_start(&frame) {
            return Ok(false);
        }
        if frame.from.as_ref() != Some(&self.user) {
            return self.refuse(socket, &frame, ErrorCode::SenderMismatch, "fromId must be the token's subject").await;
        }
        match frame.message_type {
            message_type::HEARTBEAT => self.on_heartbeat(socket, &frame).await,
            // Boxed: the futures of the rarer frames would otherwise widen every idle
            // connection's task to their size (idle RSS is the first target).
            message_type::STATUS => Box::pin(self.on_status(socket, &frame)).await,
            message_type::ACTIVITY => Box::pin(self.on_activity(socket, &frame)).await,
            message_type::INDICATOR => Box::pin(self.on_indicator(socket, &frame)).await,
            message_type::REFRESH => Box::pin(self.on_refresh(socket, &frame)).await,
            message_type::USER_ADD | message_type::USER_REMOVE => Box::pin(self.on_membership(socket, &frame)).await,
            message_type::SUBSCRIBE => Box::pin(self.on_subscribe(socket, &frame, events)).await,
            message_type::UNSUBSCRIBE => Box::pin(self.on_unsubscribe(socket, &frame)).await,
            // VoicePing's SDK sends it on connect; VoicePing's router answered nothing.
            message_type::CONNECTION => Ok(false),
            message_type::START
            | message_type::STOP
            | message_type::AUDIO
            | message_type::TEXT
            | message_type::DELIVERED
            | message_type::READ => Box::pin(self.on_ptt(socket, &frame)).await,
            _ => {
                self.refuse(socket, &frame, ErrorCode::UnsupportedType, "this router does not handle that message type")
                    .await
            }
        }
    }

    /// Hands the lease's renewal to the node (unless coalesced) and acknowledges at once:
    /// the connection never waits on the store. From the first one, heartbeats alone keep
    /// the connection (`liveness.rs`). While the store is unreachable the answer
    /// is ERROR `presence_unavailable`; the session is re-asserted when it returns.
    async fn on_heartbeat(&mut self, socket: &mut Socket, frame: &Frame) -> Result<bool, Exit> {
        if self.role != Role::Mobile {
            ::metrics::counter!(metrics::HEARTBEATS, "result" => "rejected").increment(1);
            return self
                .refuse(socket, frame, ErrorCode::HeartbeatNotAllowed, "web and dashboard sessions do not heartbeat")
                .await;
        }
        self.heartbeats = true;
        let result = match self.renew(Instant::now(), self.app.limits.heartbeat_min_interval) {
            Renewal::Untracked => "ignored",
            Renewal::Degraded => "failed",
            Renewal::Coalesced => "coalesced",
            Renewal::Renewed => "accepted",
        };
        ::metrics::counter!(metrics::HEARTBEATS, "result" => result).increment(1);
        if result == "failed" {
            return self
                .refuse(socket, frame, ErrorCode::PresenceUnavailable, "presence store unavailable")
                .await
                .map(|_| true);
        }
        match self
            .write(socket, protocol::heartbeat_ack_frame(frame.message_id.as_ref(), self.app.limits.presence_ttl))
            .await
        {
            Some(exit) => Err(exit),
            None => Ok(true),
        }
    }

    /// Replies with an ERROR frame naming the refused frame (for a START, followed by
    /// VoicePing's answers, `ptt.rs`); the connection stays open.
    pub(super) async fn refuse(
        &mut self,
        socket: &mut Socket,
        frame: &Frame,
        code: ErrorCode,
        message: &str,
    ) -> Result<bool, Exit> {
        if code != ErrorCode::PresenceUnavailable {
            ::metrics::counter!(metrics::FRAME_ERRORS, "reason" => code.as_str()).increment(1);
        }
        let reply = protocol::error_frame(code, message, Some(frame.message_type), frame.message_id.as_ref());
        if let Some(exit) = self.write(socket, reply).await {
            return Err(exit);
        }
        if frame.message_type == message_type::START {
            return Box::pin(self.start_refused(socket, frame, code)).await;
        }
        Ok(false)
    }

    /// Forwards `first` and every event queued behind it (up to a batch; after waiting the
    /// `--update-batch-ms` window, if set), then flushes once: a dashboard catching up
    /// costs one write per batch, not per update.
    async fn on_events(
        &mut self,
        socket: &mut Socket,
        first: Result<HubEvent, RecvError>,
        events: &mut broadcast::Receiver<HubEvent>,
    ) -> Option<Exit> {
        if !self.app.limits.update_batch.is_zero() {
            tokio::time::sleep(self.app.limits.update_batch).await;
        }
        let mut next = Some(first);
        let mut forwarded = 0;
        while let Some(event) = next.take() {
            let frame = match event {
                Ok(HubEvent::Resync) => {
                    self.subscriptions_resynced();
                    let source = self.app.node.hub().snapshot_source(self.watched_scope());
                    if let Some(exit) = Box::pin(self.write_snapshot(socket, source)).await {
                        return Some(exit);
                    }
                    None
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::info!(missed, "dashboard fell behind the update ring");
                    return Some(Exit::Close(close::SLOW_CONSUMER, "slow consumer"));
                }
                Err(RecvError::Closed) => return Some(Exit::Close(close::SERVICE_RESTART, "router restarting")),
                Ok(change) => self.shown(change),
            };
            if let Some(frame) = frame
                && let Some(exit) = self.timed(socket.feed(frame)).await
            {
                return Some(exit);
            }
            forwarded += 1;
            // Take the next event only if this batch will forward it; the rest wait in
            // the ring for the next batch.
            if forwarded < EVENT_BATCH {
                next = match events.try_recv() {
                    Ok(event) => Some(Ok(event)),
                    Err(TryRecvError::Lagged(missed)) => Some(Err(RecvError::Lagged(missed))),
                    Err(TryRecvError::Empty | TryRecvError::Closed) => None,
                };
            }
        }
        // Coalesced changes go out when their window ends, or at once when too many wait
        // (boxed, like the other rare paths: most dashboards never subscribe).
        if self.subscriptions.is_some()
            && let Some(exit) = Box::pin(self.feed_due(socket)).await
        {
            return Some(exit);
        }
        self.timed(socket.flush()).await
    }

    /// How this dashboard is shown a change (`None`: hidden from its scope, or already in
    /// its view), moving its sequence number past it: a presence update as its scope reads
    /// it, an indicator of a group its scope covers as it is.
    pub(super) fn shown(&mut self, change: HubEvent) -> Option<Bytes> {
        let seq = match change {
            HubEvent::Update { seq, .. } | HubEvent::Indicator { seq, .. } => seq,
            HubEvent::Resync => return None,
            // Not a change of the view: every dashboard is told, whatever its position.
            HubEvent::Stale(frame) | HubEvent::Fresh(frame) => return self.urgent_subscribed(frame),
        };
        if seq <= self.seq {
            return None;
        }
        self.seq = seq;
        if self.subscriptions.is_some() {
            return self.take_subscribed(change, seq);
        }
        match change {
            HubEvent::Update { frame, update, before, position, .. } => {
                let frame = match self.scope.view_of(&update, &before) {
                    View::AsIs => Some(frame),
                    View::Changed(shown) => Some(protocol::update_frame(&shown, seq, position.as_deref())),
                    View::Hidden => None,
                };
                if frame.is_some() {
                    record_latency(update.timestamp);
                }
                frame
            }
            HubEvent::Indicator { frame, change, .. } => {
                self.scope.covers_group(&change.indicator.group).then_some(frame)
            }
            HubEvent::Resync | HubEvent::Stale(_) | HubEvent::Fresh(_) => None,
        }
    }

    /// Applies news of the user's visibility and of its floor taken over, then writes what
    /// the mailbox holds (up to a batch; the rest wakes the next round) and flushes once.
    async fn on_relayed(&mut self, socket: &mut Socket, mailbox: &Mailbox) -> Option<Exit> {
        if let Some(invisible) = mailbox.take_visibility() {
            self.set_invisible(invisible);
        }
        // Boxed, like the other rare paths: it would widen every idle connection's task.
        if let Some(talk) = mailbox.take_lost_talk()
            && let Some(exit) = Box::pin(self.lose_talk(socket, &talk)).await
        {
            return Some(exit);
        }
        let mut written = 0;
        while written < EVENT_BATCH
            && let Some(frame) = mailbox.try_recv()
        {
            if let Some(exit) = self.timed(socket.feed(frame)).await {
                return Some(exit);
            }
            written += 1;
        }
        if written == EVENT_BATCH {
            mailbox.wake();
        }
        if written == 0 { None } else { self.timed(socket.flush()).await }
    }

    /// Writes one frame within the write timeout.
    pub(super) async fn write(&mut self, socket: &mut Socket, frame: Bytes) -> Option<Exit> {
        self.timed(socket.send(frame)).await
    }

    /// Sends the STALE frame of a dashboard's start (after its snapshot or RESUMED), if
    /// the view is stale: what it was shown is what the view last knew.
    pub(super) async fn write_stale(&mut self, socket: &mut Socket, stale: Option<Bytes>) -> Option<Exit> {
        match stale {
            Some(frame) => self.write(socket, frame).await,
            None => None,
        }
    }

    /// A socket operation bounded by the write timeout; a stalled one is a slow consumer.
    pub(super) async fn timed(&self, operation: impl Future<Output = std::io::Result<()>>) -> Option<Exit> {
        match tokio::time::timeout(self.app.limits.write_timeout, operation).await {
            Ok(Ok(())) => None,
            Ok(Err(_)) => Some(Exit::Gone("write_failed")),
            Err(_) => Some(Exit::Close(close::SLOW_CONSUMER, "write timeout")),
        }
    }
}

/// Records a change decided at `timestamp` (Unix ms) reaching a dashboard's socket.
pub(super) fn record_latency(timestamp: u64) {
    let latency_ms = unix_ms().saturating_sub(timestamp);
    ::metrics::histogram!(metrics::UPDATE_LATENCY).record(latency_ms as f64 / 1000.0);
}

/// When a token with this `exp` (Unix seconds) stops being accepted: `exp` plus the
/// leeway every token check allows, on the tokio clock (at most a century ahead; a token
/// without `exp` never expires on its connection).
pub(super) fn expiry(exp: Option<u64>) -> Instant {
    const CENTURY_MS: u64 = 100 * 365 * 24 * 3600 * 1000;
    let Some(exp) = exp else { return Instant::now() + Duration::from_millis(CENTURY_MS) };
    let until_ms = exp.saturating_add(auth::LEEWAY_SECS).saturating_mul(1000).saturating_sub(unix_ms());
    Instant::now() + Duration::from_millis(until_ms.min(CENTURY_MS))
}
