//! A dashboard's start from its last position instead of a snapshot: the stream of every
//! change from now on, with what the view holds besides presence (the live indicators)
//! and where it stands in the change log. The dashboard's connection reads the changes it
//! missed up to now from the store's log (see `ws/resume.rs`); subscribing first means no
//! change falls between the two (one in both is sent twice, which its version makes
//! harmless).

use bytes::Bytes;
use tokio::sync::broadcast;

use super::{Hub, HubEvent, Stale};
use crate::{position::Position, protocol::live::LiveIndicator, scope::Scope};

/// The start of a resuming dashboard.
pub struct Resumption {
    /// Every change after `seq`.
    pub events: broadcast::Receiver<HubEvent>,
    /// The hub's sequence number now: the dashboard's from here on.
    pub seq: u64,
    /// The view's position now: every transition up to it has been applied to the view
    /// (and so is in the log the missed changes are read from); `None` until known.
    pub position: Option<Position>,
    /// The live indicators of the scope now.
    pub indicators: Vec<LiveIndicator>,
    /// The STALE frame to send right after RESUMED when the view is stale (later spells
    /// come through `events`).
    pub stale: Option<Bytes>,
}

impl Hub {
    /// Subscribes a dashboard with `scope` that resumes from a position, under the view's
    /// lock.
    pub fn resumption(&self, scope: &Scope) -> Resumption {
        let view = self.view();
        Resumption {
            events: self.events.subscribe(),
            seq: view.seq,
            position: view.position.get(),
            indicators: view.indicators.in_scope(scope),
            stale: view.stale.as_ref().map(Stale::frame),
        }
    }
}
