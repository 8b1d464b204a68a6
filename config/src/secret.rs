use serde::Serializer;

/// Serialises a secret as `"[redacted]"`, so printing the effective configuration
/// never shows it.
pub fn redacted<T, S: Serializer>(_: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str("[redacted]")
}
