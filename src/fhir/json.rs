//! JSON for FHIR resources: members keep their order, numbers keep their exact text (FHIR
//! decimals carry their precision: `98.60` is not `98.6` on the wire), strings are never read as
//! dates. Equality compares numbers by value, as FHIR's (and Firely's `IsExactly`) do.

use std::fmt;

use rust_decimal::Decimal;

use crate::json::parse::{Builder, MAX_DEPTH, ParseError, Trailing, parse_with};
use crate::json::{JToken, write_json_string};

/// A FHIR JSON value.
#[derive(Debug, Clone)]
pub enum Json {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A number, as written.
    Number(Box<str>),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Json>),
    /// An object, members in order.
    Object(Object),
}

/// A JSON object with ordered members.
#[derive(Debug, Clone, Default)]
pub struct Object(Vec<(String, Json)>);

impl Object {
    /// An empty object.
    pub fn new() -> Self {
        Object(Vec::new())
    }

    /// Member `name`.
    pub fn get(&self, name: &str) -> Option<&Json> {
        self.0.iter().find(|(key, _)| key == name).map(|(_, value)| value)
    }

    /// Member `name`, mutable.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Json> {
        self.0.iter_mut().find(|(key, _)| key == name).map(|(_, value)| value)
    }

    /// Appends `name`, or replaces its value in place if present.
    pub fn set(&mut self, name: &str, value: Json) {
        match self.get_mut(name) {
            Some(slot) => *slot = value,
            None => self.0.push((name.to_string(), value)),
        }
    }

    /// Sets `name` keeping FHIR's element order: a new member goes before the first member of
    /// `before` that is present.
    pub fn set_ordered(&mut self, name: &str, value: Json, before: &[&str]) {
        if let Some(slot) = self.get_mut(name) {
            *slot = value;
            return;
        }
        let position = self
            .0
            .iter()
            .position(|(key, _)| before.contains(&key.as_str()))
            .unwrap_or(self.0.len());
        self.0.insert(position, (name.to_string(), value));
    }

    /// Removes `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<Json> {
        let index = self.0.iter().position(|(key, _)| key == name)?;
        Some(self.0.remove(index).1)
    }

    /// Members in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Json)> {
        self.0.iter().map(|(key, value)| (key.as_str(), value))
    }

    /// Builder-style: appends a member unless the value is `None`.
    pub fn with(mut self, name: &str, value: impl Into<Option<Json>>) -> Self {
        if let Some(value) = value.into() {
            self.0.push((name.to_string(), value));
        }
        self
    }
}

impl Json {
    /// A string value.
    pub fn str(text: impl Into<String>) -> Json {
        Json::String(text.into())
    }

    /// A number from a decimal, keeping its scale (`98.60`).
    pub fn decimal(value: Decimal) -> Json {
        Json::Number(value.to_string().into())
    }

    /// A number from an integer.
    pub fn integer(value: i64) -> Json {
        Json::Number(value.to_string().into())
    }

    /// The object, if this is one.
    pub fn as_object(&self) -> Option<&Object> {
        match self {
            Json::Object(object) => Some(object),
            _ => None,
        }
    }

    /// The object, mutable.
    pub fn as_object_mut(&mut self) -> Option<&mut Object> {
        match self {
            Json::Object(object) => Some(object),
            _ => None,
        }
    }

    /// The array, if this is one.
    pub fn as_array(&self) -> Option<&[Json]> {
        match self {
            Json::Array(items) => Some(items),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(text) => Some(text),
            _ => None,
        }
    }

    /// Member `name` of an object.
    pub fn get(&self, name: &str) -> Option<&Json> {
        self.as_object().and_then(|object| object.get(name))
    }

    /// Parses FHIR JSON.
    pub fn parse(text: &str) -> Result<Json, ParseError> {
        parse_with(text, &mut FhirBuilder, Trailing::Reject, MAX_DEPTH)
    }

    /// Compact JSON text.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(512);
        self.write(&mut out);
        out
    }

    /// Appends compact JSON text.
    pub fn write(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(value) => out.push_str(if *value { "true" } else { "false" }),
            Json::Number(text) => out.push_str(text),
            Json::String(text) => write_json_string(text, out),
            Json::Array(items) => {
                out.push('[');
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Json::Object(object) => {
                out.push('{');
                for (index, (key, value)) in object.0.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    write_json_string(key, out);
                    out.push(':');
                    value.write(out);
                }
                out.push('}');
            }
        }
    }
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

/// Numbers are equal when their values are (`1.0 == 1`), as FHIR decimals compare; objects are
/// equal when they have the same members with equal values, in any order.
impl PartialEq for Json {
    fn eq(&self, other: &Json) -> bool {
        match (self, other) {
            (Json::Null, Json::Null) => true,
            (Json::Bool(a), Json::Bool(b)) => a == b,
            (Json::Number(a), Json::Number(b)) => a == b || numbers_equal(a, b),
            (Json::String(a), Json::String(b)) => a == b,
            (Json::Array(a), Json::Array(b)) => a == b,
            (Json::Object(a), Json::Object(b)) => {
                a.0.len() == b.0.len() && a.0.iter().all(|(key, value)| b.get(key) == Some(value))
            }
            _ => false,
        }
    }
}

fn numbers_equal(a: &str, b: &str) -> bool {
    match (a.parse::<Decimal>(), b.parse::<Decimal>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a.parse::<f64>().ok() == b.parse::<f64>().ok(),
    }
}

struct FhirBuilder;

impl Builder for FhirBuilder {
    type Value = Json;
    type Key = String;

    fn null(&mut self, _: usize) -> Json {
        Json::Null
    }

    fn boolean(&mut self, value: bool, _: usize) -> Json {
        Json::Bool(value)
    }

    fn number(&mut self, text: &str, _: JToken, _: usize) -> Json {
        Json::Number(text.into())
    }

    fn string(&mut self, value: &str, _: usize) -> Json {
        Json::String(value.to_string())
    }

    fn key(&mut self, value: &str, _: usize) -> String {
        value.to_string()
    }

    fn array(&mut self, items: Vec<Json>, _: usize) -> Json {
        Json::Array(items)
    }

    fn object(&mut self, properties: Vec<(String, Json)>, _: usize) -> Json {
        let mut object = Object::new();
        for (key, value) in properties {
            object.set(&key, value);
        }
        Json::Object(object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_number_text_and_member_order() {
        let text =
            r#"{"resourceType":"Observation","valueQuantity":{"value":98.60,"unit":"%"},"a":[1,2.50e3,null,true]}"#;
        assert_eq!(Json::parse(text).unwrap().to_json(), text);
    }

    #[test]
    fn equality_compares_numbers_by_value_and_objects_by_members() {
        let a = Json::parse(r#"{"x":98.60,"y":[1,"a"]}"#).unwrap();
        let b = Json::parse(r#"{"y":[1.0,"a"],"x":98.6}"#).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, Json::parse(r#"{"x":98.61,"y":[1,"a"]}"#).unwrap());
        assert_ne!(a, Json::parse(r#"{"x":98.6}"#).unwrap());
    }

    #[test]
    fn ordered_insert_respects_the_given_successors() {
        let mut object = Json::parse(r#"{"resourceType":"Observation","status":"final","code":{},"device":{}}"#)
            .unwrap()
            .as_object()
            .cloned()
            .unwrap();
        object.set_ordered("category", Json::Array(vec![]), &["code", "subject", "device"]);
        object.set_ordered("status", Json::str("amended"), &[]);
        assert_eq!(
            Json::Object(object).to_json(),
            r#"{"resourceType":"Observation","status":"amended","category":[],"code":{},"device":{}}"#
        );
    }

    #[test]
    fn dates_stay_strings() {
        let value = Json::parse(r#"{"issued":"2019-02-01T22:46:01Z"}"#).unwrap();
        assert_eq!(value.get("issued").and_then(Json::as_str), Some("2019-02-01T22:46:01Z"));
    }
}
