//! AT mode (Seata's automatic transaction mode): a local transaction joins a global one as a
//! branch, with row images recorded as an undo log in the business database and global row
//! locks held in the coordinator.
//!
//! Built so far: [`lock_key`], the global lock key of a row.

pub mod branch;
pub mod image;
pub mod lock_key;
pub mod meta;
pub mod rm;
pub mod undo;
