//! What the registry holds: its catalog of repositories and each repository's tags, read page
//! by page (distribution API `_catalog` and `tags/list`, `n` and the `Link` header).

use reqwest::StatusCode;
use reqwest::header::LINK;
use serde::Deserialize;

use super::RegistryClient;
use crate::error::RegistryError;

/// Names asked for per page by default: the largest page the reference registry serves.
pub(super) const PAGE: usize = 1000;
/// Pages read at most (100,000 names at the default page): a registry that keeps linking on is
/// not followed forever.
const MAX_PAGES: usize = 100;

#[derive(Deserialize)]
struct CatalogPage {
    #[serde(default)]
    repositories: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct TagsPage {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

impl RegistryClient {
    pub(super) async fn list_repositories(&self) -> Result<Vec<String>, RegistryError> {
        let first = self.url(&format!("_catalog?n={}", self.listing_page));
        let pages = self
            .read_pages("registry:catalog:*", first, "the catalog")
            .await?;
        let mut names = Vec::new();
        for body in pages {
            let page: CatalogPage = serde_json::from_slice(&body).map_err(|e| {
                RegistryError::Protocol(format!("the registry's catalog is not JSON: {e}"))
            })?;
            names.extend(page.repositories.unwrap_or_default());
        }
        Ok(names)
    }

    pub(super) async fn list_tags(
        &self,
        repository: &str,
    ) -> Result<Option<Vec<String>>, RegistryError> {
        let first = self.url(&format!("{repository}/tags/list?n={}", self.listing_page));
        let scope = format!("repository:{repository}:pull");
        let what = format!("the tags of {repository}");
        let pages = match self.read_pages(&scope, first, &what).await {
            Err(RegistryError::Status {
                status: StatusCode::NOT_FOUND,
                ..
            }) => return Ok(None),
            other => other?,
        };
        let mut tags = Vec::new();
        for body in pages {
            let page: TagsPage = serde_json::from_slice(&body)
                .map_err(|e| RegistryError::Protocol(format!("{what} are not JSON: {e}")))?;
            tags.extend(page.tags.unwrap_or_default());
        }
        Ok(Some(tags))
    }

    /// The bodies of `first` and of each page its `Link: <...>; rel="next"` leads to, as long
    /// as the link stays on the registry's own origin.
    async fn read_pages(
        &self,
        scope: &str,
        first: String,
        what: &str,
    ) -> Result<Vec<bytes::Bytes>, RegistryError> {
        let mut bodies = Vec::new();
        let mut next = Some(first);
        while let Some(url) = next.take() {
            if bodies.len() == MAX_PAGES {
                tracing::warn!(
                    "{what}: stopped after {MAX_PAGES} pages of {}",
                    self.listing_page
                );
                break;
            }
            let response = self.send(scope, || self.http.get(&url)).await?;
            let status = response.status();
            if !status.is_success() {
                return Err(RegistryError::Status {
                    status,
                    doing: format!("reading {what}"),
                });
            }
            next = response
                .headers()
                .get(LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(next_link)
                .and_then(|link| self.base.join(link).ok())
                .filter(|u| u.origin() == self.base.origin())
                .map(String::from);
            bodies.push(
                response
                    .bytes()
                    .await
                    .map_err(|source| RegistryError::Unreadable {
                        what: "a listing",
                        source,
                    })?,
            );
        }
        Ok(bodies)
    }
}

/// The target of the `rel="next"` entry of a `Link` header.
fn next_link(header: &str) -> Option<&str> {
    header.split(',').find_map(|entry| {
        let (target, params) = entry.trim().split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| p.trim().replace(' ', "") == "rel=\"next\"" || p.trim() == "rel=next");
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        is_next.then_some(target)
    })
}

#[cfg(test)]
mod tests {
    use super::next_link;

    #[test]
    fn the_next_page_is_read_from_the_link_header() {
        assert_eq!(
            next_link(r#"</v2/_catalog?last=a%2Fb&n=5>; rel="next""#),
            Some("/v2/_catalog?last=a%2Fb&n=5")
        );
        assert_eq!(
            next_link(r#"</x?p=1>; rel="prev", </x?p=3>; rel=next"#),
            Some("/x?p=3")
        );
        assert_eq!(next_link(r#"</x?p=1>; rel="prev""#), None);
        assert_eq!(next_link("garbage"), None);
    }
}
