//! A simple progress bar on stderr: redrawn in place on a terminal, a line every 10% otherwise (logs),
//! silent with `--quiet`.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    enabled: bool,
    tty: bool,
    label: String,
    total: u64,
    start: Instant,
    last_draw: Option<Instant>,
    last_decile: u64,
}

impl Progress {
    pub fn new(enabled: bool) -> Self {
        Progress {
            enabled,
            tty: std::io::stderr().is_terminal(),
            label: String::new(),
            total: 0,
            start: Instant::now(),
            last_draw: None,
            last_decile: 0,
        }
    }

    /// A disabled bar (tests, library use).
    pub fn hidden() -> Self {
        Progress::new(false)
    }

    /// Starts a phase of `total` units (bytes).
    pub fn start(&mut self, label: &str, total: u64) {
        self.label = label.to_string();
        self.total = total.max(1);
        self.start = Instant::now();
        self.last_draw = None;
        self.last_decile = 0;
    }

    pub fn update(&mut self, done: u64, item: &str) {
        if !self.enabled {
            return;
        }
        let frac = (done as f64 / self.total as f64).clamp(0.0, 1.0);
        let elapsed = self.start.elapsed().as_secs_f64();
        if self.tty {
            let now = Instant::now();
            if self
                .last_draw
                .is_some_and(|t| now.duration_since(t) < Duration::from_millis(100))
                && done < self.total
            {
                return;
            }
            self.last_draw = Some(now);
            const WIDTH: usize = 30;
            let filled = (frac * WIDTH as f64) as usize;
            let bar: String = "#".repeat(filled) + &"-".repeat(WIDTH - filled);
            let mut item = item.to_string();
            if item.len() > 40 {
                let cut = item
                    .char_indices()
                    .map(|(i, _)| i)
                    .find(|&i| i >= item.len() - 39)
                    .unwrap_or(0);
                item = format!("…{}", &item[cut..]);
            }
            let mut err = std::io::stderr().lock();
            let _ = write!(
                err,
                "\r{} [{bar}] {:5.1}% {:6.1}s {:<40}",
                self.label,
                frac * 100.0,
                elapsed,
                item
            );
            let _ = err.flush();
        } else {
            let decile = (frac * 10.0) as u64;
            if decile > self.last_decile {
                self.last_decile = decile;
                eprintln!("{}: {:3}% ({:.1}s)", self.label, decile * 10, elapsed);
            }
        }
    }

    /// Ends the phase (moves off the bar's line on a terminal).
    pub fn finish(&mut self) {
        if self.enabled && self.tty {
            eprintln!();
        }
    }

    /// A one-line message (not while a bar is being drawn).
    pub fn note(&self, msg: &str) {
        if self.enabled {
            eprintln!("{msg}");
        }
    }
}
