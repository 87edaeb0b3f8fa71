//! Whether a Dockerfile's own steps read its base image's files. When none does, the image made
//! on a moved base is the old image with the base layers swapped (`image_edit::rebase`): the
//! layers the steps made would come out the same. A step reads the base when it runs code
//! (`RUN`), when it names users or groups the base's `/etc/passwd` resolves (`--chown=app`), or
//! when it copies from elsewhere than the context (another stage, an image, a URL).

use super::{Body, Dockerfile, Keyword, Source};

impl Dockerfile {
    /// Why this Dockerfile's image cannot be moved to a new base by swapping layers: the first
    /// step that reads the base (named by line), or a shape the swap does not cover. None when
    /// every step only copies from the context or sets metadata.
    pub fn base_use(&self) -> Option<String> {
        let [stage] = self.stages.as_slice() else {
            return Some("the Dockerfile has several stages".to_owned());
        };
        stage.steps.iter().find_map(|step| {
            let line = step.line;
            match step.keyword {
                Keyword::Run => Some(format!("RUN at line {line} runs code on the base's files")),
                Keyword::Onbuild => None,
                Keyword::Copy | Keyword::Add => {
                    for flag in &step.flags {
                        let value = flag.value.as_deref().unwrap_or_default();
                        match flag.name.as_str() {
                            "from" => {
                                return Some(format!(
                                    "the {} at line {line} copies from {value}",
                                    step.keyword.name()
                                ));
                            }
                            "chown" if !numeric_owner(value) => {
                                return Some(format!(
                                    "the {} at line {line} names owner {value}, which the base's \
                                     /etc/passwd resolves",
                                    step.keyword.name()
                                ));
                            }
                            _ => {}
                        }
                    }
                    let remote = match &step.body {
                        Body::Transfer { sources, .. } => sources.iter().any(|s| {
                            matches!(s, Source::Path(p) if p.contains("://") || p.starts_with("git@"))
                        }),
                        _ => false,
                    };
                    remote.then(|| format!("the ADD at line {line} fetches a URL"))
                }
                _ => None,
            }
        })
    }
}

/// `uid[:gid]` in numbers: resolved without the base's user database.
fn numeric_owner(owner: &str) -> bool {
    owner
        .split(':')
        .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use crate::dockerfile::Dockerfile;

    fn base_use(text: &str) -> Option<String> {
        Dockerfile::parse(text).expect("parses").base_use()
    }

    #[test]
    fn copies_and_metadata_do_not_read_the_base() {
        let text = "FROM b\nARG V=1\nCOPY --chown=1000:1000 --chmod=644 app/ /app/\n\
                    ADD bundle.tar /srv/\nWORKDIR /app\nENV A=1\nLABEL x=y\nUSER app\n\
                    EXPOSE 80\nCMD [\"/app/run\"]\nONBUILD RUN make\n";
        assert_eq!(base_use(text), None);
    }

    #[test]
    fn steps_that_read_the_base_are_named_by_line() {
        let run = base_use("FROM b\nCOPY a /a\nRUN make\n").expect("RUN");
        assert!(run.contains("RUN at line 3"), "{run}");
        let chown = base_use("FROM b\nCOPY --chown=app:app a /a\n").expect("named owner");
        assert!(
            chown.contains("line 2") && chown.contains("app:app"),
            "{chown}"
        );
        let from = base_use("FROM b\nCOPY --from=other:1 /x /x\n").expect("--from");
        assert!(from.contains("copies from other:1"), "{from}");
        let url = base_use("FROM b\nADD https://example.invalid/x /x\n").expect("URL");
        assert!(url.contains("fetches a URL"), "{url}");
        let stages = base_use("FROM b AS one\nCOPY a /a\nFROM one\nCOPY c /c\n").expect("stages");
        assert!(stages.contains("several stages"), "{stages}");
    }
}
