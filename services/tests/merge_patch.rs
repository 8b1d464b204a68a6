//! Property test of a PATCH against the data model, over the embedded origin: any
//! JSON object as a merge patch of any valid document is refused whole (the item as
//! it was) or applied whole (RFC 7396, in canonical form, still valid), and nothing
//! panics. What `patch_item` does, minus HTTP: `CollectionPlan::check_document` with
//! `Body::MergePatch`, then the origin's write.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edgecache_actors::{Fields, ItemKey, Version};
use edgecache_services::origin::{EmbeddedOrigin, Origin, ReadRequest, WriteError, WriteOp, WriteOpKind};
use edgecache_services::plan::{Body, CollectionPlan};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};

/// Any JSON value, with what the data model reacts to well represented: integers
/// past i64, negative zero, U+0000, nested nulls (a patch removes with them).
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-5i64..5).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (i64::MAX as u64..=u64::MAX).prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        Just(json!(-0.0)),
        Just(json!(9007199254740993u64)),
        "[a-zé\u{0} ]{0,6}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map("[a-c]{1,2}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A member of a patch: mostly a products field with a value of its type (or `null`,
/// which removes it), sometimes any value, `id`, or a field the schema does not know.
fn member() -> impl Strategy<Value = (String, Value)> {
    let typed = |name: &'static str, value: BoxedStrategy<Value>| {
        (
            Just(name.to_owned()),
            prop_oneof![6 => value, 1 => Just(Value::Null), 1 => json()],
        )
    };
    prop_oneof![
        3 => typed("name", "[a-z ]{0,8}".prop_map(Value::from).boxed()),
        2 => typed("description", "[a-zé ]{0,8}".prop_map(Value::from).boxed()),
        3 => typed(
            "price",
            prop_oneof![(0.0f64..1e6).prop_map(Value::from), (0i64..100).prop_map(Value::from)].boxed()
        ),
        3 => typed("stock", (-2i64..1_000).prop_map(Value::from).boxed()),
        4 => typed("tags", json().boxed()),
        1 => (Just("id".to_owned()), json()),
        1 => (Just("colour".to_owned()), json()),
    ]
}

/// A valid products document before the patch (as a PUT stores it).
fn document() -> impl Strategy<Value = Fields> {
    (
        "[a-z ]{0,8}",
        prop::option::of(0.0f64..1e6),
        prop::option::of(0i64..1_000),
        prop::option::of(json()),
    )
        .prop_map(|(name, price, stock, tags)| {
            let mut doc = Fields::new();
            doc.insert("name".into(), name.into());
            if let Some(price) = price {
                doc.insert("price".into(), price.into());
            }
            if let Some(stock) = stock {
                doc.insert("stock".into(), stock.into());
            }
            if let Some(tags) = tags {
                doc.insert("tags".into(), tags);
            }
            doc
        })
}

/// A merge patch: a few members of any value; sometimes the path's own id.
fn patch() -> impl Strategy<Value = (Fields, bool)> {
    (proptest::collection::vec(member(), 1..6), any::<bool>())
        .prop_map(|(members, own_id)| (members.into_iter().collect(), own_id))
}

fn products() -> CollectionPlan {
    let settings = edgecache_config::load(&edgecache_config::Sources {
        skip_env: true,
        dir: Some("/nonexistent".into()),
        ..Default::default()
    })
    .expect("the base configuration loads");
    CollectionPlan::new("products", &settings.collections["products"])
}

#[test]
fn a_merge_patch_is_refused_whole_or_applied_whole_and_the_document_stays_valid() {
    // On tmpfs when there is one: every commit is fsynced.
    let dir = tempfile::TempDir::new_in("/dev/shm")
        .or_else(|_| tempfile::TempDir::new())
        .unwrap();
    let origin = EmbeddedOrigin::open(&dir.path().join("db"), 1, Duration::from_secs(5)).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let plan = products();
    let items = AtomicU64::new(0);
    let stored = |key: &ItemKey| {
        let read = runtime.block_on(origin.read(key.clone(), ReadRequest::PRIMARY));
        read.expect("the origin reads").doc
    };

    let mut runner = TestRunner::new(Config {
        cases: 512,
        ..Config::default()
    });
    let result = runner.run(&(document(), patch()), |(base, (mut members, own_id))| {
        let id = format!("p{}", items.fetch_add(1, Ordering::Relaxed));
        let key = ItemKey::new(plan.name.clone(), &id);
        let Ok(base) = plan.check_document(&id, base, Body::Document) else {
            return Err(TestCaseError::reject("not a storable document"));
        };
        let put = WriteOp {
            key: key.clone(),
            if_match: None,
            kind: WriteOpKind::Put(Arc::new(base.clone())),
            idempotency: None,
        };
        runtime
            .block_on(origin.write(put))
            .expect("a valid document is stored");
        let before = stored(&key);
        if own_id {
            members.insert("id".into(), Value::from(id.as_str()));
        }

        let write = |if_match: Option<Version>, patch: &Fields| {
            let op = WriteOp {
                key: key.clone(),
                if_match,
                kind: WriteOpKind::Patch(Arc::new(patch.clone())),
                idempotency: None,
            };
            runtime.block_on(origin.write(op))
        };
        let checked = match plan.check_document(&id, members.clone(), Body::MergePatch) {
            Ok(checked) => checked,
            Err(_) => {
                // Refused before the origin: nothing is written.
                prop_assert_eq!(stored(&key), before);
                return Ok(());
            }
        };

        // A precondition that fails writes nothing either.
        let stale = Some(Version(before.version.0 + 7));
        let refused = matches!(write(stale, &checked), Err(WriteError::VersionMismatch { .. }));
        prop_assert!(refused, "a stale If-Match is refused");
        prop_assert_eq!(stored(&key), before.clone());

        let committed = write(Some(before.version), &checked).expect("a checked patch applies");
        let after = stored(&key);
        prop_assert_eq!(&after, &committed.doc);
        prop_assert_eq!(after.version.0, before.version.0 + 1);

        // Whole: exactly RFC 7396 of the canonical patch over the document.
        let mut expected = Value::Object(base);
        json_patch::merge(&mut expected, &Value::Object(checked));
        let fields = after.fields.as_deref().cloned().expect("a patch keeps the item");
        prop_assert_eq!(Value::Object(fields.clone()), expected);

        // Still valid: every member a known field, no nulls, each in canonical form.
        for (name, value) in &fields {
            prop_assert!(!value.is_null(), "{} stored as null", name);
            let mut again = value.clone();
            prop_assert!(plan.check_value(name, &mut again).is_ok(), "{}: {}", name, value);
            prop_assert_eq!(&again, value);
        }
        prop_assert!(!fields.contains_key("id"));
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }

    // A patch of an item that does not exist creates nothing.
    let missing = ItemKey::new(plan.name.clone(), "never-written");
    let op = WriteOp {
        key: missing.clone(),
        if_match: None,
        kind: WriteOpKind::Patch(Arc::new(Fields::new())),
        idempotency: None,
    };
    assert!(matches!(
        runtime.block_on(origin.write(op)),
        Err(WriteError::NotFound)
    ));
    assert!(!stored(&missing).exists());
}
