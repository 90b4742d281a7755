//! AT mode (Seata's automatic transaction mode): a local transaction joins a global one as a
//! branch, with row images recorded as an undo log in the business database and global row
//! locks held in the coordinator.
//!
//! [`branch`] runs phase 1 on the session's connection ([`image`] reads rows, [`undo`] encodes
//! the log, [`lock_key`] names rows, [`meta`] knows tables); [`rm`] runs phase 2.

pub mod branch;
pub mod image;
pub mod lock_key;
pub mod meta;
pub mod rm;
pub mod undo;
