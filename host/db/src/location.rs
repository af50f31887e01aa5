//! Where a database lives: a SQLite file or a PostgreSQL database and schema.

use std::path::PathBuf;

/// Where a database lives, as configured.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Location {
    /// A SQLite file, created if missing.
    Sqlite(PathBuf),
    /// A PostgreSQL database; wasaga's tables live in `schema`.
    Postgres { url: String, schema: String },
}

/// The PostgreSQL schema wasaga's tables live in unless the URL says `?schema=...`.
pub const DEFAULT_SCHEMA: &str = "wasaga";

impl Location {
    /// Reads `postgres://...` (optionally with `?schema=name`) or a SQLite file path
    /// (optionally `sqlite:` prefixed).
    pub fn parse(text: &str) -> Result<Location, String> {
        Self::parse_with_schema(text, DEFAULT_SCHEMA)
    }

    /// As [`Location::parse`], with `schema` where a PostgreSQL URL names none.
    pub fn parse_with_schema(text: &str, schema: &str) -> Result<Location, String> {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            let (url, schema) = take_schema_param(text, schema)?;
            return Ok(Location::Postgres { url, schema });
        }
        if text.contains("://") {
            return Err(format!(
                "'{text}' is not a database wasaga can use: give a SQLite file path or a postgres:// URL"
            ));
        }
        let path = text.strip_prefix("sqlite:").unwrap_or(text);
        if path.is_empty() {
            return Err("the database path is empty".to_owned());
        }
        Ok(Location::Sqlite(PathBuf::from(path)))
    }

    /// A name for messages: the file, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Location::Sqlite(path) => format!("sqlite:{}", path.display()),
            Location::Postgres { url, schema } if schema == DEFAULT_SCHEMA => {
                crate::url::without_password(url)
            }
            Location::Postgres { url, schema } => {
                format!("{} (schema {schema})", crate::url::without_password(url))
            }
        }
    }
}

/// Splits wasaga's own `schema` query parameter off a PostgreSQL URL.
fn take_schema_param(url: &str, default: &str) -> Result<(String, String), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), default.to_owned()));
    };
    let mut schema = default.to_owned();
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.strip_prefix("schema=") {
            Some(name) => schema = name.to_owned(),
            None => rest.push(pair),
        }
    }
    let valid = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !schema.starts_with(|c: char| c.is_ascii_digit());
    if !valid {
        return Err(format!(
            "schema '{schema}' must be 1 to 63 lowercase letters, digits or '_', not starting with a digit"
        ));
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((url, schema))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_files_and_urls() {
        assert_eq!(
            Location::parse("wasaga.db"),
            Ok(Location::Sqlite("wasaga.db".into()))
        );
        assert_eq!(
            Location::parse("sqlite:/tmp/x.db"),
            Ok(Location::Sqlite("/tmp/x.db".into()))
        );
        assert_eq!(
            Location::parse("postgres://u@h:5/db"),
            Ok(Location::Postgres {
                url: "postgres://u@h:5/db".into(),
                schema: "wasaga".into()
            })
        );
        assert_eq!(
            Location::parse("postgres://u@h:5/db?sslmode=disable&schema=bench_1"),
            Ok(Location::Postgres {
                url: "postgres://u@h:5/db?sslmode=disable".into(),
                schema: "bench_1".into()
            })
        );
        assert!(
            Location::parse("postgres://u@h/db?schema=Bad-Name")
                .expect_err("must be refused")
                .contains("lowercase")
        );
        assert!(
            Location::parse("mysql://h/db")
                .expect_err("must be refused")
                .contains("SQLite file path or a postgres://")
        );
    }
}
