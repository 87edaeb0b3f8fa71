//! Which brokers a replica may use: `amqp.urls` (the nodes of one cluster, in order) or, when
//! that is empty, `amqp.url` alone; and which management APIs may take the queue policies.

use secrecy::{ExposeSecret, SecretString};

use super::AmqpSettings;

impl AmqpSettings {
    /// The brokers to try, in order: `amqp.urls` when it names any, else `amqp.url`. An empty
    /// item (an empty variable) is ignored.
    pub fn broker_urls(&self) -> Vec<SecretString> {
        let listed: Vec<SecretString> = self
            .urls
            .iter()
            .filter(|url| !url.expose_secret().trim().is_empty())
            .cloned()
            .collect();
        if listed.is_empty() {
            vec![self.url.clone()]
        } else {
            listed
        }
    }

    /// The management APIs to apply the policies through, in order: `amqp.management_urls`
    /// when it names any, else `amqp.management_url` (empty: none). Policies are cluster-wide,
    /// so the first that takes them is enough.
    pub fn management_apis(&self) -> Vec<String> {
        let listed: Vec<String> = self
            .management_urls
            .iter()
            .map(|url| url.trim())
            .filter(|url| !url.is_empty())
            .map(str::to_owned)
            .collect();
        if !listed.is_empty() {
            listed
        } else if self.management_url.is_empty() {
            Vec::new()
        } else {
            vec![self.management_url.clone()]
        }
    }

    /// One line per broker or management URL that cannot work, naming its field
    /// (`amqp.urls[2]`) and never showing an AMQP URL (it may hold a password).
    pub fn url_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let amqp = std::iter::once(("amqp.url".to_owned(), &self.url)).chain(
            self.urls
                .iter()
                .enumerate()
                .filter(|(_, url)| !url.expose_secret().trim().is_empty())
                .map(|(i, url)| (format!("amqp.urls[{i}]"), url)),
        );
        for (field, url) in amqp {
            if let Err(reason) = check_url(url.expose_secret(), &["amqp", "amqps"]) {
                problems.push(format!("{field}: {reason}"));
            }
        }
        let management = std::iter::once(("amqp.management_url".to_owned(), &self.management_url))
            .filter(|(_, url)| !url.is_empty())
            .chain(
                self.management_urls
                    .iter()
                    .enumerate()
                    .filter(|(_, url)| !url.trim().is_empty())
                    .map(|(i, url)| (format!("amqp.management_urls[{i}]"), url)),
            );
        for (field, url) in management {
            if let Err(reason) = check_url(url.trim(), &["http", "https"]) {
                problems.push(format!("{field}: {reason}"));
            }
        }
        problems
    }
}

/// Why `raw` is not a URL of one of `schemes` with a host. The reason never quotes the URL.
fn check_url(raw: &str, schemes: &[&str]) -> Result<(), String> {
    let url = url::Url::parse(raw).map_err(|e| format!("not a URL ({e})"))?;
    if !schemes.contains(&url.scheme()) {
        // The scheme is not quoted: in a mistyped value it may be a user name or worse.
        let wanted: Vec<String> = schemes.iter().map(|s| format!("{s}://")).collect();
        return Err(format!("must start with {}", wanted.join(" or ")));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("names no host".to_owned());
    }
    Ok(())
}

/// The broker's `host:port` (no credentials, no vhost): what logs may say about a broker URL.
pub fn broker_endpoint(url: &SecretString) -> String {
    match url::Url::parse(url.expose_secret()) {
        Ok(url) => {
            let host = url.host_str().unwrap_or("?");
            let port = url
                .port()
                .unwrap_or(if url.scheme() == "amqps" { 5671 } else { 5672 });
            format!("{host}:{port}")
        }
        Err(_) => "(an unparsable URL)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn amqp() -> AmqpSettings {
        Settings::for_env("local").expect("defaults load").amqp
    }

    fn secrets(urls: &[&str]) -> Vec<SecretString> {
        urls.iter().map(|u| SecretString::from(*u)).collect()
    }

    fn exposed(urls: &[SecretString]) -> Vec<&str> {
        urls.iter().map(ExposeSecret::expose_secret).collect()
    }

    #[test]
    fn urls_replace_url_when_they_name_any() {
        let mut settings = amqp();
        assert_eq!(
            exposed(&settings.broker_urls()),
            [settings.url.expose_secret()]
        );
        settings.urls = secrets(&["", " "]);
        assert_eq!(settings.broker_urls().len(), 1, "empty items are ignored");
        settings.urls = secrets(&["amqp://a:5681", "amqp://b:5682"]);
        assert_eq!(
            exposed(&settings.broker_urls()),
            ["amqp://a:5681", "amqp://b:5682"]
        );
    }

    #[test]
    fn management_urls_replace_management_url_when_they_name_any() {
        let mut settings = amqp();
        assert_eq!(settings.management_apis(), ["http://127.0.0.1:15672"]);
        settings.management_urls = vec!["http://a:15681".into(), "".into()];
        assert_eq!(settings.management_apis(), ["http://a:15681"]);
        settings.management_urls.clear();
        settings.management_url.clear();
        assert!(settings.management_apis().is_empty());
    }

    #[test]
    fn a_bad_url_is_named_by_its_index_without_showing_it() {
        let mut settings = amqp();
        settings.urls = secrets(&[
            "amqp://u:pw1@127.0.0.1:5681/%2f",
            "amqp://u:pw2@127.0.0.1:5682/%2f",
            "http://u:pw3@127.0.0.1:5683/%2f",
            "not a url pw4",
        ]);
        settings.management_urls = vec!["http://127.0.0.1:15681".into(), "ftp://x".into()];
        let problems = settings.url_problems();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert_eq!(
            problems[0],
            "amqp.urls[2]: must start with amqp:// or amqps://"
        );
        assert!(
            problems[1].starts_with("amqp.urls[3]: not a URL"),
            "{problems:?}"
        );
        assert!(
            problems[2].starts_with("amqp.management_urls[1]: must start with http://"),
            "{problems:?}"
        );
        assert!(
            !problems.iter().any(|p| p.contains("pw")),
            "no password shown: {problems:?}"
        );
    }

    #[test]
    fn an_endpoint_keeps_host_and_port_only() {
        let url = SecretString::from("amqp://user:secret@127.0.0.1:5682/vh");
        assert_eq!(broker_endpoint(&url), "127.0.0.1:5682");
        let url = SecretString::from("amqps://user:secret@broker.example");
        assert_eq!(broker_endpoint(&url), "broker.example:5671");
    }
}
