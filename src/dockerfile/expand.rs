//! `FROM` lines with their variables expanded, as the builder does before it pulls anything:
//! a global `ARG`'s value is the build arg given for it, else its default; a name no global
//! `ARG` declares expands to nothing.

use super::Dockerfile;

/// The image a stage is built on, following `FROM <earlier stage>` to the image beneath it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageBase {
    pub index: usize,
    /// As written after `AS`.
    pub name: Option<String>,
    /// Expanded; None for `scratch`.
    pub image: Option<String>,
}

impl Dockerfile {
    /// The images the stages build `FROM` after expansion (stages and `scratch` left out), in
    /// order, each once. `given` answers a build arg's value by name.
    pub fn expanded_bases<'a>(&self, given: impl Fn(&str) -> Option<&'a str>) -> Vec<String> {
        let mut images = Vec::new();
        for stage in self.stage_bases(given) {
            if let Some(image) = stage.image
                && !images.contains(&image)
            {
                images.push(image);
            }
        }
        images
    }

    /// Each stage's base image after expansion, a stage built on an earlier one given that
    /// one's image.
    pub fn stage_bases<'a>(&self, given: impl Fn(&str) -> Option<&'a str>) -> Vec<StageBase> {
        let value = |name: &str| -> Option<String> {
            let (_, default) = self.global_args.iter().rev().find(|(n, _)| n == name)?;
            given(name).map(str::to_owned).or_else(|| {
                default
                    .as_deref()
                    .map(|d| expand(d, &|_| None, self.escape))
            })
        };
        let mut stages: Vec<StageBase> = Vec::with_capacity(self.stages.len());
        for (n, stage) in self.stages.iter().enumerate() {
            let image = expand(&stage.base, &value, self.escape);
            let image = match self.stage_ref(n, &image) {
                Some(earlier) => stages.get(earlier).and_then(|s| s.image.clone()),
                None if image.eq_ignore_ascii_case("scratch") => None,
                None => Some(image),
            };
            stages.push(StageBase {
                index: n,
                name: stage.written_name.clone(),
                image,
            });
        }
        stages
    }
}

/// `$NAME`, `${NAME}`, `${NAME:-word}` and `${NAME:+word}` in `text`; `<escape>$` is a `$`.
fn expand(text: &str, value: &dyn Fn(&str) -> Option<String>, escape: char) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == escape && chars.peek() == Some(&'$') {
            out.push('$');
            chars.next();
            continue;
        }
        if c != '$' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'{') {
            chars.next();
            let inner: String = chars.by_ref().take_while(|&c| c != '}').collect();
            let (name, modifier) = match inner.split_once(':') {
                Some((name, rest)) => (name, Some(rest)),
                None => (inner.as_str(), None),
            };
            let set = value(name).filter(|v| !v.is_empty());
            match modifier {
                Some(m) if m.starts_with('-') => {
                    out.push_str(&set.unwrap_or_else(|| expand(&m[1..], value, escape)));
                }
                Some(m) if m.starts_with('+') => {
                    if set.is_some() {
                        out.push_str(&expand(&m[1..], value, escape));
                    }
                }
                _ => out.push_str(&set.unwrap_or_default()),
            }
            continue;
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                name.push(c);
                chars.next();
            } else {
                break;
            }
        }
        if name.is_empty() {
            out.push('$');
        } else {
            out.push_str(&value(&name).unwrap_or_default());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bases(text: &str, given: &[(&str, &str)]) -> Vec<String> {
        let parsed = Dockerfile::parse(text).expect("parses");
        parsed.expanded_bases(|name| given.iter().find(|(n, _)| *n == name).map(|(_, v)| *v))
    }

    #[test]
    fn global_args_feed_from_lines_with_build_args_first() {
        let text = "ARG REG=localhost\nARG TAG=\"1.0\"\nFROM $REG/base:${TAG} AS b\n\
                    FROM b\nFROM ${MISSING:-alpine}:3\nFROM scratch\n";
        assert_eq!(bases(text, &[]), ["localhost/base:1.0", "alpine:3"]);
        assert_eq!(
            bases(text, &[("TAG", "2"), ("REG", "r.io")]),
            ["r.io/base:2", "alpine:3"]
        );
    }

    #[test]
    fn undeclared_names_expand_to_nothing_and_modifiers_apply() {
        let text = "ARG A\nARG B=x\nFROM img${A:+-a}${B:+-b}$UNDECLARED\n";
        assert_eq!(bases(text, &[("UNDECLARED", "evil")]), ["img-b"]);
        assert_eq!(bases(text, &[("A", "1")]), ["img-a-b"]);
    }

    #[test]
    fn a_stage_named_by_a_variable_is_a_stage() {
        let text = "ARG S=first\nFROM busybox AS first\nFROM ${S}\n";
        assert_eq!(bases(text, &[]), ["busybox"]);
    }
}
