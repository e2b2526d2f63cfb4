//! Fault injection and inspection of a running simulator (issue 3 "Fault injection"): the
//! in-process [`SimControl`] handle used by tests and the demo; `http.rs` exposes the same
//! operations under `/sim/...` for external tests and humans.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::options::EstimatedFlag;
use super::shared::{format_timestamp, Fault, MalformedKind, Shared, SimCounters, StructureData};
use super::SimError;
use crate::loxone::uuid::LoxUuid;

/// Handle to inject faults into and read counters from a running simulator. Cheap to clone.
#[derive(Clone)]
pub struct SimControl {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SimControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimControl").finish_non_exhaustive()
    }
}

impl SimControl {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        SimControl { shared }
    }

    /// Counters so far.
    pub fn counters(&self) -> SimCounters {
        self.shared.counters.snapshot()
    }

    /// When each failed login counted in `auth_failures` happened, oldest first (the latest
    /// 1024): tests measure a client's backoff from the gaps.
    pub fn auth_failure_times(&self) -> Vec<Instant> {
        self.shared.counters.auth_failure_times()
    }

    /// Every open socket gets an out-of-service header (type 5) and is closed.
    pub fn out_of_service(&self) {
        let _ = self.shared.faults.send(Fault::OutOfService);
    }

    /// Closes every open socket with `code` (e.g. 4003–4008, 1000).
    pub fn close_all(&self, code: u16) {
        let _ = self.shared.faults.send(Fault::Close(code));
    }

    /// Expires every token; sockets authenticated by one close with 1000.
    pub fn expire_tokens(&self) {
        self.shared.auth.lock().expire_all();
        let _ = self.shared.faults.send(Fault::TokensChanged);
    }

    /// Sends an estimated header before every payload (with the configured bit, 0x80 if none).
    pub fn set_estimated_headers(&self, on: bool) {
        let bit = match self.shared.opts.estimated_flag {
            EstimatedFlag::Bit(b) => b,
            EstimatedFlag::None => 0x80,
        };
        self.shared.runtime.lock().estimated = if on {
            EstimatedFlag::Bit(bit)
        } else {
            EstimatedFlag::None
        };
    }

    /// Splits payloads larger than `bytes` into continuation frames (None: never).
    pub fn set_split_frames(&self, bytes: Option<usize>) {
        self.shared.runtime.lock().split_frames = bytes;
    }

    /// Sends a malformed message of this kind to every open socket.
    pub fn inject_malformed(&self, kind: MalformedKind) {
        let _ = self.shared.faults.send(Fault::Malformed(kind));
    }

    /// Every open socket gets a header announcing an 8 MiB value table, then nothing more
    /// until the client goes away.
    pub fn hang_mid_message(&self) {
        let _ = self.shared.faults.send(Fault::HangMidMessage);
    }

    /// Every open socket stops being read and is flooded with pings until the client goes
    /// away: the pongs it owes cannot be sent.
    pub fn deaf_ping_flood(&self) {
        let _ = self.shared.faults.send(Fault::DeafPingFlood);
    }

    /// Reboot: out-of-service and close every socket; for the first half of `down` TCP
    /// connections are refused (dropped at once), for the second half HTTP answers 503 and
    /// WebSocket upgrades fail.
    pub fn reboot(&self, down: Duration) {
        let now = Instant::now();
        {
            let mut r = self.shared.runtime.lock();
            r.down_until = Some(now + down / 2);
            r.unavailable_until = Some(now + down);
        }
        self.out_of_service();
    }

    /// Gives the structure a new `lastModified` (now, or one second later than the old one)
    /// and returns it.
    pub fn change_structure(&self) -> String {
        let mut guard = self.shared.structure.write();
        let lm = next_last_modified(&guard.last_modified);
        *guard = Arc::new(guard.with_last_modified(&lm));
        lm
    }

    /// Serves an edited structure file from now on, with a new `lastModified` as
    /// [`change_structure`](Self::change_structure) gives, and returns that stamp. The edit
    /// may rename and regroup; values stay with their state UUIDs.
    pub fn edit_structure(&self, edit: impl FnOnce(&str) -> String) -> Result<String, SimError> {
        let mut guard = self.shared.structure.write();
        let lm = next_last_modified(&guard.last_modified);
        let edited = StructureData::load(edit(&guard.text).as_bytes())?;
        *guard = Arc::new(edited.with_last_modified(&lm));
        Ok(lm)
    }

    /// Sets a value state and sends the change to every subscribed socket. False for a
    /// UUID that is not a value state and for a value that is not finite.
    pub fn set_value(&self, uuid: LoxUuid, value: f64) -> bool {
        self.shared.set_values(&[(uuid, value)]) == 1
    }

    /// Sends a value event for any UUID to every subscribed socket: a value state of the
    /// structure is set as by [`set_value`](Self::set_value); any other UUID is only sent (not
    /// stored, never in an initial table), as real units send states the structure does not
    /// list and clients must ignore (protocol doc §3.6). False for a value that is not
    /// finite, which is not sent.
    pub fn send_value_event(&self, uuid: LoxUuid, value: f64) -> bool {
        if !value.is_finite() {
            return false;
        }
        if !self.set_value(uuid, value) {
            self.shared.broadcast_values(&[(uuid, value)]);
        }
        true
    }

    /// Sets a text state and sends the change to every subscribed socket. False for a UUID
    /// that is not a text state.
    pub fn set_text(&self, uuid: LoxUuid, text: &str) -> bool {
        self.shared.set_text(uuid, text)
    }

    /// UUIDs of all text states, in structure order.
    pub fn text_state_uuids(&self) -> Vec<LoxUuid> {
        let s = self.shared.structure();
        s.catalogue.texts.iter().map(|t| t.uuid).collect()
    }

    /// Changes the generator rate (events per second).
    pub fn set_rate(&self, events_per_s: f64) {
        self.shared.runtime.lock().rate = events_per_s.max(0.0);
    }

    /// Changes the user's password (tokens stay valid).
    pub fn set_password(&self, password: &str) {
        self.shared.auth.lock().set_password(password.to_string());
    }

    /// Makes every login fail as if the password were wrong.
    pub fn set_reject_logins(&self, on: bool) {
        self.shared.auth.lock().set_reject_all_logins(on);
    }

    /// The `lastModified` currently served.
    pub fn last_modified(&self) -> String {
        self.shared.structure().last_modified.clone()
    }

    /// The structure JSON currently served.
    pub fn structure_text(&self) -> Arc<str> {
        self.shared.structure().text.clone()
    }

    /// Current value of a value state.
    pub fn value(&self, uuid: &LoxUuid) -> Option<f64> {
        self.shared.values.lock().value(uuid)
    }

    /// UUIDs of all value states, in structure order.
    pub fn value_state_uuids(&self) -> Vec<LoxUuid> {
        self.shared
            .values
            .lock()
            .snapshot()
            .map(|(u, _)| u)
            .collect()
    }

    /// Number of controls (including sub-controls) of the served structure.
    pub fn control_count(&self) -> usize {
        self.shared.structure().structure.control_count()
    }
}

/// Now, or one second after `old` when that lies in the future: never backwards.
fn next_last_modified(old: &str) -> String {
    let old = parse_timestamp(old).unwrap_or(0);
    format_timestamp(super::shared::Shared::unix_now().max(old + 1))
}

fn parse_timestamp(s: &str) -> Option<u64> {
    // YYYY-MM-DD HH:MM:SS → unix (UTC)
    let (d, t) = s.split_once(' ')?;
    let mut dp = d.split('-').map(|x| x.parse::<i64>());
    let (y, m, dd) = (dp.next()?.ok()?, dp.next()?.ok()?, dp.next()?.ok()?);
    let mut tp = t.split(':').map(|x| x.parse::<i64>());
    let (h, mi, se) = (tp.next()?.ok()?, tp.next()?.ok()?, tp.next()?.ok()?);
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + dd - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86400 + h * 3600 + mi * 60 + se).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_round_trip() {
        for t in [1_230_768_000u64, 1_767_225_599, 951_782_400, 4_102_444_800] {
            assert_eq!(parse_timestamp(&format_timestamp(t)), Some(t));
        }
    }
}
