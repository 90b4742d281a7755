//! What a session carries to every connection it opens: its current database and the
//! statements that set its session variables, in the order it ran them.
//!
//! A connection opened later (a replica's, for a read) is brought to the session's state by
//! running them again; one open already catches up on those it has not run. Only statements
//! that give the same result wherever and whenever they run are kept (the planner tells:
//! `Target::Everywhere`); a session whose state cannot be carried is pinned to the primary
//! instead. The list is bounded: past [`MAX_STATEMENTS`] the session is pinned too.

/// Most session-variable statements a session carries to another connection.
pub const MAX_STATEMENTS: usize = 64;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SessionState {
    database: Option<String>,
    statements: Vec<String>,
}

/// Why the session's state cannot be carried to another connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the session set more than {MAX_STATEMENTS} session variables to carry to a replica")]
pub struct TooMuchState;

/// How far a connection has come along a session's state.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub database: Option<String>,
    pub statements: usize,
}

/// What a connection must run to catch up: `USE` of this database, then these statements.
#[derive(Debug, PartialEq, Eq)]
pub struct CatchUp<'a> {
    pub database: Option<&'a str>,
    pub statements: &'a [String],
}

impl CatchUp<'_> {
    pub fn is_empty(&self) -> bool {
        self.database.is_none() && self.statements.is_empty()
    }
}

impl SessionState {
    /// The session's current database changed (`USE`, COM_INIT_DB).
    pub fn use_database(&mut self, db: &str) {
        self.database = Some(db.to_string());
    }

    /// The session ran `sql`, a statement of its session variables, on the primary. The
    /// same statement again right after itself changes nothing and is not kept twice, unless
    /// it reads a variable.
    pub fn record(&mut self, sql: &str) -> Result<(), TooMuchState> {
        // Unless it reads a variable (`SET x = @@x * 2` does something each time).
        if !sql.contains('@') && self.statements.last().is_some_and(|last| last == sql) {
            return Ok(());
        }
        if self.statements.len() >= MAX_STATEMENTS {
            return Err(TooMuchState);
        }
        self.statements.push(sql.to_string());
        Ok(())
    }

    /// Whether [`SessionState::record`] has room for one more statement.
    pub fn has_room(&self) -> bool {
        self.statements.len() < MAX_STATEMENTS
    }

    /// COM_RESET_CONNECTION, COM_CHANGE_USER: the session starts afresh (in `database`).
    pub fn reset(&mut self, database: Option<&str>) {
        self.statements.clear();
        self.database = database.map(str::to_string);
    }

    /// What a connection that has come as far as `applied` must run to catch up.
    pub fn catch_up(&self, applied: &Applied) -> CatchUp<'_> {
        let database = self
            .database
            .as_deref()
            .filter(|db| applied.database.as_deref() != Some(*db));
        let statements = self.statements.get(applied.statements..).unwrap_or(&[]);
        CatchUp {
            database,
            statements,
        }
    }

    /// How far a connection that ran everything [`SessionState::catch_up`] asked has come.
    pub fn applied(&self) -> Applied {
        Applied {
            database: self.database.clone(),
            statements: self.statements.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_catches_up_on_what_it_missed() {
        let mut s = SessionState::default();
        let fresh = Applied::default();
        assert!(s.catch_up(&fresh).is_empty());
        s.use_database("shop");
        s.record("SET NAMES utf8mb4").unwrap();
        s.record("SET NAMES utf8mb4").unwrap();
        s.record("SET sql_mode = 'ANSI'").unwrap();
        assert_eq!(
            s.catch_up(&fresh),
            CatchUp {
                database: Some("shop"),
                statements: &[
                    "SET NAMES utf8mb4".to_string(),
                    "SET sql_mode = 'ANSI'".to_string()
                ]
            }
        );
        let replica = s.applied();
        assert!(s.catch_up(&replica).is_empty());
        s.record("SET time_zone = '+00:00'").unwrap();
        s.use_database("shop");
        assert_eq!(
            s.catch_up(&replica),
            CatchUp {
                database: None,
                statements: &["SET time_zone = '+00:00'".to_string()]
            }
        );
        s.reset(Some("other"));
        let after = s.catch_up(&replica);
        assert_eq!((after.database, after.statements.len()), (Some("other"), 0));
    }

    #[test]
    fn the_state_carried_is_bounded() {
        let mut s = SessionState::default();
        for i in 0..MAX_STATEMENTS {
            s.record(&format!("SET @@session.max_join_size = {i}"))
                .unwrap();
        }
        assert_eq!(s.record("SET sql_mode = ''"), Err(TooMuchState));
    }
}
