/// How a read was served, as logs, metrics and the `Cache-Status` header (RFC 9211)
/// name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// From the cache, fresh for every field class.
    Hit,
    /// From the cache past its TTL, within stale-while-revalidate; one background
    /// refresh runs.
    Stale,
    /// From the cache past its TTL because the origin failed, within stale-if-error.
    StaleIfError,
    /// From the session's own last write of the item (newer than the cache).
    Session,
    /// The cache did not hold the item: read from the origin and stored.
    Miss,
    /// The cache held the item too old for its freshness classes: read from the
    /// origin and stored.
    Expired,
    /// The cache held the item older than this session's watermarks (its own write,
    /// or a version it already read): read from the origin and stored.
    Watermark,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Stale => "stale",
            CacheStatus::StaleIfError => "stale-if-error",
            CacheStatus::Session => "session",
            CacheStatus::Miss => "miss",
            CacheStatus::Expired => "expired",
            CacheStatus::Watermark => "watermark",
        }
    }

    /// Whether the response came from what the node held, without an origin read for
    /// the non-strict fields.
    pub fn is_hit(self) -> bool {
        matches!(
            self,
            CacheStatus::Hit | CacheStatus::Stale | CacheStatus::StaleIfError | CacheStatus::Session
        )
    }

    /// The `Cache-Status` header value. `strict` says the strict fields were read
    /// from the primary for this response.
    pub fn header(self, strict: bool) -> &'static str {
        match (self, strict) {
            (CacheStatus::Hit, false) => "edgecache; hit",
            (CacheStatus::Hit, true) => "edgecache; hit; detail=strict-from-primary",
            (CacheStatus::Stale, false) => "edgecache; hit; detail=stale-while-revalidate",
            (CacheStatus::Stale, true) => {
                "edgecache; hit; detail=\"stale-while-revalidate strict-from-primary\""
            }
            (CacheStatus::StaleIfError, _) => "edgecache; hit; detail=stale-if-error",
            (CacheStatus::Session, false) => "edgecache; hit; detail=session",
            (CacheStatus::Session, true) => "edgecache; hit; detail=\"session strict-from-primary\"",
            (CacheStatus::Miss, _) => "edgecache; fwd=uri-miss; stored",
            (CacheStatus::Expired, _) => "edgecache; fwd=stale; fwd-status=200; stored",
            (CacheStatus::Watermark, _) => "edgecache; fwd=miss; detail=session-watermark; stored",
        }
    }
}
