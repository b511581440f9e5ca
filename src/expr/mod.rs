//! Expression languages of the templates: JSONPath in Json.NET's dialect and JMESPath.
//!
//! Expressions are compiled once when a template loads and evaluated many times. Evaluation
//! takes a [`Scope`]: the data an expression sees, which for CalculatedContent is the envelope
//! plus a `matchedToken` member (compat.md §4.2). The scope builds the JMESPath view of the data
//! only when a JMESPath expression needs it.

mod functions;
mod jmespath;
pub mod jsonpath;

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use ::jmespath::{Rcvar, Variable};
use smallvec::SmallVec;

use self::jmespath::{Converted, Dates};
pub use self::jmespath::{JmesCache, JmesPath};
pub use self::jsonpath::JsonPath;
use crate::json::JToken;

/// The language of an expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// JSONPath, Json.NET dialect.
    JsonPath,
    /// JMESPath with the custom functions.
    JmesPath,
}

impl Language {
    /// Parses a language name case-insensitively (`JsonPath`, `JmesPath`).
    pub fn parse(name: &str) -> Option<Language> {
        if name.eq_ignore_ascii_case("JsonPath") {
            Some(Language::JsonPath)
        } else if name.eq_ignore_ascii_case("JmesPath") {
            Some(Language::JmesPath)
        } else {
            None
        }
    }
}

/// A compiled expression.
#[derive(Debug)]
pub enum Expression {
    /// A JSONPath expression.
    JsonPath(JsonPath),
    /// A JMESPath expression.
    JmesPath(JmesPath),
}

/// Why an expression could not be compiled or evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpressionError {
    /// The expression text is invalid.
    #[error("{0}")]
    Compile(String),
    /// Evaluation failed (a JMESPath function error, a JSONPath syntax error found at run time).
    #[error("{0}")]
    Evaluate(String),
    /// A single-valued use returned more than one token.
    #[error("{0}")]
    MultipleTokens(String),
}

impl Expression {
    /// Compiles `text` in `language`.
    pub fn compile(text: &str, language: Language) -> Result<Expression, ExpressionError> {
        match language {
            Language::JsonPath => JsonPath::compile(text).map(Expression::JsonPath),
            Language::JmesPath => JmesPath::compile(text).map(Expression::JmesPath),
        }
    }

    /// The expression text.
    pub fn as_str(&self) -> &str {
        match self {
            Expression::JsonPath(path) => path.as_str(),
            Expression::JmesPath(path) => path.as_str(),
        }
    }

    /// The language of the expression.
    pub fn language(&self) -> Language {
        match self {
            Expression::JsonPath(_) => Language::JsonPath,
            Expression::JmesPath(_) => Language::JmesPath,
        }
    }

    /// Member names that must occur somewhere in the data for the expression to select anything
    /// (necessary, not sufficient). Used to skip templates cheaply; `matchedToken` is not data.
    pub fn required_keys(&self) -> Vec<String> {
        match self {
            Expression::JsonPath(path) => path.required_keys(),
            Expression::JmesPath(path) => path.required_keys(),
        }
    }

    /// `SelectTokens`: every token the expression yields, in document order.
    pub fn select_tokens<'a>(&self, scope: &Scope<'a>) -> Result<Selection<'a>, ExpressionError> {
        match self {
            Expression::JsonPath(path) => path.select(scope),
            Expression::JmesPath(path) => match path.select_direct_all(scope) {
                Some(result) => result,
                None => scope.with_jmes_root(path, |root, dates| path.evaluate(root, dates)),
            },
        }
    }

    /// [`Expression::select_token`]'s answer for the common plain field paths (`$.a.b`, `a.b`),
    /// found without building a [`Selected`]: the token borrowed from the data, or nothing.
    /// [`FieldLookup::Other`] for the other expressions, which `select_token` answers.
    pub fn lookup_field<'a>(&self, scope: &Scope<'a>) -> FieldLookup<'a> {
        match self {
            Expression::JsonPath(path) => path.lookup_field(scope),
            Expression::JmesPath(path) => path.lookup_field(scope),
        }
    }

    /// `SelectToken`: the one token the expression yields, `None` when nothing matches, an error
    /// when it yields several.
    pub fn select_token<'a>(&self, scope: &Scope<'a>) -> Result<Option<Selected<'a>>, ExpressionError> {
        match self {
            Expression::JsonPath(path) if path.is_field_path() => return Ok(path.select_fields(scope)),
            Expression::JmesPath(path) => {
                if let Some(result) = path.select_direct(scope) {
                    return Ok(result?.map(Selected::Token));
                }
                let token = scope.with_jmes_root(path, |root, dates| path.select_one(root, dates))?;
                return Ok(token.map(|token| Selected::Token(Cow::Owned(token))));
            }
            Expression::JsonPath(_) => {}
        }
        let mut tokens = self.select_tokens(scope)?.into_iter();
        let first = tokens.next();
        if tokens.next().is_some() {
            return Err(ExpressionError::MultipleTokens(
                "Path returned multiple tokens.".to_string(),
            ));
        }
        Ok(first)
    }
}

/// What [`Expression::lookup_field`] found.
#[derive(Debug, Clone, Copy)]
pub enum FieldLookup<'a> {
    /// The token at the path.
    Found(&'a JToken),
    /// Nothing: `select_token` would yield `None`.
    Missing,
    /// The expression is not a plain field path; ask `select_token`.
    Other,
}

/// One result of an expression.
#[derive(Debug, Clone)]
pub enum Selected<'a> {
    /// A value: borrowed from the data (JSONPath) or built (JMESPath).
    Token(Cow<'a, JToken>),
    /// A property node `name: value`. Json.NET's JSONPath can select these (a filter applied to an
    /// object tests its properties); they are not values and cannot be converted to one.
    Property(&'a str, &'a JToken),
}

impl Selected<'_> {
    /// The value, unless this is a property node.
    pub fn as_token(&self) -> Option<&JToken> {
        match self {
            Selected::Token(token) => Some(token),
            Selected::Property(..) => None,
        }
    }
}

/// Results selected by an expression, in order. One result is kept inline.
#[derive(Debug, Default)]
pub struct Selection<'a>(SmallVec<[Selected<'a>; 1]>);

impl<'a> Selection<'a> {
    /// A selection of built tokens.
    pub fn owned(tokens: Vec<JToken>) -> Self {
        Selection(
            tokens
                .into_iter()
                .map(|token| Selected::Token(Cow::Owned(token)))
                .collect(),
        )
    }

    /// A selection of results taken from the data.
    pub fn new(results: Vec<Selected<'a>>) -> Self {
        Selection(SmallVec::from_vec(results))
    }

    /// Adds a result after the others.
    pub(crate) fn push(&mut self, result: Selected<'a>) {
        self.0.push(result);
    }

    /// The results, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Selected<'a>> {
        self.0.iter()
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when nothing was selected.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> IntoIterator for Selection<'a> {
    type Item = Selected<'a>;
    type IntoIter = smallvec::IntoIter<[Selected<'a>; 1]>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// The data an expression is evaluated against.
///
/// A token, a property node (when a JSONPath type match selected one), or (for
/// CalculatedContent) an object token with one extra member, `matchedToken`, appended after its
/// own members.
pub struct Scope<'a> {
    root: &'a JToken,
    root_property: Option<&'a str>,
    matched: Option<&'a JToken>,
    /// JMESPath conversions of the root's members, shared by the scopes of one message.
    shared: Option<&'a JmesCache>,
    /// Conversions owned by this scope: the root's members when nothing is shared.
    own: JmesCache,
    /// The JMESPath conversion of `matched`.
    matched_view: OnceCell<Converted>,
}

impl<'a> Scope<'a> {
    /// Evaluate against `root` itself.
    pub fn new(root: &'a JToken) -> Self {
        Scope {
            root,
            root_property: None,
            matched: None,
            shared: None,
            own: JmesCache::default(),
            matched_view: OnceCell::new(),
        }
    }

    /// Evaluate against `root` itself; `cache` keeps JMESPath conversions of the root's members
    /// across the templates applied to one message.
    pub fn cached(root: &'a JToken, cache: &'a JmesCache) -> Self {
        Scope {
            shared: Some(cache),
            ..Scope::new(root)
        }
    }

    /// Evaluate against a selected result: a token, or a property node.
    pub fn of_selected(selected: &'a Selected<'a>) -> Self {
        match selected {
            Selected::Token(token) => Scope::new(token),
            Selected::Property(name, value) => Scope {
                root_property: Some(name),
                ..Scope::new(value)
            },
        }
    }

    /// Evaluate against `root` with a `matchedToken` member added. `cache` keeps JMESPath
    /// conversions of the root's members across the matches and templates of one message.
    pub fn with_matched_token(root: &'a JToken, matched: &'a JToken, cache: &'a JmesCache) -> Self {
        Scope {
            matched: Some(matched),
            shared: Some(cache),
            ..Scope::new(root)
        }
    }

    /// The root token (without `matchedToken`); for a property node, its value.
    pub fn root(&self) -> &'a JToken {
        self.root
    }

    /// The property name when the scope is a property node.
    pub fn root_property(&self) -> Option<&'a str> {
        self.root_property
    }

    /// The token added as `matchedToken`, if any.
    pub fn matched(&self) -> Option<&'a JToken> {
        self.matched
    }

    /// Builds the JMESPath root for `path`, converting only the root members it reads (each at
    /// most once per message), and runs `run` on it.
    fn with_jmes_root<T>(&self, path: &JmesPath, run: impl FnOnce(&Rcvar, &Dates<'_>) -> T) -> T {
        let cache = self.shared.unwrap_or(&self.own);
        let matched = self
            .matched
            .map(|matched| self.matched_view.get_or_init(|| Converted::of(matched)));
        let dates = Dates::new(cache, matched);
        let JToken::Object(object) = self.root else {
            return run(&cache.convert(self.root), &dates);
        };
        let mut members = BTreeMap::new();
        let mut add = |name: &str| {
            if let (MATCHED_TOKEN, Some(matched)) = (name, matched) {
                members.insert(name.to_string(), matched.variable().clone());
            } else if let Some(value) = object.get(name) {
                members.insert(name.to_string(), cache.convert(value));
            }
        };
        match path.root_fields() {
            Some(fields) => fields.iter().for_each(|name| add(name)),
            None => {
                object.iter().for_each(|(name, _)| add(name));
                if matched.is_some() {
                    add(MATCHED_TOKEN);
                }
            }
        }
        run(&Arc::new(Variable::Object(members)), &dates)
    }
}

/// The member CalculatedContent adds to the envelope for the token its type match selected.
pub const MATCHED_TOKEN: &str = "matchedToken";
