//! Maps dotted field paths (`table.partition_by[1]`) to the YAML lines they
//! sit on. serde_yaml keeps no positions, and specs are written in block
//! style, so an indentation scan is exact for them; anything it cannot place
//! (flow style) falls back to the nearest enclosing field.

use std::collections::HashMap;

pub(crate) struct LineIndex {
    lines: HashMap<String, usize>,
}

struct Open {
    indent: usize,
    path: String,
    is_item: bool,
}

impl LineIndex {
    pub(crate) fn new(source: &str) -> LineIndex {
        let mut lines = HashMap::new();
        let mut stack: Vec<Open> = Vec::new();
        let mut item_counts: HashMap<String, usize> = HashMap::new();
        for (n, raw) in source.lines().enumerate() {
            let line_no = n + 1;
            let trimmed = raw.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with("---") {
                continue;
            }
            let mut indent = raw.len() - trimmed.len();
            let mut rest = trimmed;
            if rest == "-" || rest.starts_with("- ") {
                while stack
                    .last()
                    .is_some_and(|o| o.indent > indent || (o.indent == indent && o.is_item))
                {
                    stack.pop();
                }
                let parent = stack.last().map(|o| o.path.clone()).unwrap_or_default();
                let count = item_counts.entry(parent.clone()).or_insert(0);
                let path = format!("{parent}[{count}]");
                *count += 1;
                lines.entry(path.clone()).or_insert(line_no);
                stack.push(Open {
                    indent,
                    path,
                    is_item: true,
                });
                rest = rest[1..].trim_start();
                indent += trimmed.len() - rest.len();
                if rest.is_empty() {
                    continue;
                }
            }
            let Some(key) = key_of(rest) else { continue };
            while stack.last().is_some_and(|o| o.indent >= indent) {
                stack.pop();
            }
            let path = match stack.last() {
                Some(o) => format!("{}.{key}", o.path),
                None => key.to_string(),
            };
            item_counts.remove(&path);
            lines.entry(path.clone()).or_insert(line_no);
            stack.push(Open {
                indent,
                path,
                is_item: false,
            });
        }
        LineIndex { lines }
    }

    /// Line of `path`, or of its nearest ancestor that has one.
    pub(crate) fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

fn key_of(s: &str) -> Option<&str> {
    let s = s.split(" #").next().unwrap_or(s);
    let (key, after) = s.split_once(':')?;
    if !(after.is_empty() || after.starts_with(' ')) {
        return None;
    }
    let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
    (!key.is_empty() && !key.contains(' ')).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_keys_and_sequence_items() {
        let src = "pipeline: p\nsource:\n  kafka:\n    topic: t # c\n    properties:\n      a.b: x\ntable:\n  uri: u\n  partition_by:\n    - date(ts)\n    - user\ntrigger:\n  interval: 1s\n";
        let ix = LineIndex::new(src);
        assert_eq!(ix.line_of("pipeline"), Some(1));
        assert_eq!(ix.line_of("source.kafka.topic"), Some(4));
        assert_eq!(ix.line_of("source.kafka.properties.a.b"), Some(6));
        assert_eq!(ix.line_of("table.partition_by[1]"), Some(11));
        assert_eq!(ix.line_of("trigger.interval"), Some(13));
        assert_eq!(ix.line_of("trigger.nonexistent"), Some(12));
    }

    #[test]
    fn sequences_at_the_parent_indent() {
        let src = "table:\n  partition_by:\n  - a\n  - b\n  uri: x\n";
        let ix = LineIndex::new(src);
        assert_eq!(ix.line_of("table.partition_by[1]"), Some(4));
        assert_eq!(ix.line_of("table.uri"), Some(5));
    }
}
