//! Client for a Confluent-compatible schema registry: schemas by id (cached
//! for the life of the process, since an id never changes its schema), the
//! latest version of a subject, and registration.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{AvroError, Result};

/// How to authenticate to the registry. Secrets stay out of `Debug` output.
#[derive(Clone, Default)]
pub enum RegistryAuth {
    #[default]
    None,
    Basic {
        user: String,
        password: String,
    },
    Bearer(String),
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryAuth::None => write!(f, "None"),
            RegistryAuth::Basic { user, .. } => write!(f, "Basic({user}:***)"),
            RegistryAuth::Bearer(_) => write!(f, "Bearer(***)"),
        }
    }
}

/// Where a credential comes from: the environment variable or the file a
/// spec names (a mounted secret). The value itself is never in the spec.
#[derive(Debug, Clone, Copy)]
pub enum SecretSource<'a> {
    Env(&'a str),
    File(&'a std::path::Path),
}

impl SecretSource<'_> {
    fn read(self) -> Result<String> {
        match self {
            SecretSource::Env(var) => std::env::var(var)
                .map_err(|_| AvroError::Config(format!("environment variable {var} is not set"))),
            SecretSource::File(path) => std::fs::read_to_string(path)
                .map(|text| text.trim_end_matches(['\r', '\n']).to_string())
                .map_err(|e| AvroError::Config(format!("cannot read {}: {e}", path.display()))),
        }
    }

    fn describe(self) -> String {
        match self {
            SecretSource::Env(var) => format!("environment variable {var}"),
            SecretSource::File(path) => format!("file {}", path.display()),
        }
    }
}

impl RegistryAuth {
    /// Reads `user:password` for basic auth, or a bearer token.
    pub fn from_sources(
        basic: Option<SecretSource<'_>>,
        bearer: Option<SecretSource<'_>>,
    ) -> Result<RegistryAuth> {
        if let Some(source) = basic {
            let value = source.read()?;
            let (user, password) = value.split_once(':').ok_or_else(|| {
                AvroError::Config(format!("{} must hold user:password", source.describe()))
            })?;
            return Ok(RegistryAuth::Basic {
                user: user.to_string(),
                password: password.to_string(),
            });
        }
        if let Some(source) = bearer {
            return Ok(RegistryAuth::Bearer(source.read()?));
        }
        Ok(RegistryAuth::None)
    }
}

#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    pub url: String,
    pub auth: RegistryAuth,
    pub timeout: Duration,
    /// Retries of a failing request (connection error, timeout, 5xx, 429).
    pub max_retries: u32,
    /// PEM file of the CAs that sign the registry's TLS certificate (beside
    /// the built-in web roots).
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM files of the client certificate and its key, for mutual TLS.
    pub client_identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// Schemas kept by id. Ids never change their schema, so entries never go
/// stale; the bound only keeps a topic with endless schema churn from
/// growing the process.
const SCHEMA_CACHE_ENTRIES: usize = 10_000;

/// A schema as the registry returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySchema {
    pub id: u32,
    /// The Avro schema JSON, with the types it references from other
    /// subjects inlined: self-contained, ready to decode.
    pub schema: String,
    /// `AVRO`, `PROTOBUF` or `JSON`.
    pub schema_type: String,
}

/// A named type a schema takes from a version of another subject.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SchemaReference {
    pub name: String,
    pub subject: String,
    pub version: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaById {
    schema: String,
    #[serde(default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<SchemaReference>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubjectVersion {
    id: u32,
    schema: String,
    #[serde(default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<SchemaReference>,
}

/// How deep references may nest (a reference of a reference ...).
const MAX_REFERENCE_DEPTH: usize = 16;

#[derive(Deserialize)]
struct Registered {
    id: u32,
}

pub struct RegistryClient {
    config: RegistryConfig,
    http: reqwest::Client,
    by_id: Mutex<SchemaCache>,
}

/// A bounded map of schemas by id; the oldest entry goes first.
#[derive(Default)]
struct SchemaCache {
    entries: HashMap<u32, Arc<RegistrySchema>>,
    order: std::collections::VecDeque<u32>,
}

impl SchemaCache {
    fn get(&self, id: u32) -> Option<Arc<RegistrySchema>> {
        self.entries.get(&id).cloned()
    }

    fn insert(&mut self, id: u32, schema: Arc<RegistrySchema>) {
        if self.entries.insert(id, schema).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > SCHEMA_CACHE_ENTRIES {
            if let Some(oldest) = self.order.pop_front() {
                self.entries.remove(&oldest);
            }
        }
    }
}

enum Outcome<T> {
    Found(T),
    NotFound,
}

impl RegistryClient {
    pub fn new(config: RegistryConfig) -> Result<RegistryClient> {
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout);
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                AvroError::Config(format!("cannot read the CA file {}: {e}", path.display()))
            })?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem).unwrap_or_default();
            if certificates.is_empty() {
                return Err(AvroError::Config(format!(
                    "the CA file {} holds no PEM certificate",
                    path.display()
                )));
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        if let Some((cert, key)) = &config.client_identity {
            let read = |path: &std::path::PathBuf, what: &str| {
                std::fs::read(path).map_err(|e| {
                    AvroError::Config(format!(
                        "cannot read the client {what} {}: {e}",
                        path.display()
                    ))
                })
            };
            let mut pem = read(cert, "certificate")?;
            pem.push(b'\n');
            pem.extend(read(key, "key")?);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                AvroError::Config(format!(
                    "the client certificate {} and key {} are not a PEM certificate and its key: {e}",
                    cert.display(),
                    key.display()
                ))
            })?;
            builder = builder.identity(identity);
        }
        let http = builder
            .build()
            .map_err(|e| AvroError::Config(format!("cannot build HTTP client: {e}")))?;
        Ok(RegistryClient {
            config,
            http,
            by_id: Mutex::new(SchemaCache::default()),
        })
    }

    /// The schema registered under `id`; `None` when the registry does not know it.
    pub async fn schema_by_id(&self, id: u32) -> Result<Option<Arc<RegistrySchema>>> {
        if let Some(s) = self.cached(id) {
            return Ok(Some(s));
        }
        let url = format!("{}/schemas/ids/{id}", self.base());
        match self.send::<SchemaById>(|| self.http.get(&url)).await? {
            Outcome::NotFound => Ok(None),
            Outcome::Found(s) => {
                let schema = Arc::new(RegistrySchema {
                    id,
                    schema: self.resolve(s.schema, &s.references, 0).await?,
                    schema_type: s.schema_type.unwrap_or_else(|| "AVRO".into()),
                });
                self.by_id
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id, schema.clone());
                Ok(Some(schema))
            }
        }
    }

    /// Latest version registered under `subject`; `None` when the subject is unknown.
    pub async fn latest(&self, subject: &str) -> Result<Option<RegistrySchema>> {
        self.subject_version(subject, "latest").await
    }

    /// A version of `subject` (a number, or `latest`), references inlined.
    async fn subject_version(
        &self,
        subject: &str,
        version: &str,
    ) -> Result<Option<RegistrySchema>> {
        let url = format!("{}/subjects/{subject}/versions/{version}", self.base());
        Ok(
            match self.send::<SubjectVersion>(|| self.http.get(&url)).await? {
                Outcome::NotFound => None,
                Outcome::Found(v) => Some(RegistrySchema {
                    id: v.id,
                    schema: self.resolve(v.schema, &v.references, 0).await?,
                    schema_type: v.schema_type.unwrap_or_else(|| "AVRO".into()),
                }),
            },
        )
    }

    /// `schema` with the named types it references inlined where first used,
    /// so the decoder gets one self-contained schema.
    async fn resolve(
        &self,
        schema: String,
        references: &[SchemaReference],
        depth: usize,
    ) -> Result<String> {
        if references.is_empty() {
            return Ok(schema);
        }
        if depth >= MAX_REFERENCE_DEPTH {
            return Err(AvroError::Config(format!(
                "schema references nest deeper than {MAX_REFERENCE_DEPTH} levels"
            )));
        }
        let mut named = Vec::with_capacity(references.len());
        for r in references {
            let found = Box::pin(self.subject_version(&r.subject, &r.version.to_string())).await?;
            let Some(referenced) = found else {
                return Err(AvroError::RegistryRejected {
                    url: self.config.url.clone(),
                    status: 404,
                    message: format!(
                        "the schema references {} from subject {} version {}, which does not exist",
                        r.name, r.subject, r.version
                    ),
                });
            };
            let value: serde_json::Value =
                serde_json::from_str(&referenced.schema).map_err(|e| {
                    AvroError::Config(format!("referenced schema {} is not JSON: {e}", r.name))
                })?;
            named.push((r.name.clone(), value));
        }
        crate::references::inline(&schema, &named).map_err(AvroError::Config)
    }

    /// Registers an Avro schema under `subject` and returns its id (the
    /// existing id when the same schema is already registered).
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32> {
        let url = format!("{}/subjects/{subject}/versions", self.base());
        let body = serde_json::json!({ "schema": schema });
        match self
            .send::<Registered>(|| self.http.post(&url).json(&body))
            .await?
        {
            Outcome::Found(r) => Ok(r.id),
            Outcome::NotFound => Err(AvroError::RegistryRejected {
                url: self.config.url.clone(),
                status: 404,
                message: format!("subject {subject} not accepted"),
            }),
        }
    }

    fn cached(&self, id: u32) -> Option<Arc<RegistrySchema>> {
        self.by_id.lock().unwrap_or_else(|p| p.into_inner()).get(id)
    }

    fn base(&self) -> &str {
        self.config.url.trim_end_matches('/')
    }

    /// Sends a request, retrying transient failures with exponential backoff.
    async fn send<T: for<'de> Deserialize<'de>>(
        &self,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Outcome<T>> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let request = match &self.config.auth {
                RegistryAuth::None => make(),
                RegistryAuth::Basic { user, password } => make().basic_auth(user, Some(password)),
                RegistryAuth::Bearer(token) => make().bearer_auth(token),
            };
            let transient = match request
                .header("Accept", "application/vnd.schemaregistry.v1+json")
                .send()
                .await
            {
                Ok(resp) if resp.status().is_success() => {
                    return resp.json::<T>().await.map(Outcome::Found).map_err(|e| {
                        AvroError::RegistryRejected {
                            url: self.config.url.clone(),
                            status: 200,
                            message: format!("unexpected response body: {e}"),
                        }
                    });
                }
                Ok(resp) if resp.status() == reqwest::StatusCode::NOT_FOUND => {
                    return Ok(Outcome::NotFound);
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let message = resp.text().await.unwrap_or_default();
                    if status == 401 || status == 403 {
                        return Err(AvroError::RegistryRejected {
                            url: self.config.url.clone(),
                            status,
                            message: format!(
                                "the registry refused the credentials (auth: {:?}); check the \
                                 spec's basic_auth_* / bearer_token_* source",
                                self.config.auth
                            ),
                        });
                    }
                    if status < 500 && status != 429 {
                        return Err(AvroError::RegistryRejected {
                            url: self.config.url.clone(),
                            status,
                            message,
                        });
                    }
                    format!("HTTP {status}: {message}")
                }
                Err(e) => without_url(&e),
            };
            if attempt > self.config.max_retries {
                return Err(AvroError::RegistryUnavailable {
                    url: self.config.url.clone(),
                    attempts: attempt,
                    message: transient,
                });
            }
            let backoff = Duration::from_millis(100 << attempt.min(6)).min(Duration::from_secs(5));
            tracing::warn!(url = %self.config.url, attempt, error = %transient, "schema registry request failed; retrying in {backoff:?}");
            tokio::time::sleep(backoff).await;
        }
    }
}

/// reqwest's messages embed the full URL (reported separately); keep the cause chain.
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(i) = text.find(" for url (") {
        text.truncate(i);
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_cache_keeps_the_newest_entries() {
        let mut cache = SchemaCache::default();
        let schema = |id| {
            Arc::new(RegistrySchema {
                id,
                schema: String::new(),
                schema_type: "AVRO".into(),
            })
        };
        for id in 0..(SCHEMA_CACHE_ENTRIES as u32 + 5) {
            cache.insert(id, schema(id));
        }
        assert_eq!(cache.entries.len(), SCHEMA_CACHE_ENTRIES);
        assert!(cache.get(4).is_none() && cache.get(5).is_some());
        // Inserting a known id again does not count twice.
        cache.insert(9, schema(9));
        assert_eq!(cache.order.len(), SCHEMA_CACHE_ENTRIES);
    }

    #[test]
    fn a_private_ca_is_trusted_and_a_bad_ca_file_is_named() {
        let config = |ca_file: std::path::PathBuf| RegistryConfig {
            url: "https://registry.internal:8081".into(),
            timeout: Duration::from_secs(1),
            ca_file: Some(ca_file),
            ..RegistryConfig::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("test-ca.pem");
        std::fs::write(&pem, include_bytes!("test-ca.pem")).unwrap();
        // The error, if any, is in the failure message (it once failed unexplained).
        RegistryClient::new(config(pem))
            .map(drop)
            .expect("the private CA is trusted");
        let bad = dir.path().join("ca.pem");
        std::fs::write(&bad, "not a certificate").unwrap();
        let err = RegistryClient::new(config(bad.clone()))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(&bad.display().to_string()), "{err}");
        let missing = RegistryClient::new(config(dir.path().join("nope.pem")))
            .err()
            .unwrap()
            .to_string();
        assert!(missing.contains("cannot read the CA file"), "{missing}");
    }

    #[test]
    fn credentials_come_from_a_file_and_never_show_in_debug_output() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("registry-auth");
        std::fs::write(&file, "svc:s3cr3t\n").unwrap();
        let auth = RegistryAuth::from_sources(Some(SecretSource::File(&file)), None).unwrap();
        assert!(
            matches!(&auth, RegistryAuth::Basic { user, password } if user == "svc" && password == "s3cr3t")
        );
        assert_eq!(format!("{auth:?}"), "Basic(svc:***)");
        std::fs::write(&file, "no-colon").unwrap();
        let err = RegistryAuth::from_sources(Some(SecretSource::File(&file)), None).unwrap_err();
        assert!(err.to_string().contains("must hold user:password"), "{err}");
    }
}
