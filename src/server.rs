//! Starting and stopping the shards.
//!
//! Every shard gets its own listening socket bound to the same address with
//! `SO_REUSEPORT`, so the kernel spreads incoming connections over the
//! shards and no shard ever hands a connection to another. The first socket
//! is bound alone so a port of 0 (tests) resolves to one concrete port that
//! the others then share.
//!
//! `SO_REUSEPORT` would just as gladly let a *second* Cinder (same user) join
//! the group, and the kernel would then hand it about half of the
//! connections. So before binding a concrete port, [`start`] checks that no
//! other process holds the address (with a probe socket, see
//! `ensure_address_free`) and refuses to start with
//! [`StartError::AddressInUse`] otherwise.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use mio::{Poll, Token, Waker};
use socket2::{Domain, Protocol, Socket, Type};

use crate::cluster;
use crate::cluster::bus::{self, BusError, BusSetup, BusThread};
use crate::config::Config;
use crate::fanout::broadcast::NodeId;
use crate::hooks::HookPool;
use crate::lifecycle::delivery::{self, DeliveryConfig, DeliveryThread};
use crate::longpoll::random_bytes;
use crate::longpoll::token::TokenSigner;
use crate::metrics::ShardMetrics;
use crate::phoenix_pubsub::bridge::{
    self as pubsub_bridge, BridgeError, BridgeSetup, BridgeThread,
};
use crate::shard::inbox::{inbox, ShardInbox, ShardMessage};
use crate::shard::{Shard, ShardSetup};

/// Pending connections the kernel may queue per shard listener; large so a
/// reconnect storm of thousands of clients is not refused at the SYN.
const LISTEN_BACKLOG: i32 = 4096;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Another process (another Cinder, or any other server) already listens
    /// on the address. With `SO_REUSEPORT` the kernel would otherwise let a
    /// second Cinder share the port and split the connections between the two.
    #[error(
        "cannot listen on {addr}: another process already holds this address \
         (another cinder, or any other server); stop it or choose another address"
    )]
    AddressInUse {
        /// The address.
        addr: SocketAddr,
    },
    /// Binding or configuring a listening socket failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// Creating a poll, waker or thread failed.
    #[error("cannot start shard {shard}: {source}")]
    Shard {
        /// The shard index.
        shard: usize,
        /// The OS error.
        source: io::Error,
    },
    /// Starting the backend hook workers failed.
    #[error("cannot start the webhook workers: {0}")]
    Hooks(io::Error),
    /// The operating system gave no randomness for the session key.
    #[error("cannot generate the long-poll session key: {0}")]
    Random(io::Error),
    /// The cluster bus could not start.
    #[error(transparent)]
    Cluster(#[from] BusError),
    /// The Phoenix PubSub bridge could not start.
    #[error(transparent)]
    PhoenixPubSub(#[from] BridgeError),
}

/// A running server: its address, and the means to stop it.
pub struct ServerHandle {
    local_addr: SocketAddr,
    inboxes: Arc<[ShardInbox]>,
    /// Set when a stop is asked, before any shard hears it.
    stopping: Arc<AtomicBool>,
    threads: Vec<JoinHandle<io::Result<()>>>,
    /// The cluster bus, when `[cluster]` is on.
    bus: Option<BusThread>,
    /// The lifecycle events' delivery thread, when events are on.
    events: Option<DeliveryThread>,
    /// The Phoenix PubSub bridge, when `[phoenix_pubsub]` is on.
    bridge: Option<BridgeThread>,
    /// How long the events' delivery may take at shutdown.
    shutdown_timeout: std::time::Duration,
}

impl ServerHandle {
    /// The address the shards listen on (with the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Number of shards running.
    pub fn shard_count(&self) -> usize {
        self.inboxes.len()
    }

    /// Asks every shard to stop gracefully (close WebSockets with 1012, flush).
    pub fn shutdown(&self) {
        self.stop_signal().stop();
    }

    /// A handle that can stop the server from another thread (a signal
    /// watcher) while this handle waits in [`ServerHandle::join`].
    pub fn stop_signal(&self) -> StopSignal {
        StopSignal {
            inboxes: self.inboxes.clone(),
            stopping: self.stopping.clone(),
        }
    }

    /// Waits for every shard to exit, then stops the cluster bus (which
    /// tells the other nodes this one left).
    pub fn join(self) -> io::Result<()> {
        let mut result = Ok(());
        for thread in self.threads {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(_) => result = Err(io::Error::other("a shard thread panicked")),
            }
        }
        if let Some(bridge) = self.bridge {
            bridge.stop();
        }
        // The shards are gone; the bus tells the other nodes and releases
        // what this node held (its events queued too). Deliver what is
        // pending within the shutdown timeout.
        if let Some(bus) = self.bus {
            bus.stop();
        }
        if let Some(events) = self.events {
            events.stop(std::time::Instant::now() + self.shutdown_timeout);
        }
        result
    }

    /// Stops the server and waits for it.
    pub fn stop(self) -> io::Result<()> {
        self.shutdown();
        self.join()
    }
}

/// Stops a server from any thread.
#[derive(Clone)]
pub struct StopSignal {
    inboxes: Arc<[ShardInbox]>,
    stopping: Arc<AtomicBool>,
}

impl StopSignal {
    /// Asks every shard to stop gracefully. The flag is set first, so a
    /// shard that stops before another hears of it is still known to be
    /// stopping by the other (lifecycle events then say `shutdown`).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        for inbox in self.inboxes.iter() {
            inbox.send(ShardMessage::Shutdown);
        }
    }
}

/// Binds the listeners and starts one thread per shard.
pub fn start(config: Config) -> Result<ServerHandle, StartError> {
    let config = Arc::new(config);
    let shards = config.shard_count();
    if config.server.bind.port() != 0 {
        ensure_address_free(config.server.bind)?;
    }
    // A port of 0 needs no check: the kernel never picks an ephemeral port
    // that another socket holds, not even one in a `SO_REUSEPORT` group.
    let first = bind_listener(config.server.bind)?;
    let local_addr = first
        .local_addr()
        .and_then(|a| {
            a.as_socket()
                .ok_or_else(|| io::Error::other("not an IP socket"))
        })
        .map_err(|source| StartError::Listen {
            addr: config.server.bind,
            source,
        })?;
    let mut listeners = vec![first];
    for _ in 1..shards {
        listeners.push(bind_listener(local_addr)?);
    }

    let mut polls = Vec::with_capacity(shards);
    let mut inboxes = Vec::with_capacity(shards);
    let mut receivers = Vec::with_capacity(shards);
    for shard in 0..shards {
        let poll = Poll::new().map_err(|source| StartError::Shard { shard, source })?;
        let waker = Waker::new(poll.registry(), Token(usize::MAX - 2))
            .map_err(|source| StartError::Shard { shard, source })?;
        let (sender, receiver) = inbox(waker);
        polls.push(poll);
        inboxes.push(sender);
        receivers.push(receiver);
    }
    let inboxes: Arc<[ShardInbox]> = inboxes.into();
    let stopping = Arc::new(AtomicBool::new(false));
    let metrics: Arc<[ShardMetrics]> = (0..shards).map(|_| ShardMetrics::default()).collect();
    // One pool for all shards: webhook calls are rare next to deliveries,
    // and the backend sees one bounded set of connections.
    let hooks = match config.webhook.url {
        Some(_) => Some(HookPool::start(&config.webhook).map_err(StartError::Hooks)?),
        None => None,
    };

    let mut instance = [0u8; 8];
    random_bytes(&mut instance).map_err(StartError::Random)?;
    let instance = u64::from_be_bytes(instance);
    let signer = match &config.socket.longpoll.secret {
        Some(secret) => TokenSigner::new(secret.as_bytes(), instance),
        None => {
            let mut secret = [0u8; 32];
            random_bytes(&mut secret).map_err(StartError::Random)?;
            if config.socket.longpoll.enabled {
                tracing::info!(
                    "socket.longpoll.secret is not set: long-poll sessions use a key made at start, \
                     so they do not survive a restart (clients open new ones)"
                );
            }
            TokenSigner::new(&secret, instance)
        }
    };

    // The cluster's queues exist before the shards (which hold the
    // handle); the bus thread starts once every shard's inbox does.
    let (cluster, bus_queues) = match config.cluster.enabled() {
        true => {
            let (handle, queues) = cluster::queues(&config.cluster);
            (Some(handle), Some(queues))
        }
        false => (None, None),
    };
    let cluster_name = config.cluster.enabled().then(|| {
        config
            .cluster
            .node_name
            .clone()
            .unwrap_or_else(|| cluster::default_node_name(instance))
    });

    // The Phoenix PubSub bridge: its handle goes to every shard.
    let (bridge_handle, bridge) = if config.phoenix_pubsub.enabled() {
        let node_name = config
            .phoenix_pubsub
            .node_name_with(cluster_name.as_deref())
            .map_err(BridgeError::NodeName)?;
        let setup = BridgeSetup {
            config: config.phoenix_pubsub.clone(),
            node_name,
            node: NodeId(instance),
            shards: inboxes.clone(),
            cluster: cluster.as_ref().map(|c| c.status().clone()),
        };
        let (handle, thread) = pubsub_bridge::spawn(setup)?;
        (Some(handle), Some(thread))
    } else {
        (None, None)
    };

    // Lifecycle events: one delivery thread, one queue per shard, when the
    // backend asked for events and some route has `lifecycle`.
    let events_wanted = config.webhook.url.is_some()
        && !config.webhook.events.is_empty()
        && config.routes.iter().any(|r| r.lifecycle);
    let (mut producers, events_thread) = if events_wanted {
        let url = config
            .webhook
            .url
            .as_deref()
            .unwrap_or_default()
            .trim_end_matches('/');
        let delivery = DeliveryConfig {
            url: format!("{url}/events"),
            secret: config.webhook.secret.clone(),
            batch_ms: config.webhook.events_batch_ms,
            max_batch: config.webhook.events_max_batch,
            queue: config.webhook.events_queue,
            timeout_ms: config.webhook.timeout_ms,
        };
        // One queue per shard, and one more for the cluster bus (which
        // reports topics and presence keys judged by Redis).
        let queues = shards + usize::from(cluster.is_some());
        let (producers, thread, metrics) =
            delivery::spawn(delivery, queues).map_err(StartError::Hooks)?;
        let producers: Vec<_> = producers
            .into_iter()
            .map(|p| Some((p, metrics.clone())))
            .collect();
        (producers, Some(thread))
    } else {
        ((0..shards).map(|_| None).collect(), None)
    };

    let mut threads = Vec::with_capacity(shards);
    for (id, ((poll, listener), receiver)) in
        polls.into_iter().zip(listeners).zip(receivers).enumerate()
    {
        let setup = ShardSetup {
            id,
            poll,
            listener: mio::net::TcpListener::from_std(listener.into()),
            inbox: receiver,
            peers: inboxes.clone(),
            config: config.clone(),
            metrics: metrics.clone(),
            hooks: hooks.clone(),
            signer: signer.clone(),
            instance,
            cluster: cluster.clone(),
            stopping: stopping.clone(),
            events: producers[id].take(),
            bridge: bridge_handle.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("cinder-shard-{id}"))
            .spawn(move || {
                let result = Shard::new(setup).and_then(Shard::run);
                if let Err(e) = &result {
                    tracing::error!(shard = id, error = %e, "shard failed");
                }
                result
            })
            .map_err(|source| StartError::Shard { shard: id, source })?;
        threads.push(thread);
    }
    let bus = match (cluster, bus_queues) {
        (Some(handle), Some(queues)) => {
            let name = cluster_name.clone().unwrap_or_default();
            tracing::info!(node = %name, redis = config.cluster.redis.as_deref().unwrap_or(""), "cluster node");
            let setup = BusSetup {
                config: config.cluster.clone(),
                node: NodeId(instance),
                name,
                shards: inboxes.clone(),
                queues,
                status: handle.status().clone(),
                events: producers
                    .get_mut(shards)
                    .and_then(Option::take)
                    .map(|(producer, _)| (producer, config.webhook.event_set())),
            };
            match bus::spawn(setup) {
                Ok(bus) => Some(bus),
                Err(error) => {
                    StopSignal {
                        inboxes: inboxes.clone(),
                        stopping: stopping.clone(),
                    }
                    .stop();
                    if let Some(bridge) = bridge {
                        bridge.stop();
                    }
                    return Err(error.into());
                }
            }
        }
        _ => None,
    };
    tracing::info!(%local_addr, shards, "listening on {local_addr}");
    Ok(ServerHandle {
        local_addr,
        inboxes,
        stopping,
        bridge,
        threads,
        bus,
        events: events_thread,
        shutdown_timeout: config.shutdown_timeout(),
    })
}

/// Fails with [`StartError::AddressInUse`] when any other process listens on
/// `addr`, by binding (and at once closing) a probe socket *without*
/// `SO_REUSEPORT`.
///
/// Why a probe, and not simply a first shard socket without the option: on
/// Linux a `SO_REUSEPORT` group only forms from sockets that all had the
/// option set before `bind`, so a first socket bound without it could never
/// be shared by the other shards. The probe, having no `SO_REUSEPORT`, can
/// share with nobody: its bind fails with `EADDRINUSE` whenever a listening
/// socket holds the address, with or without `SO_REUSEPORT`, of any user,
/// on the same address or a wildcard that covers it. It does set
/// `SO_REUSEADDR`, so connections of an earlier run still in `TIME_WAIT` do
/// not count as a holder (on Linux, `SO_REUSEADDR` never allows binding over
/// a *listening* socket).
///
/// The probe is closed before the shard sockets bind, so two Cinders started
/// within the same instant could both pass it: the window is a few system
/// calls long, and this check is about the common mistake of starting a
/// second server on a port already in service, which it always catches.
fn ensure_address_free(addr: SocketAddr) -> Result<(), StartError> {
    let fail = |source| StartError::Listen { addr, source };
    let probe =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(fail)?;
    probe.set_reuse_address(true).map_err(fail)?;
    probe
        .bind(&addr.into())
        .map_err(|source| bind_error(addr, source))?;
    // Bound but never listening: closing it leaves nothing behind.
    drop(probe);
    Ok(())
}

/// A non-blocking listener with `SO_REUSEPORT`, so every shard can bind the
/// same address.
fn bind_listener(addr: SocketAddr) -> Result<Socket, StartError> {
    let fail = |source| StartError::Listen { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    socket.set_reuse_port(true).map_err(fail)?;
    socket.set_nonblocking(true).map_err(fail)?;
    // `EADDRINUSE` here means a holder that appeared after the probe.
    socket
        .bind(&addr.into())
        .map_err(|source| bind_error(addr, source))?;
    socket
        .listen(LISTEN_BACKLOG)
        .map_err(|source| bind_error(addr, source))?;
    Ok(socket)
}

/// The error for a failed `bind` or `listen`: [`StartError::AddressInUse`]
/// for `EADDRINUSE`, [`StartError::Listen`] for anything else (say, an
/// address of no local interface, or a privileged port).
fn bind_error(addr: SocketAddr, source: io::Error) -> StartError {
    if source.kind() == io::ErrorKind::AddrInUse {
        StartError::AddressInUse { addr }
    } else {
        StartError::Listen { addr, source }
    }
}
