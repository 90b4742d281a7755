//! The client side: listeners, the handshake, and each client's session.
//!
//! [`listener`] accepts connections and spawns a task per client; [`handshake`] authenticates
//! it; [`session`] runs its command loop; [`relay`] streams backend responses to it; `route`
//! sends an `rw_split` session's queries where the planner says.

pub mod functions;
mod global;
pub mod handshake;
pub mod kill;
pub mod listener;
pub mod relay;
mod route;
pub mod session;
mod shard;
pub mod tls;

pub use listener::{serve, ListenerContext};
