//! Push-to-talk: VoicePing's START / AUDIO / STOP / TEXT and its receipts (DELIVERED,
//! READ) on group and private channels, in VoicePing's frames.
//!
//! One session talks on a channel at a time: START asks the node for the channel's floor
//! and gets START_ACK (echoing the START's payload) or START_FAILED ("Busy"), in the
//! START's own layout. A START on another channel moves the talk, as VoicePing let it: the
//! talk held ends first (reason `switched`), then the START is decided like any other. The holder's AUDIO and STOP
//! are relayed to the channel's receivers in the layout the sender used, never to the
//! sender's user (but on its private channel to itself, which reaches all its sessions,
//! the sending one included, as VoicePing did); anyone else's get ERROR `floor_not_held`.
//! Each talk has a message id, made at its START: STOP_ACK carries it, and the receivers'
//! STOP gets VoicePing's `{duration, message_id}`. TEXT needs no floor: TEXT_ACK carries
//! its message id, which its receivers get with the text. DELIVERED and READ go back to
//! the user they name, on a private channel; a group's are ignored.
//!
//! The router ends a talk on the talker's behalf after `MAX_TALK_MS`, when another START
//! takes over a floor idle for `FLOOR_IDLE_MS`, when the talker leaves the group, when it
//! STARTs on another channel and when its connection closes: the talker gets the router's
//! STOP with the reason (but for a switch, which it asked for), the receivers a STOP in
//! the talker's name, and the talker's further AUDIO for that talk is dropped
//! without an answer (counted in `presence_audio_dropped_total`) until its STOP, which is
//! acknowledged, or its next START. While a user holds a group's floor it shows as
//! `talking` in that group, like a typing indicator.
//!
//! A START the router refuses (its ERROR: not a member, not allowed, another sender, no
//! channel) also gets what VoicePing's apps wait for before they stop recording: START_FAILED
//! in the START's layout, after VoicePing's UNAUTHORIZED_GROUP for a group outside the
//! session's. The AUDIO that follows it on its channel is dropped without an answer
//! (counted) until the session's next START or STOP.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use rmpv::Value;
use tokio::time::Instant;

use super::{
    connection::{Connection, Exit},
    socket::Socket,
};
use crate::{
    engine::{FloorClaim, FloorListeners, Talker},
    id::Id,
    metrics,
    node::Floor,
    presence::unix_ms,
    protocol::{
        self, ChannelType, ErrorCode, Frame, Slot,
        message_type::{
            AUDIO, DELIVERED, READ, START, START_ACK, START_FAILED, STOP, STOP_ACK, TEXT, TEXT_ACK, UNAUTHORIZED_GROUP,
            label,
        },
        payload::IndicatorKind,
        voiceping::{self, ACK_FAILED, ACKNOWLEDGED, BUSY, UNAUTHORIZED},
    },
    transient::{Audience, Delivery},
};

/// The talk of a connection: the floor it holds, or a talk the router ended.
pub struct Talk {
    channel: Channel,
    /// Its message id.
    id: Arc<str>,
    started: Instant,
    /// When the maximum talk time runs out.
    until: Instant,
    /// Its START had the message-id slot: the STOPs sent in the talker's name have it.
    with_message_id: bool,
    /// Why the router ended it on the talker's behalf (its floor is gone); `None` while
    /// the talker holds the floor.
    ended: Option<&'static str>,
}

impl Talk {
    /// The group whose floor this is; `None` on a private channel.
    pub(super) fn group(&self) -> Option<&Id> {
        (self.channel.kind == ChannelType::Group).then_some(&self.channel.to)
    }

    /// When the router takes the floor back (the maximum talk time), while it is held.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.ended.is_none().then_some(self.until)
    }
}

/// A START the router refused, as it named its channel: the AUDIO that follows on that
/// channel is dropped without an answer until the session's next START or STOP.
pub struct RefusedStart {
    channel_type: ChannelType,
    from: Option<Id>,
    to: Option<Id>,
}

impl RefusedStart {
    fn names_channel_of(&self, frame: &Frame) -> bool {
        (self.channel_type, &self.from, &self.to) == (frame.channel_type, &frame.from, &frame.to)
    }
}

/// A channel as a frame names it.
#[derive(Clone)]
struct Channel {
    /// The floor's key: `g:{group}`, or `p:{len}:{a}:{b}` for the private channel between
    /// users a ≤ b (length-prefixed, so no two pairs share a key).
    key: String,
    kind: ChannelType,
    /// The group, or the user talked to.
    to: Id,
    audience: Audience,
    /// Whose sessions never get the frames: the sender's user, except on its private
    /// channel to itself.
    except: Option<Id>,
}

impl Connection {
    /// The channel a PTT frame names, or the error to answer with.
    fn channel_of(&self, frame: &Frame) -> Result<Channel, (ErrorCode, &'static str)> {
        let Some(to) = frame.to.clone() else {
            return Err((ErrorCode::InvalidFrame, "toId must name a group or a user"));
        };
        match frame.channel_type {
            ChannelType::Group if self.member_of(&to) => Ok(Channel {
                key: format!("g:{to}"),
                kind: ChannelType::Group,
                audience: Audience::Group { group: to.clone(), dashboards: false },
                except: Some(self.user.clone()),
                to,
            }),
            ChannelType::Group => Err((ErrorCode::NotAMember, "the token's groups do not include this group")),
            ChannelType::Private if to != self.user && !self.may_call(&to) => {
                Err((ErrorCode::NotAllowed, "a private channel needs a group shared with that user"))
            }
            ChannelType::Private => {
                let (a, b) = if self.user <= to { (&self.user, &to) } else { (&to, &self.user) };
                Ok(Channel {
                    key: format!("p:{}:{a}:{b}", a.as_str().len()),
                    kind: ChannelType::Private,
                    // Where the other user's sessions are, their current groups decide.
                    audience: if to != self.user && self.app.limits.private_needs_shared_group {
                        Audience::UserIn { user: to.clone(), groups: self.groups.clone().unwrap_or_default() }
                    } else {
                        Audience::User(to.clone())
                    },
                    except: (to != self.user).then(|| self.user.clone()),
                    to,
                })
            }
        }
    }

    /// Whether this session may open a private channel to `user`: they share a group,
    /// unless `--private-needs-shared-group` is off. The other user's groups are those of
    /// its sessions on this router, else those of its last change this router heard of.
    fn may_call(&self, user: &Id) -> bool {
        if !self.app.limits.private_needs_shared_group {
            return true;
        }
        let mine = self.groups.as_deref().unwrap_or_default();
        let node = &self.app.node;
        node.relay().local_member_of_any(user, mine)
            || node.hub().groups_of(user).is_some_and(|theirs| theirs.iter().any(|g| mine.contains(g)))
    }

    /// The connection's talk on `channel`, held or ended.
    fn talk_on(&self, channel: &Channel) -> Option<&Talk> {
        self.talk.as_deref().filter(|talk| talk.channel.key == channel.key)
    }

    /// Whether `frame` is AUDIO following a refused START on that START's channel: it is
    /// dropped (counted), unanswered, however it would be refused. Any START or STOP ends
    /// that, so it is checked before anything else about the frame.
    pub(super) fn after_refused_start(&mut self, frame: &Frame) -> bool {
        match frame.message_type {
            START | STOP => {
                self.refused_start = None;
                false
            }
            AUDIO if self.refused_start.as_deref().is_some_and(|refused| refused.names_channel_of(frame)) => {
                ::metrics::counter!(metrics::AUDIO_DROPPED, "reason" => START_REFUSED).increment(1);
                true
            }
            _ => false,
        }
    }

    /// Follows the ERROR `code` that refused the START `frame` with what VoicePing's apps
    /// wait for (for up to 10 s, streaming AUDIO meanwhile): for a group outside the
    /// session's groups, VoicePing's UNAUTHORIZED_GROUP and START_FAILED "Ack Failed"; for
    /// any other refusal START_FAILED with the ERROR's code. Both in the START's layout,
    /// from the session's user, to the START's `toId` (0 when it named none).
    pub(super) async fn start_refused(
        &mut self,
        socket: &mut Socket,
        frame: &Frame,
        code: ErrorCode,
    ) -> Result<bool, Exit> {
        let refused = RefusedStart { channel_type: frame.channel_type, from: frame.from.clone(), to: frame.to.clone() };
        self.refused_start = Some(Box::new(refused));
        let user = self.user.clone();
        let reply = |message_type: u8, payload: &str| {
            let (to, slot) = (frame.to.as_ref(), Slot::of(frame));
            protocol::channel_frame(frame.channel_type, message_type, Some(&user), to, slot, &payload.into())
        };
        let unauthorized = code == ErrorCode::NotAMember && frame.channel_type == ChannelType::Group;
        if unauthorized && let Some(exit) = self.write(socket, reply(UNAUTHORIZED_GROUP, UNAUTHORIZED)).await {
            return Err(exit);
        }
        let reason = if unauthorized { ACK_FAILED } else { code.as_str() };
        self.write(socket, reply(START_FAILED, reason)).await.map_or(Ok(false), Err)
    }

    /// START, STOP, AUDIO, TEXT, DELIVERED and READ.
    pub(super) async fn on_ptt(&mut self, socket: &mut Socket, frame: &Frame) -> Result<bool, Exit> {
        if self.session.is_none() {
            return self.refuse(socket, frame, ErrorCode::NotAllowed, "only mobile sessions talk").await;
        }
        let receipt = matches!(frame.message_type, DELIVERED | READ);
        if receipt && frame.channel_type == ChannelType::Group {
            // VoicePing ignored a group's receipts, without a word.
            return Ok(false);
        }
        let channel = match self.channel_of(frame) {
            Ok(channel) => channel,
            Err((code, message)) => return self.refuse(socket, frame, code, message).await,
        };
        match frame.message_type {
            START => self.on_start(socket, frame, channel).await,
            STOP => self.on_stop(socket, frame, &channel).await,
            AUDIO => self.on_audio(socket, frame, &channel).await,
            TEXT => self.on_text(socket, frame, &channel).await,
            // DELIVERED, READ: back to the user they name, as sent.
            _ => {
                self.forward(frame, &channel, &frame.payload);
                Ok(false)
            }
        }
    }

    /// START: acknowledged again on the channel whose floor the session holds; on another
    /// channel, the talk held ends first (its listeners hear its STOP, reason `switched`),
    /// then the floor is asked for.
    async fn on_start(&mut self, socket: &mut Socket, frame: &Frame, channel: Channel) -> Result<bool, Exit> {
        if let Some(talk) = self.talk.as_deref().filter(|talk| talk.ended.is_none()) {
            if talk.channel.key == channel.key {
                let echo = voiceping::start_ack(channel.kind, &frame.payload);
                return self.answer(socket, frame, &channel, START_ACK, &echo).await;
            }
            self.end_talk(Some(SWITCHED)).await;
        }
        let Some(session) = self.session.clone() else { return Ok(false) };
        let node = Arc::clone(&self.app.node);
        let id = node.message_id(channel.kind, AUDIO, &channel.to, &self.user);
        let talker = Talker {
            session: session.id,
            user: self.user.clone(),
            talk: id.clone(),
            with_message_id: frame.with_message_id,
        };
        let hold = self.app.limits.max_talk;
        let listeners = match &channel.audience {
            Audience::Group { group, .. } => FloorListeners::Group(group.clone()),
            Audience::UserIn { user, groups } => {
                FloorListeners::User { user: user.clone(), groups: Some(groups.clone()) }
            }
            _ => FloorListeners::User { user: channel.to.clone(), groups: None },
        };
        let claim = FloorClaim { talker, hold, idle: self.app.limits.floor_idle, listeners };
        let (local_only, taken_from) = match node.take_floor(&channel.key, &claim).await {
            Floor::Granted { local_only, taken_from } => (local_only, taken_from),
            Floor::Busy => {
                ::metrics::counter!(metrics::FLOOR_REQUESTS, "result" => "busy").increment(1);
                return self.answer(socket, frame, &channel, START_FAILED, &BUSY.into()).await;
            }
        };
        let result = match (&taken_from, local_only) {
            (Some(_), _) => "idle_takeover",
            (None, true) => "local_only",
            (None, false) => "granted",
        };
        ::metrics::counter!(metrics::FLOOR_REQUESTS, "result" => result).increment(1);
        if let Some((talker, held)) = &taken_from {
            // Its listeners hear its STOP before the new START; its session is told.
            self.stop_taken_talk(&channel, talker, *held);
            node.floor_taken(talker);
        }
        // Held from here, so a failed reply still gives it back; `talking` is set after, so
        // it never lapses before the floor does.
        let group = (channel.kind == ChannelType::Group).then(|| channel.to.clone());
        let now = Instant::now();
        let with_message_id = frame.with_message_id;
        let echo = voiceping::start_ack(channel.kind, &frame.payload);
        let talk = Talk { channel: channel.clone(), id, started: now, until: now + hold, with_message_id, ended: None };
        self.talk = Some(Box::new(talk));
        let acked = self.answer(socket, frame, &channel, START_ACK, &echo).await;
        self.forward(frame, &channel, &frame.payload);
        if let Some(group) = group {
            self.start_indicator(IndicatorKind::Talking, group, hold).await;
        }
        self.note_activity(false).await;
        acked
    }

    /// AUDIO: relayed while the floor is held; dropped, counted, while the talk the
    /// router ended lasts.
    async fn on_audio(&mut self, socket: &mut Socket, frame: &Frame, channel: &Channel) -> Result<bool, Exit> {
        let (Some(talk), Some(session)) = (self.talk_on(channel), self.session.as_ref()) else {
            let message = "START was not acknowledged on this channel";
            return self.refuse(socket, frame, ErrorCode::FloorNotHeld, message).await;
        };
        if let Some(reason) = talk.ended {
            ::metrics::counter!(metrics::AUDIO_DROPPED, "reason" => reason).increment(1);
            return Ok(false);
        }
        if self.app.node.floor_audio(&channel.key, &session.id) {
            self.forward(frame, channel, &frame.payload);
            return Ok(false);
        }
        // Another session of this router took the floor over: the news is on its way, and
        // this is the lost talk's first dropped AUDIO.
        ::metrics::counter!(metrics::AUDIO_DROPPED, "reason" => IDLE).increment(1);
        let id = talk.id.clone();
        self.lose_talk(socket, &id).await.map_or(Ok(false), Err)
    }

    /// STOP: relayed with VoicePing's `{duration, message_id}` and acknowledged with the
    /// talk's message id; a talk the router ended is only acknowledged (its listeners had
    /// its STOP).
    async fn on_stop(&mut self, socket: &mut Socket, frame: &Frame, channel: &Channel) -> Result<bool, Exit> {
        let Some(talk) = self.talk_on(channel) else {
            let message = "START was not acknowledged on this channel";
            return self.refuse(socket, frame, ErrorCode::FloorNotHeld, message).await;
        };
        let id = talk.id.clone();
        if talk.ended.is_none() {
            let stop = voiceping::stop(talk.started.elapsed(), &id, None);
            self.forward(frame, channel, &stop);
        }
        self.end_talk(None).await;
        self.acknowledge(socket, channel, STOP_ACK, &id).await
    }

    /// TEXT: relayed with its message id (the frame's own, when it has one), acknowledged
    /// with TEXT_ACK. A text relayed as JSON is escaped (a control character becomes six
    /// bytes), so one that would go out larger than `--max-frame-bytes` is refused
    /// (`invalid_payload`) rather than relayed: no receiver is sent more than a client
    /// may send, which is what their mailboxes are sized for.
    async fn on_text(&mut self, socket: &mut Socket, frame: &Frame, channel: &Channel) -> Result<bool, Exit> {
        let id = match frame.message_id.as_ref().and_then(client_message_id) {
            Some(id) => id,
            None => self.app.node.message_id(channel.kind, TEXT, &channel.to, &self.user),
        };
        let relayed = self.encode(frame, channel, &voiceping::text(&frame.payload, &id));
        if relayed.len() > self.app.limits.max_frame_bytes {
            let message = "the text, as relayed (JSON-escaped), is larger than MAX_FRAME_BYTES";
            return self.refuse(socket, frame, ErrorCode::InvalidPayload, message).await;
        }
        self.relay(channel.audience.clone(), channel.except.clone(), frame.message_type, relayed);
        self.note_activity(false).await;
        self.acknowledge(socket, channel, TEXT_ACK, &id).await
    }

    /// Relays the client's frame, with `payload`, to the channel's receivers in the layout
    /// it came in.
    fn forward(&self, frame: &Frame, channel: &Channel, payload: &Value) {
        let bytes = self.encode(frame, channel, payload);
        self.relay(channel.audience.clone(), channel.except.clone(), frame.message_type, bytes);
    }

    /// The client's frame with `payload`, as its channel's receivers get it.
    fn encode(&self, frame: &Frame, channel: &Channel, payload: &Value) -> Bytes {
        protocol::channel_frame(
            channel.kind,
            frame.message_type,
            Some(&self.user),
            Some(&channel.to),
            Slot::of(frame),
            payload,
        )
    }

    fn relay(&self, audience: Audience, except: Option<Id>, message_type: u8, frame: Bytes) {
        ::metrics::counter!(metrics::RELAYED, "type" => label(message_type)).increment(1);
        self.app.node.send(Delivery { audience, except, frame });
    }

    /// START_ACK or START_FAILED, in the START's layout, on its channel.
    async fn answer(
        &mut self,
        socket: &mut Socket,
        frame: &Frame,
        channel: &Channel,
        message_type: u8,
        payload: &Value,
    ) -> Result<bool, Exit> {
        let reply = protocol::channel_frame(
            channel.kind,
            message_type,
            Some(&self.user),
            Some(&channel.to),
            Slot::of(frame),
            payload,
        );
        self.write(socket, reply).await.map_or(Ok(false), Err)
    }

    /// STOP_ACK or TEXT_ACK as VoicePing sent them: `[ct, type, fromId, toId, messageId,
    /// "Acknowledged"]` on the frame's channel.
    async fn acknowledge(
        &mut self,
        socket: &mut Socket,
        channel: &Channel,
        message_type: u8,
        id: &str,
    ) -> Result<bool, Exit> {
        let id = Value::from(id);
        let ack = protocol::channel_frame(
            channel.kind,
            message_type,
            Some(&self.user),
            Some(&channel.to),
            Slot::Id(Some(&id)),
            &ACKNOWLEDGED.into(),
        );
        self.write(socket, ack).await.map_or(Ok(false), Err)
    }

    /// The listeners of `talker`'s talk, whose floor this session just took over on
    /// `channel`, hear its STOP in its name (reason `idle`): a group's members, or on a
    /// private channel this user.
    fn stop_taken_talk(&self, channel: &Channel, talker: &Talker, held: Duration) {
        let (to, audience, except) = match channel.kind {
            ChannelType::Group => (&channel.to, channel.audience.clone(), Some(talker.user.clone())),
            ChannelType::Private => (&self.user, Audience::User(self.user.clone()), None),
        };
        let frame =
            voiceping::talk_stop(channel.kind, &talker.user, to, &talker.talk, talker.with_message_id, held, IDLE);
        self.relay(audience, except, STOP, frame);
    }

    /// The maximum talk time ran out: the router takes the floor back and tells the
    /// talker with a STOP of its own.
    pub(super) async fn cut_talk(&mut self, socket: &mut Socket) -> Option<Exit> {
        self.end_talk(Some("max_talk_time")).await;
        let stop = self.talk.as_deref().and_then(router_stop)?;
        self.write(socket, stop).await
    }

    /// Another session took over the floor of this connection's talk `id` (its AUDIO had
    /// stopped): the talk ends, its listeners heard its STOP from the taker, and the
    /// talker gets the router's STOP with reason `idle`. Nothing if that talk is over.
    pub(super) async fn lose_talk(&mut self, socket: &mut Socket, id: &str) -> Option<Exit> {
        let (Some(talk), Some(session)) = (self.talk.as_deref_mut(), self.session.as_ref()) else { return None };
        if talk.ended.is_some() || *talk.id != *id {
            return None;
        }
        talk.ended = Some(IDLE);
        self.app.node.forget_floor(&talk.channel.key, &session.id);
        let (stop, group) = (router_stop(talk), talk.group().cloned());
        if let Some(group) = group {
            self.end_indicator(IndicatorKind::Talking, group).await;
        }
        self.write(socket, stop?).await
    }

    /// Gives the floor back. `reason` is set when the router ends the talk on the
    /// talker's behalf: the receivers then get a STOP in the talker's name, and the talk
    /// is kept, ended, to absorb the talker's AUDIO still under way; `None` (the talker's
    /// own STOP, relayed by the caller) ends it for good, an ended one too.
    pub(super) async fn end_talk(&mut self, reason: Option<&'static str>) {
        let Some(mut talk) = self.talk.take() else { return };
        if talk.ended.is_some() {
            if reason.is_some() {
                self.talk = Some(talk);
            }
            return;
        }
        if let Some(session) = &self.session {
            self.app.node.release_floor(&talk.channel.key, &session.id).await;
        }
        let group = talk.group().cloned();
        if let Some(reason) = reason {
            let channel = &talk.channel;
            let held = talk.started.elapsed();
            let stop = voiceping::talk_stop(
                channel.kind,
                &self.user,
                &channel.to,
                &talk.id,
                talk.with_message_id,
                held,
                reason,
            );
            self.relay(channel.audience.clone(), channel.except.clone(), STOP, stop);
            talk.ended = Some(reason);
            self.talk = Some(talk);
        }
        if let Some(group) = group {
            self.end_indicator(IndicatorKind::Talking, group).await;
        }
    }
}

/// Why the floor of an idle talker went to the next START.
const IDLE: &str = "idle";
/// Why a talk ended when its talker STARTed on another channel.
const SWITCHED: &str = "switched";
/// Why AUDIO following a refused START is dropped.
const START_REFUSED: &str = "start_refused";

/// The router's own STOP to the talker of a talk it ended: `[ct, 2, 0, toId, messageId,
/// {reason, message_id, duration, timestamp}]`; `None` for a talk not ended.
fn router_stop(talk: &Talk) -> Option<Bytes> {
    let reason = talk.ended?;
    let duration = u64::try_from(talk.started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let payload = Value::Map(vec![
        ("reason".into(), reason.into()),
        ("message_id".into(), Value::from(&*talk.id)),
        ("duration".into(), duration.into()),
        ("timestamp".into(), unix_ms().into()),
    ]);
    let id = Value::from(&*talk.id);
    Some(protocol::channel_frame(talk.channel.kind, STOP, None, Some(&talk.channel.to), Slot::Id(Some(&id)), &payload))
}

/// A TEXT's own message id: a string or an integer with an id's limits (at most 128
/// bytes, no control characters), as text; `None` for anything else.
fn client_message_id(value: &Value) -> Option<Arc<str>> {
    let id = match value {
        Value::String(s) => Id::parse(s.as_str()?).ok()?,
        Value::Integer(n) => Id::from_int(n.as_i64().map(i128::from).or(n.as_u64().map(i128::from))?),
        _ => return None,
    };
    Some(Arc::from(id.as_str()))
}
