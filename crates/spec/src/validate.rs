//! Semantic checks that need no I/O. Column references against the source
//! schema are checked when the schema is known (`TableSpec::check_columns`).

use std::collections::HashSet;

use crate::event_time::OutputMode;
use crate::expression::Expr;
use crate::model::{PartitionColumn, TableSpec, is_identifier};
use crate::select::Select;
use crate::transform::{EnrichSpec, TransformSpec};

/// librdkafka properties Tributary sets itself because its guarantees rest on them.
const RESERVED_KAFKA_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "enable.partition.eof",
];

/// librdkafka producer properties the republish sink's guarantees rest on.
const RESERVED_PRODUCER_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "transactional.id",
    "enable.idempotence",
    "acks",
    "isolation.level",
    "group.id",
];

/// Shortest vacuum retention accepted without `allow_short_retention`.
const MIN_VACUUM_RETENTION: std::time::Duration = std::time::Duration::from_secs(3600);

/// Shortest Delta log retention accepted: the pipeline's newest commit
/// record (its offsets) must outlive any stop of the pipeline that an
/// operator may not notice, or a lost checkpoint location could no longer
/// be recovered from the table.
const MIN_LOG_RETENTION: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// URI schemes a table may use.
const TABLE_SCHEMES: &[&str] = &["file", "s3", "s3a"];
/// URI schemes a checkpoint location may use.
const CHECKPOINT_SCHEMES: &[&str] = &["file", "s3", "s3a"];

impl TableSpec {
    /// Every semantic problem as (path, message). Pure: no I/O.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut problem = |path: &str, msg: String| out.push((path.to_string(), msg));

        if self.pipeline.is_empty()
            || !self
                .pipeline
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            problem(
                "pipeline",
                format!(
                    "invalid name {:?}: use letters, digits, '-' and '_'",
                    self.pipeline
                ),
            );
        }

        let kafka = &self.source.kafka;
        if kafka.bootstrap_servers.split(',').any(|s| {
            s.trim()
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        }) {
            problem(
                "source.kafka.bootstrap_servers",
                format!(
                    "invalid broker list {:?}: write host:port[,host:port...]",
                    kafka.bootstrap_servers
                ),
            );
        }
        if !is_topic_name(&kafka.topic) {
            problem(
                "source.kafka.topic",
                format!("invalid Kafka topic name {:?}", kafka.topic),
            );
        }
        for key in kafka.properties.keys() {
            if RESERVED_KAFKA_PROPERTIES.contains(&key.as_str()) {
                problem(
                    &format!("source.kafka.properties.{key}"),
                    "set by Tributary itself; use the spec's own fields (bootstrap_servers, group_id, starting_offsets)".into(),
                );
            }
        }

        let mut record_columns = HashSet::new();
        for (path, name, _) in self.source.columns.named() {
            if !is_identifier(name) {
                problem(
                    path,
                    format!("invalid column name {name:?}: use letters, digits and '_'"),
                );
            } else if !record_columns.insert(name) {
                problem(path, format!("column {name:?} is named twice"));
            }
        }

        let registry = &self.source.schema_registry;
        match url::Url::parse(&registry.url) {
            // Checked on the text, so a URL that does not parse is not echoed
            // when it may hold a secret.
            _ if registry.url.contains('@') => problem(
                "source.schema_registry.url",
                "holds credentials (user:password@), which would be written wherever the URL is; \
                 give them with basic_auth_env or basic_auth_file instead"
                    .into(),
            ),
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => problem(
                "source.schema_registry.url",
                format!(
                    "invalid URL {:?}: write http(s)://host[:port]",
                    registry.url
                ),
            ),
        }
        if registry.client_cert_file.is_some() != registry.client_key_file.is_some() {
            problem(
                "source.schema_registry.client_cert_file",
                "mutual TLS needs both client_cert_file and client_key_file".into(),
            );
        }
        if registry.timeout.0.is_zero() {
            problem(
                "source.schema_registry.timeout",
                "must be greater than zero: every registry request would time out at once".into(),
            );
        }
        if registry.subject_strategy != crate::model::SubjectStrategy::TopicName {
            match &registry.record_name {
                None => problem(
                    "source.schema_registry.record_name",
                    "the record_name and topic_record_name strategies need the record's full name (e.g. example.Order)".into(),
                ),
                Some(name) if !name.split('.').all(is_identifier) => problem(
                    "source.schema_registry.record_name",
                    format!("{name:?} is not an Avro full name (namespace.Name)"),
                ),
                Some(_) => {}
            }
        }
        let credentials = [
            registry.basic_auth_env.is_some(),
            registry.bearer_token_env.is_some(),
            registry.basic_auth_file.is_some(),
            registry.bearer_token_file.is_some(),
        ];
        if credentials.iter().filter(|set| **set).count() > 1 {
            problem(
                "source.schema_registry",
                "set one of basic_auth_env, bearer_token_env, basic_auth_file, bearer_token_file"
                    .into(),
            );
        }
        for (path, var) in [
            (
                "source.schema_registry.basic_auth_env",
                &registry.basic_auth_env,
            ),
            (
                "source.schema_registry.bearer_token_env",
                &registry.bearer_token_env,
            ),
        ] {
            if let Some(v) = var
                && !is_identifier(v)
            {
                problem(
                    path,
                    format!(
                        "{v:?} is not an environment variable name (write the variable's name, not the secret)"
                    ),
                );
            }
        }

        if let Err(m) = check_uri(&self.table.uri, TABLE_SCHEMES) {
            problem("table.uri", m);
        }
        if let Err(m) = check_uri(&self.checkpoint.location, CHECKPOINT_SCHEMES) {
            problem("checkpoint.location", m);
        }
        if is_s3(&self.checkpoint.location)
            && option(self.checkpoint_storage_options(), "conditional_put").as_deref()
                == Some("disabled")
        {
            problem(
                "checkpoint.storage_options",
                "an s3:// checkpoint needs conditional put (two instances must never record \
                 different plans for one batch); remove conditional_put: disabled"
                    .into(),
            );
        }
        let dead_letters = self.dead_letter_uri();
        if let Some(d) = &self.dead_letters
            && let Err(m) = check_uri(&d.table, TABLE_SCHEMES)
        {
            problem("dead_letters.table", m);
        }
        if (is_s3(&self.table.uri) || is_s3(&dead_letters))
            && let Err(m) = check_s3_commit_mode(&self.table.storage_options)
        {
            problem("table.storage_options", m);
        }
        if dead_letters.trim_end_matches('/') == self.table.uri.trim_end_matches('/') {
            problem("dead_letters.table", "must differ from table.uri".into());
        }

        let mut names = HashSet::new();
        for (i, entry) in self.table.partition_by.iter().enumerate() {
            let path = format!("table.partition_by[{i}]");
            match PartitionColumn::parse(entry) {
                Ok(col) => {
                    if !names.insert(col.name().to_string()) {
                        problem(
                            &path,
                            format!("partition column {:?} appears twice", col.name()),
                        );
                    }
                }
                Err(m) => problem(&path, m),
            }
        }
        if self.table.target_file_size.0 < 1 << 20 {
            problem(
                "table.target_file_size",
                "must be at least 1MiB; small files slow every reader".into(),
            );
        }

        if self.trigger.interval.0.is_zero() {
            problem("trigger.interval", "must be greater than zero".into());
        }
        if self.trigger.max_offsets_per_trigger == Some(0) {
            problem(
                "trigger.max_offsets_per_trigger",
                "must be greater than zero".into(),
            );
        }
        self.validate_compaction(&mut problem);
        self.validate_republish(&mut problem);
        self.validate_event_time(&mut problem);
        self.validate_scale_out(&mut problem);
        for (i, e) in self.enrich.iter().enumerate() {
            validate_enrich(e, &format!("enrich[{i}]"), &mut out);
        }
        if let Some(t) = &self.transform {
            validate_transform(t, &mut out);
        }
        out
    }

    fn validate_republish(&self, problem: &mut impl FnMut(&str, String)) {
        let Some(r) = &self.republish else {
            return;
        };
        if !is_topic_name(&r.topic) {
            problem(
                "republish.topic",
                format!("invalid Kafka topic name {:?}", r.topic),
            );
        } else if r.topic == self.source.kafka.topic
            && r.bootstrap_servers
                .as_ref()
                .is_none_or(|b| *b == self.source.kafka.bootstrap_servers)
        {
            problem(
                "republish.topic",
                "is the source topic: the pipeline would read its own output".into(),
            );
        }
        if !is_topic_name(&r.progress_topic) {
            problem(
                "republish.progress_topic",
                format!("invalid Kafka topic name {:?}", r.progress_topic),
            );
        } else if r.progress_topic == r.topic {
            problem(
                "republish.progress_topic",
                "must differ from republish.topic: its consumers would see progress records".into(),
            );
        }
        if let Some(filter) = &r.filter
            && let Err(m) = Expr::parse(filter)
        {
            problem(
                "republish.filter",
                format!("invalid filter {filter:?}: {m}"),
            );
        }
        let mut seen = HashSet::new();
        for (i, column) in r.columns.iter().enumerate() {
            if !seen.insert(column) {
                problem(
                    &format!("republish.columns[{i}]"),
                    format!("{column:?} is listed twice"),
                );
            }
        }
        for key in r.properties.keys() {
            if RESERVED_PRODUCER_PROPERTIES.contains(&key.as_str()) {
                problem(
                    &format!("republish.properties.{key}"),
                    "set by Tributary itself: the transactional id fences zombie republishers"
                        .into(),
                );
            }
        }
        if r.interval.0.is_zero() {
            problem("republish.interval", "must be greater than zero".into());
        }
        if r.max_transaction_records == 0 {
            problem(
                "republish.max_transaction_records",
                "must be greater than zero".into(),
            );
        }
        if self.output_mode == OutputMode::Update {
            problem(
                "republish",
                "cannot follow an update-mode table: each MERGE rewrites unchanged rows into \
                 new files, and they would be published again. Republish an append-mode table, \
                 or read the table's changes downstream"
                    .into(),
            );
        }
    }

    fn validate_compaction(&self, problem: &mut impl FnMut(&str, String)) {
        let c = &self.compaction;
        if c.interval.0.is_zero() {
            problem("compaction.interval", "must be greater than zero".into());
        }
        if c.target_file_size.0 == 0 {
            problem(
                "compaction.target_file_size",
                "must be greater than zero".into(),
            );
        }
        if c.max_memory.0 < c.target_file_size.0 {
            problem(
                "compaction.max_memory",
                format!(
                    "{} bytes is less than compaction.target_file_size ({} bytes): one bin must fit",
                    c.max_memory.0, c.target_file_size.0
                ),
            );
        }
        if c.min_files < 2 {
            problem(
                "compaction.min_files",
                format!("{} would rewrite single files; use 2 or more", c.min_files),
            );
        }
        if c.checkpoint_interval == 0 {
            problem(
                "compaction.checkpoint_interval",
                "must be at least 1".into(),
            );
        }
        if c.vacuum.interval.0.is_zero() {
            problem(
                "compaction.vacuum.interval",
                "must be greater than zero".into(),
            );
        }
        if c.log_retention.0 < MIN_LOG_RETENTION {
            problem(
                "compaction.log_retention",
                format!(
                    "{} is under 7 days: the table's log must keep the pipeline's last commit \
                     record (its offsets) for as long as the pipeline may be stopped, so that \
                     a lost checkpoint location can be recovered from the table",
                    humantime::format_duration(c.log_retention.0)
                ),
            );
        }
        if c.vacuum.retention.0 < MIN_VACUUM_RETENTION && !c.vacuum.allow_short_retention {
            problem(
                "compaction.vacuum.retention",
                format!(
                    "{} is under one hour and can delete files that running queries or \
                     commits in flight still need; set compaction.vacuum.allow_short_retention: \
                     true to force it",
                    humantime::format_duration(c.vacuum.retention.0)
                ),
            );
        }
        let partition_names: Vec<String> = self
            .table
            .partition_by
            .iter()
            .filter_map(|e| PartitionColumn::parse(e).ok())
            .map(|p| p.name().to_string())
            .collect();
        let mut seen = HashSet::new();
        for (i, column) in c.z_order_by.iter().enumerate() {
            let path = format!("compaction.z_order_by[{i}]");
            if partition_names.contains(column) {
                problem(
                    &path,
                    format!(
                        "{column:?} is a partition column: every file holds one value of it already"
                    ),
                );
            } else if !seen.insert(column) {
                problem(&path, format!("{column:?} is listed twice"));
            }
        }
    }

    /// A windowed table's columns (name, is it a timestamp), from the
    /// record's.
    fn windowed_columns(&self, record: &[(String, bool)]) -> Vec<(String, bool)> {
        use crate::event_time::{AggregateFunction as F, WINDOW_END, WINDOW_START};
        let is_timestamp = |c: &str| record.iter().any(|(n, t)| n == c && *t);
        let mut out = vec![
            (WINDOW_START.to_string(), true),
            (WINDOW_END.to_string(), true),
        ];
        out.extend(self.group_by.iter().map(|g| (g.clone(), is_timestamp(g))));
        out.extend(self.aggregations.iter().map(|a| {
            let keeps_type = matches!(a.function, F::Min | F::Max | F::First | F::Last);
            let ts = keeps_type && a.column.as_deref().is_some_and(is_timestamp);
            (a.name.clone(), ts)
        }));
        out
    }

    /// Checks the spec's column references against the source record's
    /// top-level fields (name, is it a timestamp). Returns (path, message) pairs.
    pub fn check_columns(&self, record: &[(String, bool)]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        // The table holds the record's fields and the Kafka columns named.
        let mut columns = record.to_vec();
        for (path, name, is_timestamp) in self.source.columns.named() {
            if record.iter().any(|(n, _)| n == name) {
                out.push((
                    path.to_string(),
                    format!("column {name:?} collides with a field of the record"),
                ));
            } else {
                columns.push((name.to_string(), is_timestamp));
            }
        }
        self.check_event_time_columns(&columns, &mut out);
        // A windowed table holds windows, not records: the table's settings
        // refer to its output columns.
        if self.window.is_some() {
            columns = self.windowed_columns(&columns);
        }
        let columns = columns.as_slice();
        let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
        for (i, entry) in self.table.partition_by.iter().enumerate() {
            let Ok(col) = PartitionColumn::parse(entry) else {
                continue;
            };
            let path = format!("table.partition_by[{i}]");
            let source = col.source_column();
            match columns.iter().find(|(n, _)| n == source) {
                None => out.push((
                    path,
                    format!(
                        "unknown partition column {source:?}; the record has: {}",
                        names.join(", ")
                    ),
                )),
                Some((_, is_timestamp)) => {
                    if !matches!(col, PartitionColumn::Source(_)) && !is_timestamp {
                        out.push((
                            path,
                            format!("{entry} needs a timestamp column, and {source:?} is not one"),
                        ));
                    } else if !matches!(col, PartitionColumn::Source(_))
                        && names.contains(&col.name())
                    {
                        out.push((
                            path,
                            format!(
                                "{entry} adds a column {:?}, which the record already has",
                                col.name()
                            ),
                        ));
                    }
                }
            }
        }
        for (i, column) in self.compaction.z_order_by.iter().enumerate() {
            if !names.contains(&column.as_str()) {
                out.push((
                    format!("compaction.z_order_by[{i}]"),
                    format!(
                        "unknown column {column:?}; the record has: {}",
                        names.join(", ")
                    ),
                ));
            }
        }
        if let Some(r) = &self.republish {
            // The table has the record's columns and the derived partition columns.
            let mut table_columns: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            for entry in &self.table.partition_by {
                if let Ok(col) = PartitionColumn::parse(entry) {
                    table_columns.push(col.name().to_string());
                }
            }
            let unknown = |column: &str| {
                format!(
                    "unknown column {column:?}; the table has: {}",
                    table_columns.join(", ")
                )
            };
            let mut references: Vec<(String, &str)> = r
                .columns
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("republish.columns[{i}]"), c.as_str()))
                .collect();
            references.extend(
                r.key
                    .iter()
                    .map(|k| ("republish.key".to_string(), k.as_str())),
            );
            let filter = r.filter.as_deref().and_then(|f| Expr::parse(f).ok());
            if let Some(filter) = &filter {
                references.extend(
                    filter
                        .columns()
                        .into_iter()
                        .map(|c| ("republish.filter".to_string(), c)),
                );
            }
            for (path, column) in references {
                if !table_columns.iter().any(|c| c == column) {
                    out.push((path, unknown(column)));
                }
            }
        }
        out
    }
}

pub(crate) fn is_topic_name(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 249
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn is_s3(uri: &str) -> bool {
    uri.starts_with("s3://") || uri.starts_with("s3a://")
}

/// A storage option by case-insensitive name, trimmed and lowercased;
/// `conditional_put` also answers to its `aws_` alias.
fn option(options: &std::collections::BTreeMap<String, String>, key: &str) -> Option<String> {
    let find = |key: &str| {
        options
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.trim().to_ascii_lowercase())
    };
    find(key).or_else(|| find(&format!("aws_{key}")))
}

/// Delta commits on S3 are safe with conditional put (`If-None-Match`, the
/// default) only: deltalake 1.x has no DynamoDB log store any more, so a
/// lock named in the options would be silently ignored. Without conditional
/// put two writers can overwrite each other's commit, which is allowed only
/// when asked for by name.
fn check_s3_commit_mode(
    options: &std::collections::BTreeMap<String, String>,
) -> Result<(), String> {
    if let Some(provider) = option(options, "AWS_S3_LOCKING_PROVIDER") {
        return Err(format!(
            "AWS_S3_LOCKING_PROVIDER: {provider} is not supported: Tributary commits to S3 \
             with conditional put only (deltalake 1.x has no DynamoDB log store), so the \
             lock would protect nothing; remove it, and let every writer of the table use \
             S3 conditional writes"
        ));
    }
    let conditional_put = option(options, "conditional_put");
    let unsafe_rename = option(options, "AWS_S3_ALLOW_UNSAFE_RENAME").as_deref() == Some("true");
    if conditional_put.as_deref() == Some("disabled") && !unsafe_rename {
        return Err(
            "conditional_put: disabled leaves concurrent commits unsafe; \
                    remove it (AWS S3, MinIO and R2 support conditional put), or accept \
                    lost commits with AWS_S3_ALLOW_UNSAFE_RENAME: 'true'"
                .into(),
        );
    }
    Ok(())
}

fn validate_enrich(e: &EnrichSpec, path: &str, out: &mut Vec<(String, String)>) {
    if let Err(m) = check_uri(&e.table, TABLE_SCHEMES) {
        out.push((format!("{path}.table"), m));
    }
    if e.on.is_empty() {
        out.push((format!("{path}.on"), "name at least one key column".into()));
    }
    if e.columns.is_empty() {
        out.push((
            format!("{path}.columns"),
            "name at least one column to add".into(),
        ));
    }
    for (i, c) in e.columns.iter().enumerate() {
        if e.on.contains(c) {
            out.push((
                format!("{path}.columns[{i}]"),
                format!("{c:?} is a key column: the record has it already"),
            ));
        }
    }
    if e.refresh_interval.0.is_zero() {
        out.push((
            format!("{path}.refresh_interval"),
            "must be greater than zero".into(),
        ));
    }
}

fn validate_transform(t: &TransformSpec, out: &mut Vec<(String, String)>) {
    for (name, text) in &t.columns.0 {
        let path = format!("transform.columns.{name}");
        if !is_identifier(name) {
            out.push((
                path.clone(),
                format!("invalid column name {name:?}: use letters, digits and '_'"),
            ));
        }
        if let Err(m) = Expr::parse(text) {
            out.push((path, format!("invalid expression {text:?}: {m}")));
        }
    }
    if let Some(text) = &t.filter
        && let Err(m) = Expr::parse(text)
    {
        out.push((
            "transform.where".into(),
            format!("invalid condition {text:?}: {m}"),
        ));
    }
    if let Some(text) = &t.sql
        && let Err(m) = Select::parse(text)
    {
        out.push(("transform.sql".into(), m));
    }
}

fn check_uri(uri: &str, schemes: &[&str]) -> Result<(), String> {
    if uri.starts_with('/') {
        return Ok(());
    }
    match url::Url::parse(uri) {
        Ok(u) if schemes.contains(&u.scheme()) => {
            if u.scheme() != "file" && u.host_str().is_none_or(str::is_empty) {
                Err(format!("invalid URI {uri:?}: no bucket"))
            } else if u.path().is_empty() || u.path() == "/" {
                Err(format!("invalid URI {uri:?}: no path"))
            } else {
                Ok(())
            }
        }
        Ok(u) => Err(format!(
            "unsupported URI scheme {:?} in {uri:?}; supported: {} (or an absolute path)",
            u.scheme(),
            schemes.join(", ")
        )),
        Err(e) => Err(format!("invalid URI {uri:?}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use crate::parse_spec;

    #[test]
    fn semantic_problems_are_all_reported() {
        let src = "pipeline: bad name
source:
  kafka:
    bootstrap_servers: localhost
    topic: clicks
    properties:
      enable.auto.commit: 'true'
  schema_registry:
    url: localhost:8081
table:
  uri: ftp://x/y
  partition_by: [date(ts), week(ts)]
checkpoint:
  location: /tmp/c
";
        let report = parse_spec("s.yaml", src).unwrap_err().report();
        assert_eq!(
            report,
            vec![
                "s.yaml:1: pipeline: invalid name \"bad name\": use letters, digits, '-' and '_'",
                "s.yaml:4: source.kafka.bootstrap_servers: invalid broker list \"localhost\": write host:port[,host:port...]",
                "s.yaml:7: source.kafka.properties.enable.auto.commit: set by Tributary itself; use the spec's own fields (bootstrap_servers, group_id, starting_offsets)",
                "s.yaml:9: source.schema_registry.url: invalid URL \"localhost:8081\": write http(s)://host[:port]",
                "s.yaml:11: table.uri: unsupported URI scheme \"ftp\" in \"ftp://x/y\"; supported: file, s3, s3a (or an absolute path)",
                "s.yaml:12: table.partition_by[1]: unknown partition transform \"week\"; supported: date(column), hour(column)",
            ]
        );
    }

    #[test]
    fn features_nonsense_is_refused() {
        let src = "pipeline: p
source: {kafka: {bootstrap_servers: 'h:1', topic: t}, schema_registry: {url: 'http://h:1'}}
table: {uri: /t}
checkpoint: {location: /c}
transform:
  columns:
    card_hash: \"abs(card_id)\"
dedup: {keys: [card_hash]}
features:
  group_by: []
  range: 0s
  aggregations:
    - {name: n, function: count}
    - {name: n, function: last, column: amount}
    - {name: total, function: sum}
window: {tumbling: {size: 1m}}
aggregations: [{name: c, function: count}]
";
        let report = parse_spec("s.yaml", src).unwrap_err().report();
        assert_eq!(
            report,
            vec![
                "s.yaml:8: dedup: needs event_time: say which column holds the event time (or leave event_time.column out for the Kafka timestamp) and a watermark_delay",
                "s.yaml:16: window: needs event_time: say which column holds the event time (or leave event_time.column out for the Kafka timestamp) and a watermark_delay",
                "s.yaml:9: features: needs event_time: say which column holds the event time (or leave event_time.column out for the Kafka timestamp) and a watermark_delay",
                "s.yaml:9: features: does not go with window: features add columns to each row, a window replaces the rows by one row per window; use one pipeline for each",
                "s.yaml:10: features.group_by: name at least one key column (the features are per key)",
                "s.yaml:11: features.range: must be greater than zero",
                "s.yaml:14: features.aggregations[1].name: column \"n\" is named twice",
                "s.yaml:14: features.aggregations[1].function: last is not a rolling feature; use count, count_distinct, sum, min, max or avg",
                "s.yaml:15: features.aggregations[2].column: sum needs a column",
                "s.yaml:8: dedup.keys[0]: \"card_hash\" is a transform column, and with features the transform runs after the operators (so it can read the features); use a column of the record or of enrich",
            ]
        );
    }

    #[test]
    fn compaction_nonsense_is_refused() {
        let src = "pipeline: p
source: {kafka: {bootstrap_servers: 'h:1', topic: t}, schema_registry: {url: 'http://h:1'}}
table: {uri: /t, partition_by: [country]}
checkpoint: {location: /c}
compaction:
  min_files: 1
  z_order_by: [country, user_id, user_id]
  vacuum:
    retention: 10m
";
        let report = parse_spec("s.yaml", src).unwrap_err().report();
        assert_eq!(
            report,
            vec![
                "s.yaml:6: compaction.min_files: 1 would rewrite single files; use 2 or more",
                "s.yaml:9: compaction.vacuum.retention: 10m is under one hour and can delete files that running queries or commits in flight still need; set compaction.vacuum.allow_short_retention: true to force it",
                "s.yaml:7: compaction.z_order_by[0]: \"country\" is a partition column: every file holds one value of it already",
                "s.yaml:7: compaction.z_order_by[2]: \"user_id\" is listed twice",
            ]
        );
        let forced = src.replace(
            "retention: 10m",
            "retention: 10m\n    allow_short_retention: true",
        );
        let report = parse_spec("s.yaml", &forced).unwrap_err().report();
        assert_eq!(report.len(), 3, "{report:?}");
    }

    #[test]
    fn s3_checkpoints_need_conditional_put_and_default_to_the_table_options() {
        let src = "pipeline: p
source: {kafka: {bootstrap_servers: 'h:1', topic: t}, schema_registry: {url: 'http://h:1'}}
table:
  uri: s3://lake/t
  storage_options: {AWS_REGION: eu-west-1}
checkpoint: {location: s3://lake/checkpoints/p}
";
        let spec = parse_spec("s.yaml", src).unwrap();
        assert_eq!(spec.checkpoint_storage_options()["AWS_REGION"], "eu-west-1");
        let own = src.replace(
            "location: s3://lake/checkpoints/p}",
            "location: s3://lake/checkpoints/p, storage_options: {AWS_REGION: us-east-1}}",
        );
        let spec = parse_spec("s.yaml", &own).unwrap();
        assert_eq!(spec.checkpoint_storage_options()["AWS_REGION"], "us-east-1");
        // The table may opt into unsafe commits; the checkpoint may not.
        let unsafe_put = src.replace(
            "{AWS_REGION: eu-west-1}",
            "{conditional_put: disabled, AWS_S3_ALLOW_UNSAFE_RENAME: 'true'}",
        );
        let report = parse_spec("s.yaml", &unsafe_put).unwrap_err().report();
        assert_eq!(
            report,
            vec![
                "s.yaml:6: checkpoint.storage_options: an s3:// checkpoint needs conditional put (two instances must never record different plans for one batch); remove conditional_put: disabled"
            ]
        );
    }

    #[test]
    fn a_dynamodb_lock_is_refused_since_deltalake_ignores_it() {
        let src = "pipeline: p
source: {kafka: {bootstrap_servers: 'h:1', topic: t}, schema_registry: {url: 'http://h:1'}}
table:
  uri: s3://lake/t
  storage_options: {conditional_put: disabled, AWS_S3_LOCKING_PROVIDER: dynamodb, DELTA_DYNAMO_TABLE_NAME: locks}
checkpoint: {location: /c}
";
        let report = parse_spec("s.yaml", src).unwrap_err().report();
        assert_eq!(report.len(), 1, "{report:?}");
        assert!(
            report[0].starts_with(
                "s.yaml:5: table.storage_options: AWS_S3_LOCKING_PROVIDER: dynamodb is not supported"
            ),
            "{report:?}"
        );
        let without_lock = src.replace(
            "conditional_put: disabled, AWS_S3_LOCKING_PROVIDER: dynamodb, ",
            "",
        );
        assert!(parse_spec("s.yaml", &without_lock).is_ok());
    }

    #[test]
    fn a_log_retention_under_the_floor_is_refused() {
        let src = "pipeline: p
source: {kafka: {bootstrap_servers: 'h:1', topic: t}, schema_registry: {url: 'http://h:1'}}
table: {uri: /t}
checkpoint: {location: /c}
compaction: {log_retention: 2days}
";
        let report = parse_spec("s.yaml", src).unwrap_err().report();
        assert_eq!(report.len(), 1, "{report:?}");
        assert!(
            report[0].starts_with("s.yaml:5: compaction.log_retention: 2days is under 7 days"),
            "{report:?}"
        );
        assert!(parse_spec("s.yaml", &src.replace("2days", "7days")).is_ok());
    }

    #[test]
    fn republish_mistakes_are_refused_and_columns_checked() {
        let src = "pipeline: p
source: {kafka: {bootstrap_servers: 'h:1', topic: t}, schema_registry: {url: 'http://h:1'}}
table: {uri: /t, partition_by: ['date(ts)']}
checkpoint: {location: /c}
republish:
  topic: t
  filter: flag = = true
  columns: [id, id]
  progress_topic: t
  properties: {transactional.id: mine}
";
        let report = parse_spec("s.yaml", src).unwrap_err().report();
        assert_eq!(
            report,
            vec![
                "s.yaml:6: republish.topic: is the source topic: the pipeline would read its own output",
                "s.yaml:9: republish.progress_topic: must differ from republish.topic: its consumers would see progress records",
                "s.yaml:7: republish.filter: invalid filter \"flag = = true\": Expected: an expression, found: = at Line: 1, Column: 8",
                "s.yaml:8: republish.columns[1]: \"id\" is listed twice",
                "s.yaml:10: republish.properties.transactional.id: set by Tributary itself: the transactional id fences zombie republishers",
            ]
        );
        let fixed = "pipeline: p
source: {kafka: {bootstrap_servers: 'h:1', topic: t}, schema_registry: {url: 'http://h:1'}}
table: {uri: /t, partition_by: ['date(ts)']}
checkpoint: {location: /c}
republish: {topic: alerts, filter: flag = true and date >= '2026-01-01', columns: [id, nope], key: acct}
";
        let spec = parse_spec("s.yaml", fixed).unwrap();
        let columns = vec![
            ("id".to_string(), false),
            ("flag".to_string(), false),
            ("ts".to_string(), true),
        ];
        let problems: Vec<String> = spec
            .check_columns(&columns)
            .into_iter()
            .map(|(path, m)| format!("{path}: {m}"))
            .collect();
        assert_eq!(
            problems,
            vec![
                "republish.columns[1]: unknown column \"nope\"; the table has: id, flag, ts, date",
                "republish.key: unknown column \"acct\"; the table has: id, flag, ts, date",
            ]
        );
    }

    #[test]
    fn kafka_columns_are_checked_and_usable_as_partition_columns() {
        let src = "pipeline: p
source:
  kafka: {bootstrap_servers: 'h:1', topic: t}
  schema_registry: {url: 'http://h:1'}
  columns: {key: {name: k, format: bytes}, offset: k, partition: 'bad name'}
table: {uri: /t}
checkpoint: {location: /c}
";
        let report = parse_spec("s.yaml", src).unwrap_err().report();
        assert_eq!(
            report,
            vec![
                "s.yaml:5: source.columns.partition: invalid column name \"bad name\": use letters, digits and '_'",
                "s.yaml:5: source.columns.offset: column \"k\" is named twice",
            ]
        );
        let fine = "pipeline: p
source:
  kafka: {bootstrap_servers: 'h:1', topic: t}
  schema_registry: {url: 'http://h:1'}
  columns: {partition: kafka_partition, timestamp: id}
table: {uri: /t, partition_by: [kafka_partition]}
checkpoint: {location: /c}
";
        let spec = parse_spec("s.yaml", fine).unwrap();
        let record = vec![("id".to_string(), false)];
        assert_eq!(
            spec.check_columns(&record),
            vec![(
                "source.columns.timestamp".to_string(),
                "column \"id\" collides with a field of the record".to_string()
            )]
        );
    }

    #[test]
    fn column_checks_name_the_unknown_column() {
        let src = "pipeline: p
source: {kafka: {bootstrap_servers: 'h:1', topic: t}, schema_registry: {url: 'http://h:1'}}
table: {uri: /t, partition_by: [country, 'date(ts)', 'hour(url)']}
checkpoint: {location: /c}
";
        let spec = parse_spec("s.yaml", src).unwrap();
        let cols = vec![("ts".to_string(), true), ("url".to_string(), false)];
        assert_eq!(
            spec.check_columns(&cols),
            vec![
                (
                    "table.partition_by[0]".to_string(),
                    "unknown partition column \"country\"; the record has: ts, url".to_string()
                ),
                (
                    "table.partition_by[2]".to_string(),
                    "hour(url) needs a timestamp column, and \"url\" is not one".to_string()
                ),
            ]
        );
    }
}
