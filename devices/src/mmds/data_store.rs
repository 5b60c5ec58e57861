//! The MMDS data store: one JSON document, replaced (`PUT /mmds`), merge-patched (`PATCH /mmds`, RFC 7396)
//! and read by the host, and looked up by path for the guest (IMDS text or JSON).
//!
//! Owns: the document and its size limit (its serialized length, checked on every change so a patch that
//! would grow it past the limit changes nothing). The host's JSON is trusted to be JSON (serde parsed it);
//! the guest's paths are not: a lookup only walks existing object keys.

use serde_json::{Map, Value};

/// Firecracker's default data store limit (its default API payload limit).
pub const DEFAULT_SIZE_LIMIT: usize = 51_200;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataStoreError {
    #[error("The MMDS data store is not initialized.")]
    NotInitialized,
    #[error(
        "The MMDS patch request doesn't fit: the data store would be {size} bytes, over its limit of {limit} bytes."
    )]
    LimitExceeded { size: usize, limit: usize },
}

/// How a guest asked to see a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// EC2 IMDS text: an object is its keys one per line (objects with a trailing `/`), a string itself.
    Imds,
    /// The value as JSON.
    Json,
}

/// Why a guest lookup found nothing to answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// No value at that path.
    NotFound,
    /// IMDS text has no form for numbers, booleans, arrays or null.
    UnsupportedType,
}

#[derive(Debug, Clone)]
pub struct DataStore {
    value: Value,
    initialized: bool,
    limit: usize,
}

impl Default for DataStore {
    fn default() -> Self {
        DataStore::new(DEFAULT_SIZE_LIMIT)
    }
}

impl DataStore {
    /// An empty, uninitialized store holding at most `limit` bytes of serialized JSON.
    pub fn new(limit: usize) -> Self {
        DataStore {
            value: Value::Object(Map::new()),
            initialized: false,
            limit,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn is_initialized(&self) -> bool {
        self.initialized
    }

    /// The whole document (`{}` before the first `PUT`).
    pub fn value(&self) -> &Value {
        &self.value
    }

    fn check_size(&self, value: &Value) -> Result<(), DataStoreError> {
        let size = serde_json::to_string(value).map(|s| s.len()).unwrap_or(usize::MAX);
        if size > self.limit {
            return Err(DataStoreError::LimitExceeded {
                size,
                limit: self.limit,
            });
        }
        Ok(())
    }

    /// `PUT /mmds`: replaces the whole document.
    pub fn put(&mut self, value: Value) -> Result<(), DataStoreError> {
        self.check_size(&value)?;
        self.value = value;
        self.initialized = true;
        Ok(())
    }

    /// `PATCH /mmds`: a JSON merge patch (RFC 7396) on the document; refused before the first `PUT`, and
    /// when the result would exceed the limit (the document is then unchanged).
    pub fn patch(&mut self, patch: &Value) -> Result<(), DataStoreError> {
        if !self.initialized {
            return Err(DataStoreError::NotInitialized);
        }
        let mut candidate = self.value.clone();
        merge_patch(&mut candidate, patch);
        self.check_size(&candidate)?;
        self.value = candidate;
        Ok(())
    }

    /// The guest's view of `path` (a URL path such as `/latest/meta-data/ami-id`; empty segments, from
    /// repeated or trailing slashes, are ignored).
    pub fn lookup(&self, path: &str, format: OutputFormat) -> Result<String, LookupError> {
        let mut node = &self.value;
        for segment in path.split('/').filter(|s| !s.is_empty()) {
            node = match node {
                Value::Object(map) => map.get(segment).ok_or(LookupError::NotFound)?,
                _ => return Err(LookupError::NotFound),
            };
        }
        match format {
            OutputFormat::Json => Ok(node.to_string()),
            OutputFormat::Imds => match node {
                Value::String(s) => Ok(s.clone()),
                Value::Object(map) => {
                    let keys: Vec<String> = map
                        .iter()
                        .map(|(k, v)| if v.is_object() { format!("{k}/") } else { k.clone() })
                        .collect();
                    Ok(keys.join("\n"))
                }
                _ => Err(LookupError::UnsupportedType),
            },
        }
    }
}

/// RFC 7396: objects merge key by key, `null` removes a key, anything else replaces the target.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target_map) = target {
        for (key, value) in patch_map {
            if value.is_null() {
                target_map.remove(key);
            } else {
                merge_patch(target_map.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn store() -> DataStore {
        let mut s = DataStore::new(1000);
        s.put(json!({"latest": {"meta-data": {"ami-id": "ami-1", "n": 3, "net": {"a": "b"}}}}))
            .unwrap();
        s
    }

    #[test]
    fn patch_before_put_is_refused() {
        let mut s = DataStore::default();
        assert_eq!(s.patch(&json!({"a": 1})), Err(DataStoreError::NotInitialized));
        assert_eq!(s.value(), &json!({}));
    }

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut s = store();
        s.patch(&json!({"latest": {"meta-data": {"ami-id": "ami-2", "n": null, "new": {"x": "y"}}}, "top": [1]}))
            .unwrap();
        assert_eq!(
            s.value(),
            &json!({"latest": {"meta-data": {"ami-id": "ami-2", "net": {"a": "b"}, "new": {"x": "y"}}}, "top": [1]})
        );
        s.patch(&json!("scalar")).unwrap();
        assert_eq!(s.value(), &json!("scalar"));
    }

    #[test]
    fn size_limit_holds_for_put_and_patch() {
        let mut s = store();
        let before = s.value().clone();
        let big = "x".repeat(1000);
        assert!(matches!(
            s.put(json!({ "a": big })),
            Err(DataStoreError::LimitExceeded { .. })
        ));
        assert!(matches!(
            s.patch(&json!({ "a": big })),
            Err(DataStoreError::LimitExceeded { .. })
        ));
        assert_eq!(s.value(), &before, "a refused change leaves the store as it was");
    }

    #[test]
    fn guest_lookups_in_imds_and_json() {
        let s = store();
        let imds = |p| s.lookup(p, OutputFormat::Imds);
        assert_eq!(imds("/latest"), Ok("meta-data/".into()));
        assert_eq!(imds("/latest/meta-data/"), Ok("ami-id\nn\nnet/".into()));
        assert_eq!(imds("/latest//meta-data/ami-id"), Ok("ami-1".into()));
        assert_eq!(imds("/latest/meta-data/n"), Err(LookupError::UnsupportedType));
        assert_eq!(imds("/latest/nothing"), Err(LookupError::NotFound));
        assert_eq!(imds("/latest/meta-data/ami-id/deeper"), Err(LookupError::NotFound));
        assert_eq!(s.lookup("/latest/meta-data/n", OutputFormat::Json), Ok("3".into()));
        assert_eq!(
            s.lookup("/latest/meta-data/net", OutputFormat::Json),
            Ok(r#"{"a":"b"}"#.into())
        );
    }
}
