//! `airlock sessions recording export|verify`, `sessions log`, `sessions search` and
//! `sessions replay`: reading session recordings through the API ([`airlock_client::recording`]).
//!
//! `replay` drives the pure [`crate::player::Player`] with the real clock, the terminal (raw
//! mode for its keys, restored on every way out) and, with `--follow`, new chunks of a live
//! session fetched once a second until its recording is sealed.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;

use airlock_client::recording::{parse_public_key, Recording};
use airlock_client::ApiClient;

use crate::output::{print, s, ts};
use crate::player::{parse_offset, Key, Player};
use crate::Format;

/// `airlock sessions recording …`.
#[derive(Subcommand, Debug)]
pub enum RecordingCommand {
    /// Write the recording as an asciicast v2 file (`> file.cast`, plays in `asciinema play`).
    Export {
        /// Session id.
        session_id: String,
    },
    /// Check that no chunk of the recording was altered, removed or reordered (exit 1 if one
    /// was, naming the first).
    Verify {
        /// Session id.
        session_id: String,
        /// The server's recording public key (hex) to check against, instead of the one the
        /// server names in its answer (pin it: a server that is not trusted could re-sign).
        #[arg(long, value_name = "HEX")]
        public_key: Option<String>,
    },
}

/// How often `--follow` asks for new chunks (the recorder flushes about once a second).
const FOLLOW_POLL: Duration = Duration::from_secs(1);
/// Empty polls after a followed session ended before the viewer stops waiting for its last
/// chunk and manifest.
const ENDED_POLLS: u32 = 5;
/// How long (in polls) `--follow` waits for a live session's first chunk.
const FIRST_CHUNK_POLLS: u32 = 30;
/// The longest the replay loop sleeps without looking at the clock again.
const MAX_SLEEP: Duration = Duration::from_millis(500);

/// `airlock sessions recording export|verify`.
pub async fn recording(
    api: &ApiClient,
    c: RecordingCommand,
    format: Format,
) -> anyhow::Result<i32> {
    match c {
        RecordingCommand::Export { session_id } => export(api, &session_id).await,
        RecordingCommand::Verify {
            session_id,
            public_key,
        } => verify(api, &session_id, public_key.as_deref(), format).await,
    }
}

async fn export(api: &ApiClient, session_id: &str) -> anyhow::Result<i32> {
    let rec = api.fetch_recording(session_id).await?;
    let cast = rec.export()?;
    let mut out = std::io::stdout().lock();
    out.write_all(cast.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write the recording to standard output")?;
    // What was written is exactly what is stored; say so when that is not what was recorded.
    match rec.verify(None) {
        Ok(report) if !report.ok_so_far() => {
            eprintln!(
                "warning: {report}; `airlock sessions recording verify {session_id}` for details"
            );
        }
        Ok(_) => {}
        Err(e) => eprintln!("warning: the recording could not be verified: {e}"),
    }
    Ok(0)
}

async fn verify(
    api: &ApiClient,
    session_id: &str,
    pinned: Option<&str>,
    format: Format,
) -> anyhow::Result<i32> {
    let pinned = pinned.map(parse_public_key).transpose()?;
    let rec = api.fetch_recording(session_id).await?;
    let report = rec.verify(pinned.as_ref())?;
    // A live session has no manifest yet: intact so far is a pass; an ended one must be sealed.
    let ok = report.ok() || (rec.live && report.ok_so_far());
    let problems: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "SessionId": session_id,
                "Ok": ok,
                "Sealed": report.sealed,
                "Live": rec.live,
                "Chunks": report.chunks,
                "Problems": problems,
                "PublicKey": match pinned { Some(k) => hex_key(&k), None => rec.public_key.clone() },
                "KeyPinned": pinned.is_some(),
            }))
            .unwrap_or_default()
        ),
        Format::Text => {
            if ok && rec.live {
                println!(
                    "recording of session {session_id} is intact so far: {} chunks (live, not sealed yet)",
                    report.chunks
                );
            } else {
                println!("{report}");
            }
            for p in problems.iter().skip(1) {
                println!("  also: {p}");
            }
            if pinned.is_none() {
                eprintln!(
                    "checked against the key the server gave ({}); pin it with --public-key",
                    rec.public_key
                );
            }
        }
    }
    Ok(if ok { 0 } else { 1 })
}

fn hex_key(k: &[u8; 32]) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

/// `airlock sessions log ID [--input]`: the transcript as plain text.
pub async fn log(api: &ApiClient, session_id: &str, input: bool) -> anyhow::Result<i32> {
    let rec = api.fetch_recording(session_id).await?;
    let text = rec.transcript(input)?;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write the transcript to standard output")?;
    Ok(0)
}

/// `--since`: a duration back from now (`90s`, `30m`, `1h`, `2d`, `1h30m`) or an RFC 3339
/// time; epoch seconds.
pub fn parse_since(s: &str, now: time::OffsetDateTime) -> anyhow::Result<f64> {
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok(t.unix_timestamp() as f64);
    }
    let s = s.trim();
    let secs = match s.split_once('d') {
        Some((days, rest)) if !days.is_empty() && days.chars().all(|c| c.is_ascii_digit()) => {
            let d: f64 = days
                .parse()
                .map_err(|_| anyhow::anyhow!("bad --since {s:?}"))?;
            d * 86_400.0
                + if rest.is_empty() {
                    0.0
                } else {
                    parse_duration(rest, s)?
                }
        }
        _ => parse_duration(s, s)?,
    };
    let since = now.unix_timestamp() as f64 - secs;
    Ok(since.max(0.0))
}

fn parse_duration(part: &str, whole: &str) -> anyhow::Result<f64> {
    // A bare number is ambiguous here (seconds? a year?): ask for a unit.
    if part.chars().all(|c| c.is_ascii_digit() || c == '.') {
        anyhow::bail!("--since {whole:?}: give a unit (90s, 30m, 1h, 2d) or an RFC 3339 time");
    }
    parse_offset(part).map_err(|_| {
        anyhow::anyhow!(
            "--since {whole:?} is neither a duration (90s, 30m, 1h, 2d) nor an RFC 3339 time"
        )
    })
}

/// Replaces control characters (a terminal would act on them) with spaces.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Seconds into a session as `1m30.5s`.
fn at(t: f64) -> String {
    let t = if t.is_finite() { t.max(0.0) } else { 0.0 };
    let m = (t / 60.0).floor();
    let sec = t - m * 60.0;
    if m > 0.0 {
        format!("{m}m{sec:.1}s")
    } else {
        format!("{sec:.1}s")
    }
}

/// `airlock sessions search TEXT [--target ID] [--since 1h|RFC3339] [--max N]`.
pub async fn search(
    api: &ApiClient,
    text: &str,
    target: Option<&str>,
    since: Option<&str>,
    max: Option<u32>,
    format: Format,
) -> anyhow::Result<i32> {
    let mut input = json!({ "Text": text });
    if let Some(t) = target {
        input["Target"] = json!(t);
    }
    if let Some(s) = since {
        input["Since"] = json!(parse_since(s, time::OffsetDateTime::now_utc())?);
    }
    if let Some(m) = max {
        input["MaxResults"] = json!(m);
    }
    let out = api.call("Airlock.SearchSessions", &input).await?;
    let empty = Vec::new();
    let results = out["Results"].as_array().unwrap_or(&empty);
    let mut rows = Vec::new();
    for r in results {
        let matches = r["Matches"].as_array().unwrap_or(&empty);
        for m in matches {
            rows.push(vec![
                s(r, "SessionId"),
                s(r, "Target"),
                ts(r, "StartDate"),
                at(m["T"].as_f64().unwrap_or(0.0)),
                match m["Kind"].as_str() {
                    Some("i") => "typed".to_owned(),
                    _ => "printed".to_owned(),
                },
                printable(&s(m, "Snippet")),
            ]);
        }
    }
    print(
        format,
        &out,
        &["SESSION", "TARGET", "STARTED", "AT", "WHAT", "TEXT"],
        rows,
    );
    Ok(if results.is_empty() { 1 } else { 0 })
}

/// Options of `airlock sessions replay`.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Playback speed.
    pub speed: f64,
    /// Where to start, in recording time (`1m30s`).
    pub from: Option<String>,
    /// Idle gaps are cut to this many seconds (0: not cut).
    pub idle_cap: f64,
    /// Watch a live session until its recording is sealed.
    pub follow: bool,
}

/// Restores the terminal (raw mode off, attributes reset, main screen, cursor shown) when
/// dropped: on quit, at the end, on error and on panic unwinding.
struct TerminalGuard {
    raw: bool,
}

impl TerminalGuard {
    fn new(raw: bool) -> anyhow::Result<TerminalGuard> {
        if raw {
            crossterm::terminal::enable_raw_mode()
                .context("cannot put the terminal in raw mode")?;
        }
        Ok(TerminalGuard { raw })
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        if self.raw {
            let _ = crossterm::terminal::disable_raw_mode();
            let mut out = std::io::stdout();
            let _ = out.write_all(b"\x1b[0m\x1b[?1049l\x1b[?25h\r\n");
            let _ = out.flush();
        }
    }
}

/// Reads keys on a thread of its own (crossterm's reader blocks) until `stop` is set.
fn key_reader(
    tx: tokio::sync::mpsc::Sender<Key>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use crossterm::event::{Event, KeyCode, KeyEventKind, KeyModifiers};
    std::thread::spawn(move || {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match crossterm::event::poll(Duration::from_millis(100)) {
                Ok(false) => continue,
                Ok(true) => {}
                Err(_) => break,
            }
            let Ok(Event::Key(k)) = crossterm::event::read() else {
                continue;
            };
            if k.kind == KeyEventKind::Release {
                continue;
            }
            let key = match k.code {
                KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => Key::Quit,
                KeyCode::Char(' ') => Key::Pause,
                KeyCode::Left => Key::Back,
                KeyCode::Right => Key::Forward,
                KeyCode::Char('+') | KeyCode::Char('=') => Key::Faster,
                KeyCode::Char('-') | KeyCode::Char('_') => Key::Slower,
                KeyCode::Char('q') | KeyCode::Esc => Key::Quit,
                _ => continue,
            };
            if tx.blocking_send(key).is_err() {
                break;
            }
        }
    });
}

/// The events of chunks fetched after the first page, parsed under the recording's header.
fn events_of(
    header_line: &str,
    chunks: &[(u64, Vec<u8>)],
) -> anyhow::Result<Vec<airlock_recording::Event>> {
    let bodies: Vec<Vec<u8>> = chunks.iter().map(|(_, b)| b.clone()).collect();
    let text = format!("{header_line}\n{}", airlock_recording::export(&bodies)?);
    Ok(airlock_recording::parse_cast(&text)?.1)
}

/// `airlock sessions replay ID`.
pub async fn replay(api: &ApiClient, session_id: &str, o: ReplayOptions) -> anyhow::Result<i32> {
    if !(o.speed.is_finite() && o.speed > 0.0) {
        anyhow::bail!("--speed must be a number above 0");
    }
    if !(o.idle_cap.is_finite() && o.idle_cap >= 0.0) {
        anyhow::bail!("--idle-cap must be a number of seconds, 0 or more");
    }
    let from = o
        .from
        .as_deref()
        .map(parse_offset)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--from: {e}"))?;
    let mut rec: Recording = api.fetch_recording(session_id).await?;
    // A session that just started may have nothing stored yet (the first chunk is cut within
    // a second): a follower waits for it.
    let mut waited = 0;
    while o.follow && rec.live && rec.chunks.is_empty() && waited < FIRST_CHUNK_POLLS {
        tokio::time::sleep(FOLLOW_POLL).await;
        waited += 1;
        rec = api.fetch_recording(session_id).await?;
    }
    if rec.chunks.is_empty() {
        anyhow::bail!("nothing of session {session_id} is recorded yet");
    }
    let export = rec.export()?;
    let header_line = export.lines().next().unwrap_or_default().to_owned();
    let (header, events) = airlock_recording::parse_cast(&export)?;
    let follow = o.follow && rec.live;
    if o.follow && !rec.live {
        eprintln!("session {session_id} has ended; playing its recording");
    } else if !o.follow && rec.live {
        eprintln!(
            "session {session_id} is live: playing what was recorded so far (--follow to watch it)"
        );
    }
    let mut next_chunk = rec.chunks.last().map_or(0, |(i, _)| i + 1);
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    if interactive {
        if let Ok((cols, rows)) = crossterm::terminal::size() {
            if cols < header.width || rows < header.height {
                eprintln!(
                    "recorded at {}x{}, this terminal is {cols}x{rows}: lines may wrap",
                    header.width, header.height
                );
            }
        }
        eprintln!("space: pause · ←/→: seek 5 s · +/-: speed · q: quit\r");
    }
    let start = Instant::now();
    let clock = move || start.elapsed().as_secs_f64();
    let idle_cap = (o.idle_cap > 0.0).then_some(o.idle_cap);
    let mut player = Player::new(events, o.speed, idle_cap, follow, clock());
    let mut pending = match from {
        Some(t) => player.seek(player.played_time(t), clock()).output,
        // Watching live: what happened so far at once, then as it happens.
        None if follow => player.seek(player.end(), clock()).output,
        None => String::new(),
    };

    let _guard = TerminalGuard::new(interactive)?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (key_tx, mut keys) = tokio::sync::mpsc::channel::<Key>(16);
    if interactive {
        key_reader(key_tx, stop.clone());
    } else {
        drop(key_tx);
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot watch for SIGHUP")?;
    let mut next_fetch = tokio::time::Instant::now() + FOLLOW_POLL;
    let mut keys_open = interactive;
    let mut quiet_polls = 0u32;
    let result: anyhow::Result<()> = async {
        loop {
            let step = player.poll(clock());
            pending.push_str(&step.output);
            if !pending.is_empty() {
                let mut out = std::io::stdout().lock();
                out.write_all(pending.as_bytes())
                    .and_then(|()| out.flush())
                    .context("cannot write to the terminal")?;
                pending.clear();
            }
            if step.done {
                return Ok(());
            }
            let sleep = step.wait.map_or(MAX_SLEEP, |w| {
                Duration::from_secs_f64(w.min(3600.0)).min(MAX_SLEEP)
            });
            let mut deadline = tokio::time::Instant::now() + sleep;
            if follow {
                deadline = deadline.min(next_fetch);
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                k = keys.recv(), if keys_open => match k {
                    Some(k) => pending.push_str(&player.key(k, clock()).output),
                    None => keys_open = false,
                },
                _ = term.recv() => return Ok(()),
                _ = hup.recv() => return Ok(()),
            }
            if follow && tokio::time::Instant::now() >= next_fetch {
                next_fetch = tokio::time::Instant::now() + FOLLOW_POLL;
                let page = api.recording_page(session_id, next_chunk, None).await?;
                if let Some((last, _)) = page.chunks.last() {
                    next_chunk = last + 1;
                    quiet_polls = 0;
                    player.push(events_of(&header_line, &page.chunks)?);
                } else if !page.live {
                    quiet_polls += 1;
                }
                // Ended: sealed and read to the end, or nothing new for a few polls after the
                // end (an unsealed recording waits for crash recovery, not for this viewer).
                if !page.live && (page.next_chunk.is_none() || quiet_polls >= ENDED_POLLS) {
                    player.close();
                }
            }
        }
    }
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    result?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn since() {
        let now = time::OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        assert_eq!(parse_since("1h", now).unwrap(), 996_400.0);
        assert_eq!(parse_since("90s", now).unwrap(), 999_910.0);
        assert_eq!(parse_since("1h30m", now).unwrap(), 994_600.0);
        assert_eq!(parse_since("2d", now).unwrap(), 827_200.0);
        assert_eq!(parse_since("1d2h", now).unwrap(), 906_400.0);
        assert_eq!(parse_since("100d", now).unwrap(), 0.0);
        assert_eq!(
            parse_since("2026-12-05T10:00:00Z", now).unwrap(),
            1_796_464_800.0
        );
        for bad in ["", "5", "yesterday", "1x", "d", "-1h", "1h1h"] {
            assert!(parse_since(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn printable_and_at() {
        assert_eq!(printable("a\u{1b}[31mb\x07"), "a [31mb ");
        assert_eq!(at(5.25), "5.2s");
        assert_eq!(at(90.0), "1m30.0s");
        assert_eq!(at(f64::NAN), "0.0s");
    }
}
