//! A chat server that speaks the classic muduo "cluster chat server" protocol
//! byte for byte, and the pieces around it.
//!
//! The layout follows the architecture, outside in:
//!
//! * [`protocol`]: frames on the wire ([`protocol::codec`]) and the JSON
//!   messages inside them (msgids, requests, replies, error codes).
//! * [`transport`]: frames over one TCP connection, holding no buffer while
//!   idle and writing everything ready in one system call; [`tls`] for
//!   the TLS listener and TLS clients.
//! * [`server`] and [`connection`]: the accept loop (connection cap, back-off,
//!   graceful shutdown) and the per-connection task that joins a socket to a
//!   session.
//! * [`service`]: the business logic, one handler per message type, driven by
//!   plain values so that it is testable without sockets.
//! * [`store`]: durable state behind one interface (SQLite embedded, MySQL
//!   or MariaDB for a cluster).
//! * [`hub`]: presence and live delivery behind one interface (in-process,
//!   or Redis between cluster nodes).
//! * [`client`]: the async client library shared by `chatclient`, the tests
//!   and the load tool.
//! * [`bench`]: the load tool's workloads and the bare relay it compares
//!   against (`chatbench`).
//! * [`model`]: the domain values all of the above exchange.
//! * [`metrics`]: Prometheus counters and histograms, on a listener of
//!   their own.

pub mod auth;
pub mod bench;
pub mod client;
pub mod config;
pub mod connection;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod protocol;
pub mod proxy;
pub mod ring;
pub mod server;
pub mod service;
pub mod store;
pub mod tls;
pub mod transport;
pub mod web;
