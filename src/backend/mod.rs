//! Backend connections and their pools.
//!
//! The data path needs connections whose packets Tandem controls (results are relayed as raw
//! bytes, and later the AT machinery runs its own statements on the same connection), so
//! [`conn::BackendConn`] is a thin client over [`crate::wire`], not a driver. [`health`]
//! watches replicas: whether each may take reads.

pub mod conn;
pub mod health;
pub mod pool;
pub mod stream;

pub use conn::{BackendConn, BackendError, ConnKey, Row, SessionSettings};
pub use pool::{Pool, PooledConn};
pub use stream::BackendStream;
