//! Golden planner tests: each statement of `tests/golden/sharding.sql` and the plan the
//! sharding planner makes of it (the shards and what each runs, how answers merge, or the
//! refusal), compared with `tests/golden/sharding.plans`. After a deliberate change, bless
//! the new plans with
//!
//! ```text
//! TANDEM_BLESS=1 cargo test --test planner_golden
//! ```
//!
//! and read the diff of `sharding.plans` before committing it.

use std::fmt::Write as _;
use std::path::PathBuf;

use tandem::config::Executor;
use tandem::planner::sharding::plan::{self, Affected, Plan};
use tandem::planner::sharding::Topology;

fn topology() -> Topology {
    let e: Executor = serde_norway::from_str(
        "
name: shop
mode: sharding
database: shop
shards: [s0, s1, s2, s3]
sharded_tables:
  - { table: t_order, column: user_id, algorithm: mod }
  - { table: t_item, column: user_id, algorithm: mod, binding: t_order }
  - { table: t_user, column: id, algorithm: hash_mod }
  - { table: t_event, column: at, algorithm: interval, unit: day, start: '2024-01-01' }
  - { table: t_account, column: id, algorithm: range, boundaries: [1000, 2000, 3000] }
  - { table: t_split, column: user_id, algorithm: mod, tables: 2 }
broadcast_tables: [t_country]
",
    )
    .expect("topology config");
    let t = Topology::new(&e).expect("topology");
    t.learn_tables(&[vec![], vec![], vec!["t_note".into()], vec![]])
        .expect("single tables");
    t
}

fn describe(p: &Plan, topo: &Topology) -> String {
    let name = |s: usize| topo.shards[s].clone();
    let names = |set: tandem::planner::sharding::ShardSet| {
        set.iter().map(name).collect::<Vec<_>>().join(",")
    };
    match p {
        Plan::Any => "any shard (the session's last)".into(),
        Plan::One(s) => format!("one shard: {}", name(*s)),
        Plan::Ddl(d) => {
            let mut out = format!("ddl on {}", names(d.shards));
            for (s, sql) in &d.statements {
                let _ = write!(out, "\n   {}: {sql}", name(*s));
            }
            out
        }
        Plan::Scatter(s) if s.per_shard.is_empty() => format!(
            "scatter to {}: {}\n   merge: {}",
            names(s.shards),
            s.sql,
            s.describe()
        ),
        Plan::Scatter(s) => {
            let mut out = format!("scatter to {}", names(s.shards));
            for i in s.shards.iter() {
                let _ = write!(out, "\n   {}: {}", name(i), s.sql_for(i));
            }
            let _ = write!(out, "\n   merge: {}", s.describe());
            out
        }
        Plan::Write(w) => {
            let mut out = format!(
                "write, {} statement(s), affected rows {}",
                w.statements.len(),
                match w.affected {
                    Affected::Sum => "summed",
                    Affected::First => "of one copy",
                }
            );
            for (s, sql) in &w.statements {
                let _ = write!(out, "\n   {}: {sql}", name(*s));
            }
            out
        }
        Plan::Open => "every open shard connection".to_string(),
        Plan::Answer(a) => format!("answered by Tandem: {a:?}"),
        Plan::Refuse(why) => format!("refused: {why}"),
    }
}

#[test]
fn plans_match_the_golden_file() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let input = std::fs::read_to_string(dir.join("sharding.sql")).expect("read sharding.sql");
    let topo = topology();
    let no_params = |_: &sqlparser::ast::Expr| None;
    let mut out = String::new();
    for sql in input
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("--"))
    {
        let p = plan::plan(sql, &topo, &no_params);
        let _ = writeln!(out, "{sql}\n=> {}\n", describe(&p, &topo));
    }
    let golden = dir.join("sharding.plans");
    if std::env::var_os("TANDEM_BLESS").is_some() {
        std::fs::write(&golden, &out).expect("write sharding.plans");
        return;
    }
    let expected = std::fs::read_to_string(&golden).unwrap_or_default();
    if out != expected {
        let first = out
            .split("\n\n")
            .zip(expected.split("\n\n"))
            .find(|(a, b)| a != b)
            .map(|(a, b)| format!("now:\n{a}\n\ngolden:\n{b}"))
            .unwrap_or_else(|| "the files differ in length".into());
        panic!(
            "plans differ from tests/golden/sharding.plans; first difference:\n{first}\n\n\
             bless deliberate changes: TANDEM_BLESS=1 cargo test --test planner_golden"
        );
    }
}
