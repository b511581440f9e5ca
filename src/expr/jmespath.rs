//! JMESPath through the `jmespath` crate, with JmesPath.Net's result rules and the original's
//! custom functions (compat.md §4.4, §4.5).

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::{Arc, LazyLock};

use jmespath::ast::{Ast, Comparator};
use jmespath::{Context, ErrorReason, Expression, Rcvar, Runtime, Variable, interpret};
use serde_json::Number;

use super::functions::{self, Arg, Custom, Out, register_custom_functions};
use super::{ExpressionError, FieldLookup, MATCHED_TOKEN, Scope, Selected, Selection};
use crate::json::{JToken, JsonDate};

/// Longest expression accepted; real templates are far shorter, and the bound keeps hostile
/// expressions from exhausting the parser's and interpreter's stacks.
const MAX_EXPRESSION_LENGTH: usize = 4096;
/// Deepest bracket nesting (and count of prefix `!`/`&` operators) accepted.
const MAX_NESTING: usize = 32;
/// Deepest syntax tree accepted.
const MAX_AST_DEPTH: usize = 128;

static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
    let mut runtime = Runtime::new();
    runtime.register_builtin_functions();
    register_custom_functions(&mut runtime);
    runtime
});

/// Built-in functions and their accepted argument counts (`None` = variadic). The custom
/// functions report their own arity.
const BUILTIN_ARITY: &[(&str, usize, Option<usize>)] = &[
    ("abs", 1, Some(1)),
    ("avg", 1, Some(1)),
    ("ceil", 1, Some(1)),
    ("contains", 2, Some(2)),
    ("ends_with", 2, Some(2)),
    ("floor", 1, Some(1)),
    ("join", 2, Some(2)),
    ("keys", 1, Some(1)),
    ("length", 1, Some(1)),
    ("map", 2, Some(2)),
    ("max", 1, Some(1)),
    ("max_by", 2, Some(2)),
    ("merge", 1, None),
    ("min", 1, Some(1)),
    ("min_by", 2, Some(2)),
    ("not_null", 1, None),
    ("reverse", 1, Some(1)),
    ("sort", 1, Some(1)),
    ("sort_by", 2, Some(2)),
    ("starts_with", 2, Some(2)),
    ("sum", 1, Some(1)),
    ("to_array", 1, Some(1)),
    ("to_number", 1, Some(1)),
    ("to_string", 1, Some(1)),
    ("type", 1, Some(1)),
    ("values", 1, Some(1)),
];

/// A compiled JMESPath expression.
pub struct JmesPath {
    expression: Expression<'static>,
    projection: bool,
    root_fields: Option<Vec<String>>,
    direct: Option<Direct>,
    filter: Option<Filter>,
}

/// A filter projection comparing a field of each element with a string, `list[?field == 'text']`
/// or `!=`: the form device templates use to pick readings out of an array. Evaluated on the
/// token tree, it yields the elements themselves, in document order, as JmesPath.Net does on
/// Json.NET tokens.
#[derive(Debug)]
struct Filter {
    /// The field chain holding the array.
    list: Vec<String>,
    /// The field chain compared, relative to each element.
    field: Vec<String>,
    /// `==` (true) or `!=` (false).
    equal: bool,
    text: String,
}

impl Filter {
    fn of(ast: &Ast) -> Option<Filter> {
        let Ast::Projection { lhs, rhs, .. } = ast else {
            return None;
        };
        let Direct::Fields(list) = Direct::of(lhs)? else {
            return None;
        };
        let Ast::Condition { predicate, then, .. } = &**rhs else {
            return None;
        };
        let (
            Ast::Identity { .. },
            Ast::Comparison {
                comparator, lhs, rhs, ..
            },
        ) = (&**then, &**predicate)
        else {
            return None;
        };
        let equal = match comparator {
            Comparator::Equal => true,
            Comparator::NotEqual => false,
            _ => return None,
        };
        let (field, literal) = match (&**lhs, &**rhs) {
            (Ast::Literal { value, .. }, other) | (other, Ast::Literal { value, .. }) => (other, value),
            _ => return None,
        };
        let (Direct::Fields(field), Variable::String(text)) = (Direct::of(field)?, &**literal) else {
            return None;
        };
        Some(Filter {
            list,
            field,
            equal,
            text: text.clone(),
        })
    }

    /// The elements that pass (null elements never do: a projection drops null results).
    fn select<'a>(&self, scope: &Scope<'a>) -> Vec<&'a JToken> {
        let Some(JToken::Array(items)) = field_chain(&self.list, scope) else {
            return Vec::new();
        };
        items
            .iter()
            .filter(|item| !matches!(item, JToken::Null))
            .filter(|item| {
                let value = self.field.iter().try_fold(*item, |token, name| token.get(name));
                let same = match value {
                    Some(JToken::String(text)) => **text == *self.text,
                    Some(JToken::Date(date)) => date.source() == self.text,
                    _ => false,
                };
                same == self.equal
            })
            .collect()
    }
}

/// The token at a field chain from the scope root (`matchedToken` first reads the matched
/// token); `None` when a field is missing or a link is not an object.
fn field_chain<'a>(names: &[String], scope: &Scope<'a>) -> Option<&'a JToken> {
    let (first, rest) = names.split_first().expect("a field chain has a field");
    let head = match scope.matched() {
        Some(matched) if first == MATCHED_TOKEN => Some(matched),
        _ => scope.root().get(first),
    };
    rest.iter().try_fold(head?, |token, name| token.get(name))
}

/// The expressions evaluated directly on the token tree, without converting data to the crate's
/// variables: field chains, literals, and custom-function calls on such arguments. They mean the
/// same either way (a missing field or a field of a non-object is `null`); the crate handles
/// everything else.
#[derive(Debug)]
enum Direct {
    Fields(Vec<String>),
    Literal(JToken),
    Call(Custom, Vec<Direct>),
}

impl Direct {
    fn of(ast: &Ast) -> Option<Direct> {
        match ast {
            Ast::Field { name, .. } => Some(Direct::Fields(vec![name.clone()])),
            Ast::Subexpr { lhs, rhs, .. } => match (Direct::of(lhs)?, Direct::of(rhs)?) {
                (Direct::Fields(mut head), Direct::Fields(tail)) => {
                    head.extend(tail);
                    Some(Direct::Fields(head))
                }
                _ => None,
            },
            Ast::Literal { value, .. } => Some(Direct::Literal(from_variable(
                value,
                &Dates::new(&JmesCache::default(), None),
                &[],
            ))),
            Ast::Function { name, args, .. } => {
                let function = Custom::named(name)?;
                let args = args.iter().map(Direct::of).collect::<Option<Vec<_>>>()?;
                Some(Direct::Call(function, args))
            }
            _ => None,
        }
    }

    fn evaluate<'a>(&self, scope: &Scope<'a>) -> Result<Cow<'a, JToken>, String> {
        Ok(match self.value(scope)? {
            DirectValue::Found(token) => Cow::Borrowed(token),
            DirectValue::Missing => Cow::Owned(JToken::Null),
            DirectValue::Literal(token) => Cow::Owned(token.clone()),
            DirectValue::Computed(out) => Cow::Owned(match out {
                Out::Int(value) => JToken::Integer(value),
                Out::Float(value) => JToken::Float(value),
                Out::Str(text) => JToken::string(text),
                Out::Date(date) => JToken::Date(Box::new(date)),
            }),
        })
    }

    /// The value, left as found or computed: arguments of nested calls are typed straight from
    /// it, without building a token for each.
    fn value<'s, 'a>(&'s self, scope: &Scope<'a>) -> Result<DirectValue<'s, 'a>, String> {
        match self {
            Direct::Fields(names) => Ok(field_chain(names, scope).map_or(DirectValue::Missing, DirectValue::Found)),
            Direct::Literal(value) => Ok(DirectValue::Literal(value)),
            Direct::Call(function, args) => {
                // At most three arguments (arity is checked at load): no heap allocation.
                let mut values = [DirectValue::Missing, DirectValue::Missing, DirectValue::Missing];
                for (slot, arg) in values.iter_mut().zip(args) {
                    *slot = arg.value(scope)?;
                }
                let mut typed = [Arg::Other, Arg::Other, Arg::Other];
                for (slot, value) in typed.iter_mut().zip(&values) {
                    *slot = value.as_arg();
                }
                functions::call(*function, &typed[..args.len()]).map(DirectValue::Computed)
            }
        }
    }
}

/// A [`Direct`] expression's value: a token of the data or of the expression, or a function's
/// result.
enum DirectValue<'s, 'a> {
    Found(&'a JToken),
    /// A field that is not there (`null`).
    Missing,
    Literal(&'s JToken),
    Computed(Out),
}

impl DirectValue<'_, '_> {
    /// The argument this value makes, typed as the token it stands for would be.
    fn as_arg(&self) -> Arg<'_> {
        match self {
            DirectValue::Found(token) | DirectValue::Literal(token) => token_arg(token),
            DirectValue::Missing => Arg::Other,
            DirectValue::Computed(Out::Int(value)) => Arg::Int(*value),
            DirectValue::Computed(Out::Float(value)) if value.is_finite() => Arg::Float(*value),
            DirectValue::Computed(Out::Float(_)) => Arg::Other,
            DirectValue::Computed(Out::Str(text)) => Arg::Str(Cow::Borrowed(text)),
            DirectValue::Computed(Out::Date(date)) => Arg::Str(date.source()),
        }
    }
}

/// A token as a custom-function argument, typed as the crate's conversion would type it.
fn token_arg(token: &JToken) -> Arg<'_> {
    match token {
        JToken::Integer(value) => Arg::Int(*value),
        JToken::BigInteger(digits) => digits
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .map_or(Arg::Other, Arg::Float),
        JToken::Float(value) if value.is_finite() => Arg::Float(*value),
        JToken::String(text) => Arg::Str(Cow::Borrowed(text)),
        JToken::Date(date) => Arg::Str(date.source()),
        _ => Arg::Other,
    }
}

impl std::fmt::Debug for JmesPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("JmesPath").field(&self.expression.as_str()).finish()
    }
}

impl JmesPath {
    /// Compiles `text`, checking function names and argument counts as JmesPath.Net does at load.
    pub fn compile(text: &str) -> Result<Self, ExpressionError> {
        let unparsable = |detail: String| {
            ExpressionError::Compile(format!(
                "The following JmesPath expression could not be parsed: {text}. Cause: {detail}"
            ))
        };
        check_size(text).map_err(unparsable)?;
        let expression = RUNTIME
            .compile(&quote_bare_literals(text))
            .map_err(|error| unparsable(describe(&error)))?;
        check_depth(expression.as_ast()).map_err(unparsable)?;
        check_functions(expression.as_ast()).map_err(unparsable)?;
        let projection = is_projection(expression.as_ast());
        let root_fields = root_fields(expression.as_ast()).map(|fields| {
            let mut fields: Vec<String> = fields.into_iter().collect();
            fields.sort();
            fields.dedup();
            fields
        });
        let direct = Direct::of(expression.as_ast());
        let filter = Filter::of(expression.as_ast());
        Ok(JmesPath {
            expression,
            projection,
            root_fields,
            direct,
            filter,
        })
    }

    /// The expression text.
    pub fn as_str(&self) -> &str {
        self.expression.as_str()
    }

    /// Member names the expression needs to find to yield anything but `null` or an empty
    /// projection (see [`super::Expression::required_keys`]).
    pub fn required_keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        needed_fields(self.expression.as_ast(), &mut keys);
        keys
    }

    /// `SelectTokens` evaluated directly on the scope's tokens (see [`Direct`] and [`Filter`]):
    /// `None` when the expression needs the crate.
    pub(super) fn select_direct_all<'a>(&self, scope: &Scope<'a>) -> Option<Result<Selection<'a>, ExpressionError>> {
        let selected = |tokens: Vec<Cow<'a, JToken>>| Selection::new(tokens.into_iter().map(Selected::Token).collect());
        if let Some(filter) = &self.filter {
            return Some(Ok(selected(
                filter.select(scope).into_iter().map(Cow::Borrowed).collect(),
            )));
        }
        let result = self.select_direct(scope)?;
        Some(result.map(|token| selected(token.into_iter().collect())))
    }

    /// `SelectToken` evaluated directly on the scope's tokens (see [`Direct`] and [`Filter`]):
    /// `None` when the expression needs the crate. A `null` result is nothing.
    pub(super) fn select_direct<'a>(
        &self,
        scope: &Scope<'a>,
    ) -> Option<Result<Option<Cow<'a, JToken>>, ExpressionError>> {
        if let Some(filter) = &self.filter {
            // As `select_one`: more than one element is an error; fewer are still an array.
            let items = filter.select(scope);
            if items.len() > 1 {
                return Some(Err(self.multiple_tokens()));
            }
            return Some(Ok(Some(Cow::Owned(JToken::Array(
                items.into_iter().cloned().collect(),
            )))));
        }
        let direct = self.direct.as_ref()?;
        Some(
            direct
                .evaluate(scope)
                .map(|token| (!matches!(*token, JToken::Null)).then_some(token))
                .map_err(ExpressionError::Evaluate),
        )
    }

    /// What a plain field chain (`a.b`) finds, borrowed from the data (`null` is nothing, as
    /// for [`JmesPath::select_direct`]); [`FieldLookup::Other`] for any other expression.
    pub(super) fn lookup_field<'a>(&self, scope: &Scope<'a>) -> FieldLookup<'a> {
        match &self.direct {
            Some(Direct::Fields(names)) if self.filter.is_none() => match field_chain(names, scope) {
                Some(JToken::Null) | None => FieldLookup::Missing,
                Some(token) => FieldLookup::Found(token),
            },
            _ => FieldLookup::Other,
        }
    }

    /// The root members the expression reads, or `None` when it may read the whole root (it
    /// uses `@` at the root, or a wildcard). Knowing them lets a caller convert only those.
    pub fn root_fields(&self) -> Option<&[String]> {
        self.root_fields.as_deref()
    }

    /// `SelectTokens`: a projection yields each element; anything else one token (`null` yields
    /// nothing).
    pub fn evaluate<'a>(&self, root: &Rcvar, dates: &Dates<'_>) -> Result<Selection<'a>, ExpressionError> {
        let (result, created) = self.interpret(root)?;
        let convert = |variable: &Rcvar| from_variable(variable, dates, &created);
        let tokens = if self.projection {
            match &*result {
                Variable::Array(items) => items.iter().map(convert).collect(),
                _ => Vec::new(),
            }
        } else if result.is_null() {
            Vec::new()
        } else {
            vec![convert(&result)]
        };
        Ok(Selection::owned(tokens))
    }

    /// `SelectToken`, as JmesPath.Net answers it: a projection of more than one element is an
    /// error, and a smaller projection is still an array (so it cannot become a value); a
    /// `null` result is nothing.
    pub fn select_one(&self, root: &Rcvar, dates: &Dates<'_>) -> Result<Option<JToken>, ExpressionError> {
        let (result, created) = self.interpret(root)?;
        if self.projection {
            let items = match &*result {
                Variable::Array(items) => items.as_slice(),
                _ => &[],
            };
            if items.len() > 1 {
                return Err(self.multiple_tokens());
            }
            return Ok(Some(JToken::Array(
                items.iter().map(|item| from_variable(item, dates, &created)).collect(),
            )));
        }
        Ok((!result.is_null()).then(|| from_variable(&result, dates, &created)))
    }

    fn multiple_tokens(&self) -> ExpressionError {
        ExpressionError::MultipleTokens(format!(
            "Multiple tokens were returned using expression {}",
            self.as_str()
        ))
    }

    /// Runs the expression; also returns the dates the custom functions created.
    fn interpret(&self, root: &Rcvar) -> Result<(Rcvar, Vec<(Rcvar, JsonDate)>), ExpressionError> {
        CREATED_DATES.with(|dates| dates.borrow_mut().clear());
        // `Expression::search` would deep-copy the data through serde; interpret it in place.
        let mut context = Context::new(self.expression.as_str(), &RUNTIME);
        let result = interpret(root, self.expression.as_ast(), &mut context)
            .map_err(|error| ExpressionError::Evaluate(runtime_message(&error)));
        let created = CREATED_DATES.with(|dates| std::mem::take(&mut *dates.borrow_mut()));
        Ok((result?, created))
    }
}

thread_local! {
    /// Dates made by `fromUnixTimestamp[Ms]` during the current evaluation. JMESPath has no date
    /// type, so a date travels as a string and is recognised by identity when results come back.
    static CREATED_DATES: RefCell<Vec<(Rcvar, JsonDate)>> = const { RefCell::new(Vec::new()) };
}

/// Records a date made by a custom function and returns the string variable standing for it.
pub(super) fn created_date(date: JsonDate) -> Rcvar {
    let variable = Arc::new(Variable::String(date.source().to_string()));
    CREATED_DATES.with(|dates| dates.borrow_mut().push((variable.clone(), date)));
    variable
}

/// A token converted to the crate's variables, with the date tokens among its strings.
#[derive(Debug)]
pub struct Converted {
    variable: Rcvar,
    dates: Vec<(usize, JsonDate)>,
}

impl Converted {
    /// Converts `token`.
    pub fn of(token: &JToken) -> Self {
        let mut dates = Vec::new();
        let variable = to_variable(token, &mut dates);
        Converted { variable, dates }
    }

    /// The converted variable.
    pub fn variable(&self) -> &Rcvar {
        &self.variable
    }
}

/// Conversions of one message's tokens, made on demand and shared by the templates applied to
/// it. Entries are keyed by the token's address, so only tokens that outlive the cache (the
/// message's own) may be converted through it.
#[derive(Debug, Default)]
pub struct JmesCache {
    entries: RefCell<Vec<(usize, Converted)>>,
}

impl JmesCache {
    /// The variable for `token`, converting it on first use.
    pub fn convert(&self, token: &JToken) -> Rcvar {
        let address = std::ptr::from_ref(token) as usize;
        if let Some((_, converted)) = self.entries.borrow().iter().find(|(known, _)| *known == address) {
            return converted.variable.clone();
        }
        let converted = Converted::of(token);
        let variable = converted.variable.clone();
        self.entries.borrow_mut().push((address, converted));
        variable
    }
}

/// Where the strings that stand for date tokens are: the message cache and one more conversion.
pub struct Dates<'x> {
    cache: &'x JmesCache,
    extra: Option<&'x Converted>,
}

impl<'x> Dates<'x> {
    /// Dates of the cache's conversions and of `extra`.
    pub fn new(cache: &'x JmesCache, extra: Option<&'x Converted>) -> Self {
        Dates { cache, extra }
    }

    fn find(&self, variable: &Rcvar) -> Option<JsonDate> {
        let address = Arc::as_ptr(variable) as usize;
        let lookup = |dates: &[(usize, JsonDate)]| {
            dates
                .iter()
                .find(|(known, _)| *known == address)
                .map(|(_, date)| date.clone())
        };
        self.extra.and_then(|converted| lookup(&converted.dates)).or_else(|| {
            self.cache
                .entries
                .borrow()
                .iter()
                .find_map(|(_, converted)| lookup(&converted.dates))
        })
    }
}

/// Converts a token to the crate's variable type. A date becomes its source text, remembered in
/// `dates`; numbers keep integer-ness (big integers become doubles, as JMESPath numbers are).
fn to_variable(token: &JToken, dates: &mut Vec<(usize, JsonDate)>) -> Rcvar {
    match token {
        JToken::Date(date) => {
            let variable = Arc::new(Variable::String(date.source().to_string()));
            dates.push((Arc::as_ptr(&variable) as usize, (**date).clone()));
            variable
        }
        JToken::Array(items) => Arc::new(Variable::Array(
            items.iter().map(|item| to_variable(item, dates)).collect(),
        )),
        JToken::Object(object) => Arc::new(Variable::Object(
            object
                .iter()
                .map(|(key, value)| (key.to_string(), to_variable(value, dates)))
                .collect(),
        )),
        JToken::Null => Arc::new(Variable::Null),
        JToken::Bool(value) => Arc::new(Variable::Bool(*value)),
        JToken::Integer(value) => Arc::new(Variable::Number(Number::from(*value))),
        JToken::BigInteger(digits) => Arc::new(
            digits
                .parse::<f64>()
                .ok()
                .and_then(Number::from_f64)
                .map_or(Variable::Null, Variable::Number),
        ),
        JToken::Float(value) => Arc::new(Number::from_f64(*value).map_or(Variable::Null, Variable::Number)),
        JToken::String(value) => Arc::new(Variable::String(value.to_string())),
    }
}

/// Converts a result back to a token. A string is a date exactly when it is one of the data's
/// dates or one a custom function made.
fn from_variable(variable: &Rcvar, dates: &Dates<'_>, created: &[(Rcvar, JsonDate)]) -> JToken {
    match &**variable {
        Variable::Null | Variable::Expref(_) => JToken::Null,
        Variable::Bool(value) => JToken::Bool(*value),
        Variable::Number(number) => match number.as_i64() {
            Some(value) => JToken::Integer(value),
            None if number.is_u64() => JToken::BigInteger(number.to_string().into()),
            None => JToken::Float(number.as_f64().unwrap_or(f64::NAN)),
        },
        Variable::String(value) => {
            let date = dates.find(variable).or_else(|| {
                created
                    .iter()
                    .find(|(made, _)| Arc::ptr_eq(made, variable))
                    .map(|(_, date)| date.clone())
            });
            match date {
                Some(date) => JToken::Date(Box::new(date)),
                None => JToken::string(value.as_str()),
            }
        }
        Variable::Array(items) => JToken::Array(items.iter().map(|item| from_variable(item, dates, created)).collect()),
        Variable::Object(map) => JToken::Object(
            map.iter()
                .map(|(key, value)| (key.clone(), from_variable(value, dates, created)))
                .collect(),
        ),
    }
}

/// The root members `ast` reads when evaluated at the root, or `None` if it may read the root
/// as a whole (`@`, a wildcard or slice of it). Sub-expressions and projections read their right
/// side from the left side's result, and expression references from function-supplied values,
/// so only the left sides and function arguments are evaluated at the root.
fn root_fields(ast: &Ast) -> Option<Vec<String>> {
    let mut fields = Vec::new();
    let mut pending = vec![ast];
    while let Some(node) = pending.pop() {
        match node {
            Ast::Field { name, .. } => fields.push(name.clone()),
            Ast::Subexpr { lhs, .. } | Ast::Projection { lhs, .. } => pending.push(lhs),
            Ast::Flatten { node, .. } | Ast::Not { node, .. } => pending.push(node),
            Ast::Comparison { lhs, rhs, .. } | Ast::And { lhs, rhs, .. } | Ast::Or { lhs, rhs, .. } => {
                pending.extend([&**lhs, &**rhs])
            }
            Ast::Condition { predicate, then, .. } => pending.extend([&**predicate, &**then]),
            Ast::Function { args, .. } | Ast::MultiList { elements: args, .. } => pending.extend(args),
            Ast::MultiHash { elements, .. } => pending.extend(elements.iter().map(|kv| &kv.value)),
            Ast::Literal { .. } | Ast::Expref { .. } | Ast::Index { .. } => {}
            Ast::Identity { .. } | Ast::ObjectValues { .. } | Ast::Slice { .. } => return None,
        }
    }
    Some(fields)
}

/// Collects fields whose absence makes `ast` yield `null` or an empty projection. Field access,
/// sub-expressions, projections and flattens propagate `null`; anything else (functions,
/// multi-selects, literals, boolean operators) may produce a value without the data, so it adds
/// nothing.
fn needed_fields(ast: &Ast, keys: &mut Vec<String>) {
    match ast {
        Ast::Field { name, .. } => keys.push(name.clone()),
        Ast::Subexpr { lhs, rhs, .. } | Ast::Projection { lhs, rhs, .. } => {
            needed_fields(lhs, keys);
            needed_fields(rhs, keys);
        }
        Ast::Flatten { node, .. } | Ast::ObjectValues { node, .. } => needed_fields(node, keys),
        Ast::Condition { predicate, then, .. } => {
            // A bare field (or path) predicate is a truthiness test, so the field must exist.
            if matches!(**predicate, Ast::Field { .. } | Ast::Subexpr { .. }) {
                needed_fields(predicate, keys);
            }
            needed_fields(then, keys);
        }
        _ => {}
    }
}

/// JmesPath.Net marks list/object wildcards, slices, filters and flattens as projections. The
/// crate folds `a[*].b` into the projection and parses pipes as sub-expressions, so a
/// sub-expression is a projection exactly when its right side is (a pipe ends a projection).
fn is_projection(ast: &Ast) -> bool {
    match ast {
        Ast::Projection { .. } | Ast::Flatten { .. } => true,
        Ast::Subexpr { rhs, .. } => is_projection(rhs),
        _ => false,
    }
}

/// Rewrites backtick literals that are not JSON (`` `heartRate` ``) as JSON strings. JmesPath.Net,
/// like the reference implementation, reads them as strings, and MedTech's documented templates
/// rely on it; the `jmespath` crate accepts only JSON.
fn quote_bare_literals(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(ch) = chars.next() {
        match quote {
            Some(open) => {
                out.push(ch);
                if ch == '\\' {
                    out.extend(chars.next());
                } else if ch == open {
                    quote = None;
                }
            }
            None if ch == '`' => {
                let mut content = String::new();
                let mut closed = false;
                while let Some(next) = chars.next() {
                    match next {
                        '\\' if chars.peek() == Some(&'`') => content.push(chars.next().unwrap_or('`')),
                        '`' => {
                            closed = true;
                            break;
                        }
                        other => content.push(other),
                    }
                }
                if !closed || serde_json::from_str::<serde_json::Value>(&content).is_ok() {
                    // Valid JSON (or unterminated, left for the parser to report) stays as written.
                    out.push('`');
                    out.push_str(&content.replace('`', "\\`"));
                    if closed {
                        out.push('`');
                    }
                } else {
                    let json = serde_json::Value::String(content.trim().to_string()).to_string();
                    out.push('`');
                    out.push_str(&json.replace('`', "\\`"));
                    out.push('`');
                }
            }
            None => {
                if ch == '\'' || ch == '"' {
                    quote = Some(ch);
                }
                out.push(ch);
            }
        }
    }
    out
}

fn check_size(text: &str) -> Result<(), String> {
    if text.len() > MAX_EXPRESSION_LENGTH {
        return Err(format!(
            "Expressions longer than {MAX_EXPRESSION_LENGTH} characters are not accepted."
        ));
    }
    let (mut depth, mut deepest, mut prefixes) = (0usize, 0usize, 0usize);
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for ch in text.chars() {
        if let Some(open) = quote {
            if escaped {
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == open {
                quote = None;
            }
            continue;
        }
        match ch {
            '\'' | '"' | '`' => quote = Some(ch),
            '(' | '[' | '{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            '!' | '&' => prefixes += 1,
            _ => {}
        }
    }
    if deepest > MAX_NESTING || prefixes > MAX_NESTING * 2 {
        return Err(format!(
            "Expressions nested deeper than {MAX_NESTING} levels are not accepted."
        ));
    }
    Ok(())
}

/// The interpreter recurses once per AST level; a bounded depth keeps it off the stack's edge.
fn check_depth(ast: &Ast) -> Result<(), String> {
    let mut pending = vec![(ast, 1usize)];
    while let Some((node, depth)) = pending.pop() {
        if depth > MAX_AST_DEPTH {
            return Err(format!(
                "Expressions nested deeper than {MAX_AST_DEPTH} levels are not accepted."
            ));
        }
        pending.extend(children(node).into_iter().map(|child| (child, depth + 1)));
    }
    Ok(())
}

fn children(node: &Ast) -> Vec<&Ast> {
    match node {
        Ast::Comparison { lhs, rhs, .. }
        | Ast::Projection { lhs, rhs, .. }
        | Ast::And { lhs, rhs, .. }
        | Ast::Or { lhs, rhs, .. }
        | Ast::Subexpr { lhs, rhs, .. } => vec![&**lhs, &**rhs],
        Ast::Condition { predicate, then, .. } => vec![&**predicate, &**then],
        Ast::Expref { ast, .. } => vec![&**ast],
        Ast::Flatten { node, .. } | Ast::Not { node, .. } | Ast::ObjectValues { node, .. } => vec![&**node],
        Ast::Function { args, .. } | Ast::MultiList { elements: args, .. } => args.iter().collect(),
        Ast::MultiHash { elements, .. } => elements.iter().map(|kv| &kv.value).collect(),
        Ast::Identity { .. } | Ast::Field { .. } | Ast::Index { .. } | Ast::Literal { .. } | Ast::Slice { .. } => {
            Vec::new()
        }
    }
}

fn check_functions(ast: &Ast) -> Result<(), String> {
    let mut pending = vec![ast];
    while let Some(node) = pending.pop() {
        if let Ast::Function { name, args, .. } = node {
            let arity = match Custom::named(name) {
                Some(custom) => Some((custom.arity(), Some(custom.arity()))),
                None => BUILTIN_ARITY
                    .iter()
                    .find(|(known, ..)| known == name)
                    .map(|&(_, min, max)| (min, max)),
            };
            let Some((min, max)) = arity else {
                return Err(format!("Unknown function: {name}."));
            };
            if args.len() < min || max.is_some_and(|max| args.len() > max) {
                let expected = match max {
                    Some(max) if max == min => format!("{min}"),
                    Some(max) => format!("{min} to {max}"),
                    None => format!("at least {min}"),
                };
                return Err(format!(
                    "Function {name} expects {expected} argument(s), got {}.",
                    args.len()
                ));
            }
        }
        pending.extend(children(node));
    }
    Ok(())
}

fn describe(error: &jmespath::JmespathError) -> String {
    match &error.reason {
        ErrorReason::Parse(message) => format!("{message} (column {}).", error.column + 1),
        ErrorReason::Runtime(runtime) => format!("{runtime}."),
    }
}

/// Runtime errors: custom functions carry their exact message in a `Parse` reason.
fn runtime_message(error: &jmespath::JmespathError) -> String {
    match &error.reason {
        ErrorReason::Parse(message) => message.clone(),
        ErrorReason::Runtime(runtime) => {
            format!("Error evaluating JmesPath expression {}: {runtime}.", error.expression)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::parse_token;

    fn eval(expression: &str, data: &str) -> Result<Vec<String>, ExpressionError> {
        let compiled = JmesPath::compile(expression)?;
        let data = parse_token(data).unwrap();
        let converted = Converted::of(&data);
        let cache = JmesCache::default();
        Ok(compiled
            .evaluate(converted.variable(), &Dates::new(&cache, Some(&converted)))?
            .into_iter()
            .map(|selected| selected.as_token().unwrap().to_json())
            .collect())
    }

    #[test]
    fn projections_yield_each_element_and_other_results_one_token() {
        let data = r#"{"a":[{"hr":1},{"x":2},{"hr":3}],"n":null}"#;
        assert_eq!(eval("a[*].hr", data).unwrap(), vec!["1", "3"]);
        assert_eq!(eval("a[?hr]", data).unwrap(), vec![r#"{"hr":1}"#, r#"{"hr":3}"#]);
        assert_eq!(eval("a", data).unwrap(), vec![r#"[{"hr":1},{"x":2},{"hr":3}]"#]);
        assert_eq!(eval("a[*].hr | [0]", data).unwrap(), vec!["1"]);
        assert_eq!(eval("to_array(@)[?a]", data).unwrap().len(), 1);
        assert_eq!(eval("[a][?contains(keys(@[0]), `hr`)] | @[0]", data).unwrap().len(), 1);
        assert!(eval("n", data).unwrap().is_empty());
        assert!(eval("missing", data).unwrap().is_empty());
        assert!(eval("a[*].missing", data).unwrap().is_empty());
    }

    /// The direct filter projection selects what the crate selects (members here are in
    /// alphabetical order, the only order the crate's objects keep), singly and as a list.
    #[test]
    fn string_filters_are_evaluated_directly_as_the_crate_evaluates_them() {
        use crate::expr::Expression;
        let data = parse_token(
            r#"{"Body":{"readings":[{"pounds":150.5,"type":"weight"},{"type":"height"},null,5,"weight",
                {"kind":{"name":"weight"},"type":"2019-02-01T22:46:01Z"},{"pounds":1,"type":"weight"}],
                "one":[{"type":"weight"}],"notArray":{"type":"weight"}},"matchedToken":"shadowed"}"#,
        )
        .unwrap();
        let cases = [
            "Body.readings[?type == 'weight']",
            "Body.readings[?'weight' == type]",
            "Body.readings[?type != 'weight']",
            "Body.readings[?kind.name == 'weight']",
            "Body.readings[?type == '2019-02-01T22:46:01Z']",
            "Body.readings[?type == `\"height\"`]",
            "Body.one[?type == 'weight']",
            "Body.notArray[?type == 'weight']",
            "Body.missing[?type == 'weight']",
        ];
        let matched = parse_token(r#"{"readings":[{"type":"weight"},{"type":"weight"}]}"#).unwrap();
        let cache = JmesCache::default();
        for (expression, scope) in cases
            .iter()
            .map(|expression| (expression.to_string(), Scope::new(&data)))
            .chain([(
                "matchedToken.readings[?type == 'weight']".to_string(),
                Scope::with_matched_token(&data, &matched, &cache),
            )])
        {
            let path = JmesPath::compile(&expression).unwrap();
            assert!(path.filter.is_some(), "{expression} is evaluated directly");
            let json = |selection: Selection<'_>| -> Vec<String> {
                selection
                    .into_iter()
                    .map(|selected| selected.as_token().unwrap().to_json())
                    .collect()
            };
            let crate_all = json(
                scope
                    .with_jmes_root(&path, |root, dates| path.evaluate(root, dates))
                    .unwrap(),
            );
            assert_eq!(
                json(path.select_direct_all(&scope).unwrap().unwrap()),
                crate_all,
                "{expression}"
            );
            let crate_one = scope
                .with_jmes_root(&path, |root, dates| path.select_one(root, dates))
                .map(|token| token.map(|token| token.to_json()));
            let direct_one = path
                .select_direct(&scope)
                .unwrap()
                .map(|token| token.map(|token| token.to_json()));
            assert_eq!(direct_one, crate_one, "{expression}");
            let expression = Expression::JmesPath(path);
            assert_eq!(
                expression.select_tokens(&scope).unwrap().len(),
                crate_all.len(),
                "{expression:?}"
            );
        }
        for expression in [
            "Body.readings[?pounds > `1`]",
            "Body.readings[?type == `1`]",
            "Body.readings[?type]",
            "Body.readings[*]",
        ] {
            assert!(JmesPath::compile(expression).unwrap().filter.is_none(), "{expression}");
        }
    }

    #[test]
    fn keeps_integers_floats_and_dates() {
        let data = r#"{"i":65,"f":65.5,"d":"2019-02-01T22:46:01Z"}"#;
        assert_eq!(eval("i", data).unwrap(), vec!["65"]);
        assert_eq!(eval("f", data).unwrap(), vec!["65.5"]);
        let compiled = JmesPath::compile("d").unwrap();
        let data = parse_token(data).unwrap();
        let converted = Converted::of(&data);
        let cache = JmesCache::default();
        let tokens = compiled
            .evaluate(converted.variable(), &Dates::new(&cache, Some(&converted)))
            .unwrap()
            .into_iter()
            .collect::<Vec<_>>();
        assert!(matches!(tokens[0].as_token(), Some(JToken::Date(_))));
    }

    #[test]
    fn root_fields_are_found_or_unknown() {
        let fields = |expression: &str| {
            JmesPath::compile(expression)
                .unwrap()
                .root_fields()
                .map(<[String]>::to_vec)
        };
        assert_eq!(fields("matchedToken.ts"), Some(vec!["matchedToken".to_string()]));
        assert_eq!(
            fields("divide(multiply(subtract(matchedToken.f, `32`), `5`), Body.x)"),
            Some(vec!["Body".to_string(), "matchedToken".to_string()])
        );
        assert_eq!(
            fields("Body.readings[?type == 'weight'].v"),
            Some(vec!["Body".to_string()])
        );
        assert_eq!(fields("sort_by(Body.items, &value)"), Some(vec!["Body".to_string()]));
        assert_eq!(fields("to_array(@)[?heartrate]"), None);
        assert_eq!(fields("keys(@)"), None);
        assert_eq!(fields("*.x"), None);
    }

    #[test]
    fn bare_literals_are_strings() {
        let data = r#"{"Body":{"heartRate":78,"deviceId":"d1"}}"#;
        assert_eq!(
            eval("[Body][?contains(keys(@), `heartRate`)] | @[0].deviceId", data).unwrap(),
            vec![r#""d1""#]
        );
        assert_eq!(eval("`\"quoted\"`", data).unwrap(), vec![r#""quoted""#]);
        assert_eq!(eval("`[1, 2]`", data).unwrap(), vec!["[1,2]"]);
        assert_eq!(quote_bare_literals("'`x`' && `y`"), "'`x`' && `\"y\"`");
    }

    #[test]
    fn rejects_bad_expressions_at_compile_time() {
        for expression in ["a[", "nosuch(@)", "abs(`1`, `2`)", "add(`1`)", "insertString('a', 'b')"] {
            let error = JmesPath::compile(expression).unwrap_err();
            assert!(
                error
                    .to_string()
                    .starts_with("The following JmesPath expression could not be parsed: "),
                "{expression}: {error}"
            );
        }
    }

    #[test]
    fn hostile_expressions_are_rejected_not_crashed() {
        let deep = "(".repeat(10_000) + "a" + &")".repeat(10_000);
        assert!(JmesPath::compile(&deep).is_err());
        let nots = "!".repeat(100_000) + "a";
        assert!(JmesPath::compile(&nots).is_err());
        let chain = vec!["a"; 2000].join(".");
        assert!(JmesPath::compile(&chain).is_err());
        let chain = vec!["a"; 100].join(".");
        let compiled = JmesPath::compile(&chain).unwrap();
        let converted = Converted::of(&JToken::Null);
        let cache = JmesCache::default();
        let result = compiled
            .evaluate(converted.variable(), &Dates::new(&cache, None))
            .unwrap();
        assert!(result.is_empty());
    }
}
