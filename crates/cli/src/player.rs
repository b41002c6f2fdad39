//! The replay player of `airlock sessions replay`: which recorded output is due on the screen
//! at a given moment, with the original timing (idle gaps capped), a speed, pause and seek.
//!
//! It owns no clock and no terminal: every call takes `now` (seconds on any monotonic clock)
//! and returns the bytes to write and how long until the next event is due, so the timing,
//! seeking and idle capping are tested with a fake clock, without sleeping
//! (the terminal loop is in `recording.rs`).
//!
//! Positions are on the *played* timeline: the recording's times with every gap between two
//! events cut to the idle cap. A position given in recording time (`--from`, the `T` of a
//! search match) is mapped onto it by [`Player::played_time`].

use airlock_recording::{Event, EventKind};

/// What the screen is reset with before a backward seek redraws from the start: leave the
/// alternate screen, reset attributes, home, clear.
pub const CLEAR: &str = "\x1b[?1049l\x1b[0m\x1b[H\x1b[2J";
/// The smallest and largest speed the +/- keys reach.
pub const SPEEDS: (f64, f64) = (1.0 / 64.0, 64.0);
/// How far the arrow keys seek, in played seconds.
pub const SEEK_STEP: f64 = 5.0;

/// A key the player understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// Space: pause or resume.
    Pause,
    /// ←: back [`SEEK_STEP`] seconds.
    Back,
    /// →: forward [`SEEK_STEP`] seconds.
    Forward,
    /// `+`: twice as fast.
    Faster,
    /// `-`: half as fast.
    Slower,
    /// `q`, Ctrl-C, Esc.
    Quit,
}

/// What to do after a call into the player.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Step {
    /// Bytes to write to the terminal now.
    pub output: String,
    /// Real seconds until the next event is due (`None`: nothing is due, e.g. paused, or
    /// waiting for more of a live recording).
    pub wait: Option<f64>,
    /// Everything was played (and no more is coming), or the viewer quit.
    pub done: bool,
}

/// The player's state.
#[derive(Debug)]
pub struct Player {
    /// Events with their played time.
    events: Vec<(f64, Event)>,
    /// The next event to write.
    next: usize,
    /// Recording time of the last event pushed (for capping the next gap).
    last_t: f64,
    /// The played time at `anchor`.
    base: f64,
    /// The clock reading at which the position was `base`.
    anchor: f64,
    /// Played seconds per real second.
    speed: f64,
    /// Gaps between events longer than this are cut to it (`None`: never).
    idle_cap: Option<f64>,
    paused: bool,
    /// More events may still be pushed (a live recording followed).
    open: bool,
    quit: bool,
}

impl Player {
    /// A player over `events` (in recording order), at played time 0 at clock time `now`.
    /// `open` when more may be pushed later (`--follow`).
    pub fn new(
        events: Vec<Event>,
        speed: f64,
        idle_cap: Option<f64>,
        open: bool,
        now: f64,
    ) -> Self {
        let mut p = Player {
            events: Vec::with_capacity(events.len()),
            next: 0,
            last_t: 0.0,
            base: 0.0,
            anchor: now,
            speed: clamp_speed(speed),
            idle_cap: idle_cap.filter(|c| c.is_finite() && *c > 0.0),
            paused: false,
            open,
            quit: false,
        };
        p.push(events);
        p
    }

    /// Adds events of a live recording as they arrive (times at or after the last one's).
    pub fn push(&mut self, events: Vec<Event>) {
        for e in events {
            // Times are the recording's own: a decreasing or non-finite one is kept in order
            // at the previous time rather than trusted.
            let t = if e.t.is_finite() && e.t >= self.last_t {
                e.t
            } else {
                self.last_t
            };
            let gap = t - self.last_t;
            let gap = match self.idle_cap {
                Some(cap) if gap > cap => cap,
                _ => gap,
            };
            let played = self.events.last().map_or(gap.min(t), |(p, _)| p + gap);
            self.last_t = t;
            self.events.push((played, e));
        }
    }

    /// No more events will be pushed (the live recording was sealed).
    pub fn close(&mut self) {
        self.open = false;
    }

    /// The played time of recording time `t`: that of the first event at or after it (the
    /// end when there is none).
    pub fn played_time(&self, t: f64) -> f64 {
        let mut last = 0.0;
        let mut recorded = 0.0;
        for (p, e) in &self.events {
            recorded = if e.t.is_finite() {
                e.t.max(recorded)
            } else {
                recorded
            };
            if recorded >= t {
                return *p;
            }
            last = *p;
        }
        last
    }

    /// The played time of the last event so far.
    pub fn end(&self) -> f64 {
        self.events.last().map_or(0.0, |(p, _)| *p)
    }

    /// The current played time. It stops at the last event: a backward seek after a long
    /// wait at the end starts from there, and events pushed to a followed recording while
    /// the clock ran on play at once (live), not at their distance from a moving position.
    pub fn position(&self, now: f64) -> f64 {
        let pos = if self.paused {
            self.base
        } else {
            self.base + (now - self.anchor).max(0.0) * self.speed
        };
        pos.min(self.end())
    }

    /// Whether playback is paused.
    #[cfg(test)]
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// The speed (played seconds per real second).
    #[cfg(test)]
    pub fn speed(&self) -> f64 {
        self.speed
    }

    fn reanchor(&mut self, now: f64, position: f64) {
        self.base = position;
        self.anchor = now;
    }

    /// Moves to played time `to` (clamped to the recording): forward writes what lies
    /// between at once; backward clears the screen and redraws everything up to `to`.
    pub fn seek(&mut self, to: f64, now: f64) -> Step {
        let to = if to.is_finite() {
            to.clamp(0.0, self.end())
        } else {
            0.0
        };
        let mut out = String::new();
        if to < self.position(now) {
            out.push_str(CLEAR);
            self.next = 0;
        }
        self.reanchor(now, to);
        let mut step = self.poll(now);
        out.push_str(&step.output);
        step.output = out;
        step
    }

    /// Handles one key.
    pub fn key(&mut self, key: Key, now: f64) -> Step {
        let pos = self.position(now);
        match key {
            Key::Pause => {
                self.reanchor(now, pos);
                self.paused = !self.paused;
                self.poll(now)
            }
            Key::Back => self.seek(pos - SEEK_STEP, now),
            Key::Forward => self.seek(pos + SEEK_STEP, now),
            Key::Faster | Key::Slower => {
                self.reanchor(now, pos);
                let f = if key == Key::Faster { 2.0 } else { 0.5 };
                self.speed = clamp_speed(self.speed * f);
                self.poll(now)
            }
            Key::Quit => {
                self.quit = true;
                Step {
                    done: true,
                    ..Step::default()
                }
            }
        }
    }

    /// Writes every output event due by `now`, and says when the next one is.
    pub fn poll(&mut self, now: f64) -> Step {
        if self.quit {
            return Step {
                done: true,
                ..Step::default()
            };
        }
        let pos = self.position(now);
        let mut output = String::new();
        while let Some((p, e)) = self.events.get(self.next) {
            if *p > pos {
                break;
            }
            if matches!(e.kind, EventKind::Output) {
                output.push_str(&e.data);
            }
            self.next += 1;
        }
        let wait = match self.events.get(self.next) {
            Some((p, _)) if !self.paused => Some(((p - pos) / self.speed).max(0.0)),
            _ => None,
        };
        let done = !self.open && self.next >= self.events.len();
        Step { output, wait, done }
    }
}

fn clamp_speed(s: f64) -> f64 {
    if s.is_finite() && s > 0.0 {
        s.clamp(SPEEDS.0, SPEEDS.1)
    } else {
        1.0
    }
}

/// Parses a position in a recording: `90`, `90s`, `1.5s`, `1m30s`, `1h2m`, `1:30`, `1:02:03`.
pub fn parse_offset(s: &str) -> Result<f64, String> {
    let bad = || format!("{s:?} is not a time such as 90, 1m30s, 1h2m or 1:30");
    let s = s.trim();
    if s.is_empty() {
        return Err(bad());
    }
    let number = |t: &str| -> Result<f64, String> {
        if t.is_empty() || !t.chars().all(|c| c.is_ascii_digit() || c == '.') {
            return Err(bad());
        }
        t.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or_else(bad)
    };
    let secs = if s.contains(':') {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() > 3 {
            return Err(bad());
        }
        let mut total = 0.0;
        for p in parts {
            total = total * 60.0 + number(p)?;
        }
        total
    } else if s.chars().all(|c| c.is_ascii_digit() || c == '.') {
        number(s)?
    } else {
        let mut total = 0.0;
        let mut digits = String::new();
        let mut last_unit = 0;
        for c in s.chars() {
            let unit = match c {
                'h' => 3,
                'm' => 2,
                's' => 1,
                d if d.is_ascii_digit() || d == '.' => {
                    digits.push(d);
                    continue;
                }
                _ => return Err(bad()),
            };
            if last_unit != 0 && unit >= last_unit {
                return Err(bad());
            }
            last_unit = unit;
            let mult = [0.0, 1.0, 60.0, 3600.0][unit];
            total += number(&digits)? * mult;
            digits.clear();
        }
        if !digits.is_empty() {
            return Err(bad());
        }
        total
    };
    if secs.is_finite() {
        Ok(secs)
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn out(t: f64, data: &str) -> Event {
        Event {
            t,
            kind: EventKind::Output,
            data: data.into(),
        }
    }

    fn input(t: f64, data: &str) -> Event {
        Event {
            t,
            kind: EventKind::Input,
            data: data.into(),
        }
    }

    fn rec() -> Vec<Event> {
        vec![
            out(0.0, "a"),
            input(0.5, "x"),
            out(1.0, "b"),
            out(1.5, "c"),
            // A ten-minute idle gap.
            out(601.5, "d"),
            out(602.0, "e"),
        ]
    }

    /// Original timing at speed 1: each event when due, input never written; the wait is
    /// the time to the next event.
    #[test]
    fn plays_with_the_original_timing() {
        let mut p = Player::new(rec(), 1.0, None, false, 100.0);
        let s = p.poll(100.0);
        assert_eq!(s.output, "a");
        assert_eq!(s.wait, Some(0.5));
        assert!(!s.done);
        // The input event is due at 0.5 but prints nothing.
        assert_eq!(p.poll(100.5).output, "");
        assert_eq!(p.poll(100.99).output, "");
        let s = p.poll(101.0);
        assert_eq!((s.output.as_str(), s.wait), ("b", Some(0.5)));
        // A late poll writes everything due at once.
        let s = p.poll(102.0);
        assert_eq!(s.output, "c");
        assert!((s.wait.unwrap() - 599.5).abs() < 1e-9);
        let s = p.poll(702.0);
        assert_eq!(s.output, "de");
        assert!(s.done);
        assert_eq!(s.wait, None);
    }

    /// Idle gaps are cut to the cap; other gaps are kept.
    #[test]
    fn idle_gaps_are_capped() {
        let mut p = Player::new(rec(), 1.0, Some(2.0), false, 0.0);
        assert_eq!(p.end(), 4.0);
        assert_eq!(p.poll(1.5).output, "abc");
        let s = p.poll(3.4);
        assert_eq!(s.output, "");
        assert!((s.wait.unwrap() - 0.1).abs() < 1e-9);
        assert_eq!(p.poll(3.5).output, "d");
        assert_eq!(p.poll(4.0).output, "e");
        // A first event late in the recording is capped too.
        let p = Player::new(vec![out(30.0, "late")], 1.0, Some(2.0), false, 0.0);
        assert_eq!(p.end(), 2.0);
        // A zero or negative cap means none.
        let p = Player::new(rec(), 1.0, Some(0.0), false, 0.0);
        assert_eq!(p.end(), 602.0);
    }

    /// Speed scales the waits; +/- double and halve it from the current position.
    #[test]
    fn speed_and_speed_keys() {
        let mut p = Player::new(rec(), 2.0, None, false, 0.0);
        assert_eq!(p.poll(0.0).wait, Some(0.25));
        assert_eq!(p.poll(0.5).output, "b");
        let s = p.key(Key::Faster, 0.5);
        assert_eq!(p.speed(), 4.0);
        // Position 1.0; "c" at 1.5 is 0.125 s away at speed 4.
        assert_eq!(s.wait, Some(0.125));
        p.key(Key::Slower, 0.5);
        p.key(Key::Slower, 0.5);
        assert_eq!(p.speed(), 1.0);
        assert_eq!(p.poll(1.0).output, "c");
        for _ in 0..20 {
            p.key(Key::Faster, 1.0);
        }
        assert_eq!(p.speed(), SPEEDS.1);
        assert_eq!(Player::new(rec(), f64::NAN, None, false, 0.0).speed(), 1.0);
        assert_eq!(Player::new(rec(), -3.0, None, false, 0.0).speed(), 1.0);
    }

    /// Space stops the clock: nothing is due while paused, and playing resumes where it was.
    #[test]
    fn pause_holds_the_position() {
        let mut p = Player::new(rec(), 1.0, Some(2.0), false, 0.0);
        assert_eq!(p.poll(0.6).output, "a");
        let s = p.key(Key::Pause, 0.6);
        assert!(p.paused());
        assert_eq!(s.wait, None);
        assert_eq!(p.poll(50.0).output, "");
        assert_eq!(p.position(50.0), 0.6);
        let s = p.key(Key::Pause, 50.0);
        assert!(!p.paused());
        assert!((s.wait.unwrap() - 0.4).abs() < 1e-9);
        assert_eq!(p.poll(50.3).output, "");
        assert_eq!(p.poll(50.5).output, "b");
    }

    /// → writes what it skips at once; ← clears and redraws up to the new position; seeks
    /// stop at both ends.
    #[test]
    fn seeking() {
        let mut p = Player::new(rec(), 1.0, Some(2.0), false, 0.0);
        assert_eq!(p.poll(0.0).output, "a");
        let s = p.key(Key::Forward, 0.0);
        assert_eq!(s.output, "bcde");
        assert!(s.done);
        assert_eq!(p.position(0.0), 4.0);
        // Back 5 s from 4.0 clamps to 0: clear, then "a" again.
        let s = p.key(Key::Back, 10.0);
        assert_eq!(s.output, format!("{CLEAR}a"));
        assert!(!s.done);
        assert_eq!(p.seek(1.6, 10.0).output, "bc");
        let s = p.seek(1.2, 10.0);
        assert_eq!(s.output, format!("{CLEAR}ab"));
        assert!((s.wait.unwrap() - 0.3).abs() < 1e-9);
        // Seeking while paused stays paused at the new place.
        p.key(Key::Pause, 10.0);
        let s = p.seek(3.5, 10.0);
        assert_eq!((s.output.as_str(), s.wait), ("cd", None));
        assert_eq!(p.position(99.0), 3.5);
        assert_eq!(p.seek(f64::NAN, 99.0).output, format!("{CLEAR}a"));
    }

    /// `--from` in recording time lands on the first event at or after it, on the played
    /// (capped) timeline.
    #[test]
    fn from_maps_recording_time() {
        let mut p = Player::new(rec(), 1.0, Some(2.0), false, 0.0);
        assert_eq!(p.played_time(600.0), 3.5);
        assert_eq!(p.played_time(1.0), 1.0);
        assert_eq!(p.played_time(9999.0), 4.0);
        let s = p.seek(p.played_time(600.0), 0.0);
        assert_eq!(s.output, "abcd");
    }

    /// A followed live recording is not done when caught up; pushed events play; closing
    /// ends it.
    #[test]
    fn following_a_live_recording() {
        let mut p = Player::new(vec![out(0.0, "a")], 1.0, Some(2.0), true, 0.0);
        let s = p.poll(5.0);
        assert_eq!((s.output.as_str(), s.wait, s.done), ("a", None, false));
        p.push(vec![out(1.0, "b"), out(100.0, "c")]);
        // Position 5.0 is past both (played 1.0 and 3.0): written at once.
        assert_eq!(p.poll(5.0).output, "bc");
        // Out-of-order or broken times are kept in order, not trusted.
        p.push(vec![out(50.0, "d"), out(f64::NAN, "e")]);
        assert_eq!(p.poll(5.0).output, "de");
        assert!(!p.poll(6.0).done);
        p.close();
        assert!(p.poll(6.0).done);
    }

    #[test]
    fn quit_ends_at_once() {
        let mut p = Player::new(rec(), 1.0, None, false, 0.0);
        assert!(p.key(Key::Quit, 0.0).done);
        assert!(p.poll(1000.0).done);
        assert_eq!(p.poll(1000.0).output, "");
    }

    #[test]
    fn offsets() {
        for (s, v) in [
            ("90", 90.0),
            ("90s", 90.0),
            ("1.5s", 1.5),
            ("1m30s", 90.0),
            ("1m", 60.0),
            ("1h2m3s", 3723.0),
            ("1h", 3600.0),
            ("1:30", 90.0),
            ("1:02:03", 3723.0),
            (" 2m ", 120.0),
        ] {
            assert_eq!(parse_offset(s), Ok(v), "{s}");
        }
        for s in [
            "", "m", "1x", "-1", "1s2m", "1m1m", "1:2:3:4", "1::2", "5m30", "nan", "inf", "1e9",
            "1.2.3",
        ] {
            assert!(parse_offset(s).is_err(), "{s}");
        }
    }
}
