//! `?fields=name,description`: the projection a read asks for (on an item and on a
//! batch-get). Names are comma-separated, percent-decoded, and may be spread over
//! several `fields` parameters; each counts once.

use super::ApiError;
use crate::projection::Projection;
use crate::Node;

/// The projection the query asks of `collection`, or `None` when it names no
/// `fields`. An unknown collection is left to the read to report.
pub fn projection(node: &Node, collection: &str, query: &str) -> Result<Option<Projection>, ApiError> {
    let mut names: Vec<String> = Vec::new();
    let mut asked = false;
    for pair in query.split('&') {
        let Some(value) = pair.strip_prefix("fields=") else {
            continue;
        };
        asked = true;
        let value = percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| ApiError::InvalidRequest("fields must be UTF-8".into()))?;
        names.extend(
            value
                .split(',')
                .filter(|name| !name.is_empty())
                .map(str::to_owned),
        );
    }
    if !asked {
        return Ok(None);
    }
    let Some(plan) = node.collection(collection) else {
        return Ok(None);
    };
    Ok(Some(Projection::new(plan, names.iter().map(String::as_str))?))
}
