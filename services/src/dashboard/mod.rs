//! The operator's dashboard (`GET /admin/dashboard`): the node's experiments, cache,
//! sessions, origin tiers and cluster, as tables and as charts over the last
//! `admin.dashboard_history`.
//!
//! [`Dashboard`] owns the snapshot ring and the task that fills it (one snapshot
//! every `admin.dashboard_interval`, stopped by the node's shutdown signal); `page`
//! renders the HTML, `svg` the charts (written directly rather than with plotters:
//! a line chart is a polyline and two labels, and plotters' SVG backend would bring
//! a font stack and a dozen crates for that), `html` escapes every value shown.

mod html;
mod page;
mod svg;

use std::sync::Arc;
use std::time::Duration;

use edgecache_config::AdminSettings;

pub use html::Escaped;
pub use page::{nines, render, PageData};

use crate::cluster::Cluster;
use crate::metrics::{NodePoint, Snapshot, SnapshotRing, Snapshotter};
use crate::Node;

/// The snapshot ring of one node and what a snapshot reads.
pub struct Dashboard {
    node: Arc<Node>,
    cluster: Arc<Cluster>,
    ring: SnapshotRing,
    interval: Duration,
}

impl Dashboard {
    /// A dashboard of `node` in `cluster`, its ring sized for
    /// `dashboard_history / dashboard_interval` snapshots.
    pub fn new(node: Arc<Node>, cluster: Arc<Cluster>, settings: &AdminSettings) -> Self {
        let interval = settings.dashboard_interval;
        let capacity = (settings.dashboard_history.as_millis() / interval.as_millis().max(1)) as usize;
        Self {
            node,
            cluster,
            ring: SnapshotRing::new(capacity.clamp(1, 10_000)),
            interval,
        }
    }

    /// Takes a snapshot every interval until the node's shutdown signal fires (run it
    /// with [`crate::Shutdown::spawn`]).
    pub async fn sample(self: Arc<Self>) {
        let mut snapshotter = Snapshotter::default();
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let snapshot = snapshotter.take(self.node.metrics(), self.point());
            self.ring.push(snapshot);
        }
    }

    /// The node-wide figures as of now.
    fn point(&self) -> NodePoint {
        let (cache_entries, cache_bytes) = self.node.cache().usage();
        let view = self.cluster.view();
        NodePoint {
            cache_entries,
            cache_bytes,
            live_sessions: self.node.live_sessions(),
            peers: view.len(),
            peers_in_rotation: view.iter().filter(|(_, up)| *up).count(),
            forwards: self.cluster.forwarded.load(std::sync::atomic::Ordering::Relaxed),
            forward_failures: self
                .cluster
                .forward_failures
                .load(std::sync::atomic::Ordering::Relaxed),
            ..NodePoint::of(self.node.metrics())
        }
    }

    /// The counters as of now (not kept in the ring).
    pub fn now(&self) -> Snapshot {
        Snapshotter::default().take(self.node.metrics(), self.point())
    }

    /// The ring's snapshots, oldest first.
    pub fn history(&self) -> Vec<Arc<Snapshot>> {
        self.ring.all()
    }

    /// Seconds between the page's reloads: the snapshot interval, at least 5 s.
    pub fn refresh_secs(&self) -> u64 {
        self.interval.as_secs().max(5)
    }

    /// The page as of now, its `<style>` allowed by `nonce`.
    pub fn page(&self, nonce: &str) -> String {
        let now = self.now();
        let history = self.history();
        let flag_source = self
            .node
            .flag_status()
            .unwrap_or_else(|| "configuration".to_owned());
        render(&PageData {
            node_id: self.node.node_id(),
            flag_source: &flag_source,
            now: &now,
            history: &history,
            refresh_secs: self.refresh_secs(),
            nonce,
        })
    }
}
