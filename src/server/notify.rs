//! Readiness for a service manager: systemd's notification protocol (`Type=notify`, sd_notify(3)). The server
//! sends one datagram, `READY=1`, to the socket `$NOTIFY_SOCKET` names once it listens, and `STOPPING=1` when it
//! begins to shut down, so `systemctl start` returns when clients can connect and units ordered after runnel
//! find it listening. Without the variable nothing is sent.
//!
//! The variable is taken out of the environment as it is read, before any helper is started, so nothing the
//! server starts inherits it (jobs get only the environment their request names anyway).

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

const VARIABLE: &str = "NOTIFY_SOCKET";

/// Where to send notifications, if a service manager asked for them.
#[derive(Debug)]
pub struct ServiceManager {
    socket: Option<(UnixDatagram, SocketAddr)>,
}

impl ServiceManager {
    /// Reads (and removes) `$NOTIFY_SOCKET`. A value that names no usable socket is logged and ignored: the
    /// server still serves, and the service manager reports the start as timed out.
    pub fn from_environment() -> ServiceManager {
        let Some(name) = std::env::var_os(VARIABLE) else { return ServiceManager { socket: None } };
        std::env::remove_var(VARIABLE);
        let name = name.to_string_lossy().into_owned();
        let address = match name.strip_prefix('@') {
            // An abstract socket (`@name`), as systemd uses for its own manager.
            Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name.as_bytes()),
            None => SocketAddr::from_pathname(&name),
        };
        let socket = address.and_then(|address| {
            let socket = UnixDatagram::unbound()?;
            socket.set_nonblocking(true)?;
            Ok((socket, address))
        });
        match socket {
            Ok(socket) => ServiceManager { socket: Some(socket) },
            Err(err) => {
                log::warn!("{VARIABLE}={name:?} names no socket the server can notify ({err}); not notifying");
                ServiceManager { socket: None }
            }
        }
    }

    /// Sends `state` (`READY=1`, `STOPPING=1`): at most one datagram, never waiting.
    pub fn notify(&self, state: &str) {
        let Some((socket, address)) = &self.socket else { return };
        if let Err(err) = socket.send_to_addr(state.as_bytes(), address) {
            log::warn!("cannot tell the service manager {state}: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_and_stopping_reach_the_socket_the_variable_names_and_the_variable_goes() {
        let dir = std::env::temp_dir().join(format!("runnel-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        std::env::set_var(VARIABLE, &path);
        let manager = ServiceManager::from_environment();
        assert!(std::env::var_os(VARIABLE).is_none(), "taken out of the environment");
        manager.notify("READY=1");
        manager.notify("STOPPING=1");
        let mut buffer = [0u8; 64];
        let n = listener.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"READY=1");
        let n = listener.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"STOPPING=1");
        std::fs::remove_dir_all(&dir).unwrap();
        // Without the variable: nothing to notify, and no error.
        ServiceManager::from_environment().notify("READY=1");
    }
}
