//! A JSON token model with Json.NET's semantics, and the parsers that build it.
//!
//! Device messages must be read the way the original read them with `JToken.Parse`: integers stay
//! integers (arbitrarily large ones keep their digits), numbers with a fraction or exponent are
//! doubles, and strings that look like ISO 8601 or `/Date(ms)/` dates become date tokens. Those
//! distinctions decide how a value is stringified into a Measurement (`65`, `98.6`, `True`,
//! `02/01/2019 22:46:01`), so `serde_json::Value` is not enough.

mod date;
mod dotnet_datetime;
pub(crate) mod number;
pub(crate) mod parse;
mod spanned;

pub use date::{DateKind, JsonDate};
pub use dotnet_datetime::parse_dotnet_datetime;
pub use number::format_double;
pub use parse::{MAX_DEPTH, ParseError, parse_message, parse_message_keyed, parse_token};
pub use spanned::{Pos, Spanned, SpannedJson, parse_spanned};

use std::fmt::Write as _;

/// The string type of tokens and member names: short ones are stored inline.
pub type JString = compact_str::CompactString;

/// One JSON value, typed as Json.NET types it.
#[derive(Debug, Clone, PartialEq)]
pub enum JToken {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Integer(i64),
    /// An integer beyond 64 bits, kept as its decimal digits (with an optional leading `-`).
    BigInteger(JString),
    /// A number written with a fraction or an exponent.
    Float(f64),
    /// A string that Json.NET does not read as a date.
    String(JString),
    /// A string Json.NET reads as a date (ISO 8601 `yyyy-MM-ddTHH:mm:ss…` or `/Date(ms)/`).
    Date(Box<JsonDate>),
    /// An array.
    Array(Vec<JToken>),
    /// An object; properties keep document order.
    Object(JObject),
}

/// A 256-bit Bloom filter of the member names of every object in a token tree, three bits per
/// name. It answers "might all these names occur?" without false negatives, which lets
/// normalization skip a template whose type match needs a member the message does not have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyDigest([u64; 4]);

impl KeyDigest {
    /// The digest of every member name in `token`, at any depth.
    pub fn of_token(token: &JToken) -> Self {
        let mut digest = KeyDigest::default();
        digest.add_token(token);
        digest
    }

    /// The digest of `names`.
    pub fn of_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut digest = KeyDigest::default();
        for name in names {
            digest.add(name);
        }
        digest
    }

    /// The union of two digests.
    pub fn union(self, other: KeyDigest) -> KeyDigest {
        let mut bits = self.0;
        bits.iter_mut().zip(other.0).for_each(|(bit, more)| *bit |= more);
        KeyDigest(bits)
    }

    /// False only when some name of `required` certainly does not occur.
    pub fn may_contain_all(self, required: KeyDigest) -> bool {
        self.0.iter().zip(required.0).all(|(have, need)| have & need == need)
    }

    pub(crate) fn add(&mut self, name: &str) {
        // 64-bit multiply-xor over 8-byte chunks, then murmur3's finalizer.
        let mut hash = name.len() as u64 ^ 0x9e37_79b9_7f4a_7c15;
        let mut mix = |word: u64| {
            hash = (hash ^ word).wrapping_mul(0xbf58_476d_1ce4_e5b9).rotate_left(31);
        };
        let mut chunks = name.as_bytes().chunks_exact(8);
        for chunk in &mut chunks {
            mix(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        let tail = chunks.remainder();
        if !tail.is_empty() {
            mix(tail.iter().rev().fold(0, |word, &byte| (word << 8) | u64::from(byte)));
        }
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
        hash ^= hash >> 33;
        for bit in [hash & 255, (hash >> 8) & 255, (hash >> 16) & 255] {
            self.0[(bit / 64) as usize] |= 1 << (bit % 64);
        }
    }

    fn add_token(&mut self, token: &JToken) {
        match token {
            JToken::Object(object) => {
                for (name, value) in object.iter() {
                    self.add(name);
                    self.add_token(value);
                }
            }
            JToken::Array(items) => items.iter().for_each(|item| self.add_token(item)),
            _ => {}
        }
    }
}

/// A JSON object with properties in document order. Names compare case-sensitively.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JObject {
    properties: Vec<(JString, JToken)>,
}

impl JObject {
    /// An empty object.
    pub fn new() -> Self {
        Self::default()
    }

    /// An object of these properties, whose names the caller knows to be distinct.
    pub(crate) fn from_unique(properties: Vec<(JString, JToken)>) -> Self {
        debug_assert!(
            properties
                .iter()
                .enumerate()
                .all(|(i, (name, _))| properties[..i].iter().all(|(other, _)| other != name))
        );
        JObject { properties }
    }

    /// The properties, in document order.
    pub(crate) fn into_properties(self) -> Vec<(JString, JToken)> {
        self.properties
    }

    /// The value of property `name`, if present.
    pub fn get(&self, name: &str) -> Option<&JToken> {
        self.properties
            .iter()
            .find(|(key, _)| &**key == name)
            .map(|(_, value)| value)
    }

    /// Sets property `name`; an existing property keeps its position and gets the new value
    /// (Json.NET's default `DuplicatePropertyNameHandling.Replace`).
    pub fn insert(&mut self, name: impl Into<JString>, value: JToken) {
        let name = name.into();
        match self.properties.iter_mut().find(|(key, _)| *key == name) {
            Some((_, slot)) => *slot = value,
            None => self.properties.push((name, value)),
        }
    }

    /// Removes property `name` and returns its value.
    pub fn remove(&mut self, name: &str) -> Option<JToken> {
        let index = self.properties.iter().position(|(key, _)| &**key == name)?;
        Some(self.properties.remove(index).1)
    }

    /// Properties in document order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &JToken)> {
        self.properties.iter().map(|(key, value)| (&**key, value))
    }

    /// Property values in document order.
    pub fn values(&self) -> impl ExactSizeIterator<Item = &JToken> {
        self.properties.iter().map(|(_, value)| value)
    }

    /// Number of properties.
    pub fn len(&self) -> usize {
        self.properties.len()
    }

    /// True when the object has no properties.
    pub fn is_empty(&self) -> bool {
        self.properties.is_empty()
    }
}

impl FromIterator<(String, JToken)> for JObject {
    fn from_iter<I: IntoIterator<Item = (String, JToken)>>(iter: I) -> Self {
        let mut object = JObject::new();
        for (key, value) in iter {
            object.insert(key, value);
        }
        object
    }
}

impl JToken {
    /// A string token.
    pub fn string(value: impl Into<JString>) -> Self {
        JToken::String(value.into())
    }

    /// The object, if this is one.
    pub fn as_object(&self) -> Option<&JObject> {
        match self {
            JToken::Object(object) => Some(object),
            _ => None,
        }
    }

    /// The array, if this is one.
    pub fn as_array(&self) -> Option<&[JToken]> {
        match self {
            JToken::Array(items) => Some(items),
            _ => None,
        }
    }

    /// Property `name` of an object; `None` for a missing property or a non-object.
    pub fn get(&self, name: &str) -> Option<&JToken> {
        self.as_object().and_then(|object| object.get(name))
    }

    /// Json.NET's `JTokenType` name, used in error messages (`Object`, `Integer`, …).
    pub fn type_name(&self) -> &'static str {
        match self {
            JToken::Null => "Null",
            JToken::Bool(_) => "Boolean",
            JToken::Integer(_) | JToken::BigInteger(_) => "Integer",
            JToken::Float(_) => "Float",
            JToken::String(_) => "String",
            JToken::Date(_) => "Date",
            JToken::Array(_) => "Array",
            JToken::Object(_) => "Object",
        }
    }

    /// Writes compact JSON. Dates are written back as their source text.
    pub fn write_json(&self, out: &mut String) {
        match self {
            JToken::Null => out.push_str("null"),
            JToken::Bool(value) => out.push_str(if *value { "true" } else { "false" }),
            JToken::Integer(value) => {
                let _ = write!(out, "{value}");
            }
            JToken::BigInteger(digits) => out.push_str(digits),
            JToken::Float(value) => write_json_float(*value, out),
            JToken::String(value) => write_json_string(value, out),
            JToken::Date(date) => write_json_string(&date.source(), out),
            JToken::Array(items) => {
                out.push('[');
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    item.write_json(out);
                }
                out.push(']');
            }
            JToken::Object(object) => {
                out.push('{');
                for (index, (key, value)) in object.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    write_json_string(key, out);
                    out.push(':');
                    value.write_json(out);
                }
                out.push('}');
            }
        }
    }

    /// Compact JSON text of this token.
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        self.write_json(&mut out);
        out
    }
}

fn write_json_float(value: f64, out: &mut String) {
    if value.is_finite() {
        let _ = write!(out, "{value:?}");
    } else {
        // JSON has no literal for these; a string keeps the information.
        write_json_string(&format_double(value), out);
    }
}

/// True when `bytes` hold a control character, `"` or `\`, tested eight bytes at a time.
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // A high bit per byte that is zero (exact for bytes below 0x80, which is all that matters:
    // the bytes sought are ASCII, and a byte at or above 0x80 never sets the result falsely
    // because `!word & HIGHS` clears it).
    let zero_byte = |word: u64| word.wrapping_sub(ONES) & !word & HIGHS;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let control = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
        if control | zero_byte(word ^ (ONES * u64::from(b'"'))) | zero_byte(word ^ (ONES * u64::from(b'\\'))) != 0 {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&byte| byte < 0x20 || byte == b'"' || byte == b'\\')
}

/// Writes `value` as a JSON string literal with the minimal escapes.
pub fn write_json_string(value: &str, out: &mut String) {
    out.push('"');
    if !needs_escape(value.as_bytes()) {
        out.push_str(value);
        out.push('"');
        return;
    }
    let mut start = 0;
    for (index, byte) in value.bytes().enumerate() {
        let escape = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.push_str(&value[start..index]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{byte:04x}");
        } else {
            out.push_str(escape);
        }
        start = index + 1;
    }
    out.push_str(&value[start..]);
    out.push('"');
}

impl From<&serde_json::Value> for JToken {
    /// Converts without date detection: strings stay strings.
    fn from(value: &serde_json::Value) -> Self {
        match value {
            serde_json::Value::Null => JToken::Null,
            serde_json::Value::Bool(b) => JToken::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => JToken::Integer(i),
                None if n.is_u64() => JToken::BigInteger(n.to_string().into()),
                None => JToken::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => JToken::string(s.as_str()),
            serde_json::Value::Array(items) => JToken::Array(items.iter().map(JToken::from).collect()),
            serde_json::Value::Object(map) => JToken::Object(
                map.iter()
                    .map(|(key, value)| (key.clone(), JToken::from(value)))
                    .collect(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_compact_json_with_escapes() {
        let token = parse_token(r#"{"a":[1,2.5,"x\"y\n",null,true],"b":{"c":"\u0001"}}"#).unwrap();
        assert_eq!(
            token.to_json(),
            r#"{"a":[1,2.5,"x\"y\n",null,true],"b":{"c":"\u0001"}}"#
        );
    }

    /// The word-at-a-time test finds exactly the bytes the byte-by-byte test finds.
    #[test]
    fn escape_test_matches_the_bytewise_one() {
        let mut state: u64 = 0x6a09_e667_f3bc_c909;
        let pool = [
            b'a', b'"', b'\\', 0x00, 0x1f, 0x20, 0x21, 0x5b, 0x5d, 0x7f, 0x80, 0xa2, 0xdc, 0xff,
        ];
        for _ in 0..50_000 {
            crate::test_support::xorshift(&mut state);
            let length = (state % 24) as usize;
            let bytes: Vec<u8> = (0..length)
                .map(|i| {
                    let pick = (state >> (i % 8 * 8)) as usize + i;
                    if pick.is_multiple_of(5) {
                        pool[pick / 5 % pool.len()]
                    } else {
                        b'a' + (pick % 26) as u8
                    }
                })
                .collect();
            let expected = bytes.iter().any(|&byte| byte < 0x20 || byte == b'"' || byte == b'\\');
            assert_eq!(needs_escape(&bytes), expected, "{bytes:?}");
        }
    }

    #[test]
    fn duplicate_property_keeps_position_and_takes_last_value() {
        let token = parse_token(r#"{"a":1,"b":2,"a":3}"#).unwrap();
        let object = token.as_object().unwrap();
        let pairs: Vec<_> = object.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        assert_eq!(
            pairs,
            vec![
                ("a".to_string(), JToken::Integer(3)),
                ("b".to_string(), JToken::Integer(2))
            ]
        );
    }
}
