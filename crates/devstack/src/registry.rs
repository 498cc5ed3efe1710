//! A development schema registry speaking the subset of the Confluent REST
//! API that producers and Tributary use: register a schema under a subject,
//! get a schema by id, list subjects and versions, get a version or the latest.
//! In memory; for the demo and tests, not for production.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

#[derive(Default)]
struct Registry {
    /// Schema text and its references (`[{name, subject, version}]`) by id - 1.
    schemas: Vec<(String, Value)>,
    /// Schema ids by subject, in version order.
    subjects: BTreeMap<String, Vec<u32>>,
    /// Until then, every API request answers 503 (fault injection for tests).
    outage_until: Option<Instant>,
    /// Where broker outages are requested (the process owning the mock cluster).
    kafka_control: Option<UnboundedSender<Duration>>,
}

type Shared = Arc<Mutex<Registry>>;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

fn not_found(code: u32, message: &str) -> Response {
    reply(
        StatusCode::NOT_FOUND,
        json!({"error_code": code, "message": message}),
    )
}

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, Registry> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// The 503 every API request gets during an injected outage.
fn unavailable(state: &Shared) -> Option<Response> {
    let until = lock(state).outage_until?;
    (Instant::now() < until).then(|| {
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error_code": 50301, "message": "injected outage"}),
        )
    })
}

/// `POST /_dev/registry/outage/{seconds}`: the registry answers 503 for that long.
async fn registry_outage(State(state): State<Shared>, Path(seconds): Path<u64>) -> Response {
    lock(&state).outage_until = Some(Instant::now() + Duration::from_secs(seconds));
    reply(StatusCode::OK, json!({"outage_seconds": seconds}))
}

/// `POST /_dev/kafka/outage/{seconds}`: every mock broker goes down for that long.
async fn kafka_outage(State(state): State<Shared>, Path(seconds): Path<u64>) -> Response {
    let sent = lock(&state)
        .kafka_control
        .as_ref()
        .is_some_and(|c| c.send(Duration::from_secs(seconds)).is_ok());
    if sent {
        reply(StatusCode::OK, json!({"outage_seconds": seconds}))
    } else {
        reply(
            StatusCode::NOT_FOUND,
            json!({"error_code": 40400, "message": "no Kafka in this stack"}),
        )
    }
}

async fn register(
    State(state): State<Shared>,
    Path(subject): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    if let Some(r) = unavailable(&state) {
        return r;
    }
    let Some(schema) = body.get("schema").and_then(Value::as_str) else {
        return reply(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"error_code": 42201, "message": "missing schema"}),
        );
    };
    if let Some(t) = body.get("schemaType").and_then(Value::as_str)
        && t != "AVRO"
    {
        return reply(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"error_code": 42201, "message": "only AVRO schemas"}),
        );
    }
    let Ok(parsed) = serde_json::from_str::<Value>(schema) else {
        return reply(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"error_code": 42201, "message": "invalid Avro schema"}),
        );
    };
    let references = body.get("references").cloned().unwrap_or(json!([]));
    let mut reg = lock(&state);
    // A reference must name a registered subject version.
    for reference in references.as_array().into_iter().flatten() {
        let found = reference["subject"]
            .as_str()
            .and_then(|s| reg.subjects.get(s))
            .zip(reference["version"].as_u64())
            .is_some_and(|(ids, v)| v >= 1 && (v as usize) <= ids.len());
        if !found || reference["name"].as_str().is_none() {
            return reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error_code": 42201, "message": format!("invalid reference {reference}")}),
            );
        }
    }
    // The same schema (compared as JSON) with the same references keeps its
    // id, as in the Confluent registry.
    let existing = reg.schemas.iter().position(|(s, r)| {
        serde_json::from_str::<Value>(s).ok().as_ref() == Some(&parsed) && *r == references
    });
    let id = match existing {
        Some(i) => i as u32 + 1,
        None => {
            reg.schemas.push((schema.to_string(), references));
            reg.schemas.len() as u32
        }
    };
    let versions = reg.subjects.entry(subject).or_default();
    if !versions.contains(&id) {
        versions.push(id);
    }
    reply(StatusCode::OK, json!({"id": id}))
}

async fn schema_by_id(State(state): State<Shared>, Path(id): Path<u32>) -> Response {
    if let Some(r) = unavailable(&state) {
        return r;
    }
    let reg = lock(&state);
    match reg.schemas.get((id as usize).wrapping_sub(1)) {
        Some((s, references)) => reply(
            StatusCode::OK,
            json!({"schema": s, "references": references}),
        ),
        None => not_found(40403, "Schema not found"),
    }
}

async fn subjects(State(state): State<Shared>) -> Response {
    if let Some(r) = unavailable(&state) {
        return r;
    }
    let reg = lock(&state);
    reply(
        StatusCode::OK,
        json!(reg.subjects.keys().collect::<Vec<_>>()),
    )
}

async fn versions(State(state): State<Shared>, Path(subject): Path<String>) -> Response {
    if let Some(r) = unavailable(&state) {
        return r;
    }
    let reg = lock(&state);
    match reg.subjects.get(&subject) {
        Some(v) => reply(StatusCode::OK, json!((1..=v.len()).collect::<Vec<_>>())),
        None => not_found(40401, "Subject not found"),
    }
}

async fn version(
    State(state): State<Shared>,
    Path((subject, version)): Path<(String, String)>,
) -> Response {
    if let Some(r) = unavailable(&state) {
        return r;
    }
    let reg = lock(&state);
    let Some(ids) = reg.subjects.get(&subject) else {
        return not_found(40401, "Subject not found");
    };
    let index = match version.as_str() {
        "latest" | "-1" => ids.len().checked_sub(1),
        v => v
            .parse::<usize>()
            .ok()
            .and_then(|n| n.checked_sub(1))
            .filter(|i| *i < ids.len()),
    };
    let Some(i) = index else {
        return not_found(40402, "Version not found");
    };
    let id = ids[i];
    reply(
        StatusCode::OK,
        json!({
            "subject": subject, "version": i + 1, "id": id,
            "schema": reg.schemas[id as usize - 1].0,
            "references": reg.schemas[id as usize - 1].1,
        }),
    )
}

/// A running registry; it stops when dropped.
pub struct DevRegistry {
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DevRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the registry on `addr` (port 0 picks a free port). Broker outages
/// requested over HTTP are sent to `kafka_control`. With `basic_auth`
/// (`user:password`), every API request must carry those credentials, as a
/// secured Confluent registry requires (401 otherwise); the `/_dev/`
/// controls stay open.
pub async fn start(
    addr: SocketAddr,
    kafka_control: Option<UnboundedSender<Duration>>,
    basic_auth: Option<String>,
) -> std::io::Result<DevRegistry> {
    let state: Shared = Arc::new(Mutex::new(Registry {
        kafka_control,
        ..Registry::default()
    }));
    let app = Router::new()
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}/versions", get(versions).post(register))
        .route("/subjects/{subject}/versions/{version}", get(version))
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/_dev/registry/outage/{seconds}", post(registry_outage))
        .route("/_dev/kafka/outage/{seconds}", post(kafka_outage))
        .with_state(state);
    let app = match basic_auth {
        Some(credentials) => {
            use base64::Engine as _;
            let expected = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(credentials)
            );
            app.layer(axum::middleware::from_fn(
                move |request: axum::extract::Request, next: axum::middleware::Next| {
                    let authorized = request.uri().path().starts_with("/_dev/")
                        || request
                            .headers()
                            .get(header::AUTHORIZATION)
                            .is_some_and(|v| v.as_bytes() == expected.as_bytes());
                    async move {
                        if authorized {
                            next.run(request).await
                        } else {
                            reply(
                                StatusCode::UNAUTHORIZED,
                                json!({"error_code": 40101, "message": "Unauthorized"}),
                            )
                        }
                    }
                },
            ))
        }
        None => app,
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let url = format!("http://{}", listener.local_addr()?);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "development schema registry stopped");
        }
    });
    Ok(DevRegistry { url, task })
}
