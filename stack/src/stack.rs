//! A running stack: started in one place, stopped by construction.

use std::{net::SocketAddr, path::Path, time::Duration};

use waybill_dispatcher::{DispatcherDeps, embedded::EmbeddedBroker, kafka::KafkaSettings};
use waybill_orders::OrdersDeps;
use waybill_service_kit::{
    db::{Database, PoolSettings},
    grpc::ServerLimits,
    metrics::Metrics,
    security::ServerSecurity,
};

use crate::{
    error::StackError,
    ingest::{self, Ingest},
    listen::bind,
    services::Services,
    settings::{Broker, DispatcherSettings, StackMetrics, StackSettings},
};

/// How long a dropped stack waits for its services to stop before aborting them.
const DROP_GRACE: Duration = Duration::from_secs(10);

/// The running services of one system.
pub struct Stack {
    /// Where Orders listens.
    pub orders_addr: SocketAddr,
    /// Where the dispatcher's admin API listens, when it runs.
    pub dispatcher_addr: Option<SocketAddr>,
    /// The dispatcher's broker (`bootstrap.servers`), when it runs.
    pub brokers: Option<String>,
    /// The registries the services' series are in.
    pub metrics: StackMetrics,
    db: Database,
    ingest: Option<Ingest>,
    services: Services,
    /// Dropped after the services have stopped.
    embedded: Option<EmbeddedBroker>,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("orders_addr", &self.orders_addr)
            .field("dispatcher_addr", &self.dispatcher_addr)
            .field("ingest_addr", &self.ingest_addr())
            .field("brokers", &self.brokers)
            .finish_non_exhaustive()
    }
}

impl Stack {
    /// Binds every listener (a taken port fails before anything starts), connects to and
    /// migrates the database, seeds the catalog if asked, starts the embedded broker if asked,
    /// and starts the services: Orders, the dispatcher (reply-to: StatusIngest's address when
    /// it runs) and StatusIngest.
    pub async fn start(settings: StackSettings) -> Result<Self, StackError> {
        let StackSettings {
            database_url,
            seed_catalog,
            region,
            orders_listen,
            dispatcher,
            status_ingest,
            metrics,
            security,
        } = settings;
        let (orders_listener, orders_addr) = bind(orders_listen).await?;
        let dispatcher_listener = match &dispatcher {
            Some(dispatcher) => Some(bind(dispatcher.listen).await?),
            None => None,
        };
        let ingest_listener = match &status_ingest {
            Some(ingest) => Some(bind(ingest.listen).await?),
            None => None,
        };

        let services = Services::new();
        let db = connect(&database_url, seed_catalog, &services).await?;
        // One pool for every service: its series once, with Orders' (one registry for all in
        // `waybill dev`).
        db.register_metrics(&metrics.orders);
        let mut stack = Self {
            orders_addr,
            dispatcher_addr: dispatcher_listener.as_ref().map(|(_, addr)| *addr),
            brokers: None,
            metrics,
            db,
            ingest: None,
            services,
            embedded: None,
        };

        let orders = OrdersDeps {
            metrics: stack.metrics.orders.clone(),
            ..OrdersDeps::new(&stack.db, region.clone())
        };
        let limits = ServerLimits {
            security: security.clone(),
            ..ServerLimits::default()
        };
        stack.services.spawn("orders", |stop| {
            waybill_orders::serve(orders_listener, orders, limits, stop)
        });
        if let (Some(listener), Some(ingest)) = (ingest_listener, status_ingest) {
            let ingest_security = ServerSecurity {
                tls: ingest.tls.or_else(|| security.tls.clone()),
                ..security.clone()
            };
            stack.ingest = Some(Ingest::start(
                &stack.services,
                listener,
                &stack.db,
                (ingest.audience, ingest_security),
                &stack.metrics.status_ingest,
            ));
        }
        if let (Some((listener, _)), Some(dispatcher)) = (dispatcher_listener, dispatcher) {
            stack.start_dispatcher(listener, dispatcher, region, security)?;
        }
        Ok(stack)
    }

    /// Starts the dispatcher on `listener` (the embedded broker first, if asked).
    fn start_dispatcher(
        &mut self,
        listener: tokio::net::TcpListener,
        settings: DispatcherSettings,
        region: String,
        security: ServerSecurity,
    ) -> Result<(), StackError> {
        let DispatcherSettings { broker, relay, .. } = settings;
        let mut relay = relay;
        relay.region = region;
        if let Some(ingest) = &self.ingest {
            relay.reply_to = ingest.reply_to();
        }
        let (kafka, topic_creator) = match broker {
            Broker::Embedded => {
                let broker = EmbeddedBroker::start().map_err(StackError::Broker)?;
                for topic in [&relay.topics.audit, &relay.topics.order_events] {
                    broker
                        .create_topic(topic, 1)
                        .map_err(|e| StackError::Broker(format!("cannot create {topic}: {e}")))?;
                }
                let creator = broker.topic_creator();
                let kafka = KafkaSettings::new(broker.bootstrap_servers().to_owned());
                self.embedded = Some(broker);
                (kafka, Some(creator))
            }
            Broker::Kafka {
                settings,
                topic_creator,
            } => (settings, topic_creator),
        };
        self.brokers = Some(kafka.brokers.clone());
        let mut deps = DispatcherDeps::new(self.db.clone(), kafka, relay)
            .map_err(|e| StackError::Dispatcher(Box::new(e)))?;
        if let Some(creator) = topic_creator {
            deps.topic_creator = creator;
        }
        deps.metrics = self.metrics.dispatcher.clone();
        deps.limits = ServerLimits {
            security,
            ..deps.limits
        };
        self.services.spawn("dispatcher", |stop| {
            waybill_dispatcher::serve(listener, deps, stop)
        });
        Ok(())
    }

    /// Where StatusIngest listens (the orders' reply-to), when it runs.
    pub fn ingest_addr(&self) -> Option<SocketAddr> {
        self.ingest.as_ref().map(|ingest| ingest.addr)
    }

    /// The database every service uses.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Whether the dispatcher's broker is the embedded one.
    pub fn embedded(&self) -> bool {
        self.embedded.is_some()
    }

    /// Serves `metrics` on `GET http://<returned address>/metrics` until the stack stops.
    pub async fn serve_metrics(
        &self,
        metrics: &Metrics,
        listen: SocketAddr,
    ) -> Result<SocketAddr, StackError> {
        let (listener, addr) = bind(listen).await?;
        let metrics = metrics.clone();
        self.services.spawn("metrics endpoint", |stop| {
            waybill_service_kit::metrics::serve(listener, metrics, stop)
        });
        Ok(addr)
    }

    /// Stops StatusIngest and waits until it has finished (its port refuses connections until
    /// [`Stack::start_status_ingest`]). Nothing happens when the stack runs none.
    pub async fn stop_status_ingest(&self) {
        self.services.stop_one(ingest::SERVICE).await;
    }

    /// Starts StatusIngest again on the same address, with the same counters.
    ///
    /// # Panics
    ///
    /// When the stack runs no StatusIngest.
    pub async fn start_status_ingest(&self) -> Result<(), StackError> {
        let ingest = self
            .ingest
            .as_ref()
            .expect("this stack runs no StatusIngest");
        ingest.restart(&self.services, &self.db).await
    }

    /// Waits until a service stops without being asked to (a lost port, a broken database),
    /// and says which and why. Pending for as long as every service runs.
    pub async fn failure(&self) -> StackError {
        self.services.failure().await
    }

    /// Stops every service and waits until each has finished (in-flight requests drained, the
    /// relay's leases released), then closes the database and stops the embedded broker.
    /// Returns the first error a service ended with. Dropping the stack does the same, without
    /// the error (see [`Drop`]).
    pub async fn stop(mut self) -> Result<(), StackError> {
        let mut panicked = Vec::new();
        for (service, task) in self.services.cancel_all() {
            if task.await.is_err() {
                panicked.push(StackError::Panicked { service });
            }
        }
        self.db.close().await;
        drop(self.embedded.take());
        self.services.first_error(panicked).map_or(Ok(()), Err)
    }
}

/// Stopping by construction: every service is cancelled and, on a multi-threaded runtime,
/// awaited for up to [`DROP_GRACE`] as [`Stack::stop`] does, and the pool closed; whatever is
/// still running then is aborted, and an error a service ended with is printed. On a
/// current-thread runtime the services cannot run while this thread waits: they are cancelled
/// and aborted.
impl Drop for Stack {
    fn drop(&mut self) {
        let tasks = self.services.cancel_all();
        if tasks.is_empty() {
            // Stopped already (`stop`), or nothing left to stop.
            return;
        }
        let aborts: Vec<_> = tasks.iter().map(|(_, task)| task.abort_handle()).collect();
        if let Ok(runtime) = tokio::runtime::Handle::try_current()
            && runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
        {
            let db = self.db.clone();
            tokio::task::block_in_place(|| {
                runtime.block_on(async {
                    let stopped = tokio::time::timeout(DROP_GRACE, async {
                        for (_, task) in tasks {
                            let _ = task.await;
                        }
                    })
                    .await;
                    if stopped.is_err() {
                        eprintln!("stack: a service did not stop within {DROP_GRACE:?}");
                    }
                    db.close().await;
                });
            });
        }
        for abort in aborts {
            abort.abort();
        }
        if let Some(error) = self.services.first_error(Vec::new()) {
            eprintln!("stack: {}", error.chain());
        }
    }
}

/// Connects to and migrates `url` (creating a SQLite file's directory), and seeds the catalog
/// if asked.
async fn connect(url: &str, seed: bool, services: &Services) -> Result<Database, StackError> {
    if let Some(path) = url.strip_prefix("sqlite://")
        && let Some(parent) = Path::new(path.split('?').next().unwrap_or(path)).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|e| StackError::Database(Box::new(e)))?;
    }
    let db = Database::connect(url, &PoolSettings::default(), services.token().clone())
        .await
        .map_err(|e| StackError::Database(Box::new(e)))?;
    if seed {
        waybill_orders::store::seed_catalog(&db)
            .await
            .map_err(|e| StackError::Database(Box::new(e)))?;
    }
    Ok(db)
}
