//! Row filters of the republish sink: comparisons of a column with a literal,
//! `IS [NOT] NULL`, `AND`, `OR`, `NOT` and parentheses, with SQL's meaning
//! (a comparison with NULL is not true, so the row is not selected).

use std::fmt;

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    Compare {
        column: String,
        op: CompareOp,
        value: Literal,
    },
    IsNull {
        column: String,
        negated: bool,
    },
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Bool(b) => write!(f, "{b}"),
            Literal::Int(i) => write!(f, "{i}"),
            Literal::Float(x) => write!(f, "{x}"),
            Literal::String(s) => write!(f, "{s}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Keyword(&'static str),
    Op(CompareOp),
    Literal(Literal),
    Open,
    Close,
}

const KEYWORDS: &[&str] = &["AND", "OR", "NOT", "IS", "NULL"];

fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push(Token::Open);
                i += 1;
            }
            ')' => {
                out.push(Token::Close);
                i += 1;
            }
            '=' => {
                out.push(Token::Op(CompareOp::Eq));
                i += 1;
            }
            '!' | '<' | '>' => {
                let next = chars.get(i + 1).copied();
                let (op, len) = match (c, next) {
                    ('!', Some('=')) | ('<', Some('>')) => (CompareOp::NotEq, 2),
                    ('<', Some('=')) => (CompareOp::LtEq, 2),
                    ('>', Some('=')) => (CompareOp::GtEq, 2),
                    ('<', _) => (CompareOp::Lt, 1),
                    ('>', _) => (CompareOp::Gt, 1),
                    _ => {
                        return Err(format!(
                            "unexpected {c:?}; comparisons are = != <> < <= > >="
                        ));
                    }
                };
                out.push(Token::Op(op));
                i += len;
            }
            '\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err("unclosed string literal".into()),
                        Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                            s.push('\'');
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(&ch) => {
                            s.push(ch);
                            i += 1;
                        }
                    }
                }
                out.push(Token::Literal(Literal::String(s)));
            }
            c if c.is_ascii_digit()
                || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) =>
            {
                let start = i;
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                    i += 1;
                }
                let number: String = chars[start..i].iter().collect();
                let literal = if number.contains('.') {
                    number.parse().map(Literal::Float).ok()
                } else {
                    number.parse().map(Literal::Int).ok()
                };
                out.push(Token::Literal(
                    literal.ok_or_else(|| format!("invalid number {number:?}"))?,
                ));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let upper = word.to_ascii_uppercase();
                out.push(match upper.as_str() {
                    "TRUE" => Token::Literal(Literal::Bool(true)),
                    "FALSE" => Token::Literal(Literal::Bool(false)),
                    _ => match KEYWORDS.iter().find(|k| **k == upper) {
                        Some(k) => Token::Keyword(k),
                        None => Token::Ident(word),
                    },
                });
            }
            c => return Err(format!("unexpected {c:?}")),
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn keyword(&mut self, k: &str) -> bool {
        let found = matches!(self.peek(), Some(Token::Keyword(w)) if *w == k);
        if found {
            self.at += 1;
        }
        found
    }

    fn or(&mut self) -> Result<Filter, String> {
        let mut left = self.and()?;
        while self.keyword("OR") {
            left = Filter::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, String> {
        let mut left = self.not()?;
        while self.keyword("AND") {
            left = Filter::And(Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Filter, String> {
        if self.keyword("NOT") {
            return Ok(Filter::Not(Box::new(self.not()?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Filter, String> {
        match self.next() {
            Some(Token::Open) => {
                let inner = self.or()?;
                match self.next() {
                    Some(Token::Close) => Ok(inner),
                    _ => Err("missing ')'".into()),
                }
            }
            Some(Token::Ident(column)) => {
                if self.keyword("IS") {
                    let negated = self.keyword("NOT");
                    if !self.keyword("NULL") {
                        return Err(format!("expected NULL after {column} IS"));
                    }
                    return Ok(Filter::IsNull { column, negated });
                }
                let op = match self.next() {
                    Some(Token::Op(op)) => op,
                    _ => return Err(format!("expected a comparison after {column:?}")),
                };
                match self.next() {
                    Some(Token::Literal(value)) => Ok(Filter::Compare { column, op, value }),
                    _ => Err(format!(
                        "expected a literal (number, 'string', true, false) after {column:?}"
                    )),
                }
            }
            Some(t) => Err(format!("expected a column or '(', found {t:?}")),
            None => Err("unexpected end of filter".into()),
        }
    }
}

impl Filter {
    /// Parses `text`, e.g. `is_suspicious = true AND amount >= 1000`.
    pub fn parse(text: &str) -> Result<Filter, String> {
        let mut parser = Parser {
            tokens: tokens(text)?,
            at: 0,
        };
        let filter = parser.or()?;
        match parser.peek() {
            None => Ok(filter),
            Some(t) => Err(format!("unexpected {t:?} after a complete condition")),
        }
    }

    /// The columns the filter reads.
    pub fn columns(&self) -> Vec<&str> {
        match self {
            Filter::Compare { column, .. } | Filter::IsNull { column, .. } => vec![column],
            Filter::And(a, b) | Filter::Or(a, b) => {
                let mut out = a.columns();
                out.extend(b.columns());
                out
            }
            Filter::Not(inner) => inner.columns(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmp(column: &str, op: CompareOp, value: Literal) -> Filter {
        Filter::Compare {
            column: column.into(),
            op,
            value,
        }
    }

    #[test]
    fn precedence_is_not_then_and_then_or() {
        let f = Filter::parse("a = 1 OR NOT b <> 'x''y' and c is not null").unwrap();
        assert_eq!(
            f,
            Filter::Or(
                Box::new(cmp("a", CompareOp::Eq, Literal::Int(1))),
                Box::new(Filter::And(
                    Box::new(Filter::Not(Box::new(cmp(
                        "b",
                        CompareOp::NotEq,
                        Literal::String("x'y".into())
                    )))),
                    Box::new(Filter::IsNull {
                        column: "c".into(),
                        negated: true
                    }),
                )),
            )
        );
        assert_eq!(f.columns(), vec!["a", "b", "c"]);
        let grouped = Filter::parse("(a >= -2.5 or a < 3) and flag = TRUE").unwrap();
        assert_eq!(
            grouped,
            Filter::And(
                Box::new(Filter::Or(
                    Box::new(cmp("a", CompareOp::GtEq, Literal::Float(-2.5))),
                    Box::new(cmp("a", CompareOp::Lt, Literal::Int(3))),
                )),
                Box::new(cmp("flag", CompareOp::Eq, Literal::Bool(true))),
            )
        );
    }

    #[test]
    fn mistakes_are_named() {
        for (text, message) in [
            ("a = ", "expected a literal"),
            ("a == 1", "expected a literal"),
            ("(a = 1", "missing ')'"),
            ("a = 1 b = 2", "after a complete condition"),
            ("a is 1", "expected NULL"),
            ("a = 'open", "unclosed string"),
            ("a ~ 1", "unexpected '~'"),
            ("", "unexpected end"),
        ] {
            let err = Filter::parse(text).unwrap_err();
            assert!(err.contains(message), "{text:?}: {err}");
        }
    }
}
