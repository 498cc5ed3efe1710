//! The implementations a spec's pipeline runs on, picked here and handed
//! to the engine and the republish sink: the schema-registry client and
//! the checkpoint's store (a local directory, or an object store).

use std::sync::Arc;

use tributary_avro::{RegistryAuth, RegistryClient, RegistryConfig, Result, SecretSource};
use tributary_engine::{CheckpointStore, Components, StateBackend};
use tributary_spec::{RegistrySpec, TableSpec};
use tributary_state::RocksOptions;

/// Everything `spec`'s pipeline runs on; its state stores share `state`'s
/// memory with every other pipeline given a clone.
pub fn components(spec: &TableSpec, state: &RocksOptions) -> anyhow::Result<Components> {
    Ok(Components {
        registry: registry_client(&spec.source.schema_registry)?,
        checkpoint: checkpoint_store(spec)?,
        state: StateBackend::RocksDb(state.clone()),
    })
}

/// The checkpoint location of `spec`: an object store for `s3://`
/// locations, a local directory otherwise.
pub fn checkpoint_store(spec: &TableSpec) -> tributary_delta::Result<CheckpointStore> {
    let location = &spec.checkpoint.location;
    if spec.checkpoint_is_local() {
        return Ok(CheckpointStore::local(location));
    }
    Ok(CheckpointStore::Object {
        store: tributary_delta::object_store_for(location, spec.checkpoint_storage_options())?,
        uri: location.clone(),
    })
}

/// The schema-registry client a spec describes.
pub fn registry_client(registry: &RegistrySpec) -> Result<Arc<RegistryClient>> {
    Ok(Arc::new(RegistryClient::new(registry_config(registry)?)?))
}

/// A secret from the environment variable or the file a spec names.
fn secret<'a>(
    env: &'a Option<String>,
    file: &'a Option<std::path::PathBuf>,
) -> Option<SecretSource<'a>> {
    env.as_deref()
        .map(SecretSource::Env)
        .or(file.as_deref().map(SecretSource::File))
}

/// The registry settings a spec describes, credentials read from the
/// environment variable or file it names.
pub fn registry_config(registry: &RegistrySpec) -> Result<RegistryConfig> {
    let auth = RegistryAuth::from_sources(
        secret(&registry.basic_auth_env, &registry.basic_auth_file),
        secret(&registry.bearer_token_env, &registry.bearer_token_file),
    )?;
    Ok(RegistryConfig {
        url: registry.url.clone(),
        auth,
        timeout: registry.timeout.0,
        max_retries: registry.max_retries,
        ca_file: registry.ca_file.clone(),
        client_identity: registry
            .client_cert_file
            .clone()
            .zip(registry.client_key_file.clone()),
    })
}
