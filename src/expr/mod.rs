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


pub use self::jmespath::{JmesData, JmesPath};
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
            Expression::JmesPath(path) => path.evaluate(scope.jmes_data()),
        }
    }

    /// `SelectToken`: the one token the expression yields, `None` when nothing matches, an error
    /// when it yields several.
    pub fn select_token<'a>(&self, scope: &Scope<'a>) -> Result<Option<Selected<'a>>, ExpressionError> {
        match self {
            Expression::JsonPath(path) if path.is_field_path() => return Ok(path.select_fields(scope)),
            Expression::JmesPath(path) => {
                return Ok(path.select_one(scope.jmes_data())?.map(|token| Selected::Token(Cow::Owned(token))));
            }
            Expression::JsonPath(_) => {}
        }
        let mut tokens = self.select_tokens(scope)?.into_iter();
        let first = tokens.next();
        if tokens.next().is_some() {
            return Err(ExpressionError::MultipleTokens("Path returned multiple tokens.".to_string()));
        }
        Ok(first)
    }
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

/// Results selected by an expression, in order.
#[derive(Debug, Default)]
pub struct Selection<'a>(Vec<Selected<'a>>);

impl<'a> Selection<'a> {
    /// A selection of built tokens.
    pub fn owned(tokens: Vec<JToken>) -> Selection<'static> {
        Selection(tokens.into_iter().map(|token| Selected::Token(Cow::Owned(token))).collect())
    }

    /// A selection of results taken from the data.
    pub fn new(results: Vec<Selected<'a>>) -> Self {
        Selection(results)
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
    type IntoIter = std::vec::IntoIter<Selected<'a>>;

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
    root_view: Option<&'a OnceCell<JmesData>>,
    view: OnceCell<JmesData>,
}

impl<'a> Scope<'a> {
    /// Evaluate against `root` itself.
    pub fn new(root: &'a JToken) -> Self {
        Scope {
            root,
            root_property: None,
            matched: None,
            root_view: None,
            view: OnceCell::new(),
        }
    }

    /// Evaluate against `root` itself; `root_view` caches its JMESPath view across the
    /// templates applied to one message.
    pub fn cached(root: &'a JToken, root_view: &'a OnceCell<JmesData>) -> Self {
        Scope {
            root_view: Some(root_view),
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

    /// Evaluate against `root` with a `matchedToken` member added. `root_view` caches the
    /// JMESPath view of `root` across the matches of one message.
    pub fn with_matched_token(root: &'a JToken, matched: &'a JToken, root_view: &'a OnceCell<JmesData>) -> Self {
        Scope {
            root,
            root_property: None,
            matched: Some(matched),
            root_view: Some(root_view),
            view: OnceCell::new(),
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

    /// The JMESPath view of the scope, built on first use.
    fn jmes_data(&self) -> &JmesData {
        self.view.get_or_init(|| {
            let root = match self.root_view {
                Some(cache) => cache.get_or_init(|| JmesData::of(self.root)).clone(),
                None => JmesData::of(self.root),
            };
            match self.matched {
                Some(matched) => root.with_member(MATCHED_TOKEN, matched),
                None => root,
            }
        })
    }
}

/// The member CalculatedContent adds to the envelope for the token its type match selected.
pub const MATCHED_TOKEN: &str = "matchedToken";
