//! The command line: `runnel server`, `runnel client`, `runnel certs`, `runnel version`.

mod error;
pub mod certs;

pub use error::CliError;
