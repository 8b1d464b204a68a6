//! What the serving benches (the ceilings of `scripts/perf.sh` and
//! `scripts/write-bench.sh`) share.

use std::net::{Ipv4Addr, SocketAddr};

/// Where a serving bench listens, and with how many actix-web workers: `workers = 0`
/// means one per core, as edgecache's `server.workers = 0`.
pub fn listen(port: u16, workers: usize) -> (SocketAddr, usize) {
    let workers = if workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        workers
    };
    (SocketAddr::from((Ipv4Addr::LOCALHOST, port)), workers)
}
