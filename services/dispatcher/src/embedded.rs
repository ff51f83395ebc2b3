//! An embedded Kafka-protocol broker: librdkafka's in-process mock cluster, for `waybill dev`
//! and `waybill demo` (nothing to install) and for tests.
//!
//! It keeps everything in memory (nothing survives the process) and each partition keeps at
//! most 5 MiB, silently dropping older records: acceptable for a first run and a demo because
//! the dispatcher re-sends an order its partner has not confirmed within the handover deadline.
//! It has no Admin API, so topics are created through its own handle
//! ([`EmbeddedBroker::topic_creator`]).
//!
//! The mock cluster's handle is not `Send`, so it lives on a thread of its own and is driven
//! through a channel; that makes [`EmbeddedBroker`] shareable across tasks.

use std::{
    sync::{Arc, Mutex, mpsc},
    thread::JoinHandle,
};

use async_trait::async_trait;
use rdkafka::{error::KafkaError, mocking::MockCluster, types::RDKafkaErrorCode};

use crate::kafka::{TopicCreator, TopicError};

enum MockCommand {
    CreateTopic(String, i32, mpsc::Sender<Result<(), String>>),
    SetUp(bool, mpsc::Sender<Result<(), String>>),
}

struct MockThread {
    commands: Mutex<Option<mpsc::Sender<MockCommand>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl MockThread {
    fn call(
        &self,
        make: impl FnOnce(mpsc::Sender<Result<(), String>>) -> MockCommand,
    ) -> Result<(), String> {
        let (reply, answer) = mpsc::channel();
        let commands = self
            .commands
            .lock()
            .map_err(|_| "mock broker lock poisoned".to_owned())?;
        let sender = commands.as_ref().ok_or("mock broker stopped")?;
        sender
            .send(make(reply))
            .map_err(|_| "mock broker thread gone".to_owned())?;
        answer
            .recv()
            .map_err(|_| "mock broker thread gone".to_owned())?
    }
}

impl Drop for MockThread {
    fn drop(&mut self) {
        if let Ok(mut commands) = self.commands.lock() {
            commands.take();
        }
        if let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = thread.join();
        }
    }
}

/// A running in-process broker with one node.
#[derive(Clone)]
pub struct EmbeddedBroker {
    bootstrap: String,
    thread: Arc<MockThread>,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("bootstrap", &self.bootstrap)
            .finish()
    }
}

impl EmbeddedBroker {
    /// Starts the broker; it stops when the last clone is dropped.
    pub fn start() -> Result<Self, String> {
        let (commands, inbox) = mpsc::channel::<MockCommand>();
        let (ready, bootstrap) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let cluster = match MockCluster::new(1) {
                Ok(cluster) => cluster,
                Err(error) => {
                    let _ = ready.send(Err(error.to_string()));
                    return;
                }
            };
            let _ = ready.send(Ok::<_, String>(cluster.bootstrap_servers()));
            while let Ok(command) = inbox.recv() {
                match command {
                    MockCommand::CreateTopic(topic, partitions, reply) => {
                        let result = match cluster.create_topic(&topic, partitions, 1) {
                            Ok(())
                            | Err(KafkaError::MockCluster(RDKafkaErrorCode::TopicAlreadyExists)) => {
                                Ok(())
                            }
                            Err(error) => Err(error.to_string()),
                        };
                        let _ = reply.send(result);
                    }
                    MockCommand::SetUp(up, reply) => {
                        let result = if up {
                            cluster.broker_up(1)
                        } else {
                            cluster.broker_down(1)
                        };
                        let _ = reply.send(result.map_err(|e| e.to_string()));
                    }
                }
            }
        });
        let bootstrap = bootstrap
            .recv()
            .map_err(|_| "embedded broker thread died".to_owned())??;
        Ok(Self {
            bootstrap,
            thread: Arc::new(MockThread {
                commands: Mutex::new(Some(commands)),
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// `bootstrap.servers` for clients (a loopback address).
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// A topic creator that works on this broker.
    pub fn topic_creator(&self) -> Arc<dyn TopicCreator> {
        Arc::new(MockTopicCreator {
            thread: self.thread.clone(),
        })
    }

    /// Creates `topic` with `partitions` partitions (an existing topic is fine).
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), String> {
        self.thread
            .call(|reply| MockCommand::CreateTopic(topic.to_owned(), partitions, reply))
    }

    /// Takes the broker down (`false`) or brings it back (`true`), for outage tests.
    pub fn set_available(&self, up: bool) -> Result<(), String> {
        self.thread.call(|reply| MockCommand::SetUp(up, reply))
    }
}

/// Creates topics through the mock cluster's own handle (it has no Admin API).
#[derive(Clone)]
pub struct MockTopicCreator {
    thread: Arc<MockThread>,
}

impl std::fmt::Debug for MockTopicCreator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MockTopicCreator")
    }
}

#[async_trait]
impl TopicCreator for MockTopicCreator {
    async fn ensure_topic(&self, topic: &str) -> Result<(), TopicError> {
        self.thread
            .call(|reply| MockCommand::CreateTopic(topic.to_owned(), 3, reply))
            .map_err(|reason| TopicError {
                topic: topic.to_owned(),
                reason,
            })
    }
}
