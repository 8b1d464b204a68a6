//! The node's group: its peers, their health, and which node owns a session.
//!
//! The owner of a session is chosen by rendezvous (highest-random-weight) hashing of
//! the session id over this node and the peers in rotation: every node computes the
//! same owner from the same view, a peer leaving moves only its own sessions, and no
//! ring has to be kept in sync. A peer leaves the rotation after
//! `cluster.failure_threshold` consecutive failed health checks or forwards (the
//! circuit opens), or at once when it announces that it is stopping; one successful
//! check puts it back.
//!
//! Calls between nodes are authenticated: each carries a [`proof`] made with the
//! group's cluster secret, and a node accepts a call only from a listed peer whose
//! proof checks out. A peer that refuses this node's proofs (another secret, clocks
//! too far apart) fails its health checks and so leaves the rotation: forwarding to
//! it would be refused.

mod proof;
mod purge;

use std::fmt::Display;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use edgecache_config::ClusterSettings;

use crate::backoff::Schedule;

pub use proof::{Keys, ProofError, Proven, PROOF_HEADER, PROOF_WINDOW};
pub use purge::{PeerPurge, PURGE_PATH};

/// The peer route a health check asks (authenticated, unlike `/healthz`).
pub const HEALTH_PATH: &str = "/cluster/health";
/// The peer route a leave announcement is posted to.
pub const LEAVE_PATH: &str = "/cluster/leave";

/// A failing peer out of rotation is checked at least once every this many health
/// intervals.
pub const MAX_BACKOFF_INTERVALS: u32 = 4;

/// One peer node.
pub struct Peer {
    pub id: String,
    /// `http://host:port`
    pub base: String,
    in_rotation: AtomicBool,
    failures: AtomicU32,
    /// Raised each time the peer announces it is leaving: a check or forward that
    /// was sent before the announcement and succeeds after it does not bring the
    /// peer back.
    leaves: AtomicU64,
}

impl Peer {
    pub fn in_rotation(&self) -> bool {
        self.in_rotation.load(Ordering::Acquire)
    }

    /// Take this before contacting the peer; hand it to [`Cluster::succeeded`].
    pub fn epoch(&self) -> u64 {
        self.leaves.load(Ordering::Acquire)
    }
}

/// This node and its peers.
pub struct Cluster {
    node_id: String,
    peers: Vec<Peer>,
    settings: ClusterSettings,
    keys: Keys,
    client: reqwest::Client,
    /// Requests this node forwarded to their session's owner.
    pub forwarded: AtomicU64,
    /// Forwards that failed (the request was then served here, or answered 503 when
    /// a write's outcome was unknown).
    pub forward_failures: AtomicU64,
}

/// The stable rendezvous weight of `node` for `session`.
fn weight(node: &str, session: &str) -> u64 {
    // FNV-1a, then a splitmix64 finaliser so similar ids spread evenly.
    crate::hash::splitmix64_mix(edgecache_actors::item_hash(node, session))
}

impl Cluster {
    pub fn new(node_id: &str, settings: &ClusterSettings) -> Self {
        let peers = settings
            .peers
            .iter()
            .map(|(id, address)| Peer {
                id: id.clone(),
                base: format!("http://{address}"),
                in_rotation: AtomicBool::new(true),
                failures: AtomicU32::new(0),
                leaves: AtomicU64::new(0),
            })
            .collect();
        let client = reqwest::Client::builder()
            .connect_timeout(settings.health_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .expect("a plain HTTP client builds");
        Self {
            node_id: node_id.to_owned(),
            peers,
            settings: settings.clone(),
            keys: Keys::new(settings),
            client,
            forwarded: AtomicU64::new(0),
            forward_failures: AtomicU64::new(0),
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Whether this node has no peers (affinity is then moot).
    pub fn is_solo(&self) -> bool {
        self.peers.is_empty()
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn forward_timeout(&self) -> Duration {
        self.settings.forward_timeout
    }

    /// The owner of `session_id` among this node and the peers in rotation; `None`
    /// when it is this node.
    pub fn owner(&self, session_id: &str) -> Option<&Peer> {
        let own = weight(&self.node_id, session_id);
        self.peers
            .iter()
            .filter(|p| p.in_rotation())
            .map(|p| (weight(&p.id, session_id), p))
            .filter(|(w, _)| *w > own)
            .max_by_key(|(w, _)| *w)
            .map(|(_, p)| p)
    }

    /// The proof of this node's call of `method` on `target` (path and query, as
    /// sent) to a peer, for the [`PROOF_HEADER`]; `None` without a cluster secret
    /// (a solo node, which calls no peer).
    pub fn sign(&self, method: &str, target: &str) -> Option<String> {
        self.keys
            .sign(&self.node_id, method, target, None, SystemTime::now())
    }

    /// [`Cluster::sign`] for a call whose `body` the proof covers (a peer call that
    /// carries one: purge, leave).
    pub fn sign_with_body(&self, method: &str, target: &str, body: &[u8]) -> Option<String> {
        self.keys
            .sign(&self.node_id, method, target, Some(body), SystemTime::now())
    }

    /// Checks the proof of a call of `method` on `target` (path and query, as
    /// received): made with an accepted cluster secret, within [`PROOF_WINDOW`], by
    /// one of this node's peers. Returns that peer.
    pub fn verify(&self, proof: Option<&str>, method: &str, target: &str) -> Result<&Peer, ProofError> {
        self.verify_body(proof, method, target, None)
    }

    /// [`Cluster::verify`] of a call whose proof must cover `body` when given.
    pub fn verify_body(
        &self,
        proof: Option<&str>,
        method: &str,
        target: &str,
        body: Option<&[u8]>,
    ) -> Result<&Peer, ProofError> {
        let Proven { node } = self.keys.verify(proof, method, target, body, SystemTime::now())?;
        self.peers
            .iter()
            .find(|p| p.id == node)
            .ok_or_else(|| ProofError::UnknownPeer(node.to_owned()))
    }

    /// Counts a failure of `peer` (`cause` is logged when it takes the peer out); past
    /// the threshold it leaves the rotation.
    pub fn failed(&self, peer: &Peer, cause: impl Display) {
        let failures = peer.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= self.settings.failure_threshold && peer.in_rotation.swap(false, Ordering::AcqRel) {
            tracing::warn!(peer = %peer.id, failures, %cause, "peer out of rotation");
        }
    }

    /// Counts a success of `peer` contacted at `epoch` ([`Peer::epoch`]); it is
    /// (back) in rotation — unless it announced leaving since.
    pub fn succeeded(&self, peer: &Peer, epoch: u64) {
        if peer.epoch() != epoch {
            return;
        }
        peer.failures.store(0, Ordering::Release);
        if !peer.in_rotation.swap(true, Ordering::AcqRel) {
            tracing::info!(peer = %peer.id, "peer in rotation");
        }
    }

    /// A peer said it is stopping: out of rotation now (its health checks bring it
    /// back when it serves again).
    pub fn left(&self, id: &str) {
        if let Some(peer) = self.peers.iter().find(|p| p.id == id) {
            peer.leaves.fetch_add(1, Ordering::AcqRel);
            peer.failures
                .store(self.settings.failure_threshold, Ordering::Release);
            peer.in_rotation.store(false, Ordering::Release);
            tracing::info!(peer = %peer.id, "peer left");
        }
    }

    /// A request of this node to `peer`, with its proof.
    fn call(&self, peer: &Peer, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = self
            .client
            .request(method.clone(), format!("{}{path}", peer.base))
            .timeout(self.settings.health_timeout);
        if let Some(proof) = self.sign(method.as_str(), path) {
            request = request.header(PROOF_HEADER, proof);
        }
        request
    }

    /// A `POST` of JSON `body` to `path` on `peer`, with a proof that covers it.
    fn post(&self, peer: &Peer, path: &str, body: String) -> reqwest::RequestBuilder {
        let mut request = self
            .client
            .post(format!("{}{path}", peer.base))
            .timeout(self.settings.health_timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(proof) = self.sign_with_body("POST", path, body.as_bytes()) {
            request = request.header(PROOF_HEADER, proof);
        }
        request.body(body)
    }

    /// Checks every peer's [`HEALTH_PATH`] each `health_interval`, until the task is
    /// dropped (at shutdown). A peer that answers 401 refuses this node's proofs: it
    /// counts as failed. A peer out of rotation that still fails is checked on a
    /// jittered back-off (at most [`MAX_BACKOFF_INTERVALS`] intervals apart), so the
    /// nodes of a group do not all call it at the same instants.
    pub async fn watch(self: Arc<Self>) {
        let interval = self.settings.health_interval;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let this = &*self;
        let mut schedules: Vec<Schedule> = this
            .peers
            .iter()
            .map(|_| Schedule::new(interval, interval * MAX_BACKOFF_INTERVALS))
            .collect();
        loop {
            ticker.tick().await;
            let now = tokio::time::Instant::now();
            let checks = this
                .peers
                .iter()
                .zip(&mut schedules)
                .filter(|(_, schedule)| schedule.due(now))
                .map(|(peer, schedule)| async move {
                    let epoch = peer.epoch();
                    let answered = match this.call(peer, reqwest::Method::GET, HEALTH_PATH).send().await {
                        Ok(response) if response.status().is_success() => {
                            this.succeeded(peer, epoch);
                            true
                        }
                        Ok(response) if response.status() == reqwest::StatusCode::UNAUTHORIZED => {
                            this.failed(
                                peer,
                                "it refuses this node's proof (another cluster secret, or clocks too far apart)",
                            );
                            false
                        }
                        Ok(response) => {
                            this.failed(peer, format!("health check answered {}", response.status()));
                            false
                        }
                        Err(e) => {
                            this.failed(peer, e);
                            false
                        }
                    };
                    // Checked every tick until it leaves the rotation: the failure
                    // threshold counts consecutive checks.
                    if answered {
                        schedule.answered();
                    } else if !peer.in_rotation() {
                        schedule.failed(now);
                    }
                });
            futures_util::future::join_all(checks).await;
        }
    }

    /// Tells every peer this node is stopping, so they stop forwarding to it before
    /// it stops accepting. Bounded by the health timeout.
    pub async fn announce_leaving(&self) {
        let body = serde_json::json!({ "node": self.node_id }).to_string();
        let notes = self
            .peers
            .iter()
            .map(|peer| self.post(peer, LEAVE_PATH, body.clone()).send());
        futures_util::future::join_all(notes).await;
    }

    /// The peers and whether each is in rotation (`/readyz`).
    pub fn view(&self) -> Vec<(&str, bool)> {
        self.peers
            .iter()
            .map(|p| (p.id.as_str(), p.in_rotation()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(me: &str, peers: &[&str]) -> Cluster {
        let settings = ClusterSettings {
            peers: peers
                .iter()
                .map(|p| (p.to_string(), "127.0.0.1:1".to_owned()))
                .collect(),
            ..ClusterSettings::default()
        };
        Cluster::new(me, &settings)
    }

    #[test]
    fn every_node_agrees_on_the_owner_and_load_spreads() {
        let names = ["n1", "n2", "n3"];
        let views: Vec<Cluster> = names
            .iter()
            .map(|me| cluster(me, &names.iter().copied().filter(|n| n != me).collect::<Vec<_>>()))
            .collect();
        let mut owned = [0usize; 3];
        for i in 0..3000 {
            let session = format!("s{i}");
            let owners: Vec<&str> = views
                .iter()
                .map(|c| c.owner(&session).map_or(c.node_id(), |p| p.id.as_str()))
                .collect();
            assert!(owners.windows(2).all(|w| w[0] == w[1]), "{session}: {owners:?}");
            owned[names.iter().position(|n| *n == owners[0]).unwrap()] += 1;
        }
        assert!(owned.iter().all(|n| (800..1200).contains(n)), "{owned:?}");
    }

    #[test]
    fn a_peer_out_of_rotation_owns_nothing_and_only_its_sessions_move() {
        let c = cluster("n1", &["n2", "n3"]);
        let before: Vec<Option<String>> = (0..300)
            .map(|i| c.owner(&format!("s{i}")).map(|p| p.id.clone()))
            .collect();
        c.left("n3");
        for (i, owner) in before.iter().enumerate() {
            let now = c.owner(&format!("s{i}")).map(|p| p.id.clone());
            assert_ne!(now.as_deref(), Some("n3"));
            if owner.as_deref() != Some("n3") {
                assert_eq!(&now, owner, "a session not owned by n3 stays where it was");
            }
        }
        c.succeeded(&c.peers[1], c.peers[1].epoch());
        assert!(c.peers[1].in_rotation());
    }

    #[test]
    fn a_check_sent_before_a_peer_left_does_not_bring_it_back() {
        let c = cluster("n1", &["n2"]);
        let peer = &c.peers[0];
        let sent = peer.epoch();
        c.left("n2");
        c.succeeded(peer, sent);
        assert!(!peer.in_rotation(), "a success from before the leave");
        c.succeeded(peer, peer.epoch());
        assert!(peer.in_rotation(), "a check sent after it");
    }
}
