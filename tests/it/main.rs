//! The integration test binary: every test here talks to a real gateway over
//! real sockets.

mod support;

mod auth;
mod binary;
mod browser;
mod cluster;
mod deploy;
mod docs;
mod durable;
mod errors;
mod event_log;
mod external_agents;
mod fast_path;
mod hardening;
mod jobs;
mod limits;
mod logs;
mod metrics;
mod openapi;
mod proxy;
mod resume;
mod storage_conformance;
mod subscriptions;
mod surface;
mod upstream;
mod websocket;
mod wire;
