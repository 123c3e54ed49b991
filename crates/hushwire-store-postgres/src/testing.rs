//! Test support (feature `testing`): a fresh database per test on the PostgreSQL named by
//! `HUSHWIRE_TEST_POSTGRES_URL`, dropped when the test ends. Used by this crate's tests
//! and by every other crate whose tests need PostgreSQL; never by the server.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio_postgres::{Client, NoTls};

/// The variable naming the PostgreSQL that tests may create databases on.
pub const TEST_URL_ENV: &str = "HUSHWIRE_TEST_POSTGRES_URL";

/// The test server's URL, when set (and not empty).
pub fn admin_url() -> Option<String> {
    std::env::var(TEST_URL_ENV).ok().filter(|u| !u.is_empty())
}

/// `url` with its database name replaced by `db` (query parameters kept).
pub fn with_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_part = match base.get(scheme_end..).and_then(|rest| rest.find('/')) {
        Some(i) => base.get(..scheme_end + i).unwrap_or(base),
        None => base,
    };
    match query {
        Some(q) => format!("{host_part}/{db}?{q}"),
        None => format!("{host_part}/{db}"),
    }
}

/// A plain client on `url`, its connection driven by a spawned task.
pub async fn connect_admin(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A database made for one test; dropped (with its connections) when this is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    /// The server URL it was made through.
    pub admin: String,
    /// Its name: `{prefix}_{unique hex}`.
    pub name: String,
    /// Its URL.
    pub url: String,
}

impl TestDatabase {
    /// Creates `{prefix}_{unique}` through `admin` (a URL of the test server).
    pub async fn create(admin: &str, prefix: &str) -> Result<Self, tokio_postgres::Error> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "{prefix}_{:x}_{:x}_{:x}",
            std::process::id(),
            nanos,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        connect_admin(admin)
            .await?
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        let url = with_db(admin, &name);
        Ok(Self {
            admin: admin.to_owned(),
            name,
            url,
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop may run inside the test's runtime: a thread of its own with its own
        // runtime, joined so the database is gone when the test ends.
        let dropper = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok((client, conn)) = tokio_postgres::connect(&admin, NoTls).await {
                    let task = tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                    drop(client);
                    let _ = task.await;
                }
            });
        });
        let _ = dropper.join();
    }
}

#[cfg(test)]
mod tests {
    use super::with_db;

    #[test]
    fn with_db_replaces_only_the_database() {
        assert_eq!(
            with_db("postgres://u:p@h:5432/postgres", "t1"),
            "postgres://u:p@h:5432/t1"
        );
        assert_eq!(
            with_db("postgres://h/postgres?sslmode=disable", "t2"),
            "postgres://h/t2?sslmode=disable"
        );
        assert_eq!(with_db("postgres://h", "t3"), "postgres://h/t3");
    }
}
