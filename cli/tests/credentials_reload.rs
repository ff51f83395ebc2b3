//! `waybill orders` re-reads its credentials file on SIGHUP (`kill -HUP`): a storefront added
//! to the file is let in without a restart, and the log says how many callers are in force,
//! never a credential. The rewritten file keeps the old one's length and modification time, so
//! the periodic check for changed files cannot explain the reload: only the signal can.
#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::Duration,
};

use tonic::{Code, Request, transport::Channel};
use waybill_proto::v1::{GetOrderRequest, order_service_client::OrderServiceClient};
use waybill_service_kit::security::auth::hash_api_key;
use waybill_test_kit::{eventually, tls::write_private};

const WAIT: Duration = Duration::from_secs(60);

struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn caller(name: &str, key: &str) -> String {
    format!(
        r#"{{"name":"{name}","role":"storefront","api_key_sha256":"{}"}}"#,
        hash_api_key(key)
    )
}

/// `GetOrder` of an order nobody placed with `key`: `NOT_FOUND` once the key is let in,
/// `UNAUTHENTICATED` before.
async fn get_order(client: &mut OrderServiceClient<Channel>, key: &str) -> Code {
    let mut request = Request::new(GetOrderRequest {
        order_id: uuid::Uuid::new_v4().to_string(),
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    match client.get_order(request).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_credentials_file_of_a_running_service() {
    let dir = std::env::temp_dir().join(format!("waybill-sighup-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("credentials.json");
    let eu = caller("shop-eu", "eu-key");
    let us = caller("shop-us", "us-key");
    // The first version is padded to the second's length.
    let before = format!(r#"{{"callers":[{eu}]{}}}"#, " ".repeat(us.len() + 1));
    let after = format!(r#"{{"callers":[{eu},{us}]}}"#);
    assert_eq!(before.len(), after.len());
    write_private(&file, &before);
    let modified = std::fs::metadata(&file).unwrap().modified().unwrap();

    let addr = format!("127.0.0.1:{}", free_port());
    let log = dir.join("orders.log");
    let child = Command::new(env!("CARGO_BIN_EXE_waybill"))
        .args(["orders", "--listen", &addr, "--database-url"])
        .arg(format!("sqlite://{}?mode=rwc", dir.join("w.db").display()))
        .arg("--credentials-file")
        .arg(&file)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .env_remove("WAYBILL_LOG_FORMAT")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let service = Service(child);

    let endpoint = Channel::from_shared(format!("http://{addr}")).unwrap();
    let channel = eventually(WAIT, "orders accepts connections", || {
        let endpoint = endpoint.clone();
        async move { endpoint.connect().await.ok() }
    })
    .await;
    let mut client = OrderServiceClient::new(channel);
    assert_eq!(get_order(&mut client, "eu-key").await, Code::NotFound);
    assert_eq!(
        get_order(&mut client, "us-key").await,
        Code::Unauthenticated
    );

    write_private(&file, &after);
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(modified)
        .unwrap();
    let sent = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());

    eventually(WAIT, "the added storefront is let in after SIGHUP", || {
        let mut client = client.clone();
        async move { get_order(&mut client, "us-key").await == Code::NotFound }
    })
    .await;
    assert_eq!(get_order(&mut client, "eu-key").await, Code::NotFound);

    drop(service);
    let log = std::fs::read_to_string(&log).unwrap();
    let reloaded = log
        .lines()
        .find(|line| line.contains("credentials reloaded"))
        .unwrap_or_else(|| panic!("no reload logged: {log}"));
    assert!(reloaded.contains("callers=2"), "{reloaded}");
    assert!(reloaded.contains("sighup"), "{reloaded}");
    assert!(!log.contains(&hash_api_key("us-key")), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}
