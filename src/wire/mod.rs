//! Tandem's own MySQL wire layer.
//!
//! A proxy must forward what it does not need to understand byte for byte, so this layer
//! keeps packets as raw bytes: [`packet::PacketIo`] frames them, [`scanner::ResponseScanner`]
//! follows a response's structure (result sets, terminators, status flags) without decoding
//! rows, and [`response`] builds the few packets Tandem answers itself. Handshake and
//! authentication live in [`handshake`] and [`auth`]; error codes in [`errors`].
//!
//! Nothing here imports the rest of Tandem.

pub mod auth;
pub mod binary_row;
pub mod errors;
pub mod execute;
pub mod handshake;
pub mod packet;
pub mod response;
pub mod scanner;
pub mod stream;

pub use errors::MysqlError;
pub use packet::{PacketIo, WireError};
