//! Pub/sub for one node: wake-ups of the session logs its readers watch, and
//! the node's own notice channel (stream replaced, cancel requested).
//!
//! One dedicated pub/sub connection per node. A session's wake channel is
//! subscribed while some local reader holds its `watch` receiver (the
//! subscription is confirmed before `watch` returns, so a reader that reads
//! the log afterwards cannot miss the wake of a later append). Pub/sub drops
//! messages when a connection breaks, so after every reconnect all channels
//! are subscribed again and every watch is bumped: readers re-read the log.
//! A wake-up is a hint, never data.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::PubSubSink;
use tokio::sync::{broadcast, watch};
use tokio::task::AbortHandle;

use crate::storage::NodeNotice;

/// How many notices a node may fall behind before it misses some (lease
/// renewal and holder checks are the backstop).
const NOTICE_CAPACITY: usize = 256;
/// A subscribe or ping that takes longer marks the connection broken.
const PUBSUB_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an idle pub/sub connection is checked.
const PING_EVERY: Duration = Duration::from_secs(5);
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub(super) struct WakeHub {
    inner: Arc<Inner>,
}

struct Inner {
    channels: Mutex<HashMap<String, watch::Sender<u64>>>,
    sink: Mutex<Option<PubSubSink>>,
    notices: broadcast::Sender<NodeNotice>,
    node_channel: String,
    task: Mutex<Option<AbortHandle>>,
    /// Whether the pub/sub connection is up and subscribed.
    connected: watch::Sender<bool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl WakeHub {
    /// Starts the pub/sub task; it runs until the last handle is dropped.
    pub(super) fn start(client: redis::Client, node_channel: String) -> Self {
        let inner = Arc::new(Inner {
            channels: Mutex::new(HashMap::new()),
            sink: Mutex::new(None),
            notices: broadcast::channel(NOTICE_CAPACITY).0,
            node_channel,
            task: Mutex::new(None),
            connected: watch::channel(false).0,
        });
        let task = tokio::spawn(run(client, Arc::downgrade(&inner)));
        *lock(&inner.task) = Some(task.abort_handle());
        WakeHub { inner }
    }

    /// Waits until the pub/sub connection is subscribed (this node's notice
    /// channel included). False if `limit` passed first.
    pub(super) async fn wait_connected(&self, limit: Duration) -> bool {
        let mut connected = self.inner.connected.subscribe();
        tokio::time::timeout(limit, connected.wait_for(|up| *up))
            .await
            .is_ok_and(|result| result.is_ok())
    }

    pub(super) fn notices(&self) -> &broadcast::Sender<NodeNotice> {
        &self.inner.notices
    }

    /// A receiver bumped whenever the channel's log may have grown.
    pub(super) async fn watch(&self, channel: String) -> watch::Receiver<u64> {
        let (receiver, subscribe) = {
            let mut channels = lock(&self.inner.channels);
            match channels.get(&channel) {
                Some(sender) => (sender.subscribe(), false),
                None => {
                    let (sender, receiver) = watch::channel(0);
                    channels.insert(channel.clone(), sender);
                    (receiver, true)
                }
            }
        };
        let sink = lock(&self.inner.sink).clone();
        if let (true, Some(mut sink)) = (subscribe, sink) {
            // On failure the reconnect loop subscribes it again.
            let _ = tokio::time::timeout(PUBSUB_TIMEOUT, sink.subscribe(&channel)).await;
        }
        receiver
    }
}

/// Drops the channels no local reader watches any more. A channel that a
/// `watch` call re-added meanwhile is subscribed again and bumped, so its
/// reader re-reads the log even if a wake fell between the two.
async fn sweep(inner: &Inner, sink: &mut PubSubSink) -> bool {
    let unused: Vec<String> = {
        let mut channels = lock(&inner.channels);
        let unused: Vec<String> = channels
            .iter()
            .filter(|(_, sender)| sender.receiver_count() == 0)
            .map(|(name, _)| name.clone())
            .collect();
        for name in &unused {
            channels.remove(name);
        }
        unused
    };
    if unused.is_empty() {
        return true;
    }
    if !matches!(
        tokio::time::timeout(PUBSUB_TIMEOUT, sink.unsubscribe(&unused)).await,
        Ok(Ok(()))
    ) {
        return false;
    }
    let readded: Vec<String> = {
        let channels = lock(&inner.channels);
        unused
            .into_iter()
            .filter(|name| channels.contains_key(name))
            .collect()
    };
    if readded.is_empty() {
        return true;
    }
    let subscribed = matches!(
        tokio::time::timeout(PUBSUB_TIMEOUT, sink.subscribe(&readded)).await,
        Ok(Ok(()))
    );
    let channels = lock(&inner.channels);
    for name in &readded {
        if let Some(sender) = channels.get(name) {
            sender.send_modify(|_| {});
        }
    }
    subscribed
}

async fn run(client: redis::Client, inner: Weak<Inner>) {
    let mut backoff = RECONNECT_MIN;
    loop {
        if inner.strong_count() == 0 {
            return;
        }
        if let Ok(Ok(pubsub)) =
            tokio::time::timeout(PUBSUB_TIMEOUT, client.get_async_pubsub()).await
        {
            let (sink, stream) = pubsub.split();
            if serve(&inner, sink, stream).await {
                backoff = RECONNECT_MIN;
            }
        }
        if let Some(inner) = inner.upgrade() {
            *lock(&inner.sink) = None;
            inner.connected.send_replace(false);
            // Readers re-read now: if Redis is gone their read fails and
            // their streams end with a reconnect hint at once, rather than
            // at their next heartbeat.
            for sender in lock(&inner.channels).values() {
                sender.send_modify(|_| {});
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

/// Serves one pub/sub connection until it breaks. Returns whether it got as
/// far as subscribing.
async fn serve(
    inner: &Weak<Inner>,
    mut sink: PubSubSink,
    mut stream: redis::aio::PubSubStream,
) -> bool {
    let Some(strong) = inner.upgrade() else {
        return false;
    };
    // The sink first, then the snapshot: a channel added in between is
    // subscribed by its own `watch` call.
    *lock(&strong.sink) = Some(sink.clone());
    let mut channels: Vec<String> = lock(&strong.channels).keys().cloned().collect();
    channels.push(strong.node_channel.clone());
    match tokio::time::timeout(PUBSUB_TIMEOUT, sink.subscribe(&channels)).await {
        Ok(Ok(())) => {}
        _ => return false,
    }
    // Anything published while disconnected was dropped: wake every reader.
    for sender in lock(&strong.channels).values() {
        sender.send_modify(|_| {});
    }
    strong.connected.send_replace(true);
    drop(strong);
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            message = stream.next() => {
                let Some(message) = message else { return true };
                let Some(strong) = inner.upgrade() else { return true };
                dispatch(&strong, &message);
            }
            _ = ping.tick() => {
                let alive = tokio::time::timeout(PUBSUB_TIMEOUT, sink.ping::<String>()).await;
                if !matches!(alive, Ok(Ok(_))) {
                    return true;
                }
                let Some(strong) = inner.upgrade() else { return true };
                if !sweep(&strong, &mut sink).await {
                    return true;
                }
            }
        }
    }
}

fn dispatch(inner: &Inner, message: &redis::Msg) {
    let channel = message.get_channel_name();
    if channel == inner.node_channel {
        // A notice that does not parse came from something else; ignore it.
        if let Ok(notice) = serde_json::from_slice::<NodeNotice>(message.get_payload_bytes()) {
            let _ = inner.notices.send(notice);
        }
        return;
    }
    let seq = std::str::from_utf8(message.get_payload_bytes())
        .ok()
        .and_then(|text| text.parse::<u64>().ok())
        .unwrap_or(0);
    if let Some(sender) = lock(&inner.channels).get(channel) {
        sender.send_modify(|newest| *newest = (*newest).max(seq));
    }
}
