//! The feedback protocol for stimulus programs: JSON lines over TCP and UDP.
//!
//! In: the hub; client requests. Out: replies and subscribed feed messages.

use std::net::SocketAddr;

use super::feed::Topic;
use super::hub::HubHandle;

/// Bind the TCP protocol on `addr` and serve it on `rt`.
pub fn start_tcp(
    _rt: &tokio::runtime::Runtime,
    _addr: &str,
    _hub: HubHandle,
) -> std::io::Result<SocketAddr> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "the TCP feedback protocol is not built yet",
    ))
}

/// Send every message of `topics` to each of `targets` as a datagram.
pub fn start_udp(
    _rt: &tokio::runtime::Runtime,
    _targets: &[String],
    _topics: Vec<Topic>,
    _hub: HubHandle,
) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "UDP feedback is not built yet",
    ))
}
