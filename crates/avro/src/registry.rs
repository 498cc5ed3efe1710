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

impl RegistryAuth {
    /// Reads credentials from the environment variables a spec names.
    pub fn from_env(
        basic_auth_env: Option<&str>,
        bearer_token_env: Option<&str>,
    ) -> Result<RegistryAuth> {
        let read = |var: &str| {
            std::env::var(var)
                .map_err(|_| AvroError::Config(format!("environment variable {var} is not set")))
        };
        if let Some(var) = basic_auth_env {
            let value = read(var)?;
            let (user, password) = value.split_once(':').ok_or_else(|| {
                AvroError::Config(format!(
                    "environment variable {var} must hold user:password"
                ))
            })?;
            return Ok(RegistryAuth::Basic {
                user: user.to_string(),
                password: password.to_string(),
            });
        }
        if let Some(var) = bearer_token_env {
            return Ok(RegistryAuth::Bearer(read(var)?));
        }
        Ok(RegistryAuth::None)
    }
}

#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub url: String,
    pub auth: RegistryAuth,
    pub timeout: Duration,
    /// Retries of a failing request (connection error, timeout, 5xx, 429).
    pub max_retries: u32,
}

/// A schema as the registry returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySchema {
    pub id: u32,
    /// The Avro schema JSON.
    pub schema: String,
    /// `AVRO`, `PROTOBUF` or `JSON`.
    pub schema_type: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaById {
    schema: String,
    #[serde(default)]
    schema_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubjectVersion {
    id: u32,
    schema: String,
    #[serde(default)]
    schema_type: Option<String>,
}

#[derive(Deserialize)]
struct Registered {
    id: u32,
}

pub struct RegistryClient {
    config: RegistryConfig,
    http: reqwest::Client,
    by_id: Mutex<HashMap<u32, Arc<RegistrySchema>>>,
}

enum Outcome<T> {
    Found(T),
    NotFound,
}

impl RegistryClient {
    pub fn new(config: RegistryConfig) -> Result<RegistryClient> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .build()
            .map_err(|e| AvroError::Config(format!("cannot build HTTP client: {e}")))?;
        Ok(RegistryClient {
            config,
            http,
            by_id: Mutex::new(HashMap::new()),
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
                    schema: s.schema,
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
        let url = format!("{}/subjects/{subject}/versions/latest", self.base());
        Ok(
            match self.send::<SubjectVersion>(|| self.http.get(&url)).await? {
                Outcome::NotFound => None,
                Outcome::Found(v) => Some(RegistrySchema {
                    id: v.id,
                    schema: v.schema,
                    schema_type: v.schema_type.unwrap_or_else(|| "AVRO".into()),
                }),
            },
        )
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
        self.by_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
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
