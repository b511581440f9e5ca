//! Property-based tests: hostile and random input never panics or hangs the template parser, the
//! JSON reader or either expression language, and their outputs stay well-formed.

use std::cell::OnceCell;
use std::time::{Duration, Instant};

use iomt_connector::device::DeviceTemplateSet;
use iomt_connector::expr::{Expression, JmesCache, Language, Scope};
use iomt_connector::json::{JToken, parse_message, parse_token};
use iomt_connector::model::DeviceEvent;
use proptest::prelude::*;

/// Arbitrary JSON documents, nested up to a few levels, with numbers, unicode and date-like strings.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| serde_json::json!(f)),
        "[a-zA-Z0-9 é😀\\-:.T/]{0,24}".prop_map(serde_json::Value::String),
        Just(serde_json::json!("2019-02-01T22:46:01.875Z")),
        Just(serde_json::json!("/Date(1549061161000)/")),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::btree_map("[a-zA-Z@$ ._-]{0,8}", inner, 0..6)
                .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Expression text built from the characters both languages care about.
fn expression_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("$"),
            Just("@"),
            Just("."),
            Just(".."),
            Just("["),
            Just("]"),
            Just("("),
            Just(")"),
            Just("?("),
            Just("*"),
            Just("'"),
            Just("\""),
            Just("`"),
            Just("=="),
            Just("!="),
            Just("<"),
            Just(">="),
            Just("=~"),
            Just("&&"),
            Just("||"),
            Just("!"),
            Just("|"),
            Just(","),
            Just(":"),
            Just("-1"),
            Just("0"),
            Just("2"),
            Just("a"),
            Just("Body"),
            Just("hr"),
            Just("matchedToken"),
            Just("/x/i"),
            Just("add("),
            Just("to_number("),
            Just("fromUnixTimestamp("),
            Just("insertString("),
            Just("divide("),
            Just("pow("),
            Just("[?"),
            Just("[*]"),
            Just("[]"),
            Just("{a: b}"),
            Just(" "),
        ],
        0..24,
    )
    .prop_map(|parts| parts.concat())
}

fn evaluate_everything(expression: &Expression, data: &JToken) {
    let cache = JmesCache::default();
    let scope = Scope::cached(data, &cache);
    if let Ok(selection) = expression.select_tokens(&scope) {
        for selected in selection {
            if let Some(token) = selected.as_token() {
                // Results are well-formed tokens: they serialize to JSON that parses again.
                let json = token.to_json();
                assert!(serde_json::from_str::<serde_json::Value>(&json).is_ok(), "{json}");
            }
        }
    }
    let _ = expression.select_token(&scope);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn reader_agrees_with_serde_on_valid_json(value in json_value()) {
        let text = value.to_string();
        let token = parse_token(&text).expect("valid JSON parses");
        // Our reader keeps every value exactly (dates keep their text): written back, it equals
        // the generated document. (serde_json's default float parser is not correctly rounded
        // near subnormals, so the comparison does not go through it.)
        prop_assert_eq!(token.to_json(), JToken::from(&value).to_json());
    }

    #[test]
    fn reader_never_panics_on_arbitrary_text(text in "\\PC{0,200}") {
        let _ = parse_token(&text);
        let _ = parse_message(&text, 0);
    }

    #[test]
    fn expressions_never_panic(text in expression_text(), value in json_value()) {
        let data = JToken::from(&value);
        for language in [Language::JsonPath, Language::JmesPath] {
            if let Ok(expression) = Expression::compile(&text, language) {
                evaluate_everything(&expression, &data);
            }
        }
    }

    #[test]
    fn expressions_on_arbitrary_unicode_never_panic(text in "\\PC{0,60}", value in json_value()) {
        let data = JToken::from(&value);
        for language in [Language::JsonPath, Language::JmesPath] {
            if let Ok(expression) = Expression::compile(&text, language) {
                evaluate_everything(&expression, &data);
            }
        }
    }

    #[test]
    fn simple_jmespath_means_the_same_evaluated_directly_or_by_the_crate(
        function in prop_oneof![Just("add"), Just("subtract"), Just("multiply"), Just("divide"), Just("pow"),
            Just("insertString"), Just("appendString"), Just("fromUnixTimestamp"), Just("fromUnixTimestampMs")],
        args in prop::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c"), Just("m.a"), Just("matchedToken.a"),
            Just("missing"), Just("a.b"), Just("`2`"), Just("`0.5`"), Just("`'x'`"), Just("`-3`"), Just("`0`")], 1..4),
        a in prop_oneof![any::<i64>().prop_map(|n| serde_json::json!(n)), (-1e6f64..1e6).prop_map(|f| serde_json::json!(f)),
            "[a-z0-9 ]{0,6}".prop_map(serde_json::Value::String), Just(serde_json::json!(null)), Just(serde_json::json!(1625677200))],
        b in prop_oneof![(-100i64..100).prop_map(|n| serde_json::json!(n)), (-100f64..100.0).prop_map(|f| serde_json::json!(f)),
            Just(serde_json::json!(true)), Just(serde_json::json!({"a": 1}))],
    ) {
        let expression = format!("{function}({})", args.join(", "));
        let data = JToken::from(&serde_json::json!({"a": a, "b": b, "c": "2019-02-01T22:46:01Z", "m": {"a": a}}));
        let data = match data { JToken::Object(mut object) => {
            // A date token, as a device message would carry it.
            object.insert("c", parse_token("\"2019-02-01T22:46:01Z\"").unwrap());
            JToken::Object(object)
        } other => other };
        let matched = JToken::from(&serde_json::json!({"a": 7}));
        let outcome = |text: &str| -> Option<Result<Option<String>, String>> {
            let compiled = Expression::compile(text, Language::JmesPath).ok()?;
            let cache = JmesCache::default();
            let scope = Scope::with_matched_token(&data, &matched, &cache);
            Some(compiled
                .select_token(&scope)
                .map(|found| found.and_then(|s| s.as_token().map(|t| format!("{t:?}"))))
                .map_err(|e| e.to_string()))
        };
        let direct = outcome(&expression);
        let through_crate = outcome(&format!("[{expression}][0]"));
        prop_assert_eq!(direct, through_crate, "{}", expression);
    }

    #[test]
    fn template_parser_never_panics_and_reports_positions(
        members in prop::collection::vec(("[a-zA-Z]{0,24}", json_value()), 0..8),
        kind in prop_oneof![Just("JsonPathContent"), Just("IotJsonPathContent"), Just("IotCentralJsonPathContent"), Just("CalculatedContent"), Just("Nope")],
    ) {
        let body: serde_json::Map<String, serde_json::Value> = members.into_iter().collect();
        let template = serde_json::json!({
            "templateType": "CollectionContent",
            "template": [{ "templateType": kind, "template": body }]
        });
        let text = serde_json::to_string_pretty(&template).unwrap();
        let lines = text.lines().count();
        if let Err(errors) = DeviceTemplateSet::parse(&text) {
            prop_assert!(!errors.is_empty());
            for error in errors {
                prop_assert!(error.pos.line >= 1 && error.pos.line <= lines, "{error}");
                prop_assert!(error.pos.column >= 1);
            }
        }
    }

    #[test]
    fn normalize_never_panics_on_random_events(
        value in json_value(),
        type_match in prop_oneof![Just("$..[?(@a)]"), Just("$..*"), Just("$.Body"), Just("$..[?(@a > 1 || @b =~ /x/)]")],
        device in prop_oneof![Just("$.a"), Just("$..a"), Just("$"), Just("$.matchedToken.a")],
        jmes in prop_oneof![Just("matchedToken.a"), Just("add(matchedToken.a, `1`)"), Just("to_number(matchedToken.a)"), Just("fromUnixTimestamp(matchedToken.a)")],
    ) {
        let template = serde_json::json!({"templateType": "CollectionContent", "template": [
            {"templateType": "JsonPathContent", "template": {"typeName": "t", "typeMatchExpression": type_match,
                "deviceIdExpression": device, "timestampExpression": "$.t",
                "values": [{"valueName": "v", "valueExpression": device, "required": false}]}},
            {"templateType": "CalculatedContent", "template": {"typeName": "c", "typeMatchExpression": type_match,
                "deviceIdExpression": device, "timestampExpression": {"value": jmes, "language": "JmesPath"},
                "values": [{"valueName": "v", "valueExpression": {"value": jmes, "language": "JmesPath"}}]}}
        ]});
        let templates = DeviceTemplateSet::parse(&template.to_string()).unwrap();
        let event = DeviceEvent::from_body(JToken::from(&value));
        let now = chrono::Utc::now();
        let started = Instant::now();
        if let Ok(measurements) = templates.normalize(&event, now) {
            for measurement in measurements {
                let line = measurement.to_json();
                prop_assert!(serde_json::from_str::<serde_json::Value>(&line).is_ok());
            }
        }
        prop_assert!(started.elapsed() < Duration::from_secs(5), "bounded work");
    }
}

/// Deeply nested input in every position: rejected or handled, never a stack overflow.
#[test]
fn deep_nesting_is_bounded_everywhere() {
    let deep_array = "[".repeat(100_000) + &"]".repeat(100_000);
    assert!(parse_token(&deep_array).is_err());
    let deep_object = "{\"a\":".repeat(100_000) + "1" + &"}".repeat(100_000);
    assert!(parse_message(&deep_object, 0).is_err());
    let template = format!(
        r#"{{"templateType":"CollectionContent","template":[{}]}}"#,
        "[".repeat(10_000) + &"]".repeat(10_000)
    );
    assert!(DeviceTemplateSet::parse(&template).is_err());
    let deep_path = "$".to_string() + &".a".repeat(5_000);
    let value = JToken::Null;
    if let Ok(expression) = Expression::compile(&deep_path, Language::JsonPath) {
        evaluate_everything(&expression, &value);
    }
    let deep_filter = "$".to_string() + &"[?(@".repeat(2_000) + &")]".repeat(2_000);
    assert!(Expression::compile(&deep_filter, Language::JsonPath).is_err());
    let deep_jmes = "(".repeat(50_000) + "a" + &")".repeat(50_000);
    assert!(Expression::compile(&deep_jmes, Language::JmesPath).is_err());
    let _unused: OnceCell<()> = OnceCell::new();
}

/// Hostile regular expressions in filters are matched in linear time.
#[test]
fn catastrophic_regex_is_linear() {
    let text = "a".repeat(50_000) + "!";
    let data = parse_token(&format!(r#"[{{"b":"{text}"}}]"#)).unwrap();
    let expression = Expression::compile("$[?(@.b =~ /^(a+)+$/)]", Language::JsonPath).unwrap();
    let started = Instant::now();
    evaluate_everything(&expression, &data);
    assert!(started.elapsed() < Duration::from_secs(5));
}
