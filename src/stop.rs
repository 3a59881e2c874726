//! Stop sequences (OpenAI's `stop`, `--stop`, the C ABI's `stop`) on a stream of text pieces: the text before the first stop sequence is
//! released, the sequence and everything after it never is. A piece that might be the start of a
//! stop sequence is held back until the next piece decides.

/// Finds stop sequences across streamed pieces.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet released (a possible start of a stop sequence).
    held: String,
    stopped: bool,
}

impl StopMatcher {
    /// Empty sequences are ignored (they would match everywhere).
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
            stopped: false,
        }
    }

    /// True once a stop sequence was found.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Takes a piece; returns the text that can be released now.
    pub fn push(&mut self, piece: &str) -> String {
        if self.stopped {
            return String::new();
        }
        self.held.push_str(piece);
        // Slicing below only ever happens at char boundaries (`find` and `char_indices` give them).
        let first = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min();
        if let Some(at) = first {
            self.stopped = true;
            let out = self.held[..at].to_owned();
            self.held.clear();
            return out;
        }
        let keep = self.longest_partial_suffix();
        let out = self.held[..self.held.len() - keep].to_owned();
        self.held.drain(..self.held.len() - keep);
        out
    }

    /// The generation ended: what is held is not a stop sequence after all.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Bytes at the end of `held` that are a proper prefix of some stop sequence (char boundaries only).
    fn longest_partial_suffix(&self) -> usize {
        let h = &self.held;
        h.char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &h[i..];
                self.stops.iter().any(|s| s.len() > tail.len() && s.starts_with(tail))
            })
            .map_or(0, |i| h.len() - i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            out.push_str(&m.push(p));
        }
        if !m.stopped() {
            out.push_str(&m.finish());
        }
        (out, m.stopped())
    }

    #[test]
    fn stops_inside_one_piece_and_across_pieces() {
        assert_eq!(run(&["END"], &["abc END def"]), ("abc ".into(), true));
        assert_eq!(run(&["END"], &["abc E", "N", "D def"]), ("abc ".into(), true));
        // A partial match that turns out not to be one is released.
        assert_eq!(run(&["END"], &["abc EN", "x"]), ("abc ENx".into(), false));
        assert_eq!(run(&["END"], &["abc EN"]), ("abc EN".into(), false));
        // The earliest of several sequences wins.
        assert_eq!(run(&["b", "a"], &["xxab"]), ("xx".into(), true));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(run(&[""], &["a"]), ("a".into(), false));
        // Multi-byte characters are never split.
        assert_eq!(run(&["éé"], &["aé", "b"]), ("aéb".into(), false));
        assert_eq!(run(&["éé"], &["aé", "é"]), ("a".into(), true));
    }

    #[test]
    fn holds_back_only_possible_starts() {
        let mut m = StopMatcher::new(vec!["\n\nUser:".into()]);
        assert_eq!(m.push("Hello"), "Hello");
        assert_eq!(m.push(" world\n"), " world");
        assert_eq!(m.push("\nUs"), "");
        assert_eq!(m.push("a"), "\n\nUsa");
        assert!(!m.stopped());
    }
}
