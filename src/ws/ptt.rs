//! Push-to-talk: VoicePing's START / AUDIO / STOP / TEXT on group and private channels.
//!
//! One session talks on a channel at a time: START asks the node for the channel's floor
//! and gets START_ACK or START_FAILED (`busy`, or `already_talking` on another channel).
//! The holder's AUDIO and STOP are relayed to the channel's receivers, never back to the
//! sender; anyone else's get ERROR `floor_not_held`. The router takes the floor back after
//! `MAX_TALK_MS` (the talker gets a STOP with reason `max_talk_time`, the receivers a
//! STOP in the talker's name) and when the connection closes. While a user holds a group's
//! floor it shows as `talking` in that group, like a typing indicator.

use rmpv::Value;
use tokio::time::Instant;

use super::{
    connection::{Connection, Exit},
    socket::Socket,
};
use crate::{
    id::Id,
    metrics,
    node::Floor,
    protocol::{
        self, ChannelType, ErrorCode, Frame,
        message_type::{START, START_ACK, START_FAILED, STOP, STOP_ACK, TEXT, label},
        payload::IndicatorKind,
    },
    transient::{Audience, Delivery},
};

/// The floor a connection holds.
pub struct Talk {
    channel: Channel,
    /// When the maximum talk time runs out.
    pub until: Instant,
}

impl Talk {
    /// The group whose floor this is; `None` on a private channel.
    pub(super) fn group(&self) -> Option<&Id> {
        (self.channel.kind == ChannelType::Group).then_some(&self.channel.to)
    }
}

/// A channel as a frame names it.
struct Channel {
    /// The floor's key: `g:{group}`, or `p:{len}:{a}:{b}` for the private channel between
    /// users a < b (length-prefixed, so no two pairs share a key).
    key: String,
    kind: ChannelType,
    /// The group, or the user talked to.
    to: Id,
    audience: Audience,
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
                to,
            }),
            ChannelType::Group => Err((ErrorCode::NotAMember, "the token's groups do not include this group")),
            ChannelType::Private if to == self.user => {
                Err((ErrorCode::InvalidFrame, "a private channel needs another user"))
            }
            ChannelType::Private if !self.may_call(&to) => {
                Err((ErrorCode::NotAllowed, "a private channel needs a group shared with that user"))
            }
            ChannelType::Private => {
                let (a, b) = if self.user < to { (&self.user, &to) } else { (&to, &self.user) };
                Ok(Channel {
                    key: format!("p:{}:{a}:{b}", a.as_str().len()),
                    kind: ChannelType::Private,
                    audience: Audience::User(to.clone()),
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

    fn holds(&self, channel: &str) -> bool {
        self.talk.as_ref().is_some_and(|t| t.channel.key == channel)
    }

    /// START, STOP, AUDIO and TEXT.
    pub(super) async fn on_ptt(&mut self, socket: &mut Socket, frame: &Frame) -> Result<bool, Exit> {
        if self.session.is_none() {
            return self.refuse(socket, frame, ErrorCode::NotAllowed, "only mobile sessions talk").await;
        }
        let channel = match self.channel_of(frame) {
            Ok(channel) => channel,
            Err((code, message)) => return self.refuse(socket, frame, code, message).await,
        };
        match frame.message_type {
            START => self.on_start(socket, frame, channel).await,
            STOP if self.holds(&channel.key) => {
                self.forward(frame, &channel);
                self.end_talk(None).await;
                self.reply(socket, frame, STOP_ACK, None).await
            }
            TEXT => {
                self.forward(frame, &channel);
                self.note_activity(false).await;
                self.ack(socket, frame).await
            }
            // AUDIO
            _ if self.holds(&channel.key) => {
                self.forward(frame, &channel);
                Ok(false)
            }
            _ => {
                self.refuse(socket, frame, ErrorCode::FloorNotHeld, "START was not acknowledged on this channel").await
            }
        }
    }

    async fn on_start(&mut self, socket: &mut Socket, frame: &Frame, channel: Channel) -> Result<bool, Exit> {
        match &self.talk {
            Some(talk) if talk.channel.key == channel.key => return self.reply(socket, frame, START_ACK, None).await,
            Some(_) => return self.reply(socket, frame, START_FAILED, Some("already_talking")).await,
            None => {}
        }
        let Some(session) = self.session.clone() else { return Ok(false) };
        let hold = self.app.limits.max_talk;
        let floor = self.app.node.take_floor(&channel.key, &session.id, hold).await;
        let result = match floor {
            Floor::Granted => "granted",
            Floor::Busy => "busy",
            Floor::LocalOnly => "local_only",
        };
        ::metrics::counter!(metrics::FLOOR_REQUESTS, "result" => result).increment(1);
        if floor == Floor::Busy {
            return self.reply(socket, frame, START_FAILED, Some("busy")).await;
        }
        // Held from here, so a failed reply still gives it back; `talking` is set after, so
        // it never lapses before the floor does.
        let group = (channel.kind == ChannelType::Group).then(|| channel.to.clone());
        self.talk = Some(Box::new(Talk { channel, until: Instant::now() + hold }));
        let acked = self.reply(socket, frame, START_ACK, None).await;
        if let Some(talk) = &self.talk {
            self.forward(frame, &talk.channel);
        }
        if let Some(group) = group {
            self.start_indicator(IndicatorKind::Talking, group, hold).await;
        }
        self.note_activity(false).await;
        acked
    }

    /// Relays the client's frame to the channel's receivers.
    fn forward(&self, frame: &Frame, channel: &Channel) {
        ::metrics::counter!(metrics::RELAYED, "type" => label(frame.message_type)).increment(1);
        let delivery = Delivery {
            audience: channel.audience.clone(),
            except: Some(self.user.clone()),
            frame: protocol::relay_frame(frame, &self.user, &channel.to),
        };
        self.app.node.send(delivery);
    }

    /// START_ACK, START_FAILED or STOP_ACK about the frame's channel.
    async fn reply(
        &mut self,
        socket: &mut Socket,
        frame: &Frame,
        message_type: u8,
        reason: Option<&str>,
    ) -> Result<bool, Exit> {
        let Some(to) = &frame.to else { return Ok(false) };
        let reply = protocol::reply_frame(frame.channel_type, message_type, to, frame.message_id.as_ref(), reason);
        match self.write(socket, reply).await {
            Some(exit) => Err(exit),
            None => Ok(false),
        }
    }

    /// The maximum talk time ran out: the router takes the floor back and tells the
    /// talker with a STOP of its own.
    pub(super) async fn cut_talk(&mut self, socket: &mut Socket) -> Option<Exit> {
        let reason = "max_talk_time";
        let channel = &self.talk.as_ref()?.channel;
        let reply = protocol::reply_frame(channel.kind, STOP, &channel.to, None, Some(reason));
        self.end_talk(Some(reason)).await;
        self.write(socket, reply).await
    }

    /// Gives the floor back. `reason` is set when the router ends the talk on the
    /// talker's behalf: the receivers then get a STOP in the talker's name.
    pub(super) async fn end_talk(&mut self, reason: Option<&str>) {
        let (Some(talk), Some(session)) = (self.talk.take(), self.session.as_ref()) else { return };
        let channel = talk.channel;
        self.app.node.release_floor(&channel.key, &session.id).await;
        if let Some(reason) = reason {
            let stop = Frame {
                channel_type: channel.kind,
                message_type: STOP,
                from: Some(self.user.clone()),
                to: Some(channel.to.clone()),
                message_id: None,
                payload: Value::Map(vec![(Value::from("reason"), Value::from(reason))]),
            };
            self.forward(&stop, &channel);
        }
        if channel.kind == ChannelType::Group {
            self.end_indicator(IndicatorKind::Talking, channel.to).await;
        }
    }
}
