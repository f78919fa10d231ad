//! Walking marked-yaml nodes: positions, `${VAR}` interpolation, typed values with their
//! origin, and unknown-key reporting. Every problem is pushed onto [`Ctx`] and parsing goes
//! on, so the operator sees all of them at once.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use marked_yaml::Node;
use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode, Marker};

use crate::{ConfigError, ConfigErrors, Lookup, Origin};

// === Ctx ===

/// Everything one load needs: where the file is, how to read the environment, and the
/// problems found so far.
pub(super) struct Ctx<'e> {
    pub file: Arc<Path>,
    /// Directory of the config file: relative paths in it are relative to this.
    pub dir: PathBuf,
    pub env: &'e dyn Lookup,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<ConfigError>,
    /// Named policies loaded from `policies_dir`, for routes' `policy: <name>`.
    pub named_policies: Vec<crate::NamedPolicy>,
    /// Policy files that had errors (already reported), by name.
    pub broken_policies: Vec<String>,
    /// Loading for an offline tool (`policy explain`, `policy test`): secrets are not
    /// needed, so unset ones are not errors.
    pub offline: bool,
}

impl<'e> Ctx<'e> {
    pub(super) fn new(file: &Path, env: &'e dyn Lookup) -> Self {
        let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        Ctx {
            file: Arc::from(file),
            dir,
            env,
            errors: Vec::new(),
            warnings: Vec::new(),
            named_policies: Vec::new(),
            broken_policies: Vec::new(),
            offline: false,
        }
    }

    /// The file as a whole (line 0): for keys that are missing rather than wrong.
    pub(super) fn whole_file(&self) -> Origin {
        Origin::File {
            file: self.file.clone(),
            line: 0,
            col: 0,
        }
    }

    pub(super) fn at(&self, marker: Option<&Marker>) -> Origin {
        match marker {
            Some(m) => Origin::File {
                file: self.file.clone(),
                line: m.line(),
                col: m.column(),
            },
            None => self.whole_file(),
        }
    }

    /// Where a node starts. A block mapping's own marker points past its first key, so a
    /// mapping is placed at whichever comes first: its marker or its first key.
    pub(super) fn node_origin(&self, node: &Node) -> Origin {
        let start = node.span().start().copied();
        let start = match node.as_mapping().and_then(|m| m.keys().next()) {
            Some(key) => match (start, key.span().start().copied()) {
                (Some(a), Some(b)) => Some(if (b.line(), b.column()) < (a.line(), a.column()) {
                    b
                } else {
                    a
                }),
                (a, b) => a.or(b),
            },
            None => start,
        };
        self.at(start.as_ref())
    }

    pub(super) fn error(&mut self, origin: Origin, message: impl Into<String>) {
        self.errors.push(ConfigError::new(origin, message));
    }

    pub(super) fn warn(&mut self, origin: Origin, message: impl Into<String>) {
        self.warnings.push(ConfigError::new(origin, message));
    }

    /// Reports `Err(message)` as `path: message` at `origin`.
    pub(super) fn check<T>(
        &mut self,
        origin: &Origin,
        path: &str,
        result: Result<T, String>,
    ) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(message) => {
                self.error(origin.clone(), format!("{path}: {message}"));
                None
            }
        }
    }

    /// All problems, in the order an operator reads a file: by file, line and column, then
    /// the environment variables.
    pub(super) fn into_errors(mut self) -> ConfigErrors {
        sort(&mut self.errors);
        ConfigErrors {
            errors: self.errors,
        }
    }

    pub(super) fn take_warnings(&mut self) -> Vec<ConfigError> {
        let mut warnings = std::mem::take(&mut self.warnings);
        sort(&mut warnings);
        warnings
    }

    // === keys ===

    /// An unknown key, with the closest known one when it is close enough.
    pub(super) fn unknown_key(&mut self, entry: &Entry<'_>, parent: &str, candidates: &[&str]) {
        let place = if parent.is_empty() {
            String::new()
        } else {
            format!(" in {parent}")
        };
        let hint = match closest(entry.key, candidates) {
            Some(best) => format!("; did you mean `{best}`?"),
            None => "; check the spelling or remove it".to_string(),
        };
        self.error(
            entry.key_origin.clone(),
            format!("unknown key `{}`{place}{hint}", entry.key),
        );
    }

    /// Reads the setting `names[0]` (its Pomerium alias, if any, is `names[1]`), from its
    /// upper-case environment variable if set (Pomerium behaviour: the environment wins),
    /// else from the file. Giving both a name and its alias in one place is an error.
    pub(super) fn setting<'n>(
        &mut self,
        fields: &mut Fields<'n>,
        names: &[&str],
    ) -> Option<Setting<'n>> {
        let mut from_env: Vec<(String, String)> = Vec::new();
        for name in names {
            let var = name.to_ascii_uppercase();
            // Empty counts as unset, as in Pomerium (viper without AllowEmptyEnv).
            if let Some(value) = self.env.get(&var).filter(|v| !v.is_empty()) {
                from_env.push((var, value));
            }
        }
        let mut in_file: Vec<Entry<'n>> = names.iter().filter_map(|n| fields.take(n)).collect();
        in_file.sort_by_key(|e| position(&e.key_origin));
        if let [first, second, ..] = in_file.as_slice() {
            self.error(
                second.key_origin.clone(),
                format!(
                    "`{}` and `{}` ({}) are the same setting; keep only one",
                    second.key,
                    first.key,
                    line_of(&first.key_origin),
                ),
            );
        }
        if let [(first, _), (second, _), ..] = from_env.as_slice() {
            self.error(
                Origin::Env {
                    var: second.clone(),
                },
                format!(
                    "{first} and {second} are both set and are the same setting ({}); set only one",
                    names[0],
                ),
            );
        }
        if let Some((var, value)) = from_env.into_iter().next() {
            return Some(Setting {
                path: var.to_ascii_lowercase(),
                origin: Origin::Env { var },
                src: Source::Env(value),
            });
        }
        in_file.into_iter().next().map(Setting::file)
    }

    // === values ===

    /// The text of a scalar, after `${VAR}` interpolation. `None` (with an error pushed) for
    /// a list, a map or a missing variable. A YAML null (`key:`, `~`) is the empty string.
    pub(super) fn scalar(&mut self, path: &str, node: &Node, origin: &Origin) -> Option<Text> {
        let scalar = match node {
            Node::Scalar(s) => s,
            Node::Sequence(_) => {
                self.error(
                    origin.clone(),
                    format!("{path}: expected a single value, found a list"),
                );
                return None;
            }
            Node::Mapping(_) => {
                self.error(
                    origin.clone(),
                    format!("{path}: expected a single value, found a map"),
                );
                return None;
            }
        };
        if is_null(scalar) {
            return Some(Text {
                value: String::new(),
                origin: origin.clone(),
            });
        }
        let value = self.interpolate(path, scalar.as_str(), origin)?;
        Some(Text {
            value,
            origin: origin.clone(),
        })
    }

    /// Replaces `${VAR}` through the lookup; `$${` is a literal `${`. Never puts a value in
    /// a message.
    pub(super) fn interpolate(
        &mut self,
        path: &str,
        text: &str,
        origin: &Origin,
    ) -> Option<String> {
        match interpolate(text, self.env) {
            Ok(value) => Some(value),
            Err(problems) => {
                for problem in problems {
                    let message = match problem {
                        Interpolation::NotSet(var) => {
                            format!("`{var}` is not set (used in {path})")
                        }
                        Interpolation::Unclosed => format!(
                            "{path}: `${{` without a closing `}}`; write `${{NAME}}` to use an \
                             environment variable, or `$${{` for a literal `${{`"
                        ),
                        Interpolation::BadName => format!(
                            "{path}: `${{…}}` must hold a variable name (letters, digits and `_`, \
                             not starting with a digit); write `$${{` for a literal `${{`"
                        ),
                    };
                    self.error(origin.clone(), message);
                }
                None
            }
        }
    }

    pub(super) fn text(&mut self, setting: &Setting<'_>) -> Option<Text> {
        match &setting.src {
            Source::File(entry) => self.scalar(&setting.path, entry.node, &entry.origin),
            Source::Env(value) => Some(Text {
                value: value.clone(),
                origin: setting.origin.clone(),
            }),
        }
    }

    /// A non-empty value: an empty one is reported as `path must not be empty`.
    pub(super) fn non_empty(&mut self, setting: &Setting<'_>) -> Option<Text> {
        let text = self.text(setting)?;
        if text.value.trim().is_empty() {
            self.error(text.origin, format!("{}: must not be empty", setting.path));
            return None;
        }
        Some(text)
    }

    /// A list: a YAML sequence of single values, or one string split by `split` (the form
    /// environment variables always take: `ALLOWED_DOMAINS=a.com,b.com`).
    pub(super) fn list(
        &mut self,
        setting: &Setting<'_>,
        split: fn(&str) -> Vec<&str>,
    ) -> Option<Vec<Text>> {
        let node = match &setting.src {
            Source::File(entry) => entry.node,
            Source::Env(value) => {
                return Some(
                    split(value)
                        .into_iter()
                        .map(|v| Text {
                            value: v.to_string(),
                            origin: setting.origin.clone(),
                        })
                        .collect(),
                );
            }
        };
        match node {
            Node::Sequence(items) => {
                let mut out = Vec::new();
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    let origin = self.node_origin(item);
                    match self.scalar(&format!("{}[{i}]", setting.path), item, &origin) {
                        Some(text) if !text.value.trim().is_empty() => out.push(text),
                        Some(text) => {
                            self.error(
                                text.origin,
                                format!("{}[{i}]: must not be empty", setting.path),
                            );
                            ok = false;
                        }
                        None => ok = false,
                    }
                }
                ok.then_some(out)
            }
            Node::Scalar(_) => {
                let text = self.text(setting)?;
                Some(
                    split(&text.value)
                        .into_iter()
                        .map(|v| Text {
                            value: v.to_string(),
                            origin: text.origin.clone(),
                        })
                        .collect(),
                )
            }
            Node::Mapping(_) => {
                let origin = self.node_origin(node);
                self.error(
                    origin,
                    format!("{}: expected a list, found a map", setting.path),
                );
                None
            }
        }
    }

    /// `true` or `false` (any case). YAML 1.1's `yes`/`on` are refused: they read as
    /// strings in YAML 1.2 and in Pomerium.
    pub(super) fn flag(&mut self, setting: &Setting<'_>) -> Option<bool> {
        let text = self.text(setting)?;
        match text.value.trim().to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => {
                let shown = if setting.is_env() {
                    String::new()
                } else {
                    format!("`{}` ", text.value)
                };
                self.error(
                    text.origin,
                    format!("{}: {shown}must be true or false", setting.path),
                );
                None
            }
        }
    }
}

// === Entry, Fields, Setting, Text ===

/// One `key: value` of a YAML mapping.
#[derive(Clone)]
pub(super) struct Entry<'n> {
    pub key: &'n str,
    pub key_origin: Origin,
    pub node: &'n Node,
    /// Where the value starts; the key's position when the value is empty (marked-yaml
    /// places an empty value at the next token, often on a later line).
    pub origin: Origin,
    /// Key path for messages: `routes[1].from`.
    pub path: String,
}

/// The entries of one mapping, taken one by one; what is left at the end is unknown.
pub(super) struct Fields<'n> {
    entries: Vec<Option<Entry<'n>>>,
}

impl<'n> Fields<'n> {
    pub(super) fn new(ctx: &Ctx<'_>, parent: &str, map: &'n MarkedMappingNode) -> Self {
        let entries = map
            .iter()
            .map(|(key, node)| {
                let key_origin = ctx.at(key.span().start());
                let origin = match node {
                    Node::Scalar(s) if s.as_str().is_empty() => key_origin.clone(),
                    _ => ctx.node_origin(node),
                };
                let path = if parent.is_empty() {
                    key.as_str().to_string()
                } else {
                    format!("{parent}.{}", key.as_str())
                };
                Some(Entry {
                    key: key.as_str(),
                    key_origin,
                    node,
                    origin,
                    path,
                })
            })
            .collect();
        Fields { entries }
    }

    pub(super) fn take(&mut self, key: &str) -> Option<Entry<'n>> {
        self.entries
            .iter_mut()
            .find(|e| e.as_ref().is_some_and(|e| e.key == key))?
            .take()
    }

    /// The keys nobody took.
    pub(super) fn rest(self) -> impl Iterator<Item = Entry<'n>> {
        self.entries.into_iter().flatten()
    }
}

pub(super) enum Source<'n> {
    File(Entry<'n>),
    /// The raw value of an environment variable (no `${}` interpolation).
    Env(String),
}

/// A value with its path and origin, from the file or from the environment.
pub(super) struct Setting<'n> {
    pub path: String,
    pub origin: Origin,
    pub src: Source<'n>,
}

impl<'n> Setting<'n> {
    pub(super) fn file(entry: Entry<'n>) -> Self {
        Setting {
            path: entry.path.clone(),
            origin: entry.origin.clone(),
            src: Source::File(entry),
        }
    }

    pub(super) fn is_env(&self) -> bool {
        matches!(self.src, Source::Env(_))
    }

    /// Whether every `${VAR}` in the value is set (a value from the environment always is).
    pub(super) fn resolves(&self, env: &dyn Lookup) -> bool {
        match &self.src {
            Source::File(entry) => match entry.node {
                Node::Scalar(s) => interpolate(s.as_str(), env).is_ok(),
                _ => true,
            },
            Source::Env(_) => true,
        }
    }
}

/// A single value after interpolation, with where it came from.
#[derive(Clone, Debug)]
pub(super) struct Text {
    pub value: String,
    pub origin: Origin,
}

// === helpers ===

/// Splits on commas (environment lists, `ALLOWED_DOMAINS=a.com,b.com`).
pub(super) fn split_commas(s: &str) -> Vec<&str> {
    s.split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect()
}

/// Splits on commas and white space (`idp_scopes: openid email profile`).
pub(super) fn split_words(s: &str) -> Vec<&str> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|v| !v.is_empty())
        .collect()
}

fn is_null(scalar: &MarkedScalarNode) -> bool {
    // With `prevent_coercion`, `may_coerce` is true exactly for plain (unquoted) scalars.
    scalar.may_coerce() && matches!(scalar.as_str(), "" | "~" | "null" | "Null" | "NULL")
}

fn position(origin: &Origin) -> (usize, usize) {
    match origin {
        Origin::File { line, col, .. } => (*line, *col),
        _ => (usize::MAX, usize::MAX),
    }
}

fn line_of(origin: &Origin) -> String {
    match origin {
        Origin::File { line, .. } => format!("line {line}"),
        other => other.to_string(),
    }
}

fn sort(errors: &mut [ConfigError]) {
    errors.sort_by(|a, b| sort_key(&a.origin).cmp(&sort_key(&b.origin)));
}

fn sort_key(origin: &Origin) -> (u8, &Path, usize, usize, &str) {
    match origin {
        Origin::File { file, line, col } => (0, file, *line, *col, ""),
        Origin::Env { var } => (1, Path::new(""), 0, 0, var),
        Origin::Default => (2, Path::new(""), 0, 0, ""),
    }
}

/// The known key closest to `word`, if it is close enough to be a likely typo.
pub(super) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(&word, c), *c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Interpolation {
    /// `${NAME}` with `NAME` not set.
    NotSet(String),
    /// `${` with no `}` after it.
    Unclosed,
    /// `${…}` whose inside is not a variable name.
    BadName,
}

/// `${NAME}` → the value of `NAME`; `$${` → a literal `${`; any other `$` is kept.
pub(super) fn interpolate(text: &str, env: &dyn Lookup) -> Result<String, Vec<Interpolation>> {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let Some(end) = after.find('}') else {
                problems.push(Interpolation::Unclosed);
                rest = "";
                break;
            };
            let name = &after[..end];
            if is_var_name(name) {
                match env.get(name) {
                    Some(value) => out.push_str(&value),
                    None => problems.push(Interpolation::NotSet(name.to_string())),
                }
            } else {
                problems.push(Interpolation::BadName);
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
