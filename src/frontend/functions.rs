//! Answers Tandem's SQL functions (`tandem_begin`, `tandem_commit`, `tandem_rollback`,
//! `tandem_status`) with a one-row result, without touching the backend.

use std::time::Duration;

use crate::coordinator::service::MAX_XID_LEN;
use crate::coordinator::{Coordinator, CoordinatorError};
use crate::sql::functions::{Arg, Call, CallError, Function};
use crate::wire::MysqlError;

/// Longest timeout a client may ask for: one day.
const MAX_TIMEOUT_MS: i64 = 86_400_000;

/// Runs a call; returns the value of its one cell.
pub async fn run(
    coordinator: &std::sync::Arc<Coordinator>,
    call: &Call,
) -> Result<String, MysqlError> {
    let name = call.function.name();
    match (call.function, call.args.as_slice()) {
        (Function::Begin, []) => begin(coordinator, None).await,
        (Function::Begin, [Arg::Int(ms)]) if (1..=MAX_TIMEOUT_MS).contains(ms) => {
            begin(coordinator, Some(Duration::from_millis(*ms as u64))).await
        }
        (Function::Begin, [_]) => Err(MysqlError::wrong_arguments(
            name,
            &format!("the timeout is a whole number of milliseconds from 1 to {MAX_TIMEOUT_MS}"),
        )),
        (Function::Commit | Function::Rollback | Function::Status, [Arg::Str(xid)]) => {
            let status = match call.function {
                Function::Commit => coordinator.commit(xid).await,
                Function::Rollback => coordinator.rollback(xid).await,
                _ => coordinator.status(xid).await,
            }
            .map_err(to_mysql)?;
            Ok(status.name().to_string())
        }
        (Function::Commit | Function::Rollback | Function::Status, [_]) => {
            Err(MysqlError::wrong_arguments(
                name,
                &format!("the XID is a quoted string of at most {MAX_XID_LEN} bytes"),
            ))
        }
        _ => Err(MysqlError::wrong_param_count(name)),
    }
}

async fn begin(coordinator: &Coordinator, timeout: Option<Duration>) -> Result<String, MysqlError> {
    coordinator
        .begin(timeout)
        .await
        .map(|tx| tx.xid)
        .map_err(to_mysql)
}

pub fn call_error(e: &CallError) -> MysqlError {
    MysqlError::wrong_arguments(e.function, &e.message)
}

fn to_mysql(e: CoordinatorError) -> MysqlError {
    match e {
        CoordinatorError::UnknownXid(xid) => MysqlError::unknown_xid(&xid),
        CoordinatorError::InvalidXid(m) => {
            MysqlError::new(1210, "HY000", format!("Incorrect XID: {m}"))
        }
        CoordinatorError::Store(s) => MysqlError::coordinator_unavailable(&s.to_string()),
    }
}
