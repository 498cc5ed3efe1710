//! Object stores for locations beside the tables (an `s3://` checkpoint),
//! built the way deltalake builds a table's: the same options, the same
//! `AWS_*` environment fallback, the same S3 client.

use std::collections::BTreeMap;
use std::sync::Arc;

use deltalake::ObjectStore;
use url::Url;

use crate::error::{DeltaSinkError, Result};

/// Registers deltalake's S3 support (once per process).
pub(crate) fn register_s3() {
    static S3_HANDLERS: std::sync::Once = std::sync::Once::new();
    S3_HANDLERS.call_once(|| deltalake::aws::register_handlers(None));
}

/// The object store rooted at `uri` (keys are relative to its path).
pub fn object_store_for(
    uri: &str,
    options: &BTreeMap<String, String>,
) -> Result<Arc<dyn ObjectStore>> {
    register_s3();
    let url = Url::parse(uri).map_err(|e| DeltaSinkError::Uri {
        uri: uri.to_string(),
        message: e.to_string(),
    })?;
    deltalake::logstore::store_for(&url, options.iter())
        .map_err(|source| DeltaSinkError::delta(uri, source))
}
