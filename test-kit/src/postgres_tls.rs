//! A private Postgres server for TLS tests: its own cluster (`initdb`) on a free loopback port,
//! serving the certificate of a [`TestPki`], refusing every TCP connection without TLS
//! (`hostnossl … reject`), and taking client-certificate logins for the role `waybill_cert`
//! (the PKI's `ops-console` client certificate, mapped by `pg_ident.conf`). Stopped and removed
//! when dropped.
//!
//! Postgres refuses to run as root: as root (CI), the cluster belongs to the `postgres` user
//! and its commands run through `runuser`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use super::tls::TestPki;

/// See the module docs.
#[derive(Debug)]
pub struct TlsPostgres {
    /// The loopback port it listens on.
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

/// The role that logs in with the PKI's client certificate.
pub const CERT_ROLE: &str = "waybill_cert";

impl TlsPostgres {
    /// Creates and starts the cluster with `pki`'s server certificate.
    pub fn start(pki: &TestPki) -> Self {
        let bin = postgres_bin_dir();
        let dir = std::env::temp_dir().join(format!("waybill-pg-tls-{}", uuid::Uuid::new_v4()));
        let data = dir.join("data");
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let owner = cluster_owner();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown cluster dir");
        }
        run_checked(
            as_owner(&bin.join("initdb"))
                .args(["-D", path(&data), "-U", "postgres", "-A", "trust"])
                .args(["--no-sync", "--no-instructions"]),
            "initdb",
        );
        // The server's certificate and key; the CA its clients' certificates must come from.
        for (name, contents) in [
            ("server.crt", &pki.server.cert),
            ("server.key", &pki.server.key),
            ("root.crt", &pki.ca_cert),
        ] {
            let file = data.join(name);
            super::tls::write_private(&file, contents);
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(&file, Some(uid), Some(gid)).expect("chown");
            }
        }
        let hba = format!(
            "local all all trust\n\
             hostnossl all all 0.0.0.0/0 reject\n\
             hostssl all {CERT_ROLE} 127.0.0.1/32 cert map=certs\n\
             hostssl all all 127.0.0.1/32 trust\n"
        );
        write_owned(&data.join("pg_hba.conf"), &hba, owner);
        write_owned(
            &data.join("pg_ident.conf"),
            &format!("certs ops-console {CERT_ROLE}\n"),
            owner,
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c ssl=on \
             -c ssl_cert_file=server.crt -c ssl_key_file=server.key -c ssl_ca_file=root.crt \
             -c fsync=off",
            path(&dir)
        );
        run_checked(
            as_owner(&bin.join("pg_ctl")).args([
                "-D",
                path(&data),
                "-o",
                &options,
                "-l",
                path(&dir.join("server.log")),
                "-w",
                "start",
            ]),
            "pg_ctl start",
        );
        let cluster = Self { port, dir, bin };
        cluster.psql(&format!("CREATE ROLE {CERT_ROLE} LOGIN SUPERUSER"));
        cluster
    }

    /// A URL for `user` over TLS with `params` (e.g. `sslmode=verify-full&sslrootcert=…`).
    pub fn url(&self, user: &str, params: &str) -> String {
        format!(
            "postgres://{user}@localhost:{}/postgres?{params}",
            self.port
        )
    }

    /// Runs `sql` as the superuser over the cluster's Unix socket.
    pub fn psql(&self, sql: &str) -> String {
        let output = run_checked(
            as_owner(&self.bin.join("psql")).args([
                "-h",
                path(&self.dir),
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-XAtc",
                sql,
            ]),
            "psql",
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = as_owner(&self.bin.join("pg_ctl"))
            .args([
                "-D",
                path(&self.dir.join("data")),
                "-m",
                "immediate",
                "stop",
            ])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The newest installed server's `bin` directory (Debian: `/usr/lib/postgresql/N/bin`).
fn postgres_bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries in /usr/lib/postgresql (apt-get install postgresql)")
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .expect("an initdb under /usr/lib/postgresql/*/bin")
        .1
}

/// `(uid, gid)` of the `postgres` user when this process runs as root (Postgres will not).
fn cluster_owner() -> Option<(u32, u32)> {
    let me = run_checked(Command::new("id").arg("-u"), "id -u");
    if String::from_utf8_lossy(&me.stdout).trim() != "0" {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let output = run_checked(Command::new("id").args([flag, "postgres"]), "id postgres");
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("numeric id")
    };
    Some((id("-u"), id("-g")))
}

fn as_owner(program: &Path) -> Command {
    if cluster_owner().is_some() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn write_owned(file: &Path, contents: &str, owner: Option<(u32, u32)>) {
    std::fs::write(file, contents).expect("write");
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(file, Some(uid), Some(gid)).expect("chown");
    }
}

fn run_checked(command: &mut Command, what: &str) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn path(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}
