//! `?explain=true`: where each field of an answer came from — its freshness class,
//! the tier that served it, its version and age.

use std::time::Duration;

use edgecache_actors::Doc;
use edgecache_config::Freshness;

use crate::plan::CollectionPlan;
use crate::projection::Projection;
use crate::Tier;

/// Where one field of a response came from (`?explain=true`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct FieldSource {
    pub field: String,
    pub class: &'static str,
    pub tier: &'static str,
    pub version: u64,
    pub age_ms: u64,
}

pub(super) fn explain_fields(
    plan: &CollectionPlan,
    projection: Option<&Projection>,
    doc: &Doc,
    tier: Tier,
    age: Duration,
    strict_from_primary: bool,
) -> Vec<FieldSource> {
    let Some(fields) = &doc.fields else {
        return Vec::new();
    };
    fields
        .keys()
        .filter(|name| projection.is_none_or(|p| p.contains(name)))
        .map(|name| {
            let class = plan.class_of(name);
            let from_primary = strict_from_primary && class == Freshness::Strict;
            FieldSource {
                field: name.clone(),
                class: class.as_str(),
                tier: if from_primary {
                    Tier::Primary.as_str()
                } else {
                    tier.as_str()
                },
                version: doc.version.0,
                age_ms: if from_primary { 0 } else { age.as_millis() as u64 },
            }
        })
        .collect()
}
