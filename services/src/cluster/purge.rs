//! A purge sent to every peer (`POST /cluster/purge`, authenticated like every call
//! between nodes), each answer awaited at most `cluster.forward_timeout`.

use std::time::Duration;

use crate::node::PurgeCount;
use crate::purge::PurgeMessage;

use super::{Cluster, Peer};

/// The peer route a purge is posted to.
pub const PURGE_PATH: &str = "/cluster/purge";

/// One peer's answer to a purge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerPurge {
    /// The peer applied it (or already had).
    Confirmed(PurgeCount),
    /// No confirmation within the bound: refused, failed, or no answer. The peer may
    /// still apply it (from the change feed, or a late delivery).
    Unconfirmed(String),
}

impl Cluster {
    /// Sends `message` to every peer, in or out of rotation (one out of rotation may
    /// still serve), and waits for their answers at most `within`.
    pub async fn broadcast_purge(
        &self,
        message: &PurgeMessage,
        within: Duration,
    ) -> Vec<(String, PeerPurge)> {
        let body = message.encode();
        let sends = self.peers.iter().map(|peer| {
            let body = body.clone();
            async move { (peer.id.clone(), self.send_purge(peer, body, within).await) }
        });
        futures_util::future::join_all(sends).await
    }

    async fn send_purge(&self, peer: &Peer, body: String, within: Duration) -> PeerPurge {
        let request = self.post(peer, PURGE_PATH, body).timeout(within);
        match request.send().await {
            Ok(response) if response.status().is_success() => match response.json::<PurgeCount>().await {
                Ok(count) => PeerPurge::Confirmed(count),
                Err(e) => PeerPurge::Unconfirmed(format!("unreadable answer: {e}")),
            },
            Ok(response) => PeerPurge::Unconfirmed(format!("answered {}", response.status())),
            Err(e) if e.is_timeout() => PeerPurge::Unconfirmed(format!("no answer within {within:?}")),
            Err(e) => PeerPurge::Unconfirmed(format!("unreachable: {e}")),
        }
    }

    /// How long a purge waits for the peers' answers.
    pub fn purge_timeout(&self) -> Duration {
        self.settings.forward_timeout
    }
}
