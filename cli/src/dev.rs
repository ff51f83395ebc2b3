//! `waybill dev`: every service built so far, in one process, on embedded storage and an
//! embedded broker, with two example partners enrolled and routed.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use waybill_dispatcher::{
    DispatcherDeps, RelaySettings, embedded::EmbeddedBroker, kafka::KafkaSettings,
};
use waybill_orders::OrdersDeps;
use waybill_proto::v1::{self as pb, dispatch_admin_client::DispatchAdminClient};
use waybill_service_kit::{
    db::{Database, PoolSettings},
    grpc::{self, ServerLimits},
};

/// Settings of `waybill dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Where the Orders service listens.
    #[arg(long, env = "WAYBILL_ORDERS_LISTEN", default_value = "127.0.0.1:50051")]
    orders_listen: SocketAddr,
    /// Where the dispatcher's admin API listens.
    #[arg(
        long,
        env = "WAYBILL_DISPATCHER_LISTEN",
        default_value = "127.0.0.1:50052"
    )]
    dispatcher_listen: SocketAddr,
    /// Where StatusIngest listens (partners' ReportStatus).
    #[arg(
        long,
        env = "WAYBILL_STATUS_INGEST_LISTEN",
        default_value = "127.0.0.1:50053"
    )]
    status_ingest_listen: SocketAddr,
    /// Where every service's Prometheus metrics are served (`GET /metrics`).
    #[arg(long, env = "WAYBILL_METRICS_LISTEN", default_value = "127.0.0.1:9464")]
    metrics_listen: SocketAddr,
    /// The audience report tokens must carry here.
    #[arg(long, env = "WAYBILL_TOKEN_AUDIENCE", default_value = "waybill-local")]
    audience: String,
    /// Storage; the embedded default keeps everything in `.waybill/` under the current directory.
    #[arg(
        long,
        env = "WAYBILL_DATABASE_URL",
        default_value = "sqlite://.waybill/waybill.db"
    )]
    database_url: String,
    /// A real Kafka broker (`host:port,…`) instead of the embedded in-memory one.
    #[arg(long, env = "WAYBILL_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// Name of this Waybill region.
    #[arg(long, env = "WAYBILL_REGION", default_value = "local")]
    region: String,
}

/// The example partners `waybill dev` enrolls, and the countries each ships to.
const EXAMPLE_PARTNERS: &[(&str, &str, &[&str])] = &[
    (
        "local-express",
        "Local Express (acknowledges at once, reports shipped later)",
        &["US"],
    ),
    (
        "distance-freight",
        "Distance Freight (acknowledges once with a tracking id)",
        &["CA", "MX", "GB", "DE", "FR", "NL", "JP", "AU"],
    ),
];

/// Runs until `shutdown`.
pub async fn run(args: DevArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Bind first: a taken port fails before anything else starts.
    let orders_listener = bind(args.orders_listen).await?;
    let dispatcher_listener = bind(args.dispatcher_listen).await?;
    let orders_addr = orders_listener.local_addr()?;
    let ingest_listener = bind(args.status_ingest_listen).await?;
    let ingest_addr = ingest_listener.local_addr()?;
    let dispatcher_addr = dispatcher_listener.local_addr()?;
    let metrics_listener = bind(args.metrics_listen).await?;
    let metrics_addr = metrics_listener.local_addr()?;
    // One registry for the services of this process: one scrape shows them all.
    let metrics = waybill_service_kit::metrics::Metrics::new();

    let db = Database::connect(
        &args.database_url,
        &PoolSettings::default(),
        shutdown.clone(),
    )
    .await?;
    waybill_orders::store::seed_catalog(&db).await?;

    // Kept alive until the end of this function: dropping it stops the broker.
    let embedded = match &args.kafka_brokers {
        Some(_) => None,
        None => Some(
            EmbeddedBroker::start()
                .map_err(|e| anyhow::anyhow!("cannot start the embedded broker: {e}"))?,
        ),
    };
    let brokers = match (&args.kafka_brokers, &embedded) {
        (Some(brokers), _) => brokers.clone(),
        (None, Some(broker)) => broker.bootstrap_servers().to_owned(),
        (None, None) => unreachable!("one of the two is set"),
    };
    let relay = RelaySettings {
        region: args.region.clone(),
        ..RelaySettings::default()
    };
    let kafka = KafkaSettings::new(brokers.clone());
    if let Some(broker) = &embedded {
        for topic in [&relay.topics.audit, &relay.topics.order_events] {
            broker
                .create_topic(topic, 1)
                .map_err(|e| anyhow::anyhow!("cannot create topic {topic}: {e}"))?;
        }
    }
    let mut dispatcher = DispatcherDeps::new(db.clone(), kafka, relay)?;
    if let Some(broker) = &embedded {
        dispatcher.topic_creator = broker.topic_creator();
    }
    dispatcher.metrics = metrics.clone();

    let orders = tokio::spawn(waybill_orders::serve(
        orders_listener,
        OrdersDeps {
            metrics: metrics.clone(),
            ..OrdersDeps::new(&db, args.region.clone())
        },
        ServerLimits::default(),
        shutdown.clone(),
    ));
    let relay = tokio::spawn(waybill_dispatcher::serve(
        dispatcher_listener,
        dispatcher,
        shutdown.clone(),
    ));
    enroll_example_partners(dispatcher_addr).await?;

    println!("waybill dev is running (ctrl-c stops it)");
    println!("  storage        {}", args.database_url);
    match &embedded {
        Some(_) => {
            println!("  kafka          {brokers} (embedded, in memory: nothing survives a restart)")
        }
        None => println!("  kafka          {brokers}"),
    }
    println!("  orders         grpc://{orders_addr}  (waybill.v1.OrderService)");
    println!("  dispatcher     grpc://{dispatcher_addr}  (waybill.v1.DispatchAdmin)");
    for (id, _, countries) in EXAMPLE_PARTNERS {
        println!("  partner        {id} ships to {}", countries.join(", "));
    }
    println!(
        "  status-ingest  grpc://{ingest_addr}  (waybill.v1.StatusIngest, token audience {:?})",
        args.audience
    );
    println!("  metrics        http://{metrics_addr}/metrics  (Prometheus)");
    tokio::spawn(waybill_service_kit::metrics::serve(
        metrics_listener,
        metrics.clone(),
        shutdown.clone(),
    ));
    println!();
    println!("try:");
    println!("  grpcurl -plaintext {orders_addr} list");
    println!(
        "  grpcurl -plaintext -d '{{\"idempotency_key\":\"first\",\"customer\":{{\"id\":\"c1\",\"name\":\"Ada\",\"email\":\"ada@example.com\"}},\"shipping_address\":{{\"line1\":\"1 Main St\",\"city\":\"Springfield\",\"country_code\":\"US\"}},\"lines\":[{{\"sku\":\"MUG-001\",\"quantity\":2}}]}}' {orders_addr} waybill.v1.OrderService/PlaceOrder"
    );
    println!(
        "  grpcurl -plaintext -d '{{\"filter\":{{\"state\":\"DISPATCH_STATE_SENT\"}}}}' {dispatcher_addr} waybill.v1.DispatchAdmin/ListDispatches"
    );
    println!(
        "  scripts/report-status-grpcurl.sh <order id> local-express {dispatcher_addr} {ingest_addr}   (a partner's signed report)"
    );

    let ingest = tokio::spawn(waybill_status_ingest::serve(
        ingest_listener,
        waybill_status_ingest::IngestDeps {
            registry: metrics.clone(),
            ..waybill_status_ingest::IngestDeps::new(&db, args.audience.clone())
        },
        ServerLimits::default(),
        shutdown.clone(),
    ));
    let (orders, relay, ingest) = tokio::join!(orders, relay, ingest);
    db.close().await;
    drop(embedded);
    orders.context("orders task")??;
    relay.context("dispatcher task")??;
    ingest.context("status ingest task")??;
    Ok(())
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    grpc::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// Enrolls the example partners (creating their topics) and routes, through the admin API as
/// an operator would. Idempotent: enrolling again updates.
async fn enroll_example_partners(admin: SocketAddr) -> anyhow::Result<()> {
    let mut client = DispatchAdminClient::connect(format!("http://{admin}"))
        .await
        .context("cannot reach the dispatcher admin API")?;
    for (id, name, countries) in EXAMPLE_PARTNERS {
        client
            .enroll_partner(pb::EnrollPartnerRequest {
                partner: Some(pb::Partner {
                    id: (*id).to_owned(),
                    display_name: (*name).to_owned(),
                    enabled: true,
                    handover_deadline: Some(prost_types::Duration {
                        seconds: Duration::from_secs(120).as_secs() as i64,
                        nanos: 0,
                    }),
                    resend_budget: Some(3),
                    ..Default::default()
                }),
            })
            .await
            .with_context(|| format!("cannot enroll partner {id}"))?;
        for country in *countries {
            client
                .set_route(pb::SetRouteRequest {
                    route: Some(pb::Route {
                        id: format!("{id}-{}", country.to_ascii_lowercase()),
                        partner_id: (*id).to_owned(),
                        country_code: (*country).to_owned(),
                        priority: 100,
                        enabled: true,
                        ..Default::default()
                    }),
                })
                .await
                .with_context(|| format!("cannot route {country} to {id}"))?;
        }
    }
    Ok(())
}
