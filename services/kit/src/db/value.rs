//! Values that read and write the same on both backends, so one `#[derive(sqlx::FromRow)]`
//! struct per row shape serves Postgres and SQLite, and one `bind` call binds on either.
//!
//! The storage formats are the migrations': on Postgres an id is a `UUID` and an instant a
//! `TIMESTAMPTZ`; on SQLite an id is its hyphenated text and an instant INTEGER microseconds
//! since the Unix epoch (so they compare and sort as numbers). A list of ids travels as a
//! `UUID[]` on Postgres and as a JSON array of texts on SQLite (read there with `json_each`).

use chrono::{DateTime, Utc};
use sqlx::{
    Decode, Encode, Postgres, Sqlite, Type,
    encode::IsNull,
    error::BoxDynError,
    postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueRef},
    sqlite::{SqliteArgumentValue, SqliteTypeInfo, SqliteValueRef},
};
use uuid::Uuid;

/// An id column: `UUID` on Postgres, hyphenated text on SQLite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(pub Uuid);

/// An instant column: `TIMESTAMPTZ` on Postgres, INTEGER Unix microseconds on SQLite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Instant(pub DateTime<Utc>);

/// A list of ids bound as one parameter: `UUID[]` on Postgres (`= ANY($1)`), a JSON array of
/// texts on SQLite (`IN (SELECT value FROM json_each($1))`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdList(pub Vec<Uuid>);

/// A list of texts bound as one parameter: `TEXT[]` on Postgres (`= ANY($1)`), a JSON array on
/// SQLite (`IN (SELECT value FROM json_each($1))`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextList(pub Vec<String>);

impl<S: Into<String>> FromIterator<S> for TextList {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        Self(iter.into_iter().map(Into::into).collect())
    }
}

impl From<Id> for Uuid {
    fn from(id: Id) -> Self {
        id.0
    }
}

impl From<Instant> for DateTime<Utc> {
    fn from(at: Instant) -> Self {
        at.0
    }
}

impl Instant {
    /// Microseconds since the Unix epoch, as SQLite stores it.
    pub fn unix_micros(self) -> i64 {
        self.0.timestamp_micros()
    }

    /// The inverse of [`Instant::unix_micros`]; out-of-range values clamp to the epoch.
    pub fn from_unix_micros(micros: i64) -> Self {
        Self(DateTime::from_timestamp_micros(micros).unwrap_or_default())
    }
}

// Postgres: the types sqlx already maps.

impl Type<Postgres> for Id {
    fn type_info() -> PgTypeInfo {
        <Uuid as Type<Postgres>>::type_info()
    }
}

impl PgHasArrayType for Id {
    fn array_type_info() -> PgTypeInfo {
        <Uuid as PgHasArrayType>::array_type_info()
    }
}

impl Encode<'_, Postgres> for Id {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <Uuid as Encode<Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl Decode<'_, Postgres> for Id {
    fn decode(value: PgValueRef<'_>) -> Result<Self, BoxDynError> {
        <Uuid as Decode<Postgres>>::decode(value).map(Self)
    }
}

impl Type<Postgres> for Instant {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }
}

impl PgHasArrayType for Instant {
    fn array_type_info() -> PgTypeInfo {
        <DateTime<Utc> as PgHasArrayType>::array_type_info()
    }
}

impl Encode<'_, Postgres> for Instant {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <DateTime<Utc> as Encode<Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl Decode<'_, Postgres> for Instant {
    fn decode(value: PgValueRef<'_>) -> Result<Self, BoxDynError> {
        <DateTime<Utc> as Decode<Postgres>>::decode(value).map(Self)
    }
}

impl Type<Postgres> for IdList {
    fn type_info() -> PgTypeInfo {
        <Uuid as PgHasArrayType>::array_type_info()
    }
}

impl Encode<'_, Postgres> for IdList {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <Vec<Uuid> as Encode<Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl Type<Postgres> for TextList {
    fn type_info() -> PgTypeInfo {
        <String as PgHasArrayType>::array_type_info()
    }
}

impl Encode<'_, Postgres> for TextList {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <Vec<String> as Encode<Postgres>>::encode_by_ref(&self.0, buf)
    }
}

// SQLite: text and INTEGER microseconds.

impl Type<Sqlite> for Id {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }

    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <String as Type<Sqlite>>::compatible(ty)
    }
}

impl<'q> Encode<'q, Sqlite> for Id {
    fn encode_by_ref(
        &self,
        args: &mut Vec<SqliteArgumentValue<'q>>,
    ) -> Result<IsNull, BoxDynError> {
        <String as Encode<Sqlite>>::encode(self.0.hyphenated().to_string(), args)
    }
}

impl<'r> Decode<'r, Sqlite> for Id {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        let text = <&str as Decode<Sqlite>>::decode(value)?;
        Ok(Self(Uuid::parse_str(text)?))
    }
}

impl Type<Sqlite> for Instant {
    fn type_info() -> SqliteTypeInfo {
        <i64 as Type<Sqlite>>::type_info()
    }

    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <i64 as Type<Sqlite>>::compatible(ty)
    }
}

impl<'q> Encode<'q, Sqlite> for Instant {
    fn encode_by_ref(
        &self,
        args: &mut Vec<SqliteArgumentValue<'q>>,
    ) -> Result<IsNull, BoxDynError> {
        <i64 as Encode<Sqlite>>::encode(self.unix_micros(), args)
    }
}

impl<'r> Decode<'r, Sqlite> for Instant {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        <i64 as Decode<Sqlite>>::decode(value).map(Self::from_unix_micros)
    }
}

impl Type<Sqlite> for IdList {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
}

impl<'q> Encode<'q, Sqlite> for IdList {
    fn encode_by_ref(
        &self,
        args: &mut Vec<SqliteArgumentValue<'q>>,
    ) -> Result<IsNull, BoxDynError> {
        let texts: Vec<String> = self
            .0
            .iter()
            .map(|id| id.hyphenated().to_string())
            .collect();
        <String as Encode<Sqlite>>::encode(serde_json::to_string(&texts)?, args)
    }
}

impl Type<Sqlite> for TextList {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
}

impl<'q> Encode<'q, Sqlite> for TextList {
    fn encode_by_ref(
        &self,
        args: &mut Vec<SqliteArgumentValue<'q>>,
    ) -> Result<IsNull, BoxDynError> {
        <String as Encode<Sqlite>>::encode(serde_json::to_string(&self.0)?, args)
    }
}

#[cfg(test)]
mod tests {
    use sqlx::{Connection, Row, SqliteConnection};

    use super::*;

    #[tokio::test]
    async fn sqlite_keeps_the_migrations_formats() {
        let mut conn = SqliteConnection::connect("sqlite::memory:")
            .await
            .expect("in-memory sqlite");
        let id = Uuid::new_v4();
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).expect("valid instant");
        let row = sqlx::query(
            "SELECT $1 AS id, typeof($1) AS id_type, $2 AS at, typeof($2) AS at_type, \
                    (SELECT count(*) FROM json_each($3) WHERE value = $1) AS listed, \
                    (SELECT group_concat(value, ',') FROM json_each($4)) AS texts",
        )
        .bind(Id(id))
        .bind(Instant(at))
        .bind(IdList(vec![Uuid::new_v4(), id]))
        .bind(["a", "b"].into_iter().collect::<TextList>())
        .fetch_one(&mut conn)
        .await
        .expect("query");
        assert_eq!(row.get::<String, _>("id"), id.hyphenated().to_string());
        assert_eq!(row.get::<String, _>("id_type"), "text");
        assert_eq!(row.get::<i64, _>("at"), 1_700_000_000_123_456);
        assert_eq!(row.get::<String, _>("at_type"), "integer");
        assert_eq!(row.get::<i64, _>("listed"), 1);
        assert_eq!(row.get::<String, _>("texts"), "a,b");
        assert_eq!(row.get::<Id, _>("id"), Id(id));
        assert_eq!(row.get::<Instant, _>("at"), Instant(at));
    }
}
