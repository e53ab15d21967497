//! A chat server that speaks the classic muduo "cluster chat server" protocol
//! byte for byte, and the pieces around it.
//!
//! The layout follows the architecture, outside in:
//!
//! * [`server`]: a node: its listeners under one connection cap, and its
//!   lifecycle from open to graceful shutdown. `web` is the web listener
//!   (the web client's files and WebSocket at `/ws`); [`proxy`] reads the
//!   PROXY protocol header a trusted balancer sends; [`tls`] the TLS
//!   listener and TLS clients.
//! * `connection`: one task per connection, joining its frames to a
//!   session: deadlines, budgets, and the original client's pacing.
//! * `transport`: frames over a TCP (or TLS) stream, holding no buffer
//!   while idle and writing everything ready in one system call, or over a
//!   WebSocket.
//! * `limits`: what one connection and one address may take of a node:
//!   budgets, the connection cap and per-address counts.
//! * [`service`]: the business logic, one handler per message type, driven
//!   by plain values so that it is testable without sockets; [`auth`] hashes
//!   passwords and makes resume tokens.
//! * [`protocol`]: frames on the wire ([`protocol::codec`]), the JSON
//!   messages inside them, and what the original client can read
//!   ([`protocol::classic`]).
//! * [`store`]: durable state behind one interface (SQLite embedded, MySQL
//!   or MariaDB for a cluster).
//! * [`hub`]: presence and live delivery behind one interface (in-process,
//!   or Redis between cluster nodes).
//! * [`config`]: every limit and tunable, with its default.
//! * [`model`]: the domain values all of the above exchange.
//! * [`metrics`]: Prometheus counters and histograms, on a listener of
//!   their own.
//! * [`client`]: the async client library shared by `chatclient`, the tests
//!   and the load tool.
//!
//! The load tool (`chatbench`) and nginx's consistent-hash ring
//! (`chathash`) are crates of their own in `crates/`, so the server does not
//! depend on them. `connection`, `transport`, `limits` and `web` are the
//! server's insides and private to it.

pub mod auth;
pub mod client;
pub mod config;
mod connection;
pub mod hub;
mod limits;
pub mod metrics;
pub mod model;
pub mod protocol;
pub mod proxy;
pub mod server;
pub mod service;
pub mod store;
pub mod tls;
mod transport;
mod web;
