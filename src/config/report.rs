//! `image-builder config check`: the effective configuration, one line per key with where its
//! value came from, secrets masked; then the problems that would stop the worker.

use std::fmt::Write;

use super::schema::{generic_key, known_keys, shown};
use super::{Layers, Review};

/// The report's text and whether the configuration may run.
pub struct CheckReport {
    pub text: String,
    pub ok: bool,
}

pub fn check(layers: &Layers) -> CheckReport {
    let review = Review::of(layers);
    let known = known_keys();
    let mut text = String::new();
    let file = layers
        .file
        .as_ref()
        .map_or("(none)".to_owned(), |p| p.display().to_string());
    let _ = writeln!(text, "# environment: {}; file: {file}", layers.env);
    let effective = layers.effective();
    let width = effective.keys().map(|k| k.len()).max().unwrap_or(0);
    for (key, entry) in &effective {
        // A misspelt key may be a misspelt secret: its value is not shown.
        let value = if known.contains(&generic_key(key)) {
            shown(key, &entry.value)
        } else {
            "(unknown key, value not shown)".to_owned()
        };
        let _ = writeln!(text, "{key:width$} = {value}  # {}", entry.origin);
    }
    for relaxation in &review.relaxations {
        let _ = writeln!(text, "warning: {}", relaxation.warning());
    }
    // A list that replaces a single setting: someone who set the single one should know.
    for (single, list) in [
        ("amqp.url", "amqp.urls"),
        ("amqp.management_url", "amqp.management_urls"),
    ] {
        let set = |key: &str| {
            effective.get(key).is_some_and(|e| {
                e.origin != super::Origin::Default && !matches!(e.value.trim(), "" | "\"\"" | "[]")
            })
        };
        if set(single) && set(list) {
            let _ = writeln!(text, "note: {single} is not used: {list} is set");
        }
    }
    for problem in &review.problems {
        let _ = writeln!(text, "error: {problem}");
    }
    let ok = review.problems.is_empty();
    if ok {
        let _ = writeln!(text, "ok");
    }
    CheckReport { text, ok }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(name: &str, value: &str) -> (String, String) {
        (name.to_owned(), value.to_owned())
    }

    #[test]
    fn defaults_pass_and_every_line_names_its_origin() {
        let layers = Layers::gather(
            None,
            None,
            [var(
                "IMAGE_BUILDER__AMQP__URL",
                "amqp://u:topsecret@127.0.0.1:5672/%2f",
            )],
        )
        .expect("gathered");
        let report = check(&layers);
        assert!(report.ok, "{}", report.text);
        assert!(!report.text.contains("topsecret"), "{}", report.text);
        assert!(
            report
                .text
                .contains("\"amqp://u:***@127.0.0.1:5672/%2f\"  # env IMAGE_BUILDER__AMQP__URL"),
            "{}",
            report.text
        );
        assert!(
            report.text.contains("registry.insecure") && report.text.contains("= false  # default"),
            "{}",
            report.text
        );
    }

    #[test]
    fn a_single_url_that_a_list_replaces_is_pointed_out() {
        let url = var("IMAGE_BUILDER__AMQP__URL", "amqp://u:p@127.0.0.1:5672/%2f");
        let urls = var("IMAGE_BUILDER__AMQP__URLS", "amqp://u:p@127.0.0.1:5681/%2f");
        let report = check(&Layers::gather(None, None, [url.clone(), urls]).expect("gathered"));
        assert!(report.ok, "{}", report.text);
        assert!(
            report
                .text
                .contains("note: amqp.url is not used: amqp.urls is set"),
            "{}",
            report.text
        );
        let alone = check(&Layers::gather(None, None, [url]).expect("gathered"));
        assert!(!alone.text.contains("note:"), "{}", alone.text);
    }

    #[test]
    fn a_typo_fails_naming_the_key_without_showing_its_value() {
        let layers = Layers::gather(
            None,
            None,
            [var("IMAGE_BUILDER__REGISTRY__PASWORD", "hunter2")],
        )
        .expect("gathered");
        let report = check(&layers);
        assert!(!report.ok);
        assert!(
            report.text.contains("unknown setting `registry.pasword`")
                && report.text.contains("did you mean `registry.password`"),
            "{}",
            report.text
        );
        assert!(!report.text.contains("hunter2"), "{}", report.text);
    }

    #[test]
    fn unsafe_combinations_fail_outside_local_and_warn_inside() {
        let insecure = var("IMAGE_BUILDER__REGISTRY__INSECURE", "true");
        let report = check(&Layers::gather(None, None, [insecure.clone()]).expect("gathered"));
        assert!(!report.ok);
        assert!(
            report
                .text
                .contains("error: registry.insecure = true is refused")
                && report.text.contains("security.allow_insecure_registry"),
            "{}",
            report.text
        );
        let allowed = var("IMAGE_BUILDER__SECURITY__ALLOW_INSECURE_REGISTRY", "true");
        let report = check(&Layers::gather(None, None, [insecure, allowed]).expect("gathered"));
        assert!(report.ok, "{}", report.text);
        assert_eq!(report.text.matches("warning: security relaxed").count(), 1);

        let local = check(&Layers::gather(Some("local"), None, []).expect("gathered"));
        assert!(local.ok, "{}", local.text);
        assert_eq!(
            local.text.matches("warning: security relaxed").count(),
            3,
            "insecure registry, plain-text schemes, the dev key: {}",
            local.text
        );
    }
}
