//! Validation of a spec's event-time sections: the rules that need the
//! whole spec (its columns, partitioning and republish settings), kept
//! apart from the section types in `event_time`.

use crate::event_time::{
    AggregateFunction, OutputMode, WINDOW_END, WINDOW_START, WindowKind, WindowSpec,
};
use crate::model::{PartitionColumn, TableSpec};

impl TableSpec {
    /// Whether the pipeline keeps operator state.
    pub fn is_stateful(&self) -> bool {
        self.dedup.is_some() || self.window.is_some() || self.features.is_some()
    }

    /// The late-rows table, when late rows are kept.
    pub fn late_rows_uri(&self) -> Option<&str> {
        self.late_rows.as_deref().filter(|l| *l != "drop")
    }

    /// Problems of the event-time settings as (path, message) pairs.
    pub(crate) fn validate_event_time(&self, problem: &mut impl FnMut(&str, String)) {
        let windowed = self.window.is_some();
        if self.event_time.is_none() {
            for (set, path) in [
                (self.dedup.is_some(), "dedup"),
                (windowed, "window"),
                (self.features.is_some(), "features"),
                (self.late_rows.is_some(), "late_rows"),
            ] {
                if set {
                    problem(
                        path,
                        "needs event_time: say which column holds the event time (or leave \
                         event_time.column out for the Kafka timestamp) and a watermark_delay"
                            .into(),
                    );
                }
            }
        }
        if let Some(d) = &self.dedup {
            if d.keys.is_empty() {
                problem("dedup.keys", "name at least one key column".into());
            }
            for (i, k) in d.keys.iter().enumerate() {
                if d.keys[..i].contains(k) {
                    problem(
                        &format!("dedup.keys[{i}]"),
                        format!("{k:?} is listed twice"),
                    );
                }
            }
        }
        match self.window.as_ref().map(|w| (w, w.kind())) {
            Some((_, None)) => problem(
                "window",
                "give exactly one of tumbling, sliding and session".into(),
            ),
            Some((_, Some(WindowKind::Tumbling { size }))) if size.is_zero() => {
                problem("window.tumbling.size", "must be greater than zero".into())
            }
            Some((_, Some(WindowKind::Sliding { size, slide }))) => {
                if slide.is_zero() {
                    problem("window.sliding.slide", "must be greater than zero".into());
                } else if slide > size {
                    problem(
                        "window.sliding.slide",
                        format!(
                            "slide {} is longer than size {}: rows between windows would \
                             belong to none; use a slide of at most the size",
                            humantime::format_duration(slide),
                            humantime::format_duration(size)
                        ),
                    );
                }
            }
            Some((_, Some(WindowKind::Session { gap }))) if gap.is_zero() => {
                problem("window.session.gap", "must be greater than zero".into())
            }
            _ => {}
        }
        for (set, path) in [
            (!self.group_by.is_empty(), "group_by"),
            (!self.aggregations.is_empty(), "aggregations"),
        ] {
            if set && !windowed {
                problem(
                    path,
                    "needs a window: aggregations are computed per event-time window".into(),
                );
            }
        }
        if windowed && self.aggregations.is_empty() {
            problem(
                "aggregations",
                "a windowed table needs at least one aggregation".into(),
            );
        }
        let mut outputs: Vec<&str> = vec![WINDOW_START, WINDOW_END];
        for (i, g) in self.group_by.iter().enumerate() {
            if outputs.contains(&g.as_str()) {
                problem(
                    &format!("group_by[{i}]"),
                    format!("{g:?} is listed twice or names a window column"),
                );
            }
            outputs.push(g);
        }
        for (i, a) in self.aggregations.iter().enumerate() {
            let path = format!("aggregations[{i}]");
            if a.name.is_empty() {
                problem(&format!("{path}.name"), "must not be empty".into());
            } else if outputs.contains(&a.name.as_str()) {
                problem(
                    &format!("{path}.name"),
                    format!("output column {:?} already exists", a.name),
                );
            }
            outputs.push(&a.name);
            if a.column.is_none() && a.function != AggregateFunction::Count {
                problem(
                    &format!("{path}.column"),
                    format!("{} needs a column", a.function.name()),
                );
            }
        }
        self.validate_features(problem);
        if self.output_mode == OutputMode::Update {
            if !windowed {
                problem(
                    "output_mode",
                    "update needs a window: without one, rows are appended as they come".into(),
                );
            } else if matches!(
                self.window.as_ref().and_then(WindowSpec::kind),
                Some(WindowKind::Session { .. })
            ) {
                problem(
                    "output_mode",
                    "update does not work with session windows: a session's start moves when \
                     sessions merge, which would leave the old row behind; use append"
                        .into(),
                );
            }
        }
        if self.output_mode == OutputMode::Update {
            for (i, entry) in self.table.partition_by.iter().enumerate() {
                let derived_from_window = PartitionColumn::parse(entry).is_ok_and(|c| {
                    !matches!(c, PartitionColumn::Source(_))
                        && [WINDOW_START, WINDOW_END].contains(&c.source_column())
                });
                if !derived_from_window {
                    problem(
                        &format!("table.partition_by[{i}]"),
                        format!(
                            "{entry:?}: in update mode a table can only be partitioned by \
                             date(window_start), hour(window_start) or the same of window_end"
                        ),
                    );
                }
            }
        }
        if let Some(late) = &self.late_rows
            && late != "drop"
        {
            let scheme = late.split_once("://").map(|(s, _)| s);
            if !(late.starts_with('/') || matches!(scheme, Some("file" | "s3" | "s3a"))) {
                problem(
                    "late_rows",
                    format!(
                        "{late:?} is neither `drop` nor a table URI (file://, s3:// or an \
                         absolute path)"
                    ),
                );
            } else if late == &self.table.uri || *late == self.dead_letter_uri() {
                problem(
                    "late_rows",
                    "must be a table of its own, not the table or its dead-letter table".into(),
                );
            }
        }
        if self.is_stateful() && self.checkpoint.state_dir.is_none() && !self.checkpoint_is_local()
        {
            problem(
                "checkpoint.state_dir",
                "the checkpoint is not on local disk: give a local directory for the \
                 RocksDB state"
                    .into(),
            );
        }
    }

    /// Problems of `features`.
    fn validate_features(&self, problem: &mut impl FnMut(&str, String)) {
        let Some(f) = &self.features else {
            return;
        };
        if self.window.is_some() {
            problem(
                "features",
                "does not go with window: features add columns to each row, a window replaces \
                 the rows by one row per window; use one pipeline for each"
                    .into(),
            );
        }
        if f.group_by.is_empty() {
            problem(
                "features.group_by",
                "name at least one key column (the features are per key)".into(),
            );
        }
        if f.range.0.is_zero() {
            problem("features.range", "must be greater than zero".into());
        }
        if f.aggregations.is_empty() {
            problem(
                "features.aggregations",
                "name at least one feature column".into(),
            );
        }
        let computed: Vec<&str> = self
            .transform
            .iter()
            .flat_map(|t| t.columns.0.iter().map(|(name, _)| name.as_str()))
            .collect();
        let mut names: Vec<&str> = Vec::new();
        for (i, a) in f.aggregations.iter().enumerate() {
            let path = format!("features.aggregations[{i}]");
            if a.name.is_empty() {
                problem(&format!("{path}.name"), "must not be empty".into());
            } else if names.contains(&a.name.as_str()) || f.group_by.contains(&a.name) {
                problem(
                    &format!("{path}.name"),
                    format!("column {:?} is named twice", a.name),
                );
            }
            names.push(&a.name);
            if matches!(
                a.function,
                AggregateFunction::First | AggregateFunction::Last
            ) {
                problem(
                    &format!("{path}.function"),
                    format!(
                        "{} is not a rolling feature; use count, count_distinct, sum, min, \
                         max or avg",
                        a.function.name()
                    ),
                );
            }
            if a.column.is_none() && a.function != AggregateFunction::Count {
                problem(
                    &format!("{path}.column"),
                    format!("{} needs a column", a.function.name()),
                );
            }
        }
        // The transform runs after the features (so it can read them): the
        // columns the operators read must exist before it.
        let mut read_before: Vec<(String, &str)> = Vec::new();
        if let Some(c) = self.event_time.as_ref().and_then(|e| e.column.as_ref()) {
            read_before.push(("event_time.column".into(), c));
        }
        for (i, k) in self.dedup.iter().flat_map(|d| &d.keys).enumerate() {
            read_before.push((format!("dedup.keys[{i}]"), k));
        }
        for (i, k) in f.group_by.iter().enumerate() {
            read_before.push((format!("features.group_by[{i}]"), k));
        }
        for (i, a) in f.aggregations.iter().enumerate() {
            if let Some(c) = &a.column {
                read_before.push((format!("features.aggregations[{i}].column"), c));
            }
        }
        for (path, column) in read_before {
            if computed.contains(&column) {
                problem(
                    &path,
                    format!(
                        "{column:?} is a transform column, and with features the transform \
                         runs after the operators (so it can read the features); use a \
                         column of the record or of enrich"
                    ),
                );
            }
        }
    }

    /// The columns a windowed table has: window bounds (timestamps), group
    /// keys, aggregates. `None` for a table of rows.
    pub fn window_output_columns(&self) -> Option<Vec<String>> {
        self.window.as_ref()?;
        let mut out = vec![WINDOW_START.to_string(), WINDOW_END.to_string()];
        out.extend(self.group_by.iter().cloned());
        out.extend(self.aggregations.iter().map(|a| a.name.clone()));
        Some(out)
    }

    /// Event-time references against the record's columns (name, is it a
    /// timestamp) as (path, message) pairs.
    pub(crate) fn check_event_time_columns(
        &self,
        columns: &[(String, bool)],
        out: &mut Vec<(String, String)>,
    ) {
        let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
        let mut check = |path: String, column: &str| {
            if !names.contains(&column) {
                out.push((
                    path,
                    format!(
                        "unknown column {column:?}; the record has: {}",
                        names.join(", ")
                    ),
                ));
            }
        };
        if let Some(c) = self.event_time.as_ref().and_then(|e| e.column.as_ref()) {
            check("event_time.column".into(), c);
        }
        for (i, k) in self.dedup.iter().flat_map(|d| &d.keys).enumerate() {
            check(format!("dedup.keys[{i}]"), k);
        }
        for (i, g) in self.group_by.iter().enumerate() {
            check(format!("group_by[{i}]"), g);
        }
        for (i, k) in self.source.partitioned_by.iter().enumerate() {
            check(format!("source.partitioned_by[{i}]"), k);
        }
        for (i, k) in self.repartition.iter().flat_map(|r| &r.keys).enumerate() {
            check(format!("repartition.keys[{i}]"), k);
        }
        for (i, a) in self.aggregations.iter().enumerate() {
            if let Some(c) = &a.column {
                check(format!("aggregations[{i}].column"), c);
            }
        }
        if let Some(f) = &self.features {
            for (i, g) in f.group_by.iter().enumerate() {
                check(format!("features.group_by[{i}]"), g);
            }
            for (i, a) in f.aggregations.iter().enumerate() {
                if let Some(c) = &a.column {
                    check(format!("features.aggregations[{i}].column"), c);
                }
            }
        }
    }
}
