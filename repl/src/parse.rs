//! Command-line parsing: the command word, the rest, shell-like words with double quotes, and "did you mean".

/// `("step", "3")` from `"step 3"`.
pub fn split_command(line: &str) -> (&str, &str) {
    let line = line.trim();
    match line.find(char::is_whitespace) {
        Some(i) => (&line[..i], line[i..].trim()),
        None => (line, ""),
    }
}

/// Called after every decoder step of a long command with values showing the progress (a front-end shows
/// them live, e.g. a notebook display that is updated in place).
pub type ProgressHook<'a> = std::cell::RefCell<&'a mut dyn FnMut(&[crate::value::Value])>;

/// A typed argument value, checked by the grammar ([`crate::grammar::parse`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Int(i64),
    Num(f64),
    Text(String),
}

/// A command's arguments: the raw rest of the line and its words (double quotes group, `\"` escapes), the
/// typed values the grammar read from them (by parameter name), and the front-end's progress hook if it has one.
#[derive(Default)]
pub struct Args<'a> {
    pub rest: String,
    pub words: Vec<String>,
    /// Byte offset in `rest` where each word starts.
    starts: Vec<usize>,
    /// The subcommand's canonical name (`rl update`), for commands with subcommands.
    pub sub: Option<&'static str>,
    pub values: Vec<(&'static str, Val)>,
    pub progress: Option<ProgressHook<'a>>,
}

impl<'a> Args<'a> {
    pub fn new(rest: &str) -> Result<Args<'a>, String> {
        let (mut words, mut starts) = (Vec::new(), Vec::new());
        let mut cur = String::new();
        let (mut quoted, mut in_word, mut chars) = (false, false, rest.char_indices());
        while let Some((i, c)) = chars.next() {
            if !in_word && !(c.is_whitespace() && !quoted) {
                starts.push(i);
            }
            match c {
                '\\' if quoted => cur.extend(chars.next().map(|(_, c)| c)),
                '"' => {
                    quoted = !quoted;
                    in_word = true;
                }
                c if c.is_whitespace() && !quoted => {
                    if in_word {
                        words.push(std::mem::take(&mut cur));
                        in_word = false;
                    }
                }
                c => {
                    cur.push(c);
                    in_word = true;
                }
            }
        }
        if quoted {
            return Err("unclosed double quote".into());
        }
        if in_word {
            words.push(cur);
        }
        Ok(Args { rest: rest.to_string(), words, starts, ..Args::default() })
    }

    pub fn get(&self, i: usize) -> Option<&str> {
        self.words.get(i).map(String::as_str)
    }

    /// The line from word `i` on, as typed (quotes kept); empty past the last word.
    pub fn rest_from(&self, i: usize) -> &str {
        self.starts.get(i).map_or("", |&b| &self.rest[b..])
    }

    fn value(&self, name: &str) -> Option<&Val> {
        self.values.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The whole number the grammar read for parameter `name`.
    pub fn int(&self, name: &str) -> Option<i64> {
        match self.value(name) {
            Some(Val::Int(v)) => Some(*v),
            _ => None,
        }
    }

    /// The number (a probability) the grammar read for `name`.
    pub fn num(&self, name: &str) -> Option<f64> {
        match self.value(name) {
            Some(Val::Num(v)) => Some(*v),
            _ => None,
        }
    }

    /// The text the grammar read for `name` (the first, for a repeated parameter).
    pub fn text(&self, name: &str) -> Option<&str> {
        match self.value(name) {
            Some(Val::Text(v)) => Some(v),
            _ => None,
        }
    }

    /// Every text of a repeated parameter.
    pub fn texts(&self, name: &str) -> Vec<&str> {
        self.values.iter().filter(|(n, _)| *n == name).filter_map(|(_, v)| if let Val::Text(t) = v { Some(t.as_str()) } else { None }).collect()
    }

    /// Every whole number of a repeated parameter.
    pub fn ints(&self, name: &str) -> Vec<i64> {
        self.values.iter().filter(|(n, _)| *n == name).filter_map(|(_, v)| if let Val::Int(t) = v { Some(*t) } else { None }).collect()
    }
}

/// Up to three known names closest to `name` (edit distance at most 2, or sharing a prefix).
pub fn nearest<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut scored: Vec<(usize, &str)> = known
        .map(|k| {
            let d = levenshtein(name, k);
            let d = if k.starts_with(name) { d.min(1) } else { d };
            (d, k)
        })
        .filter(|(d, _)| *d <= 2)
        .collect();
    scored.sort();
    scored.into_iter().take(3).map(|(_, k)| k.to_string()).collect()
}

/// Edit distance where swapping two adjacent characters counts as one edit (typos like `stpe`).
fn levenshtein(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for j in 0..=b.len() {
        d[0][j] = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_quotes() {
        let a = Args::new(r#"set "a b" c "x\"y""#).unwrap();
        assert_eq!(a.words, vec!["set", "a b", "c", "x\"y"]);
        assert!(Args::new("\"open").is_err());
        assert_eq!(Args::new(r#""""#).unwrap().words, vec![""]);
        assert_eq!(split_command("  step   3 "), ("step", "3"));
    }

    #[test]
    fn suggestions() {
        let known = ["step", "stats", "set", "rewind"];
        assert_eq!(nearest("stpe", known.iter().copied())[0], "step");
        assert!(nearest("rewnd", known.iter().copied()).contains(&"rewind".to_string()));
        assert!(nearest("zzzzzz", known.iter().copied()).is_empty());
    }
}
