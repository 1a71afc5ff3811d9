//! Command lines as a POSIX shell reads them back (for printing and for
//! generated scripts).

/// A word as a POSIX shell reads it back.
pub fn shell_word(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./=:,+@%".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// `program` and `args` as one line a POSIX shell reads back.
pub fn command_line(program: &str, args: &[String]) -> String {
    std::iter::once(shell_word(program))
        .chain(args.iter().map(|a| shell_word(a)))
        .collect::<Vec<_>>()
        .join(" ")
}
