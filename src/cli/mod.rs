//! Subcommands that are more than wiring: each takes its parsed arguments and returns what to
//! print and the exit status, so `main.rs` stays thin and tests can call them directly.

pub mod ctl;
pub mod drill;
pub mod probe;
pub mod sim;
pub mod token;

/// What a subcommand produced: text for stdout, text for stderr, and the exit status.
#[derive(Debug, Default)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    pub code: u8,
}

impl Outcome {
    pub fn ok(stdout: String) -> Outcome {
        Outcome {
            stdout,
            ..Outcome::default()
        }
    }

    pub fn fail(stderr: String) -> Outcome {
        Outcome {
            stderr,
            code: 1,
            ..Outcome::default()
        }
    }
}
