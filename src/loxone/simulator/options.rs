//! Command-line options of `loxone-exporter simulate` (also used in-process by tests and the
//! `--demo` mode). Every behaviour the protocol doc tags \[UNSURE\] is a switch here, so clients
//! can be exercised against each plausible Miniserver variant (protocol doc §8).
//!
//! Parsing helpers only; the behaviour lives in the sibling modules.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::secret::Secret;

/// Options of the Miniserver simulator.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulatorOptions {
    /// Structure file (LoxAPP3.json) to serve. Default: the bundled real `gen2-home-cz` file.
    #[arg(long, value_name = "FILE")]
    pub structure: Option<PathBuf>,

    /// HTTP + WebSocket listen address (port 0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Optional HTTPS + WSS listen address with a self-signed certificate (Gen2 behaviour).
    #[arg(long, value_name = "ADDR")]
    pub tls_listen: Option<SocketAddr>,

    /// The one user the simulated Miniserver knows.
    #[arg(long, value_name = "USER", default_value = "admin")]
    pub user: String,

    /// That user's password (default: admin, as the user; never logged).
    #[arg(
        long,
        value_name = "PASSWORD",
        default_value = "admin",
        hide_default_value = true,
        value_parser = parse_secret
    )]
    pub password: Secret,

    /// Value events per second produced by the generator (0 = only initial tables and
    /// events caused by commands). Batched per tick, so millions per second are possible.
    #[arg(long, value_name = "EVENTS_PER_S", default_value_t = 20.0)]
    pub rate: f64,

    /// Generator tick: how often a batch of value events is sent.
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = parse_duration)]
    pub tick: Duration,

    /// Seed of the value generator (same seed, same walk).
    #[arg(long, value_name = "N", default_value_t = 2009)]
    pub seed: u64,

    /// Hash algorithm of the user record (answered as `hashAlg` by getkey2).
    #[arg(long, value_enum, default_value = "sha256")]
    pub hash_alg: HashAlgArg,

    /// Also accept token hashes made with the other algorithm (protocol doc §4.2 \[UNSURE\]:
    /// LXC picks the algorithm by firmware version, others by `hashAlg`).
    #[arg(long)]
    pub token_hash_any_alg: bool,

    /// Estimated headers: `none` (never), or the info bit to set (`0x80` as LXC/PYLOX read it,
    /// `0x01` as LJ/LK/EXP read it). When set, every payload gets an estimated header first.
    #[arg(long, value_name = "FLAG", default_value = "none", value_parser = parse_estimated_flag)]
    pub estimated_flag: EstimatedFlag,

    /// Split every payload larger than this many bytes into WebSocket continuation frames.
    #[arg(long, value_name = "BYTES")]
    pub split_frames: Option<usize>,

    /// Close a WebSocket after this long without any message from the client.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Send LL 420 and close when a WebSocket is not authenticated within this time.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub auth_timeout: Duration,

    /// Lifetime of a one-time hashing key (getkey, getkey2, apiKey, token answers).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub key_lifetime: Duration,

    /// Lifetime of Web tokens (permission 2).
    #[arg(long, value_name = "DURATION", default_value = "12h", value_parser = parse_duration)]
    pub token_lifetime_web: Duration,

    /// Lifetime of App tokens (permission 4).
    #[arg(long, value_name = "DURATION", default_value = "28d", value_parser = parse_duration)]
    pub token_lifetime_app: Duration,

    /// Shape of the LL status key: `mixed` (per answer as real units send it, protocol doc
    /// §2.2: `"code": 200` for getkey2, `"code": "200"` for the other token/system answers,
    /// `"Code": "200"` for everything else), or one shape for every answer: `upper-string`
    /// (`"Code": "200"`), `upper-number`, `lower-string` (`"code": "200"`), `lower-number`
    /// (`"code": 200`).
    #[arg(long, value_enum, default_value = "mixed")]
    pub code_style: CodeStyleArg,

    /// Echo encrypted commands as their cipher form `jdev/sys/enc/<base64>` (older firmware;
    /// URI-decoded, as PYLOX/loxwebsocket decode it) instead of the decrypted inner command
    /// (protocol doc §2.2 \[UNSURE\]).
    #[arg(long)]
    pub echo_cipher: bool,

    /// Salt checking for enc/fenc: `strict` (a known salt must be repeated or rotated with
    /// nextSalt; mismatch → 401), `lax` (any salt accepted).
    #[arg(long, value_enum, default_value = "strict")]
    pub salt_check: SaltCheck,

    /// Allow getjwt/gettoken/authwithtoken unencrypted on plain ws:// (DOC16 answers 400).
    #[arg(long)]
    pub allow_plain_token_commands: bool,

    /// Code answered to a second keyexchange on one socket (400 or 401).
    #[arg(long, value_name = "CODE", default_value_t = 400)]
    pub rekey_code: u16,

    /// Code answered by checktoken for an unknown/expired token (401, or 477 like LXC expects).
    #[arg(long, value_name = "CODE", default_value_t = 401)]
    pub checktoken_invalid_code: u16,

    /// Code answered by a successful killtoken (200, or 401 as LK expects).
    #[arg(long, value_name = "CODE", default_value_t = 200)]
    pub killtoken_code: u16,

    /// Send the initial event tables before the LL answer of enablebinstatusupdate
    /// (the doc says not to rely on the order).
    #[arg(long)]
    pub tables_before_answer: bool,

    /// Status-update slots: how many WebSockets may have `enablebinstatusupdate` on at once
    /// (protocol doc §1.4: at most 31; the doc gives no other number for Gen 2 — its 256 is
    /// the HTTP connection limit). One more is closed with 4008 ("no free event slot",
    /// doc §2.3); a slot is freed when its socket closes. 0 = unlimited.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_EVENT_SLOTS)]
    pub event_slots: usize,

    /// Failed logins (getjwt/gettoken, authwithtoken, HTTP Basic auth) before the Miniserver
    /// blocks new connections (closed with 4003).
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub max_failed_logins: u32,

    /// How long the block after too many failed logins lasts.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub block_duration: Duration,

    /// RSA modulus size of the generated key pair (1024 observed on real units).
    #[arg(long, value_name = "BITS", default_value_t = 1024)]
    pub rsa_bits: usize,

    /// Use this RSA private key (PKCS#1 or PKCS#8 PEM) instead of generating one.
    #[arg(long, value_name = "FILE")]
    pub rsa_key: Option<PathBuf>,

    /// Firmware version reported by jdev/cfg/api(Key).
    #[arg(long, value_name = "VERSION", default_value = "15.2.10.14")]
    pub firmware_version: String,

    /// Fault: send out-of-service and close every socket this long after start.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub fault_out_of_service_after: Option<Duration>,

    /// Fault: after out-of-service, stay down ("rebooting") this long.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub fault_reboot_for: Duration,

    /// Fault: close every socket with `--fault-close-code` this long after start.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub fault_close_after: Option<Duration>,

    /// Close code used by `--fault-close-after` (4003–4008 or 1000).
    #[arg(long, value_name = "CODE", default_value_t = 4007)]
    pub fault_close_code: u16,

    /// Fault: expire every token this long after start (connected sockets close with 1000).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub fault_expire_tokens_after: Option<Duration>,

    /// Disable the `/sim/...` fault-injection HTTP endpoints.
    #[arg(long)]
    pub no_control_api: bool,
}

impl Default for SimulatorOptions {
    fn default() -> Self {
        SimulatorOptions {
            structure: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls_listen: None,
            user: "admin".into(),
            password: "admin".into(),
            rate: 20.0,
            tick: Duration::from_millis(100),
            seed: 2009,
            hash_alg: HashAlgArg::Sha256,
            token_hash_any_alg: false,
            estimated_flag: EstimatedFlag::None,
            split_frames: None,
            idle_timeout: Duration::from_secs(300),
            auth_timeout: Duration::from_secs(5),
            key_lifetime: Duration::from_secs(10),
            token_lifetime_web: Duration::from_secs(12 * 3600),
            token_lifetime_app: Duration::from_secs(28 * 24 * 3600),
            code_style: CodeStyleArg::Mixed,
            echo_cipher: false,
            salt_check: SaltCheck::Strict,
            allow_plain_token_commands: false,
            rekey_code: 400,
            checktoken_invalid_code: 401,
            killtoken_code: 200,
            tables_before_answer: false,
            event_slots: DEFAULT_EVENT_SLOTS,
            max_failed_logins: 5,
            block_duration: Duration::from_secs(60),
            rsa_bits: 1024,
            rsa_key: None,
            firmware_version: "15.2.10.14".into(),
            fault_out_of_service_after: None,
            fault_reboot_for: Duration::from_secs(10),
            fault_close_after: None,
            fault_close_code: 4007,
            fault_expire_tokens_after: None,
            no_control_api: false,
        }
    }
}

/// Hash algorithm of the simulated user record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HashAlgArg {
    /// SHA-1 (pre-10.4 user records).
    Sha1,
    /// SHA-256.
    Sha256,
}

/// Status-update slots of a Miniserver (protocol doc §1.4, §9: "max 31 event-update
/// clients").
pub const DEFAULT_EVENT_SLOTS: usize = 31;

/// Shape of the LL status key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CodeStyleArg {
    /// Per answer kind, as captures of real units show (protocol doc §2.2): `"code": 200`
    /// (number) for getkey2 (LJ capture), `"code": "…"` (string) for the other `jdev/sys/…`
    /// token and system answers and `authwithtoken` (node-lox-ws-api 401 capture; LK's
    /// keyexchange), `"Code": "…"` for everything else (official examples).
    Mixed,
    /// `"Code": "200"`.
    UpperString,
    /// `"Code": 200`.
    UpperNumber,
    /// `"code": "200"`.
    LowerString,
    /// `"code": 200`.
    LowerNumber,
}

/// How strictly enc/fenc salts are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SaltCheck {
    /// A salt, once seen, must be repeated or rotated with `nextSalt/<current>/<new>`.
    Strict,
    /// Any salt is accepted.
    Lax,
}

/// Whether and with which info bit estimated headers are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EstimatedFlag {
    /// Never send estimated headers.
    None,
    /// Send them with this info-byte bit (0x80 or 0x01).
    Bit(u8),
}

/// Wraps a password given on the command line.
pub fn parse_secret(s: &str) -> Result<Secret, String> {
    Ok(Secret::new(s))
}

/// Parses `none`, `0x80`, `0x01`, `128`, `1`.
pub fn parse_estimated_flag(s: &str) -> Result<EstimatedFlag, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "none" | "off" | "no" => Ok(EstimatedFlag::None),
        "0x80" | "128" | "msb" => Ok(EstimatedFlag::Bit(0x80)),
        "0x01" | "0x1" | "1" | "lsb" => Ok(EstimatedFlag::Bit(0x01)),
        other => Err(format!("expected none, 0x80 or 0x01, got {other:?}")),
    }
}

/// Parses a duration: a number with an optional unit `ms`, `s`, `m`, `h`, `d` (`s` if none).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 500ms, 5s, 5m, 12h, 28d"))?;
    let factor = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        u => return Err(format!("invalid duration unit {u:?} in {s:?}")),
    };
    let secs = n * factor;
    if !secs.is_finite() || !(0.0..=1e10).contains(&secs) {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimulatorOptions,
    }

    #[derive(Parser)]
    struct WithSubcommand {
        #[command(subcommand)]
        cmd: Sub,
    }

    #[derive(clap::Subcommand)]
    enum Sub {
        Simulate(SimulatorOptions),
    }

    #[test]
    fn embeds_as_a_subcommand() {
        let w = WithSubcommand::try_parse_from([
            "loxone-exporter",
            "simulate",
            "--structure",
            "x.json",
            "--listen",
            "0.0.0.0:8080",
            "--user",
            "u",
            "--password",
            "p",
            "--rate",
            "1000000",
            "--tls-listen",
            "127.0.0.1:8443",
        ])
        .unwrap();
        let Sub::Simulate(o) = w.cmd;
        assert_eq!(o.structure.as_deref(), Some(std::path::Path::new("x.json")));
        assert_eq!(o.listen.port(), 8080);
        assert_eq!(o.rate, 1_000_000.0);
        assert_eq!(o.tls_listen.map(|a| a.port()), Some(8443));
        assert_eq!((o.user.as_str(), o.password.expose()), ("u", "p"));
        assert!(
            !format!("{o:?}").contains("\"p\""),
            "password in Debug output"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(
            parse_duration("28d").unwrap(),
            Duration::from_secs(28 * 86400)
        );
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn estimated_flags() {
        assert_eq!(parse_estimated_flag("none").unwrap(), EstimatedFlag::None);
        assert_eq!(
            parse_estimated_flag("0x80").unwrap(),
            EstimatedFlag::Bit(0x80)
        );
        assert_eq!(
            parse_estimated_flag("0x01").unwrap(),
            EstimatedFlag::Bit(0x01)
        );
        assert!(parse_estimated_flag("0x02").is_err());
    }

    #[test]
    fn cli_defaults_match_default_impl() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        let d = SimulatorOptions::default();
        assert_eq!(cli.sim.idle_timeout, d.idle_timeout);
        assert_eq!(cli.sim.auth_timeout, d.auth_timeout);
        assert_eq!(cli.sim.token_lifetime_app, d.token_lifetime_app);
        assert_eq!(cli.sim.hash_alg, d.hash_alg);
        assert_eq!(cli.sim.estimated_flag, d.estimated_flag);
        assert_eq!(cli.sim.rate, d.rate);
        assert_eq!(cli.sim.user, d.user);
        assert_eq!(cli.sim.code_style, d.code_style);
        assert_eq!(cli.sim.event_slots, d.event_slots);
    }

    #[test]
    fn cli_parses_faults() {
        let cli = Cli::try_parse_from([
            "x",
            "--listen",
            "127.0.0.1:0",
            "--estimated-flag",
            "0x01",
            "--split-frames",
            "100",
            "--fault-close-after",
            "2s",
            "--fault-close-code",
            "4005",
            "--code-style",
            "lower-number",
        ])
        .unwrap();
        assert_eq!(cli.sim.estimated_flag, EstimatedFlag::Bit(1));
        assert_eq!(cli.sim.split_frames, Some(100));
        assert_eq!(cli.sim.fault_close_after, Some(Duration::from_secs(2)));
        assert_eq!(cli.sim.fault_close_code, 4005);
        assert_eq!(cli.sim.code_style, CodeStyleArg::LowerNumber);
    }
}
