//! The production commands refuse a listener anyone on the network could reach without TLS and
//! credentials (exit 64, saying what to configure), start with `--insecure`, and refuse a
//! private key file others can read.
#![allow(clippy::unwrap_used)]

use std::{
    process::{Command, Output},
    time::Duration,
};

fn waybill(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_waybill"))
        .args(args)
        .env_remove("WAYBILL_LISTEN")
        .env_remove("WAYBILL_INSECURE")
        .output()
        .unwrap()
}

#[test]
fn production_commands_refuse_unprotected_public_listeners() {
    let dir = std::env::temp_dir().join(format!("waybill-guard-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = format!("sqlite://{}", dir.join("guard.db").display());
    for command in ["orders", "dispatcher", "status-ingest"] {
        let output = waybill(&[command, "--listen", "0.0.0.0:0", "--database-url", &db]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{command}: {stderr}");
        assert!(
            stderr.contains("refusing to serve 0.0.0.0:0"),
            "{command}: {stderr}"
        );
        assert!(stderr.contains("--insecure"), "{command}: {stderr}");
    }

    // A TLS key others can read is refused, naming the fix and never printing the key.
    let pki = waybill_test_kit::tls::TestPki::new();
    let cert = pki.dir.join("server.pem");
    let key = dir.join("server.key");
    std::fs::write(&key, &pki.server.key).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let output = waybill(&[
        "orders",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        &db,
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");
    let key_body = pki.server.key.lines().nth(1).unwrap();
    assert!(!stderr.contains(key_body), "{stderr}");

    // --insecure starts it anyway, with a loud warning.
    let mut child = Command::new(env!("CARGO_BIN_EXE_waybill"))
        .args([
            "orders",
            "--listen",
            "0.0.0.0:0",
            "--database-url",
            &db,
            "--insecure",
        ])
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let listening = loop {
        match receiver.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => {
                let done = line.contains("service started") && line.contains("service=\"orders\"");
                seen.push(line);
                if done {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(listening, "--insecure must start: {seen:#?}");
    assert!(
        seen.iter().any(|line| line.contains("INSECURE")),
        "{seen:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
