//! Transient messages: frames (PTT, TEXT, activity indicators) on their way to an audience,
//! and messages about one session, as the broker carries them between routers.
//!
//! Unlike presence, they have no version and no snapshot: each goes to whoever is
//! connected now, or nowhere. This module holds what they are and their wire encoding;
//! the broker ([`crate::engine::Broker`]) carries them between routers and the relay
//! ([`crate::relay`]) delivers them to this router's connections.

use std::sync::Arc;

use bytes::Bytes;

use crate::{
    id::Id,
    presence::{Groups, SessionId},
};

/// Who a relayed frame is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// The mobile sessions whose token names the group, and, when `dashboards` (the frame
    /// is an INDICATOR_UPDATE), the dashboards allowed to see the group, through the hub's
    /// view of live indicators (see [`crate::fanout::FanOut::deliver`]).
    Group { group: Id, dashboards: bool },
    /// Every session of one user (a private channel).
    User(Id),
    /// The sessions of one user that are in one of `groups` now (a private channel that
    /// needs a shared group: the sender's groups). Decided where the sessions are, with
    /// their current groups, whatever the sending router last heard of the user.
    UserIn { user: Id, groups: Groups },
    /// Every session of one user, told that the user chose `invisible` (or chose to be seen
    /// again): not a frame for the client but news for its connection, which hides (or
    /// shows) its own indicators and talking. The frame is empty.
    Visibility { user: Id, invisible: bool },
}

/// One frame on its way to an audience.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub audience: Audience,
    /// The sender: never echoed back to any of its sessions.
    pub except: Option<Id>,
    pub frame: Bytes,
}

/// A message about one session, between routers (see [`Relayed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// End this session: a newer session of its user and device replaced it.
    Replace(SessionId),
    /// This replaced session has ended: its floor, indicators and presence are released,
    /// and every frame it sent on its way out went before this message.
    Ended(SessionId),
    /// Another session took over the floor of this session's talk (by its message id),
    /// idle too long: the talk is over.
    FloorTaken { session: SessionId, talk: Arc<str> },
}

/// What travels between routers on the relay channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relayed {
    Frame(Delivery),
    Control(Control),
}

impl Delivery {
    /// The message routers exchange: msgpack `[origin, audienceKind, audienceId, flag,
    /// except, frame]`, audienceKind 0 = group (flag: dashboards too), 1 = user (flag:
    /// false, or the array of groups the user's sessions must be in), 2 = a user's
    /// visibility (flag: invisible). `origin` is the sending router, which already
    /// delivered to its own connections.
    pub fn encode(&self, origin: &str) -> Vec<u8> {
        use rmp::encode as enc;
        let mut buf = Vec::with_capacity(self.frame.len() + 64);
        let (kind, target, flag) = match &self.audience {
            Audience::Group { group, dashboards } => (0, group, *dashboards),
            Audience::User(user) | Audience::UserIn { user, .. } => (1, user, false),
            Audience::Visibility { user, invisible } => (2, user, *invisible),
        };
        // Writes into a Vec cannot fail.
        let _ = enc::write_array_len(&mut buf, 6);
        let _ = enc::write_str(&mut buf, origin);
        let _ = enc::write_uint(&mut buf, kind);
        let _ = enc::write_str(&mut buf, target.as_str());
        match &self.audience {
            Audience::UserIn { groups, .. } => {
                let _ = enc::write_array_len(&mut buf, groups.len() as u32);
                for group in groups.iter() {
                    let _ = enc::write_str(&mut buf, group.as_str());
                }
            }
            _ => {
                let _ = enc::write_bool(&mut buf, flag);
            }
        }
        match &self.except {
            Some(user) => {
                let _ = enc::write_str(&mut buf, user.as_str());
            }
            None => {
                let _ = enc::write_nil(&mut buf);
            }
        }
        let _ = enc::write_bin(&mut buf, &self.frame);
        buf
    }

    /// Reads [`Delivery::encode`]'s fields after the origin.
    fn decode(items: Vec<rmpv::Value>) -> Option<Delivery> {
        use rmpv::Value;
        let [kind, target, flag, except, frame]: [Value; 5] = items.try_into().ok()?;
        let target = Id::parse(target.as_str()?).ok()?;
        let audience = match kind.as_u64()? {
            0 => Audience::Group { group: target, dashboards: flag.as_bool()? },
            1 => match flag {
                Value::Array(groups) => Audience::UserIn {
                    user: target,
                    groups: groups
                        .iter()
                        .map(|group| Id::parse(group.as_str()?).ok())
                        .collect::<Option<Vec<Id>>>()?
                        .into(),
                },
                _ => Audience::User(target),
            },
            2 => Audience::Visibility { user: target, invisible: flag.as_bool()? },
            _ => return None,
        };
        let except = match except {
            Value::Nil => None,
            other => Some(Id::parse(other.as_str()?).ok()?),
        };
        let Value::Binary(frame) = frame else { return None };
        Some(Delivery { audience, except, frame: Bytes::from(frame) })
    }
}

/// The control message kinds, after the delivery's audience kinds (0, 1, 2).
const REPLACE: u64 = 3;
const ENDED: u64 = 4;
const FLOOR_TAKEN: u64 = 5;

impl Control {
    /// The message routers exchange: msgpack `[origin, kind, sessionId]`, kind 3 =
    /// replace, 4 = ended; `[origin, 5, sessionId, talk]` for a floor taken.
    pub fn encode(&self, origin: &str) -> Vec<u8> {
        use rmp::encode as enc;
        let (kind, session, talk) = match self {
            Control::Replace(session) => (REPLACE, session, None),
            Control::Ended(session) => (ENDED, session, None),
            Control::FloorTaken { session, talk } => (FLOOR_TAKEN, session, Some(talk)),
        };
        let mut buf = Vec::with_capacity(origin.len() + session.as_str().len() + talk.map_or(0, |t| t.len()) + 12);
        // Writes into a Vec cannot fail.
        let _ = enc::write_array_len(&mut buf, 3 + u32::from(talk.is_some()));
        let _ = enc::write_str(&mut buf, origin);
        let _ = enc::write_uint(&mut buf, kind);
        let _ = enc::write_str(&mut buf, session.as_str());
        if let Some(talk) = talk {
            let _ = enc::write_str(&mut buf, talk);
        }
        buf
    }
}

impl Relayed {
    /// Reads [`Delivery::encode`]'s or [`Control::encode`]'s message: the origin and what
    /// it carries, or `None` for anything else.
    pub fn decode(mut bytes: &[u8]) -> Option<(String, Relayed)> {
        use rmpv::Value;
        let value = rmpv::decode::read_value_with_max_depth(&mut bytes, crate::protocol::MAX_DEPTH).ok()?;
        let Value::Array(mut items) = value else { return None };
        if items.is_empty() {
            return None;
        }
        let origin = items.remove(0).as_str()?.to_owned();
        let relayed = match items.as_slice() {
            [kind, session] => {
                let session = SessionId::from(session.as_str()?.to_owned());
                match kind.as_u64()? {
                    REPLACE => Relayed::Control(Control::Replace(session)),
                    ENDED => Relayed::Control(Control::Ended(session)),
                    _ => return None,
                }
            }
            [kind, session, talk] if kind.as_u64() == Some(FLOOR_TAKEN) => {
                let session = SessionId::from(session.as_str()?.to_owned());
                Relayed::Control(Control::FloorTaken { session, talk: Arc::from(talk.as_str()?) })
            }
            _ => Relayed::Frame(Delivery::decode(items)?),
        };
        Some((origin, relayed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Id {
        Id::parse(s).unwrap()
    }

    #[test]
    fn deliveries_and_controls_survive_the_trip_between_routers() {
        let group = Delivery {
            audience: Audience::Group { group: id("g"), dashboards: true },
            except: Some(id("a")),
            frame: Bytes::from_static(b"x"),
        };
        assert_eq!(Relayed::decode(&group.encode("r1")), Some(("r1".into(), Relayed::Frame(group))));
        let private = Delivery { audience: Audience::User(id("b")), except: None, frame: Bytes::from_static(b"\x93") };
        assert_eq!(Relayed::decode(&private.encode("r2")), Some(("r2".into(), Relayed::Frame(private))));
        let shared = Delivery {
            audience: Audience::UserIn { user: id("b"), groups: vec![id("g"), id("h")].into() },
            except: Some(id("a")),
            frame: Bytes::from_static(b"\x93"),
        };
        assert_eq!(Relayed::decode(&shared.encode("r2")), Some(("r2".into(), Relayed::Frame(shared))));
        let taken = Control::FloorTaken { session: SessionId::new("r1", 7), talk: "0_3_g_a_1".into() };
        for control in [Control::Replace(SessionId::new("r1", 7)), Control::Ended(SessionId::new("r1", 7)), taken] {
            assert_eq!(Relayed::decode(&control.encode("r2")), Some(("r2".into(), Relayed::Control(control))));
        }
        let hidden = Delivery {
            audience: Audience::Visibility { user: id("b"), invisible: true },
            except: None,
            frame: Bytes::new(),
        };
        assert_eq!(Relayed::decode(&hidden.encode("r3")), Some(("r3".into(), Relayed::Frame(hidden))));
        assert_eq!(Relayed::decode(b"\x91\x01"), None);
        assert_eq!(Relayed::decode(b"\x90"), None);
        assert_eq!(Relayed::decode(b""), None);
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_broker_messages_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = Relayed::decode(&bytes);
        }
    }
}
