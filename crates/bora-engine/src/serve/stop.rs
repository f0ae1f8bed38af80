//! Releasing generated text while honouring stop strings: text that could still become a stop
//! string is held back, and a stop string, once complete, ends the output before it (it may be
//! split across any number of tokens).

pub(crate) struct StopText {
    stops: Vec<String>,
    text: String,
    /// Bytes of `text` released so far.
    sent: usize,
}

impl StopText {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            text: String::new(),
            sent: 0,
        }
    }

    /// Adds generated text; returns what may be released now, and whether a stop string ended
    /// the output.
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        let from = self.sent;
        self.text.push_str(piece);
        let window = from.saturating_sub(self.stops.iter().map(|s| s.len()).max().unwrap_or(0));
        let window = (0..=window)
            .rev()
            .find(|&i| self.text.is_char_boundary(i))
            .unwrap_or(0);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.text[window..].find(s.as_str()).map(|i| window + i))
            .min()
        {
            let out = self
                .text
                .get(from..at.max(from))
                .unwrap_or_default()
                .to_string();
            self.sent = at.max(from);
            return (out, true);
        }
        // Hold back the longest tail that is the start of a stop string.
        let hold = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len()).filter(|&k| s.is_char_boundary(k) && self.text.ends_with(&s[..k]))
            })
            .max()
            .unwrap_or(0);
        let end = (self.text.len() - hold).max(from);
        let out = self.text[from..end].to_string();
        self.sent = end;
        (out, false)
    }

    /// What was held back, at the end of generation.
    pub fn finish(&mut self) -> String {
        let out = self.text[self.sent..].to_string();
        self.sent = self.text.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut s = StopText::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let (t, stop) = s.push(p);
            out.push_str(&t);
            if stop {
                return (out, true);
            }
        }
        out.push_str(&s.finish());
        (out, false)
    }

    #[test]
    fn stops_split_across_pieces_never_leak() {
        assert_eq!(
            run(&["END"], &["hello E", "N", "D more"]),
            ("hello ".into(), true)
        );
        assert_eq!(
            run(&["END"], &["hello EN", "x"]),
            ("hello ENx".into(), false)
        );
        assert_eq!(run(&["\n\n", "##"], &["a\n", "\nb"]), ("a".into(), true));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(run(&["é!"], &["caf", "é", "!"]), ("caf".into(), true));
        assert_eq!(run(&["stop"], &["stop"]), ("".into(), true));
    }
}
