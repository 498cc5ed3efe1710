//! The co-partitioning rule: under `state_scope: partition` every Kafka
//! partition keeps its own state, so a dedup or window spec is correct only
//! when all rows of one of its keys sit in one partition — because the
//! producers key records so (`source.partitioned_by`) or because the
//! repartition stage shuffles them so (`repartition`).

use crate::model::{StateScope, TableSpec};

impl TableSpec {
    /// The columns the repartition stage shuffles records by: the ones
    /// given, else `group_by` for a window, else the features' keys, else
    /// the dedup keys.
    pub fn repartition_keys(&self) -> Vec<String> {
        match &self.repartition {
            None => Vec::new(),
            Some(r) if !r.keys.is_empty() => r.keys.clone(),
            Some(_) if self.window.is_some() => self.group_by.clone(),
            Some(_) if self.features.is_some() => self
                .features
                .iter()
                .flat_map(|f| f.group_by.clone())
                .collect(),
            Some(_) => self.dedup.iter().flat_map(|d| d.keys.clone()).collect(),
        }
    }

    /// The topic the table's stage reads: the repartition topic when there
    /// is one, else the source topic.
    pub fn table_topic(&self) -> &str {
        self.repartition
            .as_ref()
            .map_or(&self.source.kafka.topic, |r| &r.topic)
    }

    /// Problems of running this spec on several instances, as (path, message).
    pub(crate) fn validate_scale_out(&self, problem: &mut impl FnMut(&str, String)) {
        if let Some(r) = &self.repartition {
            self.validate_repartition_settings(r, problem);
        }
        if self.state_scope != StateScope::Partition || !self.is_stateful() {
            return;
        }
        if self.window.is_some() && self.group_by.is_empty() {
            problem(
                "window",
                "a window with no group_by cannot run under state_scope: partition: every \
                 partition would write a partial row of each window; use state_scope: topic"
                    .into(),
            );
            return;
        }
        let (keys, path, how) = match &self.repartition {
            Some(_) => (self.repartition_keys(), "repartition.keys", "shuffled"),
            None if !self.source.partitioned_by.is_empty() => (
                self.source.partitioned_by.clone(),
                "source.partitioned_by",
                "partitioned",
            ),
            None => {
                problem("state_scope", self.needs_co_partitioning());
                return;
            }
        };
        if keys.is_empty() {
            problem(path, "name at least one column".into());
        }
        for (set, set_path, what) in [
            (Some(&self.group_by), "group_by", "a window's rows"),
            (
                self.dedup.as_ref().map(|d| &d.keys),
                "dedup.keys",
                "a row's duplicates",
            ),
            (
                self.features.as_ref().map(|f| &f.group_by),
                "features.group_by",
                "a key's recent rows",
            ),
        ] {
            let Some(set) = set.filter(|_| set_path != "group_by" || self.window.is_some()) else {
                continue;
            };
            let missing: Vec<&String> = keys.iter().filter(|k| !set.contains(k)).collect();
            if !missing.is_empty() {
                problem(
                    path,
                    format!(
                        "{} {} not among {set_path} [{}]: records are {how} by [{}], so {what} \
                         could sit in different partitions, each with its own state; {}",
                        list(&missing),
                        if missing.len() == 1 { "is" } else { "are" },
                        set.join(", "),
                        keys.join(", "),
                        if how == "shuffled" {
                            "shuffle by columns that every stateful key set contains \
                             (repartition.keys), or add them to the keys when they are \
                             determined by them"
                        } else {
                            "add repartition: {topic, partitions} to shuffle the records by \
                             the stateful keys, or use state_scope: topic"
                        }
                    ),
                );
            }
        }
    }

    fn needs_co_partitioning(&self) -> String {
        let mut keys = Vec::new();
        if self.window.is_some() {
            keys.push(format!("group_by [{}]", self.group_by.join(", ")));
        }
        if let Some(d) = &self.dedup {
            keys.push(format!("dedup.keys [{}]", d.keys.join(", ")));
        }
        if let Some(f) = &self.features {
            keys.push(format!("features.group_by [{}]", f.group_by.join(", ")));
        }
        format!(
            "partition keeps state per Kafka partition, so {} must hold all rows of a key in \
             one partition; either declare source.partitioned_by: [...] when the producers key \
             the records by some of these columns, or add repartition: {{topic, partitions}} \
             to shuffle the records by them through Kafka (or use state_scope: topic)",
            keys.join(" and ")
        )
    }

    fn validate_repartition_settings(
        &self,
        r: &crate::model::RepartitionSpec,
        problem: &mut impl FnMut(&str, String),
    ) {
        if self.state_scope != StateScope::Partition {
            problem(
                "repartition",
                "needs state_scope: partition: the stateful stage runs one state group per \
                 partition of the repartition topic"
                    .into(),
            );
        }
        if !self.is_stateful() {
            problem(
                "repartition",
                "shuffles records for dedup, windows and features; a pipeline without them scales with \
                 state_scope: partition alone"
                    .into(),
            );
        }
        if !crate::validate::is_topic_name(&r.topic) {
            problem(
                "repartition.topic",
                format!("invalid Kafka topic name {:?}", r.topic),
            );
        } else if r.topic == self.source.kafka.topic {
            problem(
                "repartition.topic",
                "must be a topic of its own, not the source topic".into(),
            );
        }
        if r.partitions == 0 {
            problem("repartition.partitions", "must be greater than zero".into());
        }
        let columns = &self.source.columns;
        for (name, path) in [
            (&columns.topic, "source.columns.topic"),
            (&columns.partition, "source.columns.partition"),
            (&columns.offset, "source.columns.offset"),
        ] {
            if name.is_some() {
                problem(
                    path,
                    "is not available with repartition: the stateful stage reads the \
                     repartition topic; the source record's topic, partition and offset are \
                     in its headers tributary.source.topic, .partition and .offset (keep them \
                     with source.columns.headers)"
                        .into(),
                );
            }
        }
    }
}

fn list(columns: &[&String]) -> String {
    columns
        .iter()
        .map(|c| format!("{c:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use crate::model::TableSpec;

    const BASE: &str = "pipeline: p
source:
  kafka: {bootstrap_servers: 'k:9092', topic: payments}
  schema_registry: {url: 'http://r:8081'}
table: {uri: 'file:///t'}
checkpoint: {location: 'file:///c'}
event_time: {column: ts, watermark_delay: 1m}
window: {tumbling: {size: 1m}}
aggregations: [{name: n, function: count}]
";

    fn problems(extra: &str) -> Vec<(String, String)> {
        let (source, extra) = extra.split_once('|').unwrap_or(("", extra));
        let base = BASE.replace("payments}", &format!("payments}}{source}"));
        serde_yaml::from_str::<TableSpec>(&format!("{base}{extra}"))
            .unwrap()
            .validate()
    }

    fn paths(extra: &str) -> Vec<String> {
        problems(extra).into_iter().map(|(p, _)| p).collect()
    }

    #[test]
    fn partition_scope_needs_co_partitioned_keys() {
        assert!(paths("group_by: [card]\n").is_empty());
        assert_eq!(
            paths("group_by: [card]\nstate_scope: partition\n"),
            ["state_scope"]
        );
        assert_eq!(paths("state_scope: partition\n"), ["window"]);
        let declared = "group_by: [card]\nstate_scope: partition\n";
        assert!(paths(&format!("\n  partitioned_by: [card]|{declared}")).is_empty());
        assert_eq!(
            paths(&format!("\n  partitioned_by: [user]|{declared}")),
            ["source.partitioned_by"]
        );
        assert!(
            paths(&format!(
                "{declared}repartition: {{topic: t2, partitions: 3}}\n"
            ))
            .is_empty()
        );
    }

    #[test]
    fn repartition_keys_must_be_in_every_key_set() {
        let spec = "group_by: [card]\nstate_scope: partition\ndedup: {keys: [payment]}\n\
                    repartition: {topic: t2, partitions: 3}\n";
        let found = problems(spec);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "repartition.keys");
        assert!(
            found[0]
                .1
                .contains("\"card\" is not among dedup.keys [payment]")
        );
        assert!(paths(&spec.replace("[payment]", "[payment, card]")).is_empty());
    }

    #[test]
    fn repartition_settings_are_checked() {
        assert_eq!(
            paths("group_by: [card]\nrepartition: {topic: payments, partitions: 0}\n"),
            ["repartition", "repartition.topic", "repartition.partitions"]
        );
    }
}
