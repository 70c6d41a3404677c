//! Configuration: the TOML schema (serde `Raw*` types, `deny_unknown_fields`), its validation
//! into the typed runtime [`Config`], and error reports naming file, line, column and field.

mod types;

pub use types::*;
