//! The edge of one listener: which client each connection or request speaks for
//! (`forwarded`) and whether that client may come in now (`budget`).
//!
//! A peer that is not a trusted proxy is its own client and is checked once, right after
//! its accept, before anything is read from it. A trusted proxy's connection is accepted;
//! each of its requests is checked once its head is parsed, against the client it names,
//! before any handler (so before any token is verified). A refused request is answered 429
//! with `Retry-After`; see `budget` for the rules.
//!
//! An admitted request carries a [`ClientBudget`] in its extensions, which the WebSocket
//! it may become uses to penalize its address when it is closed 4029, and every request its
//! [`ClientAddr`], which the log shows.

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::http::HeaderMap;
use tokio::time::Instant;

use super::{
    budget::{AddressBudget, BudgetLimits, Refusal},
    forwarded::{TrustedProxies, budget_key, forwarded_client, has_forwarding_headers},
};
use crate::metrics;

/// What the edge knows of an accepted connection.
#[derive(Debug, Clone, Copy)]
pub(super) enum Source {
    /// A client admitted on accept; its requests are its own.
    Client(IpAddr),
    /// A trusted proxy: each request names its client.
    Proxy,
    /// Not budgeted (the budget is off).
    Unbudgeted,
}

pub(super) struct Edge {
    trusted: TrustedProxies,
    budget: Option<AddressBudget>,
    /// An untrusted peer sent forwarding headers: said once in the log.
    warned: AtomicBool,
}

impl Edge {
    pub(super) fn new(trusted: TrustedProxies, limits: BudgetLimits) -> Arc<Edge> {
        Arc::new(Edge { trusted, budget: AddressBudget::new(limits), warned: AtomicBool::new(false) })
    }

    /// Decides on a connection just accepted from `peer`, before reading from it.
    pub(super) fn on_accept(&self, peer: IpAddr) -> Result<Source, Refusal> {
        let Some(budget) = &self.budget else { return Ok(Source::Unbudgeted) };
        if self.trusted.contains(peer) {
            return Ok(Source::Proxy);
        }
        let key = budget_key(peer);
        budget.admit(key, Instant::now()).map(|()| Source::Client(key))
    }

    /// Decides on a request of a connection from `peer` once its head is parsed: the client
    /// it speaks for and, admitted, the client's budget when it has one.
    pub(super) fn on_request(
        self: &Arc<Self>,
        source: Source,
        peer: IpAddr,
        headers: &HeaderMap,
    ) -> (ClientAddr, Result<Option<ClientBudget>, Refusal>) {
        let named = match self.trusted.contains(peer) {
            true => forwarded_client(&self.trusted, headers),
            false => None,
        };
        let client = ClientAddr(named.unwrap_or(peer));
        (client, self.admit(source, peer, named, headers))
    }

    /// The budget's decision on a request; `named` is the client a trusted proxy named.
    fn admit(
        self: &Arc<Self>,
        source: Source,
        peer: IpAddr,
        named: Option<IpAddr>,
        headers: &HeaderMap,
    ) -> Result<Option<ClientBudget>, Refusal> {
        let key = match source {
            Source::Unbudgeted => return Ok(None),
            Source::Client(key) => {
                if has_forwarding_headers(headers) && !self.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        %peer,
                        "a peer outside --trusted-proxies sent X-Forwarded-For or X-Real-IP: ignored. If it is \
                         a proxy, add it to --trusted-proxies, or every client behind it shares its budget"
                    );
                }
                key
            }
            Source::Proxy => {
                let (Some(budget), Some(client)) = (&self.budget, named) else {
                    return Ok(None);
                };
                let key = budget_key(client);
                budget.admit(key, Instant::now())?;
                key
            }
        };
        Ok(Some(ClientBudget { edge: self.clone(), key }))
    }
}

/// The address of the client a request speaks for: the one a trusted proxy names (see
/// `forwarded`), else the peer's own. Unlike the budget's key, the whole address (not an
/// IPv6 client's /64). Every request carries it in its extensions, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// The budget a request was admitted under: its client's address on the listener's edge.
#[derive(Clone)]
pub struct ClientBudget {
    edge: Arc<Edge>,
    key: IpAddr,
}

impl ClientBudget {
    /// This client's WebSocket was closed 4029: its new connections are refused for the
    /// penalty (`--abuse-penalty-ms`).
    pub fn penalize(&self) {
        if let Some(budget) = &self.edge.budget {
            ::metrics::counter!(metrics::EDGE_PENALTIES).increment(1);
            tracing::debug!(client = %self.key, "address penalized after a 4029");
            budget.penalize(self.key, Instant::now());
        }
    }
}
