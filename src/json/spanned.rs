//! JSON values that remember where they start, so template errors can say `file:line:col`.

use super::JToken;
use super::parse::{Builder, MAX_DEPTH, ParseError, Trailing, parse_with};

/// A 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
}

impl std::fmt::Display for Pos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// A value with the position where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Spanned<T> {
    /// The value.
    pub value: T,
    /// Where it starts in the source text.
    pub pos: Pos,
}

/// A JSON value whose every member and element carries its position.
#[derive(Debug, Clone, PartialEq)]
pub enum SpannedJson {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A number, typed as Json.NET types it (`Integer`, `BigInteger` or `Float`).
    Number(JToken),
    /// A string (never date-detected: templates hold expressions, not data).
    String(String),
    /// An array.
    Array(Vec<Spanned<SpannedJson>>),
    /// An object with its members in document order (duplicates kept).
    Object(Vec<(Spanned<String>, Spanned<SpannedJson>)>),
}

impl SpannedJson {
    /// Json.NET's name for the value's type, for messages such as "expected String, got Array".
    pub fn type_name(&self) -> &'static str {
        match self {
            SpannedJson::Null => "Null",
            SpannedJson::Bool(_) => "Boolean",
            SpannedJson::Number(number) => number.type_name(),
            SpannedJson::String(_) => "String",
            SpannedJson::Array(_) => "Array",
            SpannedJson::Object(_) => "Object",
        }
    }

    /// Converts to a plain token (strings stay strings).
    pub fn to_token(&self) -> JToken {
        match self {
            SpannedJson::Null => JToken::Null,
            SpannedJson::Bool(value) => JToken::Bool(*value),
            SpannedJson::Number(number) => number.clone(),
            SpannedJson::String(value) => JToken::string(value.as_str()),
            SpannedJson::Array(items) => JToken::Array(items.iter().map(|item| item.value.to_token()).collect()),
            SpannedJson::Object(members) => JToken::Object(
                members
                    .iter()
                    .map(|(key, value)| (key.value.clone(), value.value.to_token()))
                    .collect(),
            ),
        }
    }
}

/// Parses `text`, recording the position of every value and member name.
pub fn parse_spanned(text: &str) -> Result<Spanned<SpannedJson>, (Pos, String)> {
    let mut builder = SpanBuilder::new(text);
    parse_with(text, &mut builder, Trailing::Reject, MAX_DEPTH).map_err(|error: ParseError| {
        let pos = builder.pos(error.offset);
        (pos, error.message)
    })
}

struct SpanBuilder<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> SpanBuilder<'a> {
    fn new(text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { text, line_starts }
    }

    fn pos(&self, offset: usize) -> Pos {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self.line_starts[line - 1];
        let column = self.text.get(start..offset).map_or(1, |s| s.chars().count() + 1);
        Pos { line, column }
    }

    fn spanned<T>(&self, value: T, offset: usize) -> Spanned<T> {
        Spanned {
            value,
            pos: self.pos(offset),
        }
    }
}

impl Builder for SpanBuilder<'_> {
    type Value = Spanned<SpannedJson>;
    type Key = Spanned<String>;

    fn null(&mut self, offset: usize) -> Self::Value {
        self.spanned(SpannedJson::Null, offset)
    }

    fn boolean(&mut self, value: bool, offset: usize) -> Self::Value {
        self.spanned(SpannedJson::Bool(value), offset)
    }

    fn number(&mut self, _: &str, token: JToken, offset: usize) -> Self::Value {
        self.spanned(SpannedJson::Number(token), offset)
    }

    fn string(&mut self, value: &str, offset: usize) -> Self::Value {
        self.spanned(SpannedJson::String(value.to_string()), offset)
    }

    fn key(&mut self, value: &str, offset: usize) -> Self::Key {
        self.spanned(value.to_string(), offset)
    }

    fn array(&mut self, items: Vec<Self::Value>, offset: usize) -> Self::Value {
        self.spanned(SpannedJson::Array(items), offset)
    }

    fn object(&mut self, properties: Vec<(Self::Key, Self::Value)>, offset: usize) -> Self::Value {
        self.spanned(SpannedJson::Object(properties), offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_positions_of_members_and_values() {
        let text = "{\n  \"a\": [1, \"x\"],\n\t\"é\": {\"b\": null}\n}";
        let root = parse_spanned(text).unwrap();
        assert_eq!(root.pos, Pos { line: 1, column: 1 });
        let SpannedJson::Object(members) = &root.value else {
            panic!()
        };
        assert_eq!(members[0].0.pos, Pos { line: 2, column: 3 });
        let SpannedJson::Array(items) = &members[0].1.value else {
            panic!()
        };
        assert_eq!(items[1].pos, Pos { line: 2, column: 12 });
        assert_eq!(members[1].0.pos, Pos { line: 3, column: 2 });
        assert_eq!(members[1].1.pos, Pos { line: 3, column: 7 });
    }

    #[test]
    fn syntax_errors_carry_positions() {
        let (pos, message) = parse_spanned("{\n  \"a\": 1\n  \"b\": 2\n}").unwrap_err();
        assert_eq!(pos, Pos { line: 3, column: 3 });
        assert!(message.contains("Expected ','"), "{message}");
    }
}
