//! Configuration: the TOML schema (serde `Raw*` types, `deny_unknown_fields`), its validation
//! into the typed runtime [`Config`], and error reports naming file, line, column and field.
//!
//! # How a file is checked
//!
//! 1. **Syntax.** toml parses the text into a span-preserving tree; every syntax error it can
//!    recover from is reported (one per line, since a broken line often yields follow-on
//!    noise), and checking stops there.
//! 2. **Shape.** serde maps the tree onto the `Raw*` types. Serde stops at its first error (an
//!    unknown key, a value of the wrong TOML type), so we report it, cut the offending entry out
//!    of the tree and deserialize again, until the shape is clean: the operator sees every
//!    shape mistake in one run, not one per run.
//! 3. **Meaning.** `validate` turns the `Raw*` values into [`Config`] and checks every rule
//!    (addresses, ranges, references between services and pools, clashes), collecting *all*
//!    errors. Errors about an entry cut out in step 2 are dropped, since they would only repeat
//!    it. Each error is placed on its value in the text, or on the enclosing table when the
//!    value is absent.
//!
//! The result is either a [`Config`] or a [`ConfigError`] listing every [`Diagnostic`], sorted
//! by position. Warnings (legal but probably unintended settings) never stop a config; get them
//! from [`parse_with_warnings`].

pub mod defaults;
mod raw;
mod span;
mod types;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use types::*;

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file, as given to [`load`] or [`parse`].
    pub file: PathBuf,
    /// 1-based; 0 when the problem concerns the whole file (it could not be read).
    pub line: usize,
    /// 1-based, counted in characters; 0 together with `line`.
    pub column: usize,
    /// Path of the field, e.g. `service[1].listen` or `pool.gateways.backends[0].weight`;
    /// empty for syntax errors and I/O errors, which belong to no field.
    pub field: String,
    /// What is wrong and, where it helps, what would be right.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    /// `FILE:LINE:COL: FIELD: MESSAGE`; the position is left out when `line` is 0 and the
    /// field when it is empty, so every line stays something an editor can jump to.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A configuration that cannot be used, with every reason found.
#[derive(Debug)]
pub struct ConfigError {
    /// Never empty; sorted by position in the file.
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for ConfigError {
    /// One line per diagnostic.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Read and validate a file. I/O errors become a [`ConfigError`] too (naming the file).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with_warnings(path).map(|(config, _)| config)
}

/// [`load`], also returning the warnings.
pub fn load_with_warnings(path: &Path) -> Result<(Config, Vec<Diagnostic>), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        diagnostics: vec![Diagnostic {
            file: path.to_owned(),
            line: 0,
            column: 0,
            field: String::new(),
            message: format!("cannot read the configuration file: {e}"),
        }],
    })?;
    parse_with_warnings(&text, path)
}

/// Validate text; `source` is only used in messages and stored in [`Config::source`].
pub fn parse(text: &str, source: &Path) -> Result<Config, ConfigError> {
    parse_with_warnings(text, source).map(|(config, _)| config)
}

/// [`parse`], also returning warnings: settings that are legal but probably not what was meant
/// (a health timeout not shorter than the interval, a small Maglev table, metrics listening
/// beyond loopback, a setting the service's protocol ignores). Same shape as errors.
pub fn parse_with_warnings(
    text: &str,
    source: &Path,
) -> Result<(Config, Vec<Diagnostic>), ConfigError> {
    validate::check(text, source)
}
