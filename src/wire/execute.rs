//! The layout of a COM_STMT_EXECUTE payload, so one execution can be sent to another
//! connection that prepared the same statement under its own id.
//!
//! ```text
//! 0x17 | statement id (4) | flags (1) | iteration count (4)
//!      | when the statement has parameters:
//!      |   NULL bitmap ((n + 7) / 8) | new-params-bound flag (1) | [types (2 × n)] | values
//! ```
//!
//! A server keeps the parameter types an execution bound for the executions that follow
//! (flag 0). A connection that never saw them is given them again: every payload built
//! here binds its types.

/// Byte offset of the cursor flags.
const FLAGS: usize = 5;
/// Byte offset of the parameter block (after the iteration count).
const PARAMS: usize = 10;

/// A COM_STMT_EXECUTE payload too short for its statement's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("COM_STMT_EXECUTE ends before its parameters do")]
pub struct ShortExecute;

/// Whether the execution asks for a cursor (its rows are then fetched later, by
/// COM_STMT_FETCH on the same connection).
pub fn opens_cursor(payload: &[u8]) -> bool {
    payload.get(FLAGS).is_some_and(|f| *f != 0)
}

/// The parameter types the execution binds, when it binds new ones (for a statement of
/// `count` parameters).
pub fn bound_types(payload: &[u8], count: usize) -> Result<Option<Vec<[u8; 2]>>, ShortExecute> {
    if count == 0 {
        return Ok(None);
    }
    let flag = PARAMS + count.div_ceil(8);
    match payload.get(flag) {
        Some(1) => {
            let types = payload
                .get(flag + 1..flag + 1 + 2 * count)
                .ok_or(ShortExecute)?;
            Ok(Some(types.chunks_exact(2).map(|t| [t[0], t[1]]).collect()))
        }
        Some(_) => Ok(None),
        None => Err(ShortExecute),
    }
}

/// The same execution for statement `id` on another connection, binding `types` (the
/// statement's current ones: those this execution binds, or the last ones bound).
pub fn rebind(
    payload: &[u8],
    id: u32,
    count: usize,
    types: &[[u8; 2]],
) -> Result<Vec<u8>, ShortExecute> {
    let head = payload.get(..PARAMS).ok_or(ShortExecute)?;
    let mut out = Vec::with_capacity(payload.len() + 2 * count);
    out.push(head[0]);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&head[FLAGS..]);
    if count == 0 {
        return Ok(out);
    }
    if types.len() != count {
        return Err(ShortExecute);
    }
    let flag = PARAMS + count.div_ceil(8);
    out.extend_from_slice(payload.get(PARAMS..flag).ok_or(ShortExecute)?);
    let values = match payload.get(flag) {
        Some(1) => flag + 1 + 2 * count,
        Some(_) => flag + 1,
        None => return Err(ShortExecute),
    };
    out.push(1);
    for t in types {
        out.extend_from_slice(t);
    }
    out.extend_from_slice(payload.get(values..).ok_or(ShortExecute)?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An execution of statement 7 with two parameters (a LONGLONG 5, a NULL string), binding
    /// types or not.
    fn execute(bind: bool) -> Vec<u8> {
        let mut p = vec![0x17, 7, 0, 0, 0, 0, 1, 0, 0, 0];
        p.push(0b10); // the second parameter is NULL
        p.push(u8::from(bind));
        if bind {
            p.extend_from_slice(&[8, 0, 254, 0]);
        }
        p.extend_from_slice(&5i64.to_le_bytes());
        p
    }

    #[test]
    fn an_execution_moves_to_another_statement_id_with_its_types() {
        let types = [[8, 0], [254, 0]];
        assert_eq!(bound_types(&execute(true), 2), Ok(Some(types.to_vec())));
        assert_eq!(bound_types(&execute(false), 2), Ok(None));
        let mut expected = execute(true);
        expected[1] = 42;
        // Binding already or not, the rebound payload binds the statement's types.
        assert_eq!(rebind(&execute(true), 42, 2, &types), Ok(expected.clone()));
        assert_eq!(rebind(&execute(false), 42, 2, &types), Ok(expected));
        assert_eq!(rebind(&execute(false), 42, 2, &[]), Err(ShortExecute));
        assert!(!opens_cursor(&execute(false)));
    }

    #[test]
    fn an_execution_without_parameters_only_changes_its_id() {
        let p = [0x17, 7, 0, 0, 0, 1, 1, 0, 0, 0];
        assert_eq!(bound_types(&p, 0), Ok(None));
        assert_eq!(
            rebind(&p, 0x0102_0304, 0, &[]),
            Ok(vec![0x17, 4, 3, 2, 1, 1, 1, 0, 0, 0])
        );
        assert!(opens_cursor(&p));
    }

    #[test]
    fn short_payloads_are_refused() {
        assert_eq!(
            bound_types(&[0x17, 7, 0, 0, 0, 0, 1, 0, 0, 0], 1),
            Err(ShortExecute)
        );
        assert_eq!(bound_types(&execute(true)[..13], 2), Err(ShortExecute));
        assert_eq!(rebind(&[0x17, 7], 1, 0, &[]), Err(ShortExecute));
        assert_eq!(
            rebind(&execute(true)[..14], 1, 2, &[[8, 0], [254, 0]]),
            Err(ShortExecute)
        );
    }
}
