//! A dashboard's snapshot: the PRESENCE_SNAPSHOT frame, then the changes (presence updates,
//! indicator starts and ends) after it that the hub sends along when the frame is a cached
//! one a moment old.
//!
//! Snapshot frames count against the router's snapshot budget (`--snapshot-memory-mb`)
//! while they are in memory, once however many dashboards share them. The socket queues
//! the frame by reference, so once `write` returns this dashboard holds nothing of it and
//! lets the hub know. A dashboard whose frame finds no room waits, holding nothing, for up
//! to the write timeout, then is closed 4008 like any other slow consumer.

use tokio::time::Instant;

use super::{
    close,
    connection::{Connection, Exit},
    socket::Socket,
};
use crate::hub::SnapshotSource;

impl Connection {
    /// Writes the snapshot of `source` and the changes that bring it up to date.
    pub(super) async fn write_snapshot(&mut self, socket: &mut Socket, source: SnapshotSource) -> Option<Exit> {
        let hub = self.app.node.hub().clone();
        let deadline = Instant::now() + self.app.limits.write_timeout;
        let Some(snapshot) = hub.snapshot_frame(source, self.watched_scope(), deadline).await else {
            tracing::info!("no room for a snapshot within the write timeout");
            return Some(Exit::Close(close::SLOW_CONSUMER, "snapshot memory full"));
        };
        self.seq = snapshot.frame_seq;
        let written = self.write(socket, snapshot.frame()).await;
        // Written (or given up on): this dashboard no longer needs the frame.
        let (backlog, seq) = snapshot.release();
        if written.is_some() {
            return written;
        }
        let mut fed = false;
        for change in backlog {
            if let Some(frame) = self.shown(change) {
                if let Some(exit) = self.timed(socket.feed(frame)).await {
                    return Some(exit);
                }
                fed = true;
            }
        }
        self.seq = self.seq.max(seq);
        if fed { self.timed(socket.flush()).await } else { None }
    }
}
