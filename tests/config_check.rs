//! `portico::config::parse` on the shipped configs (must pass) and on broken fixtures under
//! `tests/data/config/` (each must fail with the diagnostic its first comment line describes).

use std::path::{Path, PathBuf};

use portico::config::{self, Diagnostic};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

fn check_file(name: &str) -> Result<(config::Config, Vec<Diagnostic>), config::ConfigError> {
    let path = data(name);
    let text = std::fs::read_to_string(&path).expect("fixture readable");
    config::parse_with_warnings(&text, &path)
}

#[test]
fn shipped_configs_pass() {
    for name in ["config/portico.toml", "config/lab.toml"] {
        match check_file(name) {
            Ok((_, warnings)) => assert!(warnings.is_empty(), "{name} warnings: {warnings:#?}"),
            Err(e) => panic!("{name} fails:\n{e}"),
        }
    }
}
