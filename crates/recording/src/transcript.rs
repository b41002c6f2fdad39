//! Plain-text transcripts of recorded terminal streams, for `airlock sessions log` and search.

use crate::cast::{Event, EventKind};

/// A line being drawn: the characters and the cursor column, so `\r` and backspace overwrite as a
/// terminal would.
#[derive(Default)]
struct Line {
    chars: Vec<char>,
    cursor: usize,
}

impl Line {
    fn put(&mut self, c: char) {
        if let Some(slot) = self.chars.get_mut(self.cursor) {
            *slot = c;
        } else {
            self.chars.push(c);
        }
        self.cursor += 1;
    }

    fn take(&mut self) -> String {
        let s: String = self.chars.iter().collect();
        self.chars.clear();
        self.cursor = 0;
        s.trim_end().to_string()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Escape {
    None,
    /// After ESC.
    Start,
    /// Inside CSI: parameters until a final byte.
    Csi,
    /// Inside OSC/DCS/PM/APC: until BEL or ST.
    Str,
    /// ESC seen inside a string (maybe ST).
    StringEnd,
}

/// Renders one stream (output, or input) into lines.
struct Screen {
    line: Line,
    esc: Escape,
    csi: String,
    out: Vec<String>,
    prefix: &'static str,
}

impl Screen {
    fn new(prefix: &'static str) -> Screen {
        Screen {
            line: Line::default(),
            esc: Escape::None,
            csi: String::new(),
            out: Vec::new(),
            prefix,
        }
    }

    fn end_line(&mut self) {
        let s = self.line.take();
        self.out.push(format!("{}{s}", self.prefix));
    }

    fn feed(&mut self, text: &str, input: bool) {
        for c in text.chars() {
            match self.esc {
                Escape::Start => {
                    self.esc = match c {
                        '[' => {
                            self.csi.clear();
                            Escape::Csi
                        }
                        ']' | 'P' | 'X' | '^' | '_' => Escape::Str,
                        _ => Escape::None,
                    };
                    continue;
                }
                Escape::Csi => {
                    if ('\u{40}'..='\u{7e}').contains(&c) {
                        self.esc = Escape::None;
                        if c == 'K' && (self.csi.is_empty() || self.csi == "0") {
                            self.line.chars.truncate(self.line.cursor);
                        }
                    } else {
                        self.csi.push(c);
                    }
                    continue;
                }
                Escape::Str => {
                    self.esc = match c {
                        '\u{7}' | '\u{9c}' => Escape::None,
                        '\u{1b}' => Escape::StringEnd,
                        _ => Escape::Str,
                    };
                    continue;
                }
                Escape::StringEnd => {
                    self.esc = if c == '\\' { Escape::None } else { Escape::Str };
                    continue;
                }
                Escape::None => {}
            }
            match c {
                '\u{1b}' => self.esc = Escape::Start,
                '\u{9b}' => {
                    self.csi.clear();
                    self.esc = Escape::Csi;
                }
                '\n' => self.end_line(),
                // Typed Enter is a carriage return; on output it returns to column 0.
                '\r' if input => self.end_line(),
                '\r' => self.line.cursor = 0,
                '\u{8}' | '\u{7f}' if input => {
                    self.line.cursor = self.line.cursor.saturating_sub(1);
                    self.line.chars.truncate(self.line.cursor);
                }
                '\u{8}' => self.line.cursor = self.line.cursor.saturating_sub(1),
                '\t' => self.line.put('\t'),
                c if c.is_control() => {}
                c => self.line.put(c),
            }
        }
    }

    fn finish(mut self) -> Vec<String> {
        if !self.line.chars.is_empty() {
            self.end_line();
        }
        self.out
    }
}

/// Plain text of output (and input) events: ANSI/OSC escapes removed, `\r\n` → `\n`, backspaces
/// and carriage returns applied per line as a terminal would draw them. With `with_input`, each
/// typed line appears as its own line prefixed `> `, in time order with the output lines.
pub fn transcript(events: &[Event], with_input: bool) -> String {
    let mut output = Screen::new("");
    let mut input = Screen::new("> ");
    let mut lines: Vec<String> = Vec::new();
    for ev in events {
        match ev.kind {
            EventKind::Output => {
                output.feed(&ev.data, false);
                lines.append(&mut output.out);
            }
            EventKind::Input if with_input => {
                input.feed(&ev.data, true);
                lines.append(&mut input.out);
            }
            EventKind::Input | EventKind::Resize => {}
        }
    }
    lines.extend(output.finish());
    if with_input {
        lines.extend(input.finish());
    }
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    text
}
