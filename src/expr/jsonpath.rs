//! JSONPath with the semantics of Json.NET's `SelectToken` / `SelectTokens` (Newtonsoft.Json 13).
//!
//! No crate implements this dialect, so the parser is a port of Json.NET's `JPath` and the
//! evaluator follows its `PathFilter`s and `QueryExpression`, quirks included:
//! - an object's children are *property nodes*: a filter applied to an object tests its
//!   properties, and `..[?()]` visits property nodes too, so properties can be results;
//! - `$..[?(…)]` tests the starting token itself; `..*` yields it first;
//! - `@x` means `@.x`; names may contain `-` and any character but `. [ ( ] )` and space;
//! - `&&`/`||` build a chain without precedence (`A && B || C` is `And(A, Or(B, C))`);
//! - `==` compares integers and floats approximately, never coerces numbers and strings,
//!   while `<`/`>` convert strings to the other side's type (`'26' > 3`);
//! - a missing side makes every comparison false, `!=` included.
//!
//! Expressions are parsed when a template loads, so syntax errors surface then, not per message.

use std::cell::Cell;
use std::cmp::Ordering;
use std::fmt::Write as _;

use regex::{Regex, RegexBuilder};

use std::borrow::Cow;

use super::{ExpressionError, FieldLookup, MATCHED_TOKEN, Scope, Selected, Selection};
use crate::json::{DateKind, JToken, JsonDate, format_double};

/// Most nodes one evaluation may produce; hostile paths such as `$..*..*..*` stop here.
const MAX_NODES: usize = 1_000_000;
/// Longest expression accepted.
const MAX_EXPRESSION_LENGTH: usize = 4096;
/// Deepest nesting of filters inside filters.
const MAX_FILTER_NESTING: usize = 16;

/// A compiled Json.NET JSONPath expression.
#[derive(Debug, Clone)]
pub struct JsonPath {
    text: String,
    filters: Vec<PathFilter>,
    /// For paths made only of plain field names (`$.a.b`): those names, resolved directly.
    fields: Option<Vec<String>>,
}

impl JsonPath {
    /// Parses `text` as Json.NET's `JPath` does.
    pub fn compile(text: &str) -> Result<JsonPath, ExpressionError> {
        if text.chars().count() > MAX_EXPRESSION_LENGTH {
            return Err(ExpressionError::Compile(format!(
                "JSONPath expressions longer than {MAX_EXPRESSION_LENGTH} characters are not accepted."
            )));
        }
        let filters = Parser::new(text)
            .parse_main()
            .map_err(|message| ExpressionError::Compile(format!("Invalid JSONPath expression {text}: {message}")))?;
        check_static(&filters)
            .map_err(|message| ExpressionError::Compile(format!("Invalid JSONPath expression {text}: {message}")))?;
        let fields = filters
            .iter()
            .map(|filter| match filter {
                PathFilter::Field(Some(name)) => Some(name.clone()),
                _ => None,
            })
            .collect();
        Ok(JsonPath {
            text: text.to_string(),
            filters,
            fields,
        })
    }

    /// The expression text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Member names that must occur for the path to select anything: every field named along
    /// the path, and the fields a filter needs to be true (see
    /// [`super::Expression::required_keys`]).
    pub fn required_keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        path_requirements(&self.filters, &mut keys);
        keys
    }

    /// Every token the path selects from the scope, in Json.NET's order.
    pub fn select<'a>(&self, scope: &Scope<'a>) -> Result<Selection<'a>, ExpressionError> {
        if self.fields.is_some() {
            let mut selected = Selection::default();
            if let Some(found) = self.select_fields(scope) {
                selected.push(found);
            }
            return Ok(selected);
        }
        let context = Context::of(scope);
        let start = context.root_node();
        if let [PathFilter::QueryScan(query)] = self.filters.as_slice()
            && query.objects_only
        {
            // The usual type match, `$..[?(@field)]`: results straight from the scan.
            return scan_objects(query, &context, start).map_err(ExpressionError::Evaluate);
        }
        let nodes = evaluate(&self.filters, &context, vec![start]).map_err(ExpressionError::Evaluate)?;
        Ok(Selection::new(
            nodes.into_iter().map(|node| node.into_selected(&context)).collect(),
        ))
    }

    /// `SelectToken` for a path of plain field names: at most one result, found without
    /// allocating. `None` when the path is not of that form or finds nothing.
    pub fn select_fields<'a>(&self, scope: &Scope<'a>) -> Option<Selected<'a>> {
        let context = Context::of(scope);
        let node = context.fields(context.root_node(), self.fields.as_ref()?)?;
        Some(node.into_selected(&context))
    }

    /// [`JsonPath::select_fields`] as a borrowed token; [`FieldLookup::Other`] when the path is
    /// not plain field names or leads to the scope root built with `matchedToken`.
    pub fn lookup_field<'a>(&self, scope: &Scope<'a>) -> FieldLookup<'a> {
        let Some(names) = &self.fields else {
            return FieldLookup::Other;
        };
        let context = Context::of(scope);
        match context.fields(context.root_node(), names) {
            Some(Node::Value(token)) => FieldLookup::Found(token),
            Some(_) => FieldLookup::Other,
            None => FieldLookup::Missing,
        }
    }

    /// True when the path is plain field names, so [`JsonPath::select_fields`] answers it.
    pub fn is_field_path(&self) -> bool {
        self.fields.is_some()
    }
}

// ---------------------------------------------------------------------------------------------
// Syntax tree

#[derive(Debug, Clone)]
enum PathFilter {
    /// `.name`, `['name']`; `None` is `.*`.
    Field(Option<String>),
    /// `['a','b']`.
    FieldMultiple(Vec<String>),
    /// `[n]`; `None` is `[*]`.
    Index(Option<i32>),
    /// `[a,b]`.
    IndexMultiple(Vec<i32>),
    /// `[start:end:step]`.
    Slice {
        start: Option<i32>,
        end: Option<i32>,
        step: Option<i32>,
    },
    /// `..name`; `None` is `..*`.
    Scan(Option<String>),
    /// `..['a','b']`.
    ScanMultiple(Vec<String>),
    /// `[?(…)]`.
    Query(Box<Query>),
    /// `..[?(…)]`.
    QueryScan(Box<Query>),
    /// `$` inside a filter.
    Root,
}

/// A filter and whether only objects can satisfy it (every branch needs a field of the
/// candidate), which lets scans skip arrays, scalars and property nodes.
#[derive(Debug, Clone)]
struct Query {
    expression: QueryExpression,
    objects_only: bool,
}

impl Query {
    fn new(expression: QueryExpression) -> Self {
        let objects_only = needs_object(&expression);
        Query {
            expression,
            objects_only,
        }
    }

    fn accepts(&self, node: Node<'_>) -> bool {
        !self.objects_only || matches!(node, Node::Value(JToken::Object(_)) | Node::WrappedRoot)
    }
}

/// True when the expression can only hold for a candidate that has fields (an object).
fn needs_object(expression: &QueryExpression) -> bool {
    let side_needs_object = |side: &Side| matches!(side, Side::Fields(names) if !names.is_empty());
    match expression {
        QueryExpression::Composite { and: true, items } => items.iter().any(needs_object),
        QueryExpression::Composite { and: false, items } => !items.is_empty() && items.iter().all(needs_object),
        QueryExpression::Boolean { left, op, right, .. } => {
            side_needs_object(left) || (*op != Operator::Exists && right.as_ref().is_some_and(side_needs_object))
        }
    }
}

fn path_requirements(filters: &[PathFilter], keys: &mut Vec<String>) {
    for filter in filters {
        match filter {
            PathFilter::Field(Some(name)) | PathFilter::Scan(Some(name)) => keys.push(name.clone()),
            PathFilter::Query(query) | PathFilter::QueryScan(query) => query_requirements(&query.expression, keys),
            _ => {}
        }
    }
}

/// Fields a filter needs: both sides of a comparison must yield a token, an existence test its
/// side; `&&` needs all, `||` what every branch needs.
fn query_requirements(expression: &QueryExpression, keys: &mut Vec<String>) {
    let side = |side: &Side, keys: &mut Vec<String>| match side {
        Side::Fields(names) => keys.extend(names.iter().cloned()),
        Side::Path(filters) => path_requirements(filters, keys),
        Side::Value(_) => {}
    };
    match expression {
        QueryExpression::Boolean { left, op, right, .. } => {
            side(left, keys);
            if *op != Operator::Exists
                && let Some(right) = right
            {
                side(right, keys);
            }
        }
        QueryExpression::Composite { and: true, items } => items.iter().for_each(|item| query_requirements(item, keys)),
        QueryExpression::Composite { and: false, items } => {
            let mut branches = items.iter().map(|item| {
                let mut branch = Vec::new();
                query_requirements(item, &mut branch);
                branch
            });
            if let Some(first) = branches.next() {
                let common: Vec<String> = branches.fold(first, |common, branch| {
                    common.into_iter().filter(|key| branch.contains(key)).collect()
                });
                keys.extend(common);
            }
        }
    }
}

#[derive(Debug, Clone)]
enum QueryExpression {
    Composite {
        and: bool,
        items: Vec<QueryExpression>,
    },
    Boolean {
        left: Side,
        op: Operator,
        right: Option<Side>,
        regex: Option<Regex>,
    },
}

#[derive(Debug, Clone)]
enum Side {
    Path(Vec<PathFilter>),
    /// A path of plain field names from `@` (`@`, `@x`, `@.a.b`): the common case, resolved
    /// without allocating.
    Fields(Vec<String>),
    Value(Literal),
}

impl Side {
    fn path(filters: Vec<PathFilter>) -> Side {
        let names: Option<Vec<String>> = filters
            .iter()
            .map(|filter| match filter {
                PathFilter::Field(Some(name)) => Some(name.clone()),
                _ => None,
            })
            .collect();
        match names {
            Some(names) => Side::Fields(names),
            None => Side::Path(filters),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Literal {
    Null,
    Bool(bool),
    Integer(i64),
    Float(f64),
    String(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    Exists,
    Equals,
    StrictEquals,
    NotEquals,
    StrictNotEquals,
    RegexEquals,
    LessThan,
    LessThanOrEquals,
    GreaterThan,
    GreaterThanOrEquals,
}

/// .NET's message for the parser's unchecked reads past the end of the expression.
const INDEX_OUT_OF_RANGE: &str = "Index was outside the bounds of the array.";

// ---------------------------------------------------------------------------------------------
// Parser: a port of Json.NET's JPath

struct Parser {
    chars: Vec<char>,
    i: usize,
    filter_depth: usize,
}

type ParseResult<T> = Result<T, String>;

impl Parser {
    fn new(text: &str) -> Self {
        Parser {
            chars: text.chars().collect(),
            i: 0,
            filter_depth: 0,
        }
    }

    fn len(&self) -> usize {
        self.chars.len()
    }

    /// `_expression[_currentIndex]` where the C# code does not check the bounds.
    fn at(&self, index: usize) -> ParseResult<char> {
        self.chars
            .get(index)
            .copied()
            .ok_or_else(|| INDEX_OUT_OF_RANGE.to_string())
    }

    fn substring(&self, start: usize, end: usize) -> String {
        self.chars[start..end].iter().collect()
    }

    fn eat_whitespace(&mut self) {
        while self.i < self.len() && self.chars[self.i] == ' ' {
            self.i += 1;
        }
    }

    fn ensure_length(&self, message: &str) -> ParseResult<()> {
        if self.i >= self.len() {
            Err(message.to_string())
        } else {
            Ok(())
        }
    }

    fn matches(&mut self, text: &str) -> bool {
        let mut position = self.i;
        for expected in text.chars() {
            if position < self.len() && self.chars[position] == expected {
                position += 1;
            } else {
                return false;
            }
        }
        self.i = position;
        true
    }

    fn parse_main(mut self) -> ParseResult<Vec<PathFilter>> {
        let mut filters = Vec::new();
        let mut part_start = self.i;
        self.eat_whitespace();
        if self.i == self.len() {
            return Ok(filters);
        }
        if self.chars[self.i] == '$' {
            if self.len() == 1 {
                return Ok(filters);
            }
            let next = self.at(self.i + 1)?;
            if next == '.' || next == '[' {
                self.i += 1;
                part_start = self.i;
            }
        }
        if !self.parse_path(&mut filters, part_start, false)? {
            let last = self.i;
            self.eat_whitespace();
            if self.i < self.len() {
                return Err(format!("Unexpected character while parsing path: {}", self.chars[last]));
            }
        }
        Ok(filters)
    }

    fn member(&self, start: usize, end: usize, trim: bool) -> Option<String> {
        let text = self.substring(start, end);
        let text = if trim { text.trim_end().to_string() } else { text };
        (text != "*").then_some(text)
    }

    fn parse_path(&mut self, filters: &mut Vec<PathFilter>, mut part_start: usize, query: bool) -> ParseResult<bool> {
        let mut scan = false;
        let mut following_indexer = false;
        let mut following_dot = false;
        let mut ended = false;
        while self.i < self.len() && !ended {
            let current = self.chars[self.i];
            match current {
                '[' | '(' => {
                    if self.i > part_start {
                        filters.push(path_filter(self.member(part_start, self.i, false), scan));
                        scan = false;
                    }
                    filters.push(self.parse_indexer(current, scan)?);
                    scan = false;
                    self.i += 1;
                    part_start = self.i;
                    following_indexer = true;
                    following_dot = false;
                }
                ']' | ')' => ended = true,
                ' ' => ended = true,
                '.' => {
                    if self.i > part_start {
                        filters.push(path_filter(self.member(part_start, self.i, false), scan));
                        scan = false;
                    }
                    if self.i + 1 < self.len() && self.chars[self.i + 1] == '.' {
                        scan = true;
                        self.i += 1;
                    }
                    self.i += 1;
                    part_start = self.i;
                    following_indexer = false;
                    following_dot = true;
                }
                _ => {
                    if query && matches!(current, '=' | '<' | '!' | '>' | '|' | '&') {
                        ended = true;
                    } else {
                        if following_indexer {
                            return Err(format!("Unexpected character following indexer: {current}"));
                        }
                        self.i += 1;
                    }
                }
            }
        }
        let at_end = self.i == self.len();
        if self.i > part_start {
            filters.push(path_filter(self.member(part_start, self.i, true), scan));
        } else if following_dot && (at_end || query) {
            return Err("Unexpected end while parsing path.".to_string());
        }
        Ok(at_end)
    }

    fn parse_indexer(&mut self, open: char, scan: bool) -> ParseResult<PathFilter> {
        self.i += 1;
        let close = if open == '[' { ']' } else { ')' };
        self.ensure_length("Path ended with open indexer.")?;
        self.eat_whitespace();
        match self.at(self.i)? {
            '\'' => self.parse_quoted_field(close, scan),
            '?' => self.parse_query(close, scan),
            _ => self.parse_array_indexer(close),
        }
    }

    fn parse_array_indexer(&mut self, close: char) -> ParseResult<PathFilter> {
        let mut start = self.i;
        let mut end: Option<usize> = None;
        let mut indexes: Option<Vec<i32>> = None;
        let mut colons = 0;
        let (mut slice_start, mut slice_end, mut step) = (None, None, None);
        while self.i < self.len() {
            let current = self.chars[self.i];
            if current == ' ' {
                end = Some(self.i);
                self.eat_whitespace();
                continue;
            }
            if current == close {
                let length = end.unwrap_or(self.i) - start;
                if let Some(mut indexes) = indexes {
                    if length == 0 {
                        return Err("Array index expected.".to_string());
                    }
                    indexes.push(to_int32(&self.substring(start, start + length))?);
                    return Ok(PathFilter::IndexMultiple(indexes));
                } else if colons > 0 {
                    if length > 0 {
                        let index = to_int32(&self.substring(start, start + length))?;
                        if colons == 1 {
                            slice_end = Some(index);
                        } else {
                            step = Some(index);
                        }
                    }
                    return Ok(PathFilter::Slice {
                        start: slice_start,
                        end: slice_end,
                        step,
                    });
                } else {
                    if length == 0 {
                        return Err("Array index expected.".to_string());
                    }
                    let index = to_int32(&self.substring(start, start + length))?;
                    return Ok(PathFilter::Index(Some(index)));
                }
            } else if current == ',' {
                let length = end.unwrap_or(self.i) - start;
                if length == 0 {
                    return Err("Array index expected.".to_string());
                }
                let index = to_int32(&self.substring(start, start + length))?;
                indexes.get_or_insert_with(Vec::new).push(index);
                self.i += 1;
                self.eat_whitespace();
                start = self.i;
                end = None;
            } else if current == '*' {
                self.i += 1;
                self.ensure_length("Path ended with open indexer.")?;
                self.eat_whitespace();
                if self.at(self.i)? != close {
                    return Err(format!("Unexpected character while parsing path indexer: {current}"));
                }
                return Ok(PathFilter::Index(None));
            } else if current == ':' {
                let length = end.unwrap_or(self.i) - start;
                if length > 0 {
                    let index = to_int32(&self.substring(start, start + length))?;
                    match colons {
                        0 => slice_start = Some(index),
                        1 => slice_end = Some(index),
                        _ => step = Some(index),
                    }
                }
                colons += 1;
                self.i += 1;
                self.eat_whitespace();
                start = self.i;
                end = None;
            } else if !current.is_numeric() && current != '-' {
                return Err(format!("Unexpected character while parsing path indexer: {current}"));
            } else {
                if end.is_some() {
                    return Err(format!("Unexpected character while parsing path indexer: {current}"));
                }
                self.i += 1;
            }
        }
        Err("Path ended with open indexer.".to_string())
    }

    fn parse_quoted_field(&mut self, close: char, scan: bool) -> ParseResult<PathFilter> {
        let mut fields: Option<Vec<String>> = None;
        while self.i < self.len() {
            let field = self.read_quoted_string()?;
            self.eat_whitespace();
            self.ensure_length("Path ended with open indexer.")?;
            let current = self.chars[self.i];
            if current == close {
                return Ok(match fields {
                    Some(mut names) => {
                        names.push(field);
                        if scan {
                            PathFilter::ScanMultiple(names)
                        } else {
                            PathFilter::FieldMultiple(names)
                        }
                    }
                    None => path_filter(Some(field), scan),
                });
            } else if current == ',' {
                self.i += 1;
                self.eat_whitespace();
                fields.get_or_insert_with(Vec::new).push(field);
            } else {
                return Err(format!("Unexpected character while parsing path indexer: {current}"));
            }
        }
        Err("Path ended with open indexer.".to_string())
    }

    fn read_quoted_string(&mut self) -> ParseResult<String> {
        let mut out = String::new();
        self.i += 1;
        while self.i < self.len() {
            let mut current = self.chars[self.i];
            if current == '\\' && self.i + 1 < self.len() {
                self.i += 1;
                current = self.chars[self.i];
                let resolved = match current {
                    'b' => '\u{8}',
                    't' => '\t',
                    'n' => '\n',
                    'f' => '\u{c}',
                    'r' => '\r',
                    '\\' | '"' | '\'' | '/' => current,
                    _ => return Err(format!("Unknown escape character: \\{current}")),
                };
                out.push(resolved);
                self.i += 1;
            } else if current == '\'' {
                self.i += 1;
                return Ok(out);
            } else {
                self.i += 1;
                out.push(current);
            }
        }
        Err("Path ended with an open string.".to_string())
    }

    fn parse_query(&mut self, close: char, scan: bool) -> ParseResult<PathFilter> {
        self.i += 1;
        self.ensure_length("Path ended with open indexer.")?;
        if self.chars[self.i] != '(' {
            return Err(format!(
                "Unexpected character while parsing path indexer: {}",
                self.chars[self.i]
            ));
        }
        self.i += 1;
        self.filter_depth += 1;
        if self.filter_depth > MAX_FILTER_NESTING {
            return Err(format!(
                "Filters nested deeper than {MAX_FILTER_NESTING} levels are not accepted."
            ));
        }
        let expression = self.parse_expression()?;
        self.filter_depth -= 1;
        self.i += 1;
        self.ensure_length("Path ended with open indexer.")?;
        self.eat_whitespace();
        let current = self.at(self.i)?;
        if current != close {
            return Err(format!("Unexpected character while parsing path indexer: {current}"));
        }
        let query = Box::new(Query::new(expression));
        Ok(if scan {
            PathFilter::QueryScan(query)
        } else {
            PathFilter::Query(query)
        })
    }

    /// Builds Json.NET's chain: each change of connective nests a new composite inside the
    /// current one, which is never left again.
    fn parse_expression(&mut self) -> ParseResult<QueryExpression> {
        // Each level is (is_and, items); a level's composite is the last item of the level above.
        let mut levels: Vec<(bool, Vec<QueryExpression>)> = Vec::new();
        while self.i < self.len() {
            let left = self.parse_side()?;
            let (op, right) = match self.chars[self.i] {
                ')' | '|' | '&' => (Operator::Exists, None),
                _ => {
                    let op = self.parse_operator()?;
                    (op, Some(self.parse_side()?))
                }
            };
            let regex = match (&op, &right) {
                (Operator::RegexEquals, Some(Side::Value(Literal::String(text)))) => Some(compile_regex(text)?),
                _ => None,
            };
            let boolean = QueryExpression::Boolean { left, op, right, regex };
            match self.chars[self.i] {
                ')' => {
                    let Some((and, items)) = levels.pop() else {
                        return Ok(boolean);
                    };
                    let mut composite = {
                        let mut items = items;
                        items.push(boolean);
                        QueryExpression::Composite { and, items }
                    };
                    while let Some((and, mut items)) = levels.pop() {
                        items.push(composite);
                        composite = QueryExpression::Composite { and, items };
                    }
                    return Ok(composite);
                }
                connective @ ('&' | '|') => {
                    let is_and = connective == '&';
                    if !self.matches(if is_and { "&&" } else { "||" }) {
                        return Err(format!("Unexpected character while parsing path query: {connective}"));
                    }
                    if levels.last().is_none_or(|(and, _)| *and != is_and) {
                        levels.push((is_and, Vec::new()));
                    }
                    levels.last_mut().expect("a level was just ensured").1.push(boolean);
                }
                // Json.NET drops the comparison and starts another one.
                _ => {}
            }
        }
        Err("Path ended with open query.".to_string())
    }

    fn parse_side(&mut self) -> ParseResult<Side> {
        self.eat_whitespace();
        if let Some(path) = self.try_parse_path_side()? {
            self.eat_whitespace();
            self.ensure_length("Path ended with open query.")?;
            return Ok(Side::path(path));
        }
        if let Some(value) = self.try_parse_value()? {
            self.eat_whitespace();
            self.ensure_length("Path ended with open query.")?;
            return Ok(Side::Value(value));
        }
        Err(format!(
            "Unexpected character while parsing path query: {}",
            self.at(self.i)?
        ))
    }

    fn try_parse_path_side(&mut self) -> ParseResult<Option<Vec<PathFilter>>> {
        let mut path = match self.at(self.i)? {
            '$' => vec![PathFilter::Root],
            '@' => Vec::new(),
            _ => return Ok(None),
        };
        self.i += 1;
        let start = self.i;
        if self.parse_path(&mut path, start, true)? {
            return Err("Path ended with open query.".to_string());
        }
        Ok(Some(path))
    }

    fn try_parse_value(&mut self) -> ParseResult<Option<Literal>> {
        let current = self.at(self.i)?;
        if current == '\'' {
            return self.read_quoted_string().map(|text| Some(Literal::String(text)));
        }
        if current.is_numeric() || current == '-' {
            let mut text = String::new();
            text.push(current);
            self.i += 1;
            while self.i < self.len() {
                let next = self.chars[self.i];
                if next == ' ' || next == ')' {
                    return Ok(parse_number_literal(&text));
                }
                text.push(next);
                self.i += 1;
            }
            return Ok(None);
        }
        let keyword = match current {
            't' if self.matches("true") => Some(Literal::Bool(true)),
            'f' if self.matches("false") => Some(Literal::Bool(false)),
            'n' if self.matches("null") => Some(Literal::Null),
            '/' => Some(Literal::String(self.read_regex_string()?)),
            _ => None,
        };
        Ok(keyword)
    }

    fn read_regex_string(&mut self) -> ParseResult<String> {
        let start = self.i;
        self.i += 1;
        while self.i < self.len() {
            let current = self.chars[self.i];
            if current == '\\' && self.i + 1 < self.len() {
                self.i += 2;
            } else if current == '/' {
                self.i += 1;
                while self.i < self.len() && self.chars[self.i].is_alphabetic() {
                    self.i += 1;
                }
                return Ok(self.substring(start, self.i));
            } else {
                self.i += 1;
            }
        }
        Err("Path ended with an open regex.".to_string())
    }

    fn parse_operator(&mut self) -> ParseResult<Operator> {
        if self.i + 1 >= self.len() {
            return Err("Path ended with open query.".to_string());
        }
        let table = [
            ("===", Operator::StrictEquals),
            ("==", Operator::Equals),
            ("=~", Operator::RegexEquals),
            ("!==", Operator::StrictNotEquals),
            ("!=", Operator::NotEquals),
            ("<>", Operator::NotEquals),
            ("<=", Operator::LessThanOrEquals),
            ("<", Operator::LessThan),
            (">=", Operator::GreaterThanOrEquals),
            (">", Operator::GreaterThan),
        ];
        for (text, op) in table {
            if self.matches(text) {
                return Ok(op);
            }
        }
        Err("Could not read query operator.".to_string())
    }
}

fn path_filter(member: Option<String>, scan: bool) -> PathFilter {
    if scan {
        PathFilter::Scan(member)
    } else {
        PathFilter::Field(member)
    }
}

/// `Convert.ToInt32(text, InvariantCulture)`.
fn to_int32(text: &str) -> ParseResult<i32> {
    let valid = {
        let digits = text.strip_prefix('-').unwrap_or(text);
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
    };
    if !valid {
        return Err(format!("The input string '{text}' was not in a correct format."));
    }
    text.parse::<i32>()
        .map_err(|_| "Value was either too large or too small for an Int32.".to_string())
}

/// A filter number literal: a double when it has `.`, `e` or `E` (thousands separators allowed),
/// else a 64-bit integer; `None` when it does not parse.
fn parse_number_literal(text: &str) -> Option<Literal> {
    if text.contains(['.', 'e', 'E']) {
        let (integer, rest) = text.split_at(text.find(['.', 'e', 'E']).unwrap_or(text.len()));
        let cleaned = format!("{}{}", integer.replace(',', ""), rest);
        cleaned.parse::<f64>().ok().map(Literal::Float)
    } else {
        let digits = text.strip_prefix('-').unwrap_or(text);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse::<i64>().ok().map(Literal::Integer)
    }
}

/// Splits `/pattern/flags` at the last slash as Json.NET does and compiles it. `x` (explicit
/// capture) does not change what matches; unknown flags are ignored.
fn compile_regex(text: &str) -> ParseResult<Regex> {
    let Some(last) = text.rfind('/').filter(|&last| last >= 1) else {
        return Err(format!("Regular expression {text:?} has no closing '/'."));
    };
    let pattern = text.get(1..last).unwrap_or("");
    let flags = &text[last + 1..];
    RegexBuilder::new(pattern)
        .case_insensitive(flags.contains('i'))
        .multi_line(flags.contains('m'))
        .dot_matches_new_line(flags.contains('s'))
        .size_limit(1 << 20)
        .build()
        .map_err(|error| format!("Invalid regular expression {pattern:?}: {error}"))
}

/// Errors Json.NET raises for every evaluation, reported at load instead.
fn check_static(filters: &[PathFilter]) -> ParseResult<()> {
    for filter in filters {
        match filter {
            PathFilter::Slice { step: Some(0), .. } => return Err("Step cannot be zero.".to_string()),
            PathFilter::Query(query) | PathFilter::QueryScan(query) => check_query(&query.expression)?,
            _ => {}
        }
    }
    Ok(())
}

fn check_query(expression: &QueryExpression) -> ParseResult<()> {
    match expression {
        QueryExpression::Composite { items, .. } => items.iter().try_for_each(check_query),
        QueryExpression::Boolean { left, right, .. } => {
            for side in std::iter::once(left).chain(right) {
                if let Side::Path(path) = side {
                    check_static(path)?;
                }
            }
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation

/// A token as Json.NET's evaluator sees it: values, property nodes, and the scope root (which
/// for CalculatedContent has a `matchedToken` property appended).
#[derive(Debug, Clone, Copy)]
enum Node<'a> {
    Value(&'a JToken),
    Property(&'a str, &'a JToken),
    /// The scope root when it carries `matchedToken`.
    WrappedRoot,
}

struct Context<'a> {
    root: &'a JToken,
    root_property: Option<&'a str>,
    matched: Option<&'a JToken>,
    budget: Cell<usize>,
}

type EvalResult<T> = Result<T, String>;

impl<'a> Context<'a> {
    fn of(scope: &Scope<'a>) -> Self {
        Context {
            root: scope.root(),
            root_property: scope.root_property(),
            matched: scope.matched(),
            budget: Cell::new(MAX_NODES),
        }
    }

    fn root_node(&self) -> Node<'a> {
        match (self.matched, self.root_property) {
            (Some(_), _) => Node::WrappedRoot,
            (None, Some(name)) => Node::Property(name, self.root),
            (None, None) => Node::Value(self.root),
        }
    }

    fn spend(&self, count: usize) -> EvalResult<()> {
        let left = self.budget.get();
        if count > left {
            return Err(format!(
                "JSONPath evaluation stopped after producing more than {MAX_NODES} tokens."
            ));
        }
        self.budget.set(left - count);
        Ok(())
    }

    /// Calls `visit` for each property of an object node (the wrapped root has `matchedToken`
    /// last); nothing for other nodes.
    fn for_each_property(
        &self,
        node: Node<'a>,
        mut visit: impl FnMut(&'a str, &'a JToken) -> EvalResult<()>,
    ) -> EvalResult<()> {
        let object = match node {
            Node::Value(JToken::Object(object)) => object,
            Node::WrappedRoot => match self.root {
                JToken::Object(object) => object,
                _ => return self.matched.map_or(Ok(()), |matched| visit(MATCHED_TOKEN, matched)),
            },
            _ => return Ok(()),
        };
        for (name, value) in object.iter() {
            visit(name, value)?;
        }
        match (node, self.matched) {
            (Node::WrappedRoot, Some(matched)) => visit(MATCHED_TOKEN, matched),
            _ => Ok(()),
        }
    }

    fn field(&self, node: Node<'a>, name: &str) -> Option<&'a JToken> {
        match node {
            Node::Value(JToken::Object(object)) => object.get(name),
            Node::WrappedRoot => self
                .root
                .get(name)
                .or_else(|| (name == MATCHED_TOKEN).then_some(self.matched).flatten()),
            _ => None,
        }
    }

    /// The node a path of plain field names leads to from `node` (`node` itself for none).
    fn fields(&self, node: Node<'a>, names: &[String]) -> Option<Node<'a>> {
        names
            .iter()
            .try_fold(node, |node, name| self.field(node, name).map(Node::Value))
    }

    /// `JToken.Children()`: array elements, object properties, a property's value.
    fn for_each_child(&self, node: Node<'a>, visit: &mut impl FnMut(Node<'a>) -> EvalResult<()>) -> EvalResult<()> {
        match node {
            Node::Value(JToken::Array(items)) => items.iter().try_for_each(|item| visit(Node::Value(item))),
            Node::Value(JToken::Object(_)) | Node::WrappedRoot => {
                self.for_each_property(node, |name, value| visit(Node::Property(name, value)))
            }
            Node::Property(_, value) => visit(Node::Value(value)),
            Node::Value(_) => Ok(()),
        }
    }

    fn is_container(node: Node<'a>) -> bool {
        matches!(
            node,
            Node::Value(JToken::Array(_) | JToken::Object(_)) | Node::Property(..) | Node::WrappedRoot
        )
    }

    /// `node` and its descendants that are objects, in pre-order (what a scan visits, minus the
    /// property nodes, arrays and scalars an objects-only filter can never match).
    fn for_each_object(&self, node: Node<'a>, visit: &mut impl FnMut(Node<'a>) -> EvalResult<()>) -> EvalResult<()> {
        fn walk<'a>(
            context: &Context<'a>,
            token: &'a JToken,
            visit: &mut impl FnMut(Node<'a>) -> EvalResult<()>,
        ) -> EvalResult<()> {
            context.spend(1)?;
            let children: &'a [JToken] = match token {
                JToken::Object(object) => {
                    visit(Node::Value(token))?;
                    return walk_values(context, object.values(), visit);
                }
                JToken::Array(items) => items,
                _ => return Ok(()),
            };
            walk_values(context, children.iter(), visit)
        }
        /// Scalars are counted against the budget in one go; only containers are descended.
        fn walk_values<'a>(
            context: &Context<'a>,
            values: impl ExactSizeIterator<Item = &'a JToken>,
            visit: &mut impl FnMut(Node<'a>) -> EvalResult<()>,
        ) -> EvalResult<()> {
            let mut scalars = 0;
            for value in values {
                match value {
                    JToken::Object(_) | JToken::Array(_) => walk(context, value, visit)?,
                    _ => scalars += 1,
                }
            }
            context.spend(scalars)
        }
        match node {
            Node::Value(token) => walk(self, token, visit),
            Node::Property(_, value) => walk(self, value, visit),
            Node::WrappedRoot => {
                visit(Node::WrappedRoot)?;
                self.for_each_property(Node::WrappedRoot, |_, value| walk(self, value, visit))
            }
        }
    }

    /// Descendants in pre-order, property nodes included (`JContainer.Descendants()`).
    fn for_each_descendant(
        &self,
        node: Node<'a>,
        visit: &mut impl FnMut(Node<'a>) -> EvalResult<()>,
    ) -> EvalResult<()> {
        self.for_each_child(node, &mut |child| {
            self.spend(1)?;
            visit(child)?;
            self.for_each_descendant(child, visit)
        })
    }

    fn to_token_ref(&self, node: Node<'a>) -> Option<&'a JToken> {
        match node {
            Node::Value(token) => Some(token),
            _ => None,
        }
    }
}

impl<'a> Node<'a> {
    fn into_selected(self, context: &Context<'a>) -> Selected<'a> {
        match self {
            Node::Value(token) => Selected::Token(Cow::Borrowed(token)),
            Node::Property(name, value) => Selected::Property(name, value),
            Node::WrappedRoot => {
                let mut object = context.root.as_object().cloned().unwrap_or_default();
                if let Some(matched) = context.matched {
                    object.insert(MATCHED_TOKEN, matched.clone());
                }
                Selected::Token(Cow::Owned(JToken::Object(object)))
            }
        }
    }
}

fn evaluate<'a>(
    filters: &[PathFilter],
    context: &Context<'a>,
    mut current: Vec<Node<'a>>,
) -> EvalResult<Vec<Node<'a>>> {
    for filter in filters {
        let mut next = Vec::new();
        match filter {
            PathFilter::Field(name) => {
                for node in current {
                    match name {
                        Some(name) => next.extend(context.field(node, name).map(Node::Value)),
                        None => context.for_each_property(node, |_, value| {
                            next.push(Node::Value(value));
                            Ok(())
                        })?,
                    }
                }
            }
            PathFilter::FieldMultiple(names) => {
                for node in current {
                    for name in names {
                        next.extend(context.field(node, name).map(Node::Value));
                    }
                }
            }
            PathFilter::Index(index) => {
                for node in current {
                    match index {
                        Some(index) => next.extend(array_index(node, *index)?),
                        None => {
                            if let Node::Value(JToken::Array(items)) = node {
                                next.extend(items.iter().map(Node::Value));
                            }
                        }
                    }
                }
            }
            PathFilter::IndexMultiple(indexes) => {
                for node in current {
                    for index in indexes {
                        next.extend(array_index(node, *index)?);
                    }
                }
            }
            PathFilter::Slice { start, end, step } => {
                for node in current {
                    if let Node::Value(JToken::Array(items)) = node {
                        slice(items, *start, *end, *step, &mut next)?;
                    }
                }
            }
            PathFilter::Scan(name) => {
                for node in current {
                    if name.is_none() {
                        next.push(node);
                    }
                    context.for_each_descendant(node, &mut |descendant| {
                        match (descendant, name) {
                            (Node::Property(property, value), Some(name)) if property == name => {
                                next.push(Node::Value(value))
                            }
                            (Node::Property(..), _) | (_, Some(_)) => {}
                            (other, None) => next.push(other),
                        }
                        Ok(())
                    })?;
                }
            }
            PathFilter::ScanMultiple(names) => {
                for node in current {
                    context.for_each_descendant(node, &mut |descendant| {
                        if let Node::Property(property, value) = descendant {
                            next.extend(
                                names
                                    .iter()
                                    .filter(|name| *name == property)
                                    .map(|_| Node::Value(value)),
                            );
                        }
                        Ok(())
                    })?;
                }
            }
            PathFilter::Query(query) => {
                for node in current {
                    context.for_each_child(node, &mut |child| {
                        if query.accepts(child) && is_match(&query.expression, context, child)? {
                            next.push(child);
                        }
                        Ok(())
                    })?;
                }
            }
            PathFilter::QueryScan(query) if query.objects_only => {
                for node in current {
                    context.for_each_object(node, &mut |object| {
                        if is_match(&query.expression, context, object)? {
                            next.push(object);
                        }
                        Ok(())
                    })?;
                }
            }
            PathFilter::QueryScan(query) => {
                for node in current {
                    if query.accepts(node) && is_match(&query.expression, context, node)? {
                        next.push(node);
                    }
                    if Context::is_container(node) {
                        context.for_each_descendant(node, &mut |descendant| {
                            if query.accepts(descendant) && is_match(&query.expression, context, descendant)? {
                                next.push(descendant);
                            }
                            Ok(())
                        })?;
                    }
                }
            }
            PathFilter::Root => next.push(context.root_node()),
        }
        context.spend(next.len())?;
        current = next;
    }
    Ok(current)
}

/// [`evaluate`] of a lone objects-only scan from `start`, building the selection directly.
fn scan_objects<'a>(query: &Query, context: &Context<'a>, start: Node<'a>) -> EvalResult<Selection<'a>> {
    let mut selected = Selection::default();
    context.for_each_object(start, &mut |object| {
        if is_match(&query.expression, context, object)? {
            selected.push(object.into_selected(context));
        }
        Ok(())
    })?;
    context.spend(selected.len())?;
    Ok(selected)
}

fn array_index(node: Node<'_>, index: i32) -> EvalResult<Option<Node<'_>>> {
    match node {
        Node::Value(JToken::Array(items)) => {
            if index < 0 {
                return Err(
                    "Index was out of range. Must be non-negative and less than the size of the collection. (Parameter 'index')"
                        .to_string(),
                );
            }
            Ok(items.get(index as usize).map(Node::Value))
        }
        _ => Ok(None),
    }
}

fn slice<'a>(
    items: &'a [JToken],
    start: Option<i32>,
    end: Option<i32>,
    step: Option<i32>,
    out: &mut Vec<Node<'a>>,
) -> EvalResult<()> {
    let step = i64::from(step.unwrap_or(1));
    if step == 0 {
        return Err("Step cannot be zero.".to_string());
    }
    let count = items.len() as i64;
    let mut first = start.map_or(if step > 0 { 0 } else { count - 1 }, i64::from);
    let mut stop = end.map_or(if step > 0 { count } else { -1 }, i64::from);
    if start.is_some_and(|s| s < 0) {
        first += count;
    }
    if end.is_some_and(|e| e < 0) {
        stop += count;
    }
    first = if step > 0 {
        first.max(0).min(count)
    } else {
        first.min(count - 1)
    };
    stop = stop.max(-1).min(count);
    let mut index = first;
    while (step > 0 && index < stop) || (step < 0 && index > stop) {
        if let Some(item) = usize::try_from(index).ok().and_then(|i| items.get(i)) {
            out.push(Node::Value(item));
        }
        index += step;
    }
    Ok(())
}

fn is_match<'a>(expression: &QueryExpression, context: &Context<'a>, candidate: Node<'a>) -> EvalResult<bool> {
    match expression {
        QueryExpression::Composite { and: true, items } => {
            for item in items {
                if !is_match(item, context, candidate)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        QueryExpression::Composite { and: false, items } => {
            for item in items {
                if is_match(item, context, candidate)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        // `@x` alone, the usual type match: no operands to gather.
        QueryExpression::Boolean {
            left: Side::Fields(names),
            op: Operator::Exists,
            ..
        } => Ok(context.fields(candidate, names).is_some()),
        QueryExpression::Boolean { left, op, right, regex } => {
            let lefts = side_values(left, context, candidate)?;
            if *op == Operator::Exists {
                return Ok(!lefts.as_slice().is_empty());
            }
            if lefts.as_slice().is_empty() {
                return Ok(false);
            }
            let rights = match right {
                Some(right) => side_values(right, context, candidate)?,
                None => Operands::One(None),
            };
            for left in lefts.as_slice() {
                for right in rights.as_slice() {
                    if match_values(*op, left, right, regex.as_ref(), context)? {
                        return Ok(true);
                    }
                }
            }
            Ok(false)
        }
    }
}

/// One side of a comparison: the nodes a path yields, or a literal.
#[derive(Debug)]
enum Operand<'a> {
    Node(Node<'a>),
    Literal(&'a Literal),
}

/// The operands of one side: usually at most one, so no vector is needed.
enum Operands<'a> {
    One(Option<Operand<'a>>),
    Many(Vec<Operand<'a>>),
}

impl<'a> Operands<'a> {
    fn as_slice(&self) -> &[Operand<'a>] {
        match self {
            Operands::One(operand) => operand.as_slice(),
            Operands::Many(operands) => operands,
        }
    }
}

fn side_values<'a>(side: &'a Side, context: &Context<'a>, candidate: Node<'a>) -> EvalResult<Operands<'a>> {
    Ok(match side {
        Side::Value(literal) => Operands::One(Some(Operand::Literal(literal))),
        Side::Fields(names) => Operands::One(context.fields(candidate, names).map(Operand::Node)),
        Side::Path(filters) => Operands::Many(
            evaluate(filters, context, vec![candidate])?
                .into_iter()
                .map(Operand::Node)
                .collect(),
        ),
    })
}

/// A primitive value (`JValue`) in a comparison.
#[derive(Debug, Clone, Copy)]
enum Prim<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Big(&'a str),
    Float(f64),
    Str(&'a str),
    Date(&'a JsonDate),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PrimType {
    Null,
    Boolean,
    Integer,
    Float,
    String,
    Date,
}

impl<'a> Prim<'a> {
    fn of(operand: &Operand<'a>, context: &Context<'a>) -> Option<Prim<'a>> {
        match operand {
            Operand::Literal(literal) => Some(match literal {
                Literal::Null => Prim::Null,
                Literal::Bool(value) => Prim::Bool(*value),
                Literal::Integer(value) => Prim::Int(*value),
                Literal::Float(value) => Prim::Float(*value),
                Literal::String(value) => Prim::Str(value),
            }),
            Operand::Node(node) => match context.to_token_ref(*node)? {
                JToken::Null => Some(Prim::Null),
                JToken::Bool(value) => Some(Prim::Bool(*value)),
                JToken::Integer(value) => Some(Prim::Int(*value)),
                JToken::BigInteger(digits) => Some(Prim::Big(digits)),
                JToken::Float(value) => Some(Prim::Float(*value)),
                JToken::String(value) => Some(Prim::Str(value)),
                JToken::Date(date) => Some(Prim::Date(date)),
                JToken::Array(_) | JToken::Object(_) => None,
            },
        }
    }

    fn kind(self) -> PrimType {
        match self {
            Prim::Null => PrimType::Null,
            Prim::Bool(_) => PrimType::Boolean,
            Prim::Int(_) | Prim::Big(_) => PrimType::Integer,
            Prim::Float(_) => PrimType::Float,
            Prim::Str(_) => PrimType::String,
            Prim::Date(_) => PrimType::Date,
        }
    }
}

fn match_values<'a>(
    op: Operator,
    left: &Operand<'a>,
    right: &Operand<'a>,
    regex: Option<&Regex>,
    context: &Context<'a>,
) -> EvalResult<bool> {
    let (Some(l), Some(r)) = (Prim::of(left, context), Prim::of(right, context)) else {
        // Only primitives compare; `!=` is true for anything else.
        return Ok(matches!(op, Operator::Exists | Operator::NotEquals));
    };
    Ok(match op {
        Operator::Exists => true,
        Operator::Equals => equals_with_coercion(l, r),
        Operator::NotEquals => !equals_with_coercion(l, r),
        Operator::StrictEquals => equals_strict(l, r),
        Operator::StrictNotEquals => !equals_strict(l, r),
        Operator::RegexEquals => regex_equals(l, r, regex)?,
        Operator::GreaterThan => compare_to(l, r)? == Ordering::Greater,
        Operator::GreaterThanOrEquals => compare_to(l, r)? != Ordering::Less,
        Operator::LessThan => compare_to(l, r)? == Ordering::Less,
        Operator::LessThanOrEquals => compare_to(l, r)? != Ordering::Greater,
    })
}

/// `JValue.Equals`: same type and `Compare == 0`.
fn values_equal(l: Prim<'_>, r: Prim<'_>) -> bool {
    l.kind() == r.kind() && compare(l.kind(), l, r).is_ok_and(|ordering| ordering == Ordering::Equal)
}

/// `EqualsWithStringCoercion`: integers and floats compare approximately; a date equals a string
/// of its ISO form; nothing else coerces.
fn equals_with_coercion(l: Prim<'_>, r: Prim<'_>) -> bool {
    if values_equal(l, r) {
        return true;
    }
    if matches!(
        (l.kind(), r.kind()),
        (PrimType::Integer, PrimType::Float) | (PrimType::Float, PrimType::Integer)
    ) {
        return compare(l.kind(), l, r).is_ok_and(|ordering| ordering == Ordering::Equal);
    }
    match (l, r) {
        (Prim::Date(date), Prim::Str(text)) => iso_date_text(date) == text,
        _ => false,
    }
}

/// `EqualsWithStrictMatch`: integers and floats compare numerically, other types must match.
fn equals_strict(l: Prim<'_>, r: Prim<'_>) -> bool {
    if matches!(
        (l.kind(), r.kind()),
        (PrimType::Integer, PrimType::Float) | (PrimType::Float, PrimType::Integer)
    ) {
        return compare(l.kind(), l, r).is_ok_and(|ordering| ordering == Ordering::Equal);
    }
    l.kind() == r.kind() && values_equal(l, r)
}

fn regex_equals(l: Prim<'_>, r: Prim<'_>, compiled: Option<&Regex>) -> EvalResult<bool> {
    let (Prim::Str(input), Prim::Str(pattern)) = (l, r) else {
        return Ok(false);
    };
    match compiled {
        Some(regex) => Ok(regex.is_match(input)),
        None => Ok(compile_regex(pattern)?.is_match(input)),
    }
}

/// `JValue.CompareTo`: a string on the left takes the right side's type.
fn compare_to(l: Prim<'_>, r: Prim<'_>) -> EvalResult<Ordering> {
    let kind = if l.kind() == PrimType::String && r.kind() != PrimType::String {
        r.kind()
    } else {
        l.kind()
    };
    compare(kind, l, r)
}

/// `JValue.Compare(valueType, a, b)`, with .NET's conversions between types.
fn compare(kind: PrimType, a: Prim<'_>, b: Prim<'_>) -> EvalResult<Ordering> {
    match (a, b) {
        (Prim::Null, Prim::Null) => return Ok(Ordering::Equal),
        (_, Prim::Null) => return Ok(Ordering::Greater),
        (Prim::Null, _) => return Ok(Ordering::Less),
        _ => {}
    }
    match kind {
        PrimType::Integer => {
            if let Prim::Big(digits) = a {
                return compare_big(digits, b);
            }
            if let Prim::Big(digits) = b {
                return compare_big(digits, a).map(Ordering::reverse);
            }
            if matches!(a, Prim::Float(_)) || matches!(b, Prim::Float(_)) {
                compare_float(to_double(a)?, to_double(b)?)
            } else {
                Ok(to_int64(a)?.cmp(&to_int64(b)?))
            }
        }
        PrimType::Float => {
            if let Prim::Big(digits) = a {
                return compare_big(digits, b);
            }
            if let Prim::Big(digits) = b {
                return compare_big(digits, a).map(Ordering::reverse);
            }
            compare_float(to_double(a)?, to_double(b)?)
        }
        PrimType::String => Ok(utf16_ordinal(&to_string(a), &to_string(b))),
        PrimType::Boolean => Ok(to_bool(a)?.cmp(&to_bool(b)?)),
        PrimType::Date => Ok(to_date_ticks(a)?.cmp(&to_date_ticks(b)?)),
        PrimType::Null => Ok(Ordering::Equal),
    }
}

fn compare_float(a: f64, b: f64) -> EvalResult<Ordering> {
    const EPSILON: f64 = f64::EPSILON; // Json.NET's MathUtils: 2.2204460492503131E-16
    if a == b {
        return Ok(Ordering::Equal);
    }
    let tolerance = (a.abs() + b.abs() + 10.0) * EPSILON;
    let difference = a - b;
    if -tolerance < difference && tolerance > difference {
        return Ok(Ordering::Equal);
    }
    // double.CompareTo: NaN equals NaN and sorts below everything.
    Ok(match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    })
}

fn compare_big(digits: &str, other: Prim<'_>) -> EvalResult<Ordering> {
    let value: f64 = digits.parse().unwrap_or(f64::NAN);
    match other {
        Prim::Float(_) => compare_float(value, to_double(other)?),
        Prim::Big(other_digits) => Ok(compare_integer_text(digits, other_digits)),
        _ => Ok(compare_integer_text(digits, &to_int64(other)?.to_string())),
    }
}

fn compare_integer_text(a: &str, b: &str) -> Ordering {
    let (a_negative, a_digits) = a.strip_prefix('-').map_or((false, a), |d| (true, d));
    let (b_negative, b_digits) = b.strip_prefix('-').map_or((false, b), |d| (true, d));
    let magnitude = a_digits.len().cmp(&b_digits.len()).then_with(|| a_digits.cmp(b_digits));
    match (a_negative, b_negative) {
        (false, false) => magnitude,
        (true, true) => magnitude.reverse(),
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
    }
}

fn format_error(text: &str) -> String {
    format!("The input string '{text}' was not in a correct format.")
}

fn invalid_cast(from: &str, to: &str) -> String {
    format!("Invalid cast from '{from}' to '{to}'.")
}

fn clr_name(value: Prim<'_>) -> &'static str {
    match value {
        Prim::Null => "Null",
        Prim::Bool(_) => "Boolean",
        Prim::Int(_) => "Int64",
        Prim::Big(_) => "BigInteger",
        Prim::Float(_) => "Double",
        Prim::Str(_) => "String",
        Prim::Date(_) => "DateTime",
    }
}

/// `Convert.ToInt64(value, InvariantCulture)`.
fn to_int64(value: Prim<'_>) -> EvalResult<i64> {
    match value {
        Prim::Int(value) => Ok(value),
        Prim::Bool(value) => Ok(i64::from(value)),
        Prim::Float(value) => {
            let rounded = value.round_ties_even();
            if rounded.is_finite() && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&rounded) {
                Ok(rounded as i64)
            } else {
                Err("Value was either too large or too small for an Int64.".to_string())
            }
        }
        Prim::Str(text) => {
            let trimmed = text.trim_matches(|c: char| c.is_whitespace());
            let digits = trimmed.strip_prefix(['-', '+']).unwrap_or(trimmed);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format_error(text));
            }
            trimmed
                .trim_start_matches('+')
                .parse()
                .map_err(|_| "Value was either too large or too small for an Int64.".to_string())
        }
        other => Err(invalid_cast(clr_name(other), "Int64")),
    }
}

/// `Convert.ToDouble(value, InvariantCulture)`.
fn to_double(value: Prim<'_>) -> EvalResult<f64> {
    match value {
        Prim::Int(value) => Ok(value as f64),
        Prim::Big(digits) => Ok(digits.parse().unwrap_or(f64::NAN)),
        Prim::Float(value) => Ok(value),
        Prim::Bool(value) => Ok(if value { 1.0 } else { 0.0 }),
        Prim::Str(text) => parse_dotnet_double(text).ok_or_else(|| format_error(text)),
        other => Err(invalid_cast(clr_name(other), "Double")),
    }
}

/// `double.Parse(text, NumberStyles.Float | AllowThousands, InvariantCulture)`.
fn parse_dotnet_double(text: &str) -> Option<f64> {
    let trimmed = text.trim_matches(|c: char| c.is_whitespace());
    match trimmed {
        "NaN" => return Some(f64::NAN),
        "Infinity" | "+Infinity" | "∞" => return Some(f64::INFINITY),
        "-Infinity" | "-∞" => return Some(f64::NEG_INFINITY),
        _ => {}
    }
    let cut = trimmed.find(['.', 'e', 'E']).unwrap_or(trimmed.len());
    let (integer, rest) = trimmed.split_at(cut);
    let cleaned = format!("{}{}", integer.replace(',', ""), rest);
    if !cleaned.bytes().any(|b| b.is_ascii_digit())
        || !cleaned
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return None;
    }
    cleaned.parse().ok()
}

/// `Convert.ToBoolean(value, InvariantCulture)`.
fn to_bool(value: Prim<'_>) -> EvalResult<bool> {
    match value {
        Prim::Bool(value) => Ok(value),
        Prim::Int(value) => Ok(value != 0),
        Prim::Float(value) => Ok(value != 0.0),
        Prim::Big(digits) => Ok(!digits.trim_start_matches('-').trim_start_matches('0').is_empty()),
        Prim::Str(text) => {
            let trimmed = text.trim();
            if trimmed.eq_ignore_ascii_case("true") {
                Ok(true)
            } else if trimmed.eq_ignore_ascii_case("false") {
                Ok(false)
            } else {
                Err(format!("String '{text}' was not recognized as a valid Boolean."))
            }
        }
        other => Err(invalid_cast(clr_name(other), "Boolean")),
    }
}

/// `Convert.ToDateTime(value)`: dates as they are, strings through `DateTime.Parse`.
fn to_date_ticks(value: Prim<'_>) -> EvalResult<i64> {
    match value {
        Prim::Date(date) => Ok(date.ticks()),
        Prim::Str(text) => crate::json::parse_dotnet_datetime(text, None)
            .map(|date| date.ticks())
            .ok_or_else(|| format!("String '{text}' was not recognized as a valid DateTime.")),
        other => Err(invalid_cast(clr_name(other), "DateTime")),
    }
}

/// `Convert.ToString(value, InvariantCulture)` for string comparisons.
fn to_string(value: Prim<'_>) -> String {
    match value {
        Prim::Null => String::new(),
        Prim::Bool(true) => "True".to_string(),
        Prim::Bool(false) => "False".to_string(),
        Prim::Int(value) => value.to_string(),
        Prim::Big(digits) => digits.to_string(),
        Prim::Float(value) => format_double(value).into(),
        Prim::Str(text) => text.to_string(),
        Prim::Date(date) => date.to_general_string(),
    }
}

/// `string.CompareOrdinal`: UTF-16 code-unit order.
fn utf16_ordinal(a: &str, b: &str) -> Ordering {
    a.encode_utf16().cmp(b.encode_utf16())
}

/// Json.NET's ISO form of a date, `yyyy-MM-ddTHH:mm:ss.FFFFFFFK`, used when a date is compared
/// with a string.
fn iso_date_text(date: &JsonDate) -> String {
    let utc = date.to_utc();
    let mut text = utc.format("%Y-%m-%dT%H:%M:%S").to_string();
    let ticks = date.ticks().rem_euclid(10_000_000);
    if ticks != 0 {
        let digits = format!("{ticks:07}");
        let _ = write!(text, ".{}", digits.trim_end_matches('0'));
    }
    match date.kind() {
        DateKind::Utc => text.push('Z'),
        DateKind::Local => text.push_str("+00:00"),
        DateKind::Unspecified => {}
    }
    text
}

#[cfg(test)]
mod tests;
