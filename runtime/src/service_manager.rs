//! Telling a service manager (systemd's `Type=notify`) what the run is
//! doing: ready once the pipelines are started, reloading around a reload,
//! stopping at shutdown, and the watchdog's keep-alive. Without
//! `NOTIFY_SOCKET` in the environment every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

/// Sends `states`; a failure is logged, never fatal (ferry runs on without
/// its service manager hearing from it).
fn tell(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("telling the service manager {states:?}: {e}");
    }
}

pub(crate) fn ready() {
    tell(&[NotifyState::Ready, NotifyState::Status("running")]);
}

/// Before a reload: systemd 253 and newer want the monotonic time with it.
pub(crate) fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => tell(&[NotifyState::Reloading, now]),
        Err(_) => tell(&[NotifyState::Reloading]),
    }
}

pub(crate) fn stopping() {
    tell(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// How often to tell the watchdog the run is alive: half its timeout, as
/// systemd advises; None when no watchdog is set.
pub(crate) fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|timeout| (timeout / 2).max(Duration::from_millis(10)))
}

pub(crate) fn alive() {
    tell(&[NotifyState::Watchdog]);
}
