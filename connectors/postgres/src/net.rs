//! Turns off Nagle's algorithm on a sqlx connection.
//!
//! sqlx 0.9.0 no longer sets `TCP_NODELAY` (launchbadge/sqlx#4335; fixed by
//! #4336, not released yet). Without it, every small message that follows a
//! large one — the `CopyDone` after the rows of a `COPY`, a `COMMIT` — waits
//! for the server's delayed ACK: about 40 ms each time on Linux, which
//! measured as more than half the run time of a file → PostgreSQL load. sqlx
//! does not expose its socket, so we find it: the server tells us the client
//! port it sees (`inet_client_port()`), and the one TCP socket of this
//! process bound to that port is ours. Over a Unix socket there is nothing to
//! do. Remove this once a sqlx release sets the option itself.

use ferry_api::ConnectorError;
use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

use crate::sql::db_error;

/// A new connection for `pipeline`, with Nagle's algorithm off. It names
/// itself `ferry/<pipeline>` (`application_name`), so an operator finds it
/// in `pg_stat_activity`; a URL that sets `application_name` keeps its own.
pub(crate) async fn connect(url: &str, pipeline: &str) -> Result<PgConnection, ConnectorError> {
    let mut options =
        PgConnectOptions::from_str(url).map_err(|e| db_error("reading the PostgreSQL URL", e))?;
    if options.get_application_name().is_none() {
        options = options.application_name(&format!("ferry/{pipeline}"));
    }
    let mut conn = PgConnection::connect_with(&options)
        .await
        .map_err(|e| db_error("connecting to PostgreSQL", e))?;
    set_nodelay(&mut conn).await;
    Ok(conn)
}

async fn set_nodelay(conn: &mut PgConnection) {
    let port: Option<i32> = match sqlx::query_scalar("SELECT inet_client_port()")
        .fetch_one(conn)
        .await
    {
        Ok(port) => port,
        Err(_) => return,
    };
    if let Some(port) = port.and_then(|p| u16::try_from(p).ok()) {
        set_nodelay_on_local_port(port);
    }
}

#[cfg(target_os = "linux")]
fn set_nodelay_on_local_port(port: u16) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: getsockname writes at most `len` bytes into `addr`; on an
        // fd that is not a socket (or was closed meanwhile) it fails.
        let local = unsafe {
            let mut addr: libc::sockaddr_storage = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            if libc::getsockname(fd, (&raw mut addr).cast(), &mut len) != 0 {
                continue;
            }
            match i32::from(addr.ss_family) {
                libc::AF_INET => {
                    u16::from_be((*(&raw const addr).cast::<libc::sockaddr_in>()).sin_port)
                }
                libc::AF_INET6 => {
                    u16::from_be((*(&raw const addr).cast::<libc::sockaddr_in6>()).sin6_port)
                }
                _ => continue,
            }
        };
        if local == port {
            let on: libc::c_int = 1;
            // SAFETY: a valid pointer to an int of the size given; setting
            // TCP_NODELAY on any TCP socket is harmless.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_NODELAY,
                    (&raw const on).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn set_nodelay_on_local_port(_port: u16) {}
