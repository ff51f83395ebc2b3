//! The plan Postgres gives a statement, for the tests that hold the batch statements to plans
//! by key (the service kit's `KEYED_PLANS`) on a database whose statistics say every table is
//! empty: the case where, without them, a generic plan scans whole tables.

use sqlx::{Connection, PgConnection, Row};

/// The generic plan of `statement` (its `$N` parameters typed by the statement itself) on
/// `conn`, in a transaction with `settings` (`SET LOCAL …;` statements, or nothing) in force:
/// one line per plan line, as `EXPLAIN` prints them.
pub async fn generic_plan(conn: &mut PgConnection, statement: &str, settings: &str) -> Vec<String> {
    let parameters = (0..highest_parameter(statement))
        .map(|_| "NULL")
        .collect::<Vec<_>>()
        .join(", ");
    let script = format!(
        "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; {settings} \
         PREPARE planned AS {statement}; EXPLAIN EXECUTE planned({parameters}); ROLLBACK; \
         DEALLOCATE planned"
    );
    let rows = sqlx::raw_sql(&script)
        .fetch_all(&mut *conn)
        .await
        .unwrap_or_else(|error| panic!("cannot plan the statement: {error}\n{statement}"));
    rows.iter().map(|row| row.get::<String, _>(0)).collect()
}

/// A plain connection to the database at `url`, with the server's default settings.
pub async fn plain_connection(url: &str) -> PgConnection {
    PgConnection::connect(url).await.expect("connect to plan")
}

/// Asserts that every named statement's generic plan on `conn`, with `settings` in force, reads
/// every table by key (see [`not_by_key`]), naming the statement and the lines that do not.
pub async fn assert_planned_by_key(
    conn: &mut PgConnection,
    statements: &[(&str, &str)],
    settings: &str,
) {
    for (name, statement) in statements {
        let plan = generic_plan(conn, statement, settings).await;
        let whole = not_by_key(&plan);
        assert!(
            whole.is_empty(),
            "{name} reads {whole:#?} in\n{}",
            plan.join("\n")
        );
    }
}

/// The lines of `plan` that read a table other than by key: a sequential scan, a join by hash
/// or merge, a materialised rescan, or an index walked whole (an index or bitmap index scan
/// with no `Index Cond` under it, as a hashed subquery's is; a lease's walk of its due index
/// in order has one).
pub fn not_by_key(plan: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for (at, line) in plan.iter().enumerate() {
        let node = line.trim_start().trim_start_matches("->  ");
        let whole_scan = [
            "Seq Scan on",
            "Hash Join",
            "Hash Semi Join",
            "Hash Anti Join",
        ]
        .iter()
        .chain(&["Hash Left Join", "Hash Right Join", "Merge", "Materialize"])
        .any(|kind| node.starts_with(kind));
        let index_walked_whole = ["Index Scan", "Index Only Scan", "Bitmap Index Scan"]
            .iter()
            .any(|kind| node.starts_with(kind))
            && !plan
                .get(at + 1)
                .is_some_and(|next| next.trim_start().starts_with("Index Cond:"));
        if whole_scan || index_walked_whole {
            found.push(line.clone());
        }
    }
    found
}

/// The highest `$N` in `statement`.
fn highest_parameter(statement: &str) -> usize {
    let mut highest = 0;
    let mut rest = statement;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        highest = highest.max(digits.parse().unwrap_or(0));
    }
    highest
}
