use actix_web::http::header::HeaderValue;

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

    /// The `Cache-Status` parameters after the cache's name. `strict` says the strict
    /// fields were read from the primary for this response.
    pub fn params(self, strict: bool) -> &'static str {
        match (self, strict) {
            (CacheStatus::Hit, false) => "hit",
            (CacheStatus::Hit, true) => "hit; detail=strict-from-primary",
            (CacheStatus::Stale, false) => "hit; detail=stale-while-revalidate",
            (CacheStatus::Stale, true) => "hit; detail=\"stale-while-revalidate strict-from-primary\"",
            (CacheStatus::StaleIfError, _) => "hit; detail=stale-if-error",
            (CacheStatus::Session, false) => "hit; detail=session",
            (CacheStatus::Session, true) => "hit; detail=\"session strict-from-primary\"",
            (CacheStatus::Miss, _) => "fwd=uri-miss; stored",
            (CacheStatus::Expired, _) => "fwd=stale; fwd-status=200; stored",
            (CacheStatus::Watermark, _) => "fwd=miss; detail=session-watermark; stored",
        }
    }

    /// The parameters of [`CacheStatus::params`] without `detail`, and the words of
    /// its `detail`.
    fn parts(self, strict: bool) -> (&'static str, &'static [&'static str]) {
        const STRICT: &str = "strict-from-primary";
        match (self, strict) {
            (CacheStatus::Hit, false) => ("hit", &[]),
            (CacheStatus::Hit, true) => ("hit", &[STRICT]),
            (CacheStatus::Stale, false) => ("hit", &["stale-while-revalidate"]),
            (CacheStatus::Stale, true) => ("hit", &["stale-while-revalidate", STRICT]),
            (CacheStatus::StaleIfError, _) => ("hit", &["stale-if-error"]),
            (CacheStatus::Session, false) => ("hit", &["session"]),
            (CacheStatus::Session, true) => ("hit", &["session", STRICT]),
            (CacheStatus::Miss, _) => ("fwd=uri-miss; stored", &[]),
            (CacheStatus::Expired, _) => ("fwd=stale; fwd-status=200; stored", &[]),
            (CacheStatus::Watermark, _) => ("fwd=miss; stored", &["session-watermark"]),
        }
    }

    /// [`CacheStatus::params`] with one more word in `detail` (a projection, e.g.
    /// `fields=description,name`): the detail becomes an sf-string.
    pub fn params_with(self, strict: bool, extra: &str) -> String {
        let (base, words) = self.parts(strict);
        let mut detail = String::new();
        for word in words.iter().copied().chain([extra]) {
            if !detail.is_empty() {
                detail.push(' ');
            }
            for c in word.chars() {
                if matches!(c, '"' | '\\') {
                    detail.push('\\');
                }
                detail.push(c);
            }
        }
        format!("{base}; detail=\"{detail}\"")
    }

    const ALL: [CacheStatus; 7] = [
        CacheStatus::Hit,
        CacheStatus::Stale,
        CacheStatus::StaleIfError,
        CacheStatus::Session,
        CacheStatus::Miss,
        CacheStatus::Expired,
        CacheStatus::Watermark,
    ];
}

/// Every `Cache-Status` value this node answers, made once: RFC 9211 names the cache
/// first, and the node's id is that name (`edge-1; hit`), so an answer that carries
/// Cache-Status needs no `X-Edgecache-Node` beside it. Made at start-up and kept for
/// the process's life (a few dozen bytes per node), so a hit copies no bytes and
/// counts no references to set the header.
pub struct CacheStatusHeaders {
    /// By `CacheStatus as usize * 2 + strict`.
    values: [HeaderValue; CacheStatus::ALL.len() * 2],
    /// The cache's name, as the values start with it.
    name: String,
}

impl CacheStatusHeaders {
    pub fn new(node_id: &str) -> Self {
        // An sf-token starts with a letter (or `*`); node ids may start with a digit,
        // and are then sent as an sf-string. Validated ids need no escaping.
        let name = if node_id.starts_with(|c: char| c.is_ascii_alphabetic()) {
            node_id.to_owned()
        } else {
            format!("\"{node_id}\"")
        };
        let values = std::array::from_fn(|i| {
            let status = CacheStatus::ALL[i / 2];
            let text: &'static str =
                Box::leak(format!("{name}; {}", status.params(i % 2 == 1)).into_boxed_str());
            HeaderValue::from_static(text)
        });
        Self { values, name }
    }

    pub fn get(&self, status: CacheStatus, strict: bool) -> HeaderValue {
        self.values[status as usize * 2 + usize::from(strict)].clone()
    }

    /// The value of [`CacheStatusHeaders::get`] with `extra` in its `detail`
    /// ([`CacheStatus::params_with`]); made per response.
    pub fn with_detail(&self, status: CacheStatus, strict: bool, extra: &str) -> HeaderValue {
        let text = format!("{}; {}", self.name, status.params_with(strict, extra));
        HeaderValue::from_str(&text).unwrap_or_else(|_| self.get(status, strict))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_names_the_cache() {
        let headers = CacheStatusHeaders::new("edge-1");
        assert_eq!(headers.get(CacheStatus::Hit, false), "edge-1; hit");
        assert_eq!(
            headers.get(CacheStatus::Hit, true),
            "edge-1; hit; detail=strict-from-primary"
        );
        assert_eq!(
            headers.get(CacheStatus::Watermark, false),
            "edge-1; fwd=miss; detail=session-watermark; stored"
        );
        for status in CacheStatus::ALL {
            for strict in [false, true] {
                let value = headers.get(status, strict);
                let value = value.to_str().unwrap();
                assert_eq!(value.strip_prefix("edge-1; "), Some(status.params(strict)));
                assert_eq!(value.contains("; hit"), status.is_hit(), "{value}");
            }
        }
    }

    #[test]
    fn a_projection_joins_the_detail() {
        let headers = CacheStatusHeaders::new("edge-1");
        assert_eq!(
            headers.with_detail(CacheStatus::Hit, false, "fields=description,name"),
            "edge-1; hit; detail=\"fields=description,name\""
        );
        assert_eq!(
            headers.with_detail(CacheStatus::Stale, true, "fields=stock"),
            "edge-1; hit; detail=\"stale-while-revalidate strict-from-primary fields=stock\""
        );
        assert_eq!(
            headers.with_detail(CacheStatus::Watermark, false, "fields=a"),
            "edge-1; fwd=miss; stored; detail=\"session-watermark fields=a\""
        );
        // The same parameters as the static values, with the detail moved last.
        for status in CacheStatus::ALL {
            for strict in [false, true] {
                let (base, words) = status.parts(strict);
                let expected: Vec<&str> = status.params(strict).split("; ").collect();
                let mut rebuilt: Vec<String> = base.split("; ").map(str::to_owned).collect();
                match words {
                    [] => {}
                    [one] => rebuilt.push(format!("detail={one}")),
                    many => rebuilt.push(format!("detail=\"{}\"", many.join(" "))),
                }
                let mut sorted_expected = expected.clone();
                sorted_expected.sort_unstable();
                rebuilt.sort_unstable();
                assert_eq!(rebuilt, sorted_expected, "{status:?} {strict}");
            }
        }
        assert_eq!(
            CacheStatus::Hit.params_with(false, "a\"b"),
            "hit; detail=\"a\\\"b\""
        );
    }

    #[test]
    fn an_id_that_is_not_a_token_is_a_string() {
        assert_eq!(
            CacheStatusHeaders::new("007").get(CacheStatus::Miss, false),
            "\"007\"; fwd=uri-miss; stored"
        );
    }
}
