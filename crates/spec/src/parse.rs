use serde_yaml::Value;

use crate::error::{Problem, Result, SpecError};
use crate::lines::LineIndex;
use crate::model::TableSpec;

/// Most structural problems collected from one document before giving up.
const MAX_PROBLEMS: usize = 50;

/// Reads and parses a spec file; see [`parse_spec`].
pub fn parse_spec_file(path: &std::path::Path) -> Result<TableSpec> {
    let source = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_spec(&path.display().to_string(), &source)
}

/// Parses and validates one spec, reporting every problem found: each unknown
/// field, each invalid value, each missing field, then the semantic checks of
/// `TableSpec::validate`.
pub fn parse_spec(file: &str, source: &str) -> Result<TableSpec> {
    let invalid = |problems| SpecError::Invalid {
        file: file.to_string(),
        problems,
    };
    let source =
        &expand_env(source, |name| std::env::var(name).ok()).map_err(|(line, message)| {
            invalid(vec![Problem {
                path: String::new(),
                line: Some(line),
                message,
            }])
        })?;
    let mut value: Value = serde_yaml::from_str(source).map_err(|e| {
        invalid(vec![Problem {
            path: String::new(),
            line: e.location().map(|l| l.line()),
            message: format!("not valid YAML: {e}"),
        }])
    })?;
    let lines = LineIndex::new(source);
    let mut problems = Vec::new();
    // serde stops at the first error. To report them all, remove the offending
    // field and try again; a field removed that way is not reported again as missing.
    let mut removed: Vec<String> = Vec::new();
    let spec = loop {
        match serde_path_to_error::deserialize::<_, TableSpec>(value.clone()) {
            Ok(spec) => break Some(spec),
            Err(err) => {
                let path = err.path().to_string();
                let path = if path == "." { String::new() } else { path };
                let message = err.inner().to_string();
                let (path, message, removable) = describe(&path, &message);
                if !removed.contains(&path) {
                    problems.push(Problem {
                        line: lines.line_of(&path),
                        path: path.clone(),
                        message,
                    });
                }
                if !removable || problems.len() >= MAX_PROBLEMS || !remove_path(&mut value, &path) {
                    break None;
                }
                removed.push(path);
            }
        }
    };
    if let Some(spec) = &spec {
        for (path, message) in spec.validate() {
            problems.push(Problem {
                line: lines.line_of(&path),
                path,
                message,
            });
        }
    }
    match spec {
        Some(spec) if problems.is_empty() => Ok(spec),
        _ => Err(invalid(problems)),
    }
}

/// Turns serde's message into (path, message, whether removing the field lets
/// parsing go on).
fn describe(path: &str, message: &str) -> (String, String, bool) {
    let join = |field: &str| {
        if path.is_empty() {
            field.to_string()
        } else {
            format!("{path}.{field}")
        }
    };
    if let Some(field) = between(message, "missing field `", "`") {
        return (join(field), "missing required field".to_string(), false);
    }
    if let Some(field) = between(message, "unknown field `", "`") {
        let expected = message
            .split_once(", expected")
            .map(|(_, e)| format!(" (expected{e})"))
            .unwrap_or_default();
        // serde_path_to_error already ends the path with the unknown key.
        let full = if path.ends_with(field) {
            path.to_string()
        } else {
            join(field)
        };
        return (full, format!("unknown field{expected}"), true);
    }
    let message = message
        .split(" at line ")
        .next()
        .unwrap_or(message)
        .to_string();
    (path.to_string(), message, !path.is_empty())
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let rest = &s[s.find(start)? + start.len()..];
    Some(&rest[..rest.find(end)?])
}

/// Removes the field at a dotted path (`a.b[2].c`) from a YAML value.
fn remove_path(value: &mut Value, path: &str) -> bool {
    let mut segments: Vec<Segment> = Vec::new();
    for part in path.split('.') {
        let (name, indexes) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            segments.push(Segment::Key(name.to_string()));
        }
        for ix in indexes.split('[').filter(|s| !s.is_empty()) {
            match ix.trim_end_matches(']').parse() {
                Ok(i) => segments.push(Segment::Index(i)),
                Err(_) => return false,
            }
        }
    }
    let Some(last) = segments.pop() else {
        return false;
    };
    let mut cur = value;
    for seg in &segments {
        cur = match (seg, cur) {
            (Segment::Key(k), Value::Mapping(m)) => match m.get_mut(k.as_str()) {
                Some(v) => v,
                None => return false,
            },
            (Segment::Index(i), Value::Sequence(s)) => match s.get_mut(*i) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, cur) {
        (Segment::Key(k), Value::Mapping(m)) => m.remove(k.as_str()).is_some(),
        (Segment::Index(i), Value::Sequence(s)) if i < s.len() => {
            // Replace rather than remove so later indexes keep their numbers.
            s[i] = Value::Null;
            true
        }
        _ => false,
    }
}

enum Segment {
    Key(String),
    Index(usize),
}

/// A `SpecError` for problems found after parsing (for example column checks
/// against the registry), each placed on its line of `source`.
pub fn problems_at(file: &str, source: &str, problems: Vec<(String, String)>) -> SpecError {
    let lines = LineIndex::new(source);
    SpecError::Invalid {
        file: file.to_string(),
        problems: problems
            .into_iter()
            .map(|(path, message)| Problem {
                line: lines.line_of(&path),
                path,
                message,
            })
            .collect(),
    }
}

/// Expands `${VAR}` and `${VAR:-default}` from the environment, so one spec
/// serves every environment. A `$$` stands for `$`. An unset variable without
/// default is an error naming it (and its line).
pub(crate) fn expand_env(
    source: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> std::result::Result<String, (usize, String)> {
    let mut out = String::with_capacity(source.len());
    for (n, line) in source.split_inclusive('\n').enumerate() {
        let mut rest = line;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                out.push('$');
                rest = tail;
            } else if let Some(body) = after.strip_prefix('{') {
                let end = body
                    .find('}')
                    .ok_or((n + 1, "unclosed ${ in spec".to_string()))?;
                let expr = &body[..end];
                let (name, default) = match expr.split_once(":-") {
                    Some((name, d)) => (name, Some(d)),
                    None => (expr, None),
                };
                match (lookup(name), default) {
                    (Some(v), _) if !v.is_empty() || default.is_none() => out.push_str(&v),
                    (_, Some(d)) => out.push_str(d),
                    (_, None) => {
                        return Err((
                            n + 1,
                            format!(
                                "environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
                            ),
                        ));
                    }
                }
                rest = &body[end + 1..];
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "pipeline: clicks
source:
  kafka:
    bootstrap_servers: localhost:9092
    topic: clicks
  schema_registry:
    url: http://localhost:8081
table:
  uri: file:///tmp/lake/clicks
  partition_by: [date(ts)]
checkpoint:
  location: file:///tmp/ckpt/clicks
";

    fn problems(src: &str) -> Vec<String> {
        match parse_spec("s.yaml", src) {
            Ok(_) => vec![],
            Err(e) => e.report(),
        }
    }

    #[test]
    fn minimal_spec_parses_with_defaults() {
        let spec = parse_spec("s.yaml", GOOD).unwrap();
        assert_eq!(spec.trigger.interval.0, std::time::Duration::from_secs(1));
        assert_eq!(spec.table.target_file_size.0, 256 << 20);
        assert_eq!(spec.source.kafka.group_id("clicks"), "tributary-clicks");
        assert_eq!(
            spec.dead_letter_uri(),
            "file:///tmp/lake/clicks_dead_letters"
        );
    }

    #[test]
    fn reports_every_structural_problem_with_lines() {
        let src = GOOD
            .replace(
                "    topic: clicks\n",
                "    topic: clicks\n    colour: blue\n",
            )
            .replace(
                "checkpoint:\n",
                "trigger:\n  interval: soon\n  max_offsets: 5\ncheckpoint:\n",
            );
        let got = problems(&src);
        assert_eq!(
            got,
            vec![
                "s.yaml:6: source.kafka.colour: unknown field (expected one of `bootstrap_servers`, `topic`, `group_id`, `starting_offsets`, `properties`)".to_string(),
                "s.yaml:13: trigger.interval: invalid duration \"soon\"; write a number and a unit, e.g. 500ms, 1s, 5m".to_string(),
                "s.yaml:14: trigger.max_offsets: unknown field (expected one of `interval`, `max_offsets_per_trigger`, `available_now`)".to_string(),
            ]
        );
    }

    #[test]
    fn reports_missing_required_fields() {
        let src = GOOD.replace("  uri: file:///tmp/lake/clicks\n", "");
        assert_eq!(
            problems(&src),
            vec!["s.yaml:8: table.uri: missing required field".to_string()]
        );
    }

    #[test]
    fn environment_variables_expand_with_defaults() {
        let env = |name: &str| (name == "BROKERS").then(|| "k1:9092,k2:9092".to_string());
        let src = "a: ${BROKERS}\nb: ${REGISTRY:-http://localhost:8081}\nc: $$HOME and $5\n";
        assert_eq!(
            expand_env(src, env).unwrap(),
            "a: k1:9092,k2:9092\nb: http://localhost:8081\nc: $HOME and $5\n"
        );
        let err = expand_env("x: 1\ny: ${MISSING}\n", env).unwrap_err();
        assert_eq!(err.0, 2);
        assert!(err.1.contains("MISSING"));
    }

    #[test]
    fn yaml_syntax_errors_carry_their_line() {
        let got = problems("pipeline: [\n");
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with("s.yaml:2: not valid YAML"), "{got:?}");
    }
}
