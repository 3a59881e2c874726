//! `--api-key` (repeatable, or `INTERNVL_API_KEY`) and `--api-key-file`: the keys a client may send.
//! An empty key is an error, never "authentication off": an unset variable expanded in a service file
//! (`--api-key "$KEY"`) must not open the server.
use std::path::Path;

/// Every key from the flags and the file, in order, without duplicates.
pub fn collect(flags: &[String], file: Option<&Path>) -> Result<Vec<String>, String> {
    let mut keys = Vec::new();
    for (i, k) in flags.iter().enumerate() {
        let k = k.trim();
        if k.is_empty() {
            return Err(format!(
                "API key {} (--api-key or INTERNVL_API_KEY) is empty: give a key, or leave the option out \
                 to run without authentication",
                i + 1
            ));
        }
        keys.push(k.to_owned());
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| format!("--api-key-file {}: {e}", path.display()))?;
        let before = keys.len();
        keys.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        );
        if keys.len() == before {
            return Err(format!(
                "--api-key-file {} holds no key (only blank or # lines)",
                path.display()
            ));
        }
    }
    keys.sort();
    keys.dedup();
    Ok(keys)
}

/// The start-up line's account of authentication (a count, never the keys).
pub fn describe(n: usize) -> String {
    match n {
        0 => "no API key (anyone who reaches the port may use it)".into(),
        1 => "1 API key required".into(),
        n => format!("{n} API keys accepted"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_keys_are_refused_and_files_are_read() {
        assert!(collect(&["".into()], None).unwrap_err().contains("empty"));
        assert!(collect(&["  ".into()], None).unwrap_err().contains("empty"));
        assert_eq!(collect(&[], None).unwrap(), Vec::<String>::new());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("keys");
        std::fs::write(&f, "# operators\nk1\n\n  k2  \n#k3\nk1\n").unwrap();
        assert_eq!(collect(&["k0".into()], Some(&f)).unwrap(), ["k0", "k1", "k2"]);
        std::fs::write(&f, "# nothing\n\n").unwrap();
        assert!(collect(&[], Some(&f)).unwrap_err().contains("holds no key"));
        assert!(collect(&[], Some(&dir.path().join("missing"))).is_err());
        assert_eq!(describe(2), "2 API keys accepted");
    }
}
