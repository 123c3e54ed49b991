//! `hushwire demo`: the whole story on a throw-away embedded server.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use hushwire_client::{Client, ClientOptions, Event};
use hushwire_server::{RegistrationPolicy, ServerConfig};

use crate::output::{human_time, print_line};

const TIMEOUT: Duration = Duration::from_secs(30);

fn say(line: impl AsRef<str>) -> anyhow::Result<()> {
    print_line(line.as_ref())
}

async fn send(client: &mut Client, peer: &str, text: &str) -> anyhow::Result<()> {
    let me = client.identity()?.handle.clone();
    client.queue_text(peer, text)?;
    client.set_defer_deliveries(true);
    client
        .flush_outbox(TIMEOUT, &mut |_| {})
        .await
        .with_context(|| format!("{me} could not send"))?;
    say(format!("  {me} → {peer}: {text}"))
}

async fn receive(client: &mut Client) -> anyhow::Result<()> {
    let me = client.identity()?.handle.clone();
    let mut got = Vec::new();
    client
        .sync(TIMEOUT, &mut |e| {
            if let Event::Message(m) = e {
                got.push(m);
            }
        })
        .await
        .with_context(|| format!("{me} could not receive"))?;
    for m in got {
        say(format!("  {me} received from {}: {}", m.from, m.text))?;
    }
    Ok(())
}

fn show_conversation(client: &Client, peer: &str) -> anyhow::Result<()> {
    let me = &client.identity()?.handle;
    say(format!("\n{me}'s view of the conversation with {peer}:"))?;
    for m in client.profile().history(peer)? {
        say(format!(
            "  [{}] {}: {}",
            human_time(m.sent_at_ms),
            m.from,
            m.text
        ))?;
    }
    Ok(())
}

/// Every file under `dir`, recursively.
fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// Prints the server's tables with row counts and the stored ciphertexts, read-only.
fn show_server_db(db: &Path) -> anyhow::Result<()> {
    use rusqlite::{Connection, OpenFlags};
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("cannot open {}", db.display()))?;
    let tables: Vec<String> = {
        let mut stmt = conn.prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table'
             AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )?;
        stmt.query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?
    };
    say(format!(
        "\nWhat the server holds ({}, opened read-only):",
        db.display()
    ))?;
    let width = tables.iter().map(String::len).max().unwrap_or(0);
    for t in &tables {
        let n: i64 = conn.query_row(&format!("SELECT COUNT(*) FROM \"{t}\""), [], |r| r.get(0))?;
        say(format!("  {t:<width$} {n:>4} rows"))?;
    }
    if tables.iter().any(|t| t == "messages") {
        let mut stmt = conn.prepare(
            "SELECT kind, length(payload), hex(substr(payload, 1, 16)) FROM messages ORDER BY id",
        )?;
        let rows: Vec<(i64, i64, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        say(format!(
            "  stored message bodies (still waiting for their recipient): {}",
            rows.len()
        ))?;
        for (kind, len, head) in rows {
            let kind = match kind {
                1 => "application",
                2 => "proposal",
                3 => "commit",
                4 => "welcome",
                _ => "other",
            };
            say(format!(
                "    {kind:<12} {len:>6} bytes of MLS ciphertext, starts {}…",
                head.to_lowercase()
            ))?;
        }
    }
    Ok(())
}

pub(crate) async fn run() -> anyhow::Result<()> {
    let root = tempfile::tempdir().context("cannot create a temporary directory")?;
    let data_dir = root.path().join("server");
    let config = ServerConfig {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: data_dir.clone(),
        registration: RegistrationPolicy::Open,
        shutdown_grace_secs: 2,
        // Publish the key directory quickly, so the story can show a verified key.
        directory: hushwire_server::DirectoryConfig {
            publish_interval: Duration::from_millis(300),
        },
        ..ServerConfig::default()
    };
    let store = hushwire_server::open_sqlite(&config)
        .await
        .context("cannot open the server database")?;
    let running = hushwire_server::bind(config.clone(), store.clone())
        .await
        .context("cannot start the server")?;
    let (url, pin) = (running.url(), running.pin().to_string());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(running.run(async {
        let _ = stopped.await;
    }));
    say("Hushwire demo: a throw-away server and two users, alice and bob.")?;
    say(format!("server: {url}\npin:    {pin}\n"))?;

    // The throw-away profiles are encrypted at rest like any other, under a random
    // passphrase that dies with the demo.
    let passphrase = hex::encode(hushwire_e2e::StoreKey::generate().expose());
    let options = ClientOptions::default().with_passphrase(&passphrase);
    let story = async {
        let mut texts = Vec::new();
        let mut clients = Vec::new();
        for handle in ["alice", "bob"] {
            let dir = root.path().join(handle);
            let r =
                hushwire_client::register(&dir, handle, &url, Some(&pin), None, options.clone())
                    .await
                    .with_context(|| format!("cannot register {handle}"))?;
            if let Some(e) = r.key_package_error {
                return Err(anyhow::Error::new(e).context("key package upload failed"));
            }
            say(format!(
                "registered {handle} (device {}, {} key packages uploaded)",
                r.identity.device_id, r.key_packages
            ))?;
            clients.push(Client::open(&dir, options.clone())?);
        }
        let mut bob = clients.pop().context("bob")?;
        let mut alice = clients.pop().context("alice")?;

        say("\nbob is offline; alice writes to him:")?;
        for text in ["Hi Bob! This is end-to-end encrypted.", "Are you there?"] {
            send(&mut alice, "bob", text).await?;
            texts.push(text);
        }
        say("\nbob comes online and fetches his mailbox:")?;
        receive(&mut bob).await?;
        let reply = "Hi Alice, got both. The server only saw ciphertext.";
        send(&mut bob, "alice", reply).await?;
        texts.push(reply);
        say("\nalice fetches hers:")?;
        receive(&mut alice).await?;

        let last = "Great. See you tomorrow!";
        bob.disconnect().await;
        say("\nbob goes offline again; alice sends one more, which waits on the server:")?;
        send(&mut alice, "bob", last).await?;
        texts.push(last);

        show_conversation(&alice, "bob")?;
        show_conversation(&bob, "alice")?;

        say(
            "\nkey transparency: the server publishes every account key in a signed, append-only directory",
        )?;
        let until = Instant::now() + Duration::from_secs(20);
        let epoch = loop {
            let epoch = alice.check_directory().await?;
            alice.fetch_account("bob").await?;
            if alice
                .profile()
                .directory_check("bob")?
                .is_some_and(|c| c.epoch.is_some())
            {
                break epoch;
            }
            if Instant::now() > until {
                return Err(anyhow::anyhow!(
                    "the key directory published nothing in 20 s"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        say(format!(
            "  alice checked bob's account key against its lookup proof (epoch {epoch}) and her own key's history"
        ))?;
        let number = alice.profile().safety_number("bob")?;
        say(format!(
            "  safety number of alice and bob: {}",
            number.digits
        ))?;
        alice.close().await;
        bob.close().await;
        anyhow::Ok(texts)
    };
    let texts = story.await;

    let _ = stop.send(());
    let served = server.await;
    store.shutdown().await;
    let texts = texts?;
    served
        .context("server task failed")?
        .context("server failed")?;
    say("\nserver stopped cleanly")?;

    show_server_db(&config.database_path())?;
    let mut all = Vec::new();
    files(&data_dir, &mut all)?;
    let mut found = Vec::new();
    let mut bytes_scanned = 0;
    for path in &all {
        let bytes = std::fs::read(path)?;
        bytes_scanned += bytes.len();
        for text in &texts {
            if bytes.windows(text.len()).any(|w| w == text.as_bytes()) {
                found.push(format!("{text:?} in {}", path.display()));
            }
        }
    }
    say(format!(
        "\nsearched {} files ({} bytes) of the server's data directory for the {} texts sent",
        all.len(),
        bytes_scanned,
        texts.len()
    ))?;
    if found.is_empty() {
        say("plaintext found: no")?;
        Ok(())
    } else {
        say("plaintext found: YES")?;
        for f in &found {
            say(format!("  {f}"))?;
        }
        Err(anyhow::anyhow!("the server stored plaintext"))
    }
}
