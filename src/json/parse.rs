//! A JSON parser with Json.NET's reader leniency, generic over what it builds.
//!
//! Beyond RFC 8259 it accepts what Json.NET's `JsonTextReader` accepts and real device payloads
//! use: `//` and `/* */` comments, single-quoted strings, unquoted property names, trailing commas,
//! `NaN` / `Infinity` / `-Infinity`, octal (`012`) and hex (`0x1F`) integers, `.5` and `5.`,
//! `undefined` and empty slots (`[1,,2]`, `{"a":,}`), read as null.
//! The same grammar builds [`JToken`]s for device messages and position-carrying trees for
//! templates. Nesting is limited to [`MAX_DEPTH`] containers, Json.NET's default `MaxDepth`, so
//! hostile input cannot exhaust the stack.

use std::collections::HashSet;

use super::{JObject, JString, JToken, JsonDate, KeyDigest};

/// Deepest container nesting accepted (Json.NET 13's default `JsonReader.MaxDepth`).
pub const MAX_DEPTH: usize = 64;

/// A JSON syntax error at a byte offset of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Byte offset of the offending character.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
}

impl ParseError {
    /// 1-based line and column (in characters) of the error within `text`.
    pub fn line_col(&self, text: &str) -> (usize, usize) {
        line_col(text, self.offset)
    }
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (at byte {})", self.message, self.offset)
    }
}

impl std::error::Error for ParseError {}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let column = text[line_start..offset].chars().count() + 1;
    (line, column)
}

/// Receives parsed values; `offset` is the byte offset where each value or key starts.
pub(crate) trait Builder {
    type Value;
    type Key;
    fn null(&mut self, offset: usize) -> Self::Value;
    fn boolean(&mut self, value: bool, offset: usize) -> Self::Value;
    /// `text` is a valid number literal and `token` its classification as Json.NET reads it.
    fn number(&mut self, text: &str, token: JToken, offset: usize) -> Self::Value;
    fn string(&mut self, value: &str, offset: usize) -> Self::Value;
    fn key(&mut self, value: &str, offset: usize) -> Self::Key;
    fn array(&mut self, items: Vec<Self::Value>, offset: usize) -> Self::Value;
    fn object(&mut self, properties: Vec<(Self::Key, Self::Value)>, offset: usize) -> Self::Value;
}

/// Parses one JSON document into a [`JToken`], detecting dates as Json.NET does. Text after the
/// document is an error.
pub fn parse_token(text: &str) -> Result<JToken, ParseError> {
    parse_with(text, &mut TokenBuilder::default(), Trailing::Reject, MAX_DEPTH)
}

/// Parses the first JSON value of a device message body as `JToken.ReadFrom` does: anything after
/// that value is not read. `extra_depth` allows for containers wrapped around the body.
pub fn parse_message(text: &str, extra_depth: usize) -> Result<JToken, ParseError> {
    parse_message_keyed(text, extra_depth).map(|(token, _)| token)
}

/// [`parse_message`], also returning the digest of every member name read.
pub fn parse_message_keyed(text: &str, extra_depth: usize) -> Result<(JToken, KeyDigest), ParseError> {
    let mut builder = TokenBuilder::default();
    let token = parse_with(text, &mut builder, Trailing::Ignore, MAX_DEPTH + extra_depth)?;
    Ok((token, builder.keys))
}

/// What to do with text after the first value.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trailing {
    Reject,
    Ignore,
}

pub(crate) fn parse_with<B: Builder>(
    text: &str,
    builder: &mut B,
    trailing: Trailing,
    max_depth: usize,
) -> Result<B::Value, ParseError> {
    let mut parser = Parser {
        bytes: text.as_bytes(),
        text,
        pos: 0,
        max_depth,
        unescaped: String::new(),
    };
    if text.starts_with('\u{feff}') {
        parser.pos = 3;
    }
    parser.skip_whitespace()?;
    let value = parser.value(builder, 0)?;
    if trailing == Trailing::Reject {
        parser.skip_whitespace()?;
        if parser.pos < parser.bytes.len() {
            return Err(parser.error("Additional text found after the end of the JSON value"));
        }
    }
    Ok(value)
}

struct Parser<'a> {
    bytes: &'a [u8],
    text: &'a str,
    pos: usize,
    max_depth: usize,
    /// The last string literal that had escapes, decoded.
    unescaped: String,
}

impl<'a> Parser<'a> {
    fn error(&self, message: &str) -> ParseError {
        ParseError {
            offset: self.pos,
            message: message.to_string(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// Skips whitespace and comments. Machine-written messages seldom have any, so the check
    /// for none is inlined at every call.
    #[inline(always)]
    fn skip_whitespace(&mut self) -> Result<(), ParseError> {
        match self.peek() {
            Some(b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c | b'/') => self.skip_whitespace_and_comments(),
            _ => Ok(()),
        }
    }

    fn skip_whitespace_and_comments(&mut self) -> Result<(), ParseError> {
        loop {
            match self.peek() {
                Some(b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) => self.pos += 1,
                Some(b'/') => match self.bytes.get(self.pos + 1) {
                    Some(b'/') => {
                        while !matches!(self.peek(), None | Some(b'\n' | b'\r')) {
                            self.pos += 1;
                        }
                    }
                    Some(b'*') => {
                        let start = self.pos;
                        match self.text[self.pos + 2..].find("*/") {
                            Some(end) => self.pos += 2 + end + 2,
                            None => {
                                self.pos = start;
                                return Err(self.error("Unterminated comment"));
                            }
                        }
                    }
                    _ => return Err(self.error("Unexpected character '/'")),
                },
                _ => return Ok(()),
            }
        }
    }

    fn value<B: Builder>(&mut self, builder: &mut B, depth: usize) -> Result<B::Value, ParseError> {
        let start = self.pos;
        match self.peek() {
            None => Err(self.error("Unexpected end of input, expected a value")),
            Some(b'{') => self.object(builder, depth + 1),
            Some(b'[') => self.array(builder, depth + 1),
            Some(quote @ (b'"' | b'\'')) => {
                let value = self.string(quote)?;
                Ok(builder.string(value, start))
            }
            Some(b'-' | b'.' | b'0'..=b'9' | b'N' | b'I') => {
                let (text, token) = self.number()?;
                Ok(builder.number(text, token, start))
            }
            Some(b't') => self.literal("true").map(|_| builder.boolean(true, start)),
            Some(b'f') => self.literal("false").map(|_| builder.boolean(false, start)),
            Some(b'n') => self.literal("null").map(|_| builder.null(start)),
            // Json.NET reads `undefined`, and an empty slot before a comma inside an array or an
            // object, as an undefined value, which converts like null.
            Some(b'u') => self.literal("undefined").map(|_| builder.null(start)),
            Some(b',') if depth > 0 => Ok(builder.null(start)),
            Some(_) => Err(self.error("Unexpected character, expected a value")),
        }
    }

    fn literal(&mut self, word: &str) -> Result<(), ParseError> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            self.expect_separator()
        } else {
            Err(self.error("Unexpected character, expected a value"))
        }
    }

    /// After a scalar: whitespace, a comment, `,`, `]`, `}`, `)` or the end.
    fn expect_separator(&self) -> Result<(), ParseError> {
        match self.peek() {
            None | Some(b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c | b',' | b']' | b'}' | b')' | b'/') => Ok(()),
            Some(_) => Err(self.error("Unexpected character after a value")),
        }
    }

    fn enter(&self, depth: usize) -> Result<(), ParseError> {
        if depth > self.max_depth {
            Err(self.error(&format!("JSON nesting deeper than {MAX_DEPTH} levels is not accepted")))
        } else {
            Ok(())
        }
    }

    fn array<B: Builder>(&mut self, builder: &mut B, depth: usize) -> Result<B::Value, ParseError> {
        self.enter(depth)?;
        let start = self.pos;
        self.pos += 1;
        self.skip_whitespace()?;
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(builder.array(Vec::new(), start));
        }
        let mut items = Vec::with_capacity(4);
        loop {
            self.skip_whitespace()?;
            if self.peek() == Some(b']') && !items.is_empty() {
                // A trailing comma, as Json.NET allows.
                self.pos += 1;
                return Ok(builder.array(items, start));
            }
            items.push(self.value(builder, depth)?);
            self.skip_whitespace()?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(builder.array(items, start));
                }
                None => return Err(self.error("Unexpected end of input inside an array")),
                Some(_) => return Err(self.error("Expected ',' or ']' in an array")),
            }
        }
    }

    fn object<B: Builder>(&mut self, builder: &mut B, depth: usize) -> Result<B::Value, ParseError> {
        self.enter(depth)?;
        let start = self.pos;
        self.pos += 1;
        self.skip_whitespace()?;
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(builder.object(Vec::new(), start));
        }
        // Device messages' objects are small: one allocation usually holds them all.
        let mut properties = Vec::with_capacity(8);
        loop {
            self.skip_whitespace()?;
            let key_start = self.pos;
            let key = match self.peek() {
                Some(quote @ (b'"' | b'\'')) => builder.key(self.string(quote)?, key_start),
                Some(b'}') if !properties.is_empty() => {
                    // A trailing comma, as Json.NET allows.
                    self.pos += 1;
                    return Ok(builder.object(properties, start));
                }
                None => return Err(self.error("Unexpected end of input inside an object")),
                Some(_) => builder.key(self.unquoted_name()?, key_start),
            };
            self.skip_whitespace()?;
            if self.peek() != Some(b':') {
                return Err(self.error("Expected ':' after a property name"));
            }
            self.pos += 1;
            self.skip_whitespace()?;
            let value = self.value(builder, depth)?;
            properties.push((key, value));
            self.skip_whitespace()?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(builder.object(properties, start));
                }
                None => return Err(self.error("Unexpected end of input inside an object")),
                Some(_) => return Err(self.error("Expected ',' or '}' in an object")),
            }
        }
    }

    /// Reads a number the way Json.NET's reader delimits one: `NaN`, `Infinity`, `-Infinity`, or a
    /// run of `-+.0-9a-fA-FxX` that must classify as an integer, octal, hex or double.
    fn number(&mut self) -> Result<(&'a str, JToken), ParseError> {
        let start = self.pos;
        if matches!(self.peek(), Some(b'N' | b'I')) || self.bytes[start..].starts_with(b"-I") {
            for (word, value) in [
                ("NaN", f64::NAN),
                ("Infinity", f64::INFINITY),
                ("-Infinity", f64::NEG_INFINITY),
            ] {
                if self.bytes[start..].starts_with(word.as_bytes()) {
                    self.pos += word.len();
                    self.expect_separator()?;
                    return Ok((&self.text[start..self.pos], JToken::Float(value)));
                }
            }
        }
        while let Some(b'-' | b'+' | b'.' | b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' | b'x' | b'X') = self.peek() {
            self.pos += 1;
        }
        self.expect_separator()?;
        let text = &self.text[start..self.pos];
        match number_token(text) {
            Some(token) => Ok((text, token)),
            None => {
                self.pos = start;
                Err(self.error(&format!("Input string '{text}' is not a valid number")))
            }
        }
    }

    /// A property name without quotes: letters, digits, `_` and `$`.
    fn unquoted_name(&mut self) -> Result<&'a str, ParseError> {
        let start = self.pos;
        let name_len = self.text[start..]
            .char_indices()
            .find(|&(_, ch)| !(ch.is_alphanumeric() || ch == '_' || ch == '$'))
            .map_or(self.text.len() - start, |(i, _)| i);
        if name_len == 0 {
            return Err(self.error("Expected a property name"));
        }
        self.pos += name_len;
        Ok(&self.text[start..self.pos])
    }

    /// Reads a string literal starting at its opening quote (`"` or `'`). Raw control characters
    /// are accepted, as Json.NET accepts them. Without escapes the value is a slice of the input;
    /// with them it is decoded into the parser's buffer.
    fn string<'s>(&'s mut self, quote: u8) -> Result<&'s str, ParseError>
    where
        'a: 's,
    {
        self.pos += 1;
        let start = self.pos;
        // Fast path: no escapes, no copy.
        match memchr::memchr2(quote, b'\\', &self.bytes[start..]) {
            Some(length) if self.bytes[start + length] == quote => {
                self.pos = start + length + 1;
                return Ok(&self.text[start..start + length]);
            }
            Some(length) => self.pos = start + length,
            None => {
                self.pos = self.bytes.len();
                return Err(self.error("Unterminated string"));
            }
        }
        let mut out = std::mem::take(&mut self.unescaped);
        out.clear();
        out.push_str(&self.text[start..self.pos]);
        let mut run_start = self.pos;
        loop {
            match self.peek() {
                None => return Err(self.error("Unterminated string")),
                Some(byte) if byte == quote => {
                    out.push_str(&self.text[run_start..self.pos]);
                    self.pos += 1;
                    self.unescaped = out;
                    return Ok(&self.unescaped);
                }
                Some(b'\\') => {
                    out.push_str(&self.text[run_start..self.pos]);
                    self.pos += 1;
                    self.escape(&mut out)?;
                    run_start = self.pos;
                }
                Some(_) => self.pos += 1,
            }
        }
    }

    fn escape(&mut self, out: &mut String) -> Result<(), ParseError> {
        let Some(byte) = self.peek() else {
            return Err(self.error("Unterminated string"));
        };
        self.pos += 1;
        match byte {
            b'"' => out.push('"'),
            b'\'' => out.push('\''),
            b'\\' => out.push('\\'),
            b'/' => out.push('/'),
            b'b' => out.push('\u{8}'),
            b'f' => out.push('\u{c}'),
            b'n' => out.push('\n'),
            b'r' => out.push('\r'),
            b't' => out.push('\t'),
            b'u' => {
                let first = self.hex4()?;
                let ch = if (0xD800..0xDC00).contains(&first) && self.bytes[self.pos..].starts_with(b"\\u") {
                    let saved = self.pos;
                    self.pos += 2;
                    let second = self.hex4()?;
                    if (0xDC00..0xE000).contains(&second) {
                        char::from_u32(0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00))
                    } else {
                        self.pos = saved;
                        None
                    }
                } else {
                    char::from_u32(first)
                };
                // Unpaired surrogates cannot live in a Rust string; they become U+FFFD.
                out.push(ch.unwrap_or('\u{fffd}'));
            }
            _ => {
                self.pos -= 1;
                return Err(self.error("Invalid escape sequence"));
            }
        }
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, ParseError> {
        let digits = self
            .bytes
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.error("Incomplete \\u escape"))?;
        let mut value = 0;
        for &digit in digits {
            let nibble = (digit as char)
                .to_digit(16)
                .ok_or_else(|| self.error("Invalid \\u escape"))?;
            value = value * 16 + nibble;
        }
        self.pos += 4;
        Ok(value)
    }
}

/// Builds [`JToken`]s: integers, big integers, floats and dates as Json.NET reads them; notes
/// every member name in a digest on the way.
#[derive(Default)]
struct TokenBuilder {
    keys: KeyDigest,
}

impl Builder for TokenBuilder {
    type Value = JToken;
    type Key = JString;

    fn null(&mut self, _: usize) -> JToken {
        JToken::Null
    }

    fn boolean(&mut self, value: bool, _: usize) -> JToken {
        JToken::Bool(value)
    }

    fn number(&mut self, _: &str, token: JToken, _: usize) -> JToken {
        token
    }

    fn string(&mut self, value: &str, _: usize) -> JToken {
        match JsonDate::detect(value) {
            Some(date) => JToken::Date(Box::new(date)),
            None => JToken::String(value.into()),
        }
    }

    fn key(&mut self, value: &str, _: usize) -> JString {
        self.keys.add(value);
        value.into()
    }

    fn array(&mut self, items: Vec<JToken>, _: usize) -> JToken {
        JToken::Array(items)
    }

    fn object(&mut self, properties: Vec<(JString, JToken)>, _: usize) -> JToken {
        JToken::Object(object_from_pairs(properties))
    }
}

/// Longest integer literal Json.NET reads (`MaximumJavascriptIntegerCharacterLength`).
const MAX_INTEGER_LENGTH: usize = 380;

/// Classifies a number literal the way Json.NET's reader does; `None` when it is not one. `NaN`
/// and the infinities are words, read by `Parser::number` before this is asked.
fn number_token(text: &str) -> Option<JToken> {
    let bytes = text.as_bytes();
    if bytes.len() > 1 && bytes[0] == b'0' && !matches!(bytes[1], b'.' | b'e' | b'E') {
        let (digits, radix) = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            Some(hex) => (hex, 16),
            None => (&text[1..], 8),
        };
        return i64::from_str_radix(digits, radix).ok().map(JToken::Integer);
    }
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    if !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit()) {
        return match text.parse::<i64>() {
            Ok(value) => Some(JToken::Integer(value)),
            Err(_) if text.len() <= MAX_INTEGER_LENGTH => Some(JToken::BigInteger(text.into())),
            Err(_) => None,
        };
    }
    let float_chars = text
        .bytes()
        .all(|b| matches!(b, b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-'));
    if !float_chars || !text.bytes().any(|b| b.is_ascii_digit()) {
        return None;
    }
    // Out-of-range exponents give ±Infinity (or ±0), as .NET Core's double.Parse does.
    text.parse::<f64>().ok().map(JToken::Float)
}

fn object_from_pairs(properties: Vec<(JString, JToken)>) -> JObject {
    // Fast path: without duplicate names the pairs are already the object.
    let has_duplicates = if properties.len() <= 16 {
        properties
            .iter()
            .enumerate()
            .any(|(i, (key, _))| properties[..i].iter().any(|(other, _)| other == key))
    } else {
        let mut seen = HashSet::with_capacity(properties.len());
        !properties.iter().all(|(key, _)| seen.insert(&**key))
    };
    if !has_duplicates {
        return JObject { properties };
    }
    let mut object = JObject::new();
    let mut positions: std::collections::HashMap<JString, usize> = std::collections::HashMap::new();
    for (key, value) in properties {
        match positions.get(&key) {
            Some(&index) => object.properties[index].1 = value,
            None => {
                positions.insert(key.clone(), object.properties.len());
                object.properties.push((key, value));
            }
        }
    }
    object
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_numbers_like_json_net() {
        assert_eq!(parse_token("65").unwrap(), JToken::Integer(65));
        assert_eq!(parse_token("-0").unwrap(), JToken::Integer(0));
        assert_eq!(parse_token("65.0").unwrap(), JToken::Float(65.0));
        assert_eq!(parse_token("1e2").unwrap(), JToken::Float(100.0));
        assert_eq!(
            parse_token("123456789012345678901234567890").unwrap(),
            JToken::BigInteger("123456789012345678901234567890".into())
        );
        assert_eq!(
            parse_token("-9223372036854775809").unwrap(),
            JToken::BigInteger("-9223372036854775809".into())
        );
        assert_eq!(parse_token("1e400").unwrap(), JToken::Float(f64::INFINITY));
    }

    #[test]
    fn rejects_invalid_json_with_offsets() {
        for (text, offset) in [
            ("{", 1),
            ("[1,;]", 3),
            ("08", 0),
            ("{\"a\" 1}", 5),
            ("tru", 0),
            ("\"abc", 4),
            ("1 2", 2),
            ("{a b:1}", 3),
            ("\"\\x\"", 2),
            ("[1x]", 1),
            ("/* open", 0),
            ("+1", 0),
        ] {
            let error = parse_token(text).unwrap_err();
            assert_eq!(error.offset, offset, "{text}: {error}");
        }
    }

    #[test]
    fn accepts_json_net_leniency() {
        let token =
            parse_token("// device\n{'a': 1, b: [1,2,], /* c */ \"c\": NaN, d: -Infinity, e: 012, f: 0x1F, g: .5,}")
                .unwrap();
        assert_eq!(
            token.to_json(),
            r#"{"a":1,"b":[1,2],"c":"NaN","d":"-Infinity","e":10,"f":31,"g":0.5}"#
        );
        // Undefined values (read as null): the literal and empty slots.
        assert_eq!(
            parse_token("{a: undefined, b: [1,,2], c: [,], d:, e: 1}")
                .unwrap()
                .to_json(),
            r#"{"a":null,"b":[1,null,2],"c":[null],"d":null,"e":1}"#
        );
        assert!(parse_token(",").is_err());
        assert!(parse_token("undefinedx").is_err());
    }

    #[test]
    fn message_bodies_ignore_text_after_the_first_value() {
        assert_eq!(parse_message("{\"a\":1} garbage", 0).unwrap().to_json(), r#"{"a":1}"#);
        assert_eq!(parse_message("65 xyz", 0).unwrap(), JToken::Integer(65));
        assert!(parse_token("{\"a\":1} garbage").is_err());
        assert!(parse_message("", 0).is_err());
    }

    #[test]
    fn decodes_escapes_and_surrogates() {
        assert_eq!(
            parse_token(r#""a\u00e9\ud83d\ude00\ud800x\/""#).unwrap(),
            JToken::string("aé😀\u{fffd}x/")
        );
    }

    #[test]
    fn limits_nesting_depth() {
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(parse_token(&ok).is_ok());
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert!(parse_token(&deep).unwrap_err().message.contains("nesting"));
        let hostile = "[".repeat(1_000_000);
        assert!(parse_token(&hostile).is_err());
    }

    #[test]
    fn reports_line_and_column() {
        let text = "{\n  \"a\": 1,\n  \"é\": x\n}";
        let error = parse_token(text).unwrap_err();
        assert_eq!(error.line_col(text), (3, 8));
    }

    #[test]
    fn many_duplicate_keys_stay_fast_and_correct() {
        let mut text = String::from("{");
        for i in 0..20_000 {
            text.push_str(&format!("\"k{}\":{},", i % 100, i));
        }
        text.push_str("\"end\":0}");
        let token = parse_token(&text).unwrap();
        let object = token.as_object().unwrap();
        assert_eq!(object.len(), 101);
        assert_eq!(object.get("k0"), Some(&JToken::Integer(19_900)));
    }
}
