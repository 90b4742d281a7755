//! SQL analysis. On the hot path only [`classify`] runs: a byte scan for the leading keyword.

pub mod builtins;
pub mod classify;
pub mod dml;
pub mod functions;
pub mod hints;
pub mod lex;
pub mod params;
pub mod quote;
pub mod settings;
pub mod sysvars;

pub use classify::{classify, StatementKind};
