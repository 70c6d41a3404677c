//! Configuration: the TOML schema (serde `Raw*` types, `deny_unknown_fields`), its validation
//! into the typed runtime [`Config`], and error reports naming file, line, column and field.

mod types;

pub use types::*;

// TEMPORARY STUB (replaced by the real parser).
use std::path::{Path, PathBuf};
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub field: String,
    pub message: String,
}
#[derive(Debug)]
pub struct ConfigError {
    pub diagnostics: Vec<Diagnostic>,
}
impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for d in &self.diagnostics {
            writeln!(
                f,
                "{}:{}:{}: {}: {}",
                d.file.display(),
                d.line,
                d.column,
                d.field,
                d.message
            )?;
        }
        Ok(())
    }
}
impl std::error::Error for ConfigError {}
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    parse("", path)
}
pub fn parse(_text: &str, source: &Path) -> Result<Config, ConfigError> {
    Err(ConfigError {
        diagnostics: vec![Diagnostic {
            file: source.into(),
            line: 1,
            column: 1,
            field: String::new(),
            message: "stub".into(),
        }],
    })
}
