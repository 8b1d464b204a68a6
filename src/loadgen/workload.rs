//! What the sessions do: the operation mix, the keys, the unique values written, and
//! a small seeded random number generator so that a seed replays the same choices.

use std::fmt;
use std::str::FromStr;

use serde_json::{json, Value};

use super::history::{CounterInfo, OpKind};

/// The relative weights of the operations a session picks from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    /// A read of one of the keys.
    pub read: u32,
    /// A read of the counter.
    pub counter_read: u32,
    /// A PUT of one of the keys.
    pub put: u32,
    /// A merge PATCH of one of the keys.
    pub patch: u32,
    /// A bounded decrement of the counter.
    pub incr: u32,
}

impl Mix {
    pub const DEFAULT: &'static str = "read=55,counter-read=5,put=15,patch=15,incr=10";

    fn total(&self) -> u32 {
        self.read + self.counter_read + self.put + self.patch + self.incr
    }

    /// Whether the workload touches the counter at all.
    pub fn uses_counter(&self) -> bool {
        self.counter_read + self.incr > 0
    }

    /// The share of operations that are decrements.
    pub fn incr_share(&self) -> f64 {
        f64::from(self.incr) / f64::from(self.total())
    }
}

impl FromStr for Mix {
    type Err = String;

    /// Parses `read=55,counter-read=5,put=15,patch=15,incr=10`; a kind left out
    /// weighs 0.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut mix = Mix {
            read: 0,
            counter_read: 0,
            put: 0,
            patch: 0,
            incr: 0,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected NAME=WEIGHT"))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("`{part}`: the weight is not a whole number"))?;
            let slot = match name.trim() {
                "read" => &mut mix.read,
                "counter-read" => &mut mix.counter_read,
                "put" => &mut mix.put,
                "patch" => &mut mix.patch,
                "incr" => &mut mix.incr,
                other => {
                    return Err(format!(
                        "unknown operation `{other}` (read, counter-read, put, patch, incr)"
                    ))
                }
            };
            *slot = weight;
        }
        if mix.total() == 0 {
            return Err("every weight is 0".into());
        }
        Ok(mix)
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "read={},counter-read={},put={},patch={},incr={}",
            self.read, self.counter_read, self.put, self.patch, self.incr
        )
    }
}

/// One request a session is about to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub op: OpKind,
    pub collection: String,
    pub key: String,
    pub body: Option<Value>,
}

/// The data a workload works on.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The run id: it prefixes every value written.
    pub run: String,
    pub mix: Mix,
    pub collection: String,
    pub field: String,
    pub key_prefix: String,
    pub keys: usize,
    pub counter: Option<CounterInfo>,
}

impl Workload {
    /// The `seq`-th operation of session `session`: a read, PUT or PATCH of a random
    /// key, or a read or decrement of the counter. Writes carry the value
    /// `<run>:<session>:<seq>`, unique in the run.
    pub fn next(&self, rng: &mut Rng, session: usize, seq: usize) -> Request {
        let m = &self.mix;
        let mut pick = rng.below(u64::from(m.total())) as u32;
        let mut take = |weight: u32| {
            let hit = pick < weight;
            pick = pick.saturating_sub(weight);
            hit
        };
        let key = format!("{}{}", self.key_prefix, rng.below(self.keys as u64));
        let unique = Value::String(format!("{}:{session}:{seq}", self.run));
        let item = |op, body| Request {
            op,
            collection: self.collection.clone(),
            key: key.clone(),
            body,
        };
        if take(m.read) {
            return item(OpKind::Read, None);
        }
        if let Some(counter) = self.counter.as_ref().filter(|_| take(m.counter_read)) {
            return Request {
                op: OpKind::Read,
                collection: counter.collection.clone(),
                key: counter.key.clone(),
                body: None,
            };
        }
        if take(m.put) {
            return item(OpKind::Put, Some(json!({ self.field.clone(): unique })));
        }
        if take(m.patch) || self.counter.is_none() {
            return item(OpKind::Patch, Some(json!({ self.field.clone(): unique })));
        }
        let counter = self.counter.as_ref().expect("checked above");
        Request {
            op: OpKind::Incr,
            collection: counter.collection.clone(),
            key: counter.key.clone(),
            body: Some(json!({"field": counter.field, "by": -1, "min": counter.min})),
        }
    }
}

/// SplitMix64: small, fast, and the same sequence for the same seed everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        edgecache_services::hash::splitmix64(&mut self.0)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(mix: &str) -> Workload {
        Workload {
            run: "r1".into(),
            mix: mix.parse().unwrap(),
            collection: "profiles".into(),
            field: "display_name".into(),
            key_prefix: "k".into(),
            keys: 4,
            counter: Some(CounterInfo {
                collection: "products".into(),
                key: "c".into(),
                field: "stock".into(),
                start: 10,
                min: 0,
            }),
        }
    }

    #[test]
    fn mix_parses_and_rejects() {
        assert_eq!(Mix::DEFAULT.parse::<Mix>().unwrap().to_string(), Mix::DEFAULT);
        assert!("read=1,write=2".parse::<Mix>().is_err());
        assert!("read=0".parse::<Mix>().is_err());
        assert!(!"read=1,put=1".parse::<Mix>().unwrap().uses_counter());
    }

    #[test]
    fn operations_follow_the_mix_and_write_unique_values() {
        let w = workload(Mix::DEFAULT);
        let mut rng = Rng::new(7);
        let ops: Vec<Request> = (0..2000).map(|seq| w.next(&mut rng, 3, seq)).collect();
        let count = |op| ops.iter().filter(|r| r.op == op).count();
        let reads = count(OpKind::Read);
        assert!((1100..1300).contains(&reads), "about 60% reads: {reads}");
        assert!(count(OpKind::Incr) > 100);
        let values: std::collections::HashSet<String> = ops
            .iter()
            .filter(|r| matches!(r.op, OpKind::Put | OpKind::Patch))
            .map(|r| {
                r.body.as_ref().unwrap()["display_name"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(values.len(), count(OpKind::Put) + count(OpKind::Patch));
        assert!(values.iter().all(|v| v.starts_with("r1:3:")));
        let only_reads = workload("read=1");
        assert!((0..50).all(|seq| only_reads.next(&mut rng, 0, seq).op == OpKind::Read));
    }

    #[test]
    fn the_same_seed_replays_the_same_sequence() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
    }
}
