//! The hyper binding of a stream: a pump task drives the [`EventStream`]
//! into a small bounded channel that [`SseBody`] drains.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

use super::{EventStream, Next, Stop, StreamPlan, FINAL_FRAME_WAIT};

/// Chunks buffered between a stream's pump and its response body.
const STREAM_CHANNEL_CHUNKS: usize = 4;

/// The response body of a stream served by hyper (HTTP/2, and HTTP/1.1
/// requests the fast path passes on): a pump task drives the
/// [`EventStream`] into a small bounded channel that this body drains, so a
/// slow client holds at most a few chunks in memory.
pub struct SseBody {
    initial: Option<Bytes>,
    receiver: mpsc::Receiver<Bytes>,
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(initial) = self.initial.take() {
            return Poll::Ready(Some(Ok(Frame::data(initial))));
        }
        self.receiver
            .poll_recv(context)
            .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Starts the pump task and returns the body it feeds.
pub async fn open_stream(plan: StreamPlan) -> SseBody {
    let mut stream = EventStream::open(plan).await;
    let initial = stream.initial.take();
    let (sender, receiver) = mpsc::channel(STREAM_CHANNEL_CHUNKS);
    tokio::spawn(async move {
        loop {
            let chunk = tokio::select! {
                biased;
                () = sender.closed() => { stream.end(Stop::ClientGone); return }
                next = stream.next() => next,
            };
            match chunk {
                Next::Chunk(chunk) => {
                    tokio::select! {
                        biased;
                        stop = stream.interrupted() => stream.end(stop),
                        sent = sender.send(chunk) => if sent.is_err() { stream.end(Stop::ClientGone) },
                    }
                }
                Next::Farewell(bytes) => {
                    let _ = tokio::time::timeout(FINAL_FRAME_WAIT, sender.send(bytes)).await;
                }
                Next::End => return,
            }
        }
    });
    SseBody { initial, receiver }
}
