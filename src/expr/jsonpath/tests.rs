//! Vectors from Json.NET's own JSONPath tests (JPathExecuteTests, QueryExpressionTests,
//! JPathParseTests) and from its code, as ported.

use super::*;
use crate::json::parse_token;

fn select(document: &str, path: &str) -> Result<Vec<String>, String> {
    let document = parse_token(document).map_err(|e| e.to_string())?;
    let path = JsonPath::compile(path).map_err(|e| e.to_string())?;
    let results = path.select(&Scope::new(&document)).map_err(|e| e.to_string())?;
    Ok(results
        .into_iter()
        .map(|selected| match selected {
            Selected::Token(token) => token.to_json(),
            Selected::Property(name, _) => format!("P:{name}"),
        })
        .collect())
}

fn ok(document: &str, path: &str) -> Vec<String> {
    select(document, path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn err(document: &str, path: &str) -> String {
    match select(document, path) {
        Ok(results) => panic!("{path}: expected an error, got {} results", results.len()),
        Err(error) => error,
    }
}

#[track_caller]
fn assert_selects(document: &str, path: &str, expected: &[&str]) {
    assert_eq!(ok(document, path), expected, "{path}");
}

#[test]
fn properties_and_roots() {
    assert_selects(r#"{"Blah":1}"#, "Blah", &["1"]);
    assert_selects(r#"{"Blah":1,"Blah2":2}"#, "$.*", &["1", "2"]);
    assert_selects(r#"{"Blah":1}"#, "['Blah']", &["1"]);
    assert_selects(r#"{"Blah":1}"#, "", &[r#"{"Blah":1}"#]);
    assert_selects(r#"{"Blah":1}"#, "['']", &[]);
    assert_selects(r#"{"":1}"#, "['']", &["1"]);
    assert_selects(r#"{" ":1}"#, "[' ']", &["1"]);
    assert_selects(r#"{"Blah":1}"#, " ", &[r#"{"Blah":1}"#]);
    assert_selects(r#"{"Blah":1}"#, "$", &[r#"{"Blah":1}"#]);
    assert_selects(r#"{"$values":[1,2,3]}"#, "$values[1]", &["2"]);
    assert_selects(r#"{"Blah":1}"#, "Missing[1]", &[]);
    assert_selects(r#"{"Blah":1}"#, "[1]", &[]);
    assert_selects("[1,2,3,4,5]", "BlahBlah", &[]);
    assert_selects(r#"{"Blah":1}"#, " $.Blah ", &["1"]);
    assert_selects(r#"{"a":{"b":1}}"#, ".a.b", &["1"]);
}

#[test]
fn hyphenated_and_unusual_names() {
    let envelope = r#"{"Body":{"hr":1},"Properties":{"iothub-creation-time-utc":"x"},"SystemProperties":{"iothub-connection-device-id":"dev-1"}}"#;
    assert_selects(
        envelope,
        "$.SystemProperties.iothub-connection-device-id",
        &[r#""dev-1""#],
    );
    assert_selects(envelope, "$.Properties.iothub-creation-time-utc", &[r#""x""#]);
    let doc = r#"{"controls":[{"messages":{"addSuggestion":{"en-US":"Add"}}},{"header":{"controls":[]},"controls":[{"controls":[{"defaultCaption":{"en-US":"Sort by"},"sortOptions":[{"label":{"en-US":"Name"}}]}]}]}]}"#;
    assert_selects(doc, "$..en-US", &[r#""Add""#, r#""Sort by""#, r#""Name""#]);
    assert_selects(r#"{"0":5}"#, "$.0", &["5"]);
    assert_selects("[5]", "$.0", &[]);
    assert_selects(r#"{"@":{"a":1}}"#, "@.a", &["1"]);
    assert_selects(r#"{"Blah.Ha":1}"#, "['Blah.Ha']", &["1"]);
    assert_selects(r#"{"*":1,"b":2}"#, "$.['*']", &["1"]);
}

#[test]
fn indexes_slices_and_wildcards() {
    assert_selects("[1,2,3,4]", "[1]", &["2"]);
    assert_selects("[1,2,3,4]", "[*]", &["1", "2", "3", "4"]);
    assert_selects("[1,2,3,4]", "[1,2,0]", &["2", "3", "1"]);
    assert_selects("[1,2,3,4]", "[ * ]", &["1", "2", "3", "4"]);
    assert_selects("[1,2,3,4]", "[1*]", &["1", "2", "3", "4"]);
    assert_selects(r#"{"Blah":1}"#, "[*]", &[]);
    assert_selects("[1,2,3]", "$.*", &[]);
    assert_selects("[1,2,3,4,5]", "[1000].Ha", &[]);
    let nine = "[1,2,3,4,5,6,7,8,9]";
    assert_selects(nine, "[-3:]", &["7", "8", "9"]);
    assert_selects(nine, "[-1:-2:-1]", &["9"]);
    assert_selects(nine, "[-2:-1]", &["8"]);
    assert_selects(nine, "[1:1]", &[]);
    assert_selects(nine, "[1:2]", &["2"]);
    assert_selects(nine, "[::-1]", &["9", "8", "7", "6", "5", "4", "3", "2", "1"]);
    assert_selects(nine, "[::-2]", &["9", "7", "5", "3", "1"]);
    assert_selects(nine, "[0,1:2]", &["1", "3"]);
    assert_selects(r#"{"Blah":[1,2,3]}"#, "Blah[2]", &["3"]);
    assert_selects(r#"{"People":[{"N":"Jeff"}]}"#, "People[0].N", &[r#""Jeff""#]);
    assert_selects("[1,2,3]", "$..[0]", &["1"]);
    assert_selects(r#"{"a":[1,2]}"#, "a(1)", &["2"]);
    assert!(err("[\"first\",\"second\"]", "$[-1]").contains("Index was out of range"));
    assert_selects(r#"{"a":1}"#, "$[-1]", &[]);
}

#[test]
fn scans() {
    assert_selects(r#"[{"Name":1},{"Name":2}]"#, "$..Name", &["1", "2"]);
    assert_selects(
        r#"[{"Name":1},{"Name":2}]"#,
        "$..*",
        &[r#"[{"Name":1},{"Name":2}]"#, r#"{"Name":1}"#, "1", r#"{"Name":2}"#, "2"],
    );
    let nested = r#"[{"Name":1},{"Name":2},{"Name":{"Name":[3]}}]"#;
    assert_selects(nested, "$..Name", &["1", "2", r#"{"Name":[3]}"#, "[3]"]);
    assert_eq!(ok(nested, "$..*").len(), 9);
    let recursive = r#"{"a":[{"id":1}],"b":[{"id":2},{"id":3,"c":{"id":4}}],"d":[{"id":5}]}"#;
    assert_selects(recursive, "$.b..*.id", &["2", "3", "4"]);
    assert_selects(
        r#"{"cont":[],"test":"no one will find me"}"#,
        "$..test",
        &[r#""no one will find me""#],
    );
    assert_selects("[40,null,42]", "$..*", &["[40,null,42]", "40", "null", "42"]);
    assert_selects(
        r#"{"root":{"a":{"name":"John","b":{"name":"Sarah"}}}}"#,
        "$..['a']['name']",
        &[r#""John""#],
    );
    assert_selects("5", "$..*", &["5"]);
    let quoted = r#"{"Node1":{"Child1":{"Name":"IsMe","TargetNode":{"Prop1":"Val1","Prop2":"Val2"}},"My.Child.Node":{"TargetNode":{"Prop1":"Val3","Prop2":"Val4"}}},"Node2":{"TargetNode":{"Prop1":"Val5","Prop2":"Val6"}}}"#;
    assert_eq!(ok(quoted, "$..['My.Child.Node']").len(), 1);
    assert_selects(
        quoted,
        "$..['My.Child.Node','Prop1','Prop2']",
        &[
            r#""Val1""#,
            r#""Val2""#,
            r#"{"TargetNode":{"Prop1":"Val3","Prop2":"Val4"}}"#,
            r#""Val3""#,
            r#""Val4""#,
            r#""Val5""#,
            r#""Val6""#,
        ],
    );
}

const ELEMENTS: &str = r#"{"elements":[{"id":"A","children":[{"id":"AA","children":[{"id":"AAA"},{"id":"AAB"}]},{"id":"AB"}]},{"id":"B","children":[]}]}"#;

#[test]
fn filters_on_arrays_and_objects() {
    assert_selects(ELEMENTS, "$.elements..[?(@.id=='AAA')]", &[r#"{"id":"AAA"}"#]);
    assert_eq!(ok(ELEMENTS, "$.elements[?(true)]").len(), 2);
    let all = ok(ELEMENTS, "$.elements..[?(true)]");
    assert_eq!(all.len(), 25);
    assert_eq!(all.iter().filter(|r| r.starts_with("P:")).count(), 9);
    assert_selects(r#"[{"hi":"ho"},{"hi2":"ha"}]"#, "[ ?( @.hi ) ]", &[r#"{"hi":"ho"}"#]);
    assert_selects(
        r#"[{"hi":"ho"},{"hi":"ha"}]"#,
        "[ ?( @.['hi'] == 'ha' ) ]",
        &[r#"{"hi":"ha"}"#],
    );
    assert_selects(
        r#"[[{"hi":"ho"}],[{"hi":"ha"}]]"#,
        "[ ?( @..hi <> 'ha' ) ]",
        &[r#"[{"hi":"ho"}]"#],
    );
    assert_selects("[1,2,3]", "[ ?( @ > 1 ) ]", &["2", "3"]);
    assert_selects("[1,2,3,4,5,6,7,8,9]", "[?(@ <> 1)][?(@ <> 4)][?(@ < 7)]", &[]);
    assert_selects(
        r#"[{"hi":1},{"hi":2},{"hi":3}]"#,
        "[ ?( @.hi > 1 ) ]",
        &[r#"{"hi":2}"#, r#"{"hi":3}"#],
    );
    assert_selects(
        r#"[{"hi":1},{"hi":2},{"hi":3}]"#,
        "[ ?( 1 < @.hi ) ]",
        &[r#"{"hi":2}"#, r#"{"hi":3}"#],
    );
    assert_eq!(
        ok(r#"[{"hi":1},{"hi":2},{"hi":2.0},{"hi":3}]"#, "[ ?( @.hi >= 1 ) ]").len(),
        4
    );
    let movies = r#"[{"name":"Bad Boys","cast":[{"name":"Will Smith"}]},{"name":"Independence Day","cast":[{"name":"Will Smith"}]},{"name":"The Rock","cast":[{"name":"Nick Cage"}]}]"#;
    assert_selects(
        movies,
        "[?(@.cast[?(@.name=='Will Smith')])].name",
        &[r#""Bad Boys""#, r#""Independence Day""#],
    );
    let prices = r#"[{"price":199,"max_price":200},{"price":200,"max_price":200},{"price":201,"max_price":200}]"#;
    assert_selects(
        prices,
        "[?(@.price > @.max_price)]",
        &[r#"{"price":201,"max_price":200}"#],
    );
    assert_eq!(ok(prices, "[?(true)]").len(), 3);
    assert_eq!(ok(r#"[{"a":1},{"b":2}]"#, "[?(false)]").len(), 2);
    // A filter on an object tests its property nodes, which have no fields.
    assert_selects(r#"{"a":{"x":1},"b":{"x":2}}"#, "$[?(@.x)]", &[]);
    assert_selects(r#"{"a":{"x":1},"b":{"x":2}}"#, "$[?(@)]", &["P:a", "P:b"]);
    assert_selects(r#"{"a":{"x":1},"b":{"x":2}}"#, "$.*", &[r#"{"x":1}"#, r#"{"x":2}"#]);
}

#[test]
fn recursive_filter_includes_the_starting_token() {
    let body = r#"{"heartrate":78,"deviceid":"d1"}"#;
    assert_selects(body, "$..[?(@heartrate)]", &[body]);
    let envelope = r#"{"Body":{"heartRate":78},"Properties":{},"SystemProperties":{}}"#;
    assert_selects(envelope, "$..[?(@Body.heartRate)]", &[envelope]);
    assert_selects(
        r#"{"usingmem":"214376"}"#,
        "$..[?(@.usingmem>21437)]",
        &[r#"{"usingmem":"214376"}"#],
    );
    let wildcard = r#"{"station":92000041000001,"containers":[{"id":1,"text":"Sort system","containers":[{"id":"2","text":"Yard 11"},{"id":"92000020100006","text":"Sort yard 12"},{"id":"92000020100005","text":"Yard 13"}]},{"id":"92000020100011","text":"TSP-1"},{"id":"92000020100007","text":"Passenger 15"}]}"#;
    let texts: Vec<String> = ok(wildcard, "$..*[?(@.text)]")
        .iter()
        .map(|r| {
            serde_json::from_str::<serde_json::Value>(r).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        texts,
        [
            "Sort system",
            "TSP-1",
            "Passenger 15",
            "Yard 11",
            "Sort yard 12",
            "Yard 13"
        ]
    );
}

#[test]
fn comparison_semantics() {
    let mixed = r#"[{"name":"string","value":"aString"},{"name":"number","value":123},{"name":"array","value":[1,2,3,4]},{"name":"object","value":{"1":1}}]"#;
    assert_eq!(ok(mixed, "$.[?(@.value!=1)]").len(), 4);
    assert_eq!(ok(mixed, "$.[?(@.value!='2000-12-05T05:07:59-10:00')]").len(), 4);
    assert_eq!(ok(mixed, "$.[?(@.value!=null)]").len(), 4);
    assert_eq!(ok(mixed, "$.[?(@.value!=123)]").len(), 3);
    assert_eq!(ok(mixed, "$.[?(@.value)]").len(), 4);
    assert_eq!(ok(mixed, "$.[?(@.missing != 1)]").len(), 0);

    let coercible = r#"{"Values":[{"Coercible":1,"Name":"Number"},{"Coercible":"1","Name":"String"}]}"#;
    assert_selects(coercible, "Values[?(@.Coercible === 1)].Name", &[r#""Number""#]);
    assert_selects(coercible, "Values[?(@.Coercible !== 1)].Name", &[r#""String""#]);
    assert_selects(coercible, "Values[?(@.Coercible === '1')].Name", &[r#""String""#]);
    assert_selects(coercible, "Values[?(@.Coercible == '1')].Name", &[r#""String""#]);
    assert_selects(coercible, "Values[?(@.Coercible != '1')].Name", &[r#""Number""#]);

    assert_eq!(
        ok(r#"{"Values":[{"Property":1}]}"#, "Values[?(@.Property == 1.0)]").len(),
        1
    );
    for (v1, v2, matches) in [
        ("1", "1", true),
        ("1", "1.0", true),
        ("1.0", "1", true),
        ("\"1\"", "'1'", true),
        ("false", "false", true),
        ("null", "null", true),
        ("1", "true", false),
        ("true", "1", false),
        ("1", "'1'", false),
        ("\"1\"", "1", false),
        ("1", "1.1", false),
        ("1", "null", false),
        ("null", "'null'", false),
    ] {
        let doc = format!(r#"{{"Values":[{{"Property":{v1}}}]}}"#);
        assert_eq!(
            ok(&doc, &format!("$.Values[?(@.Property === {v2})]")).len() == 1,
            matches,
            "{v1} === {v2}"
        );
        assert_eq!(
            ok(&doc, &format!("$.Values[?(@.Property !== {v2})]")).len() == 1,
            !matches,
            "{v1} !== {v2}"
        );
    }

    let persons = r#"{"persons":[{"name":"John","age":"26"},{"name":"Jane","age":"2"}]}"#;
    assert_eq!(ok(persons, "$.persons[?(@.age > 3)]").len(), 1);
    let ints = r#"{"persons":[{"name":"John","age":26},{"name":"Jane","age":2}]}"#;
    assert_eq!(ok(ints, "$.persons[?(@.age > '3')]").len(), 1);
    assert!(err(r#"[{"a":"abc"}]"#, "[?(@.a > 3)]").contains("was not in a correct format"));
    assert_eq!(ok("[0.1]", "[?(@ == 0.1)]").len(), 1);
    assert_eq!(ok("[1e-16]", "[?(@ == 0)]").len(), 1);
    assert_selects("[5,null]", "[?(@ > null)]", &["5"]);
}

#[test]
fn and_or_chain_without_precedence() {
    let doc = r#"[{"name":1,"title":1},{"name":1,"pie":1},{"title":1},{"pie":1}]"#;
    // And(name, Or(title, pie))
    assert_eq!(ok(doc, "[?(@.name&&@.title||@.pie)]").len(), 2);
    // Or(name, And(title, pie))
    assert_eq!(ok(doc, "[?(@.name||@.title&&@.pie)]").len(), 2);
    assert_eq!(ok(doc, "[?(@.title||@.pie)]").len(), 4);
}

#[test]
fn regex_matches() {
    let doc = r#"[{"b":"food"},{"b":"fooood and drink"},{"b":"FOOD"},{"b":1}]"#;
    assert_eq!(ok(doc, "[?(@.b =~ /foo.*d/)]").len(), 2);
    assert_eq!(ok(doc, "[?(@.b =~ /Foo.*d/i)]").len(), 3);
    // Parsed, `/// comment/` reads as the regex `//` followed by a new, always-true comparison.
    assert_eq!(
        ok(r#"[{"b":"// comment"},{"b":"//comment"}]"#, "[?(@.b =~ /// comment/)]").len(),
        2
    );
    let corner = compile_regex("/// comment/").unwrap();
    assert!(corner.is_match("// comment") && !corner.is_match("//comment"));
    let tag = compile_regex("/<tag>.*</tag>/i").unwrap();
    assert!(tag.is_match("<Tag>Test</Tag>") && !tag.is_match("<tag>Test<tag>"));
    assert_eq!(
        ok(r#"[{"unit":"inches"},{"unit":"cm"}]"#, "$..[?(@unit == 'inches')]").len(),
        1
    );
}

#[test]
fn date_tokens_compare_as_dates() {
    let doc = r#"[{"t":"2019-02-01T22:46:01Z"},{"t":"2019-02-02T00:00:00Z"}]"#;
    assert_eq!(ok(doc, "[?(@.t == '2019-02-01T22:46:01Z')]").len(), 1);
    assert_eq!(ok(doc, "[?(@.t > '2019-02-01T23:00:00Z')]").len(), 1);
    assert_eq!(ok(doc, "[?(@.t =~ /2019/)]").len(), 0);
}

#[test]
fn parse_errors_carry_json_net_messages() {
    let cases = [
        ("$ .Blah", "Unexpected character while parsing path:  "),
        ("$. Blah", "Unexpected character while parsing path:  "),
        ("$.Blah.", "Unexpected end while parsing path."),
        ("Blah[[0]].Two", "Unexpected character while parsing path indexer: ["),
        ("Blah[0", "Path ended with open indexer."),
        ("[]", "Array index expected."),
        ("]", "Unexpected character while parsing path: ]"),
        ("[1]Blah", "Unexpected character following indexer: B"),
        ("[?(@.name||)]", "Unexpected character while parsing path query: )"),
        ("[?(@.name|)]", "Unexpected character while parsing path query: |"),
        ("[?(@.name||", "Path ended with open query."),
        ("[?(@.name||@.)]", "Unexpected end while parsing path."),
        ("[?(@.name=='h\\i')]", "Unknown escape character: \\i"),
        ("Blah[?(@.title =~ /[", "Path ended with an open regex."),
        ("$[\"key\"]", "Unexpected character while parsing path indexer: \""),
        ("[?(@.a = 1)]", "Could not read query operator."),
        ("[::0]", "Step cannot be zero."),
        ("[?(@.a==1", "Index was outside the bounds of the array."),
        (" $", "Index was outside the bounds of the array."),
        ("[99999999999]", "Value was either too large or too small for an Int32."),
        ("[1-2]", "The input string '1-2' was not in a correct format."),
    ];
    for (path, message) in cases {
        let error = JsonPath::compile(path).unwrap_err().to_string();
        assert!(error.ends_with(message), "{path}: {error}");
    }
}

#[test]
fn filter_literals_and_escapes() {
    assert_selects(r#"[{"name":"h'i"}]"#, "[?(@.name=='h\\'i')]", &[r#"{"name":"h'i"}"#]);
    assert_selects(
        r#"[{"a":12},{"a":-12}]"#,
        "[?(@.a>=-12)]",
        &[r#"{"a":12}"#, r#"{"a":-12}"#],
    );
    assert_selects(r#"[{"a":5.56789}]"#, "[?(@.a>=5.56789e+0)]", &[r#"{"a":5.56789}"#]);
    // A number literal must be followed by a space or ')'.
    assert!(JsonPath::compile("[?(@.a==1&&@.b==2)]").is_err());
    assert!(JsonPath::compile("[?(@.a==1 && @.b==2)]").is_ok());
}

#[test]
fn matched_token_scope_sees_envelope_and_match() {
    let envelope = parse_token(r#"{"Body":{"x":[{"hr":1},{"hr":2}]},"Properties":{},"SystemProperties":{}}"#).unwrap();
    let matched = parse_token(r#"{"hr":2}"#).unwrap();
    let cache = crate::expr::JmesCache::default();
    let scope = Scope::with_matched_token(&envelope, &matched, &cache);
    let path = JsonPath::compile("$.matchedToken.hr").unwrap();
    let values: Vec<String> = path
        .select(&scope)
        .unwrap()
        .into_iter()
        .map(|s| s.as_token().unwrap().to_json())
        .collect();
    assert_eq!(values, ["2"]);
    // The matched token is reachable twice through a recursive scan.
    assert_eq!(JsonPath::compile("$..hr").unwrap().select(&scope).unwrap().len(), 3);
}

#[test]
fn hostile_paths_stop_instead_of_hanging() {
    // Nested 60 deep, six recursive scans would visit about 60^6 nodes.
    let doc = "[1,".repeat(60) + &"]".repeat(60);
    let error = err(&doc, "$..*..*..*..*..*..*");
    assert!(error.contains("more than"), "{error}");
    let deep_filter = "[?(@[?(@[?(@[?(@[?(@[?(@[?(@[?(@[?(@[?(@[?(@[?(@[?(@[?(@[?(@[?(@[?(@[?(@.a)])])])])])])])])])])])])])])])])])]";
    assert!(JsonPath::compile(deep_filter).is_err());
}
