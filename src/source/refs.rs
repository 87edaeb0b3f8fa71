//! Which commit a request's ref names: the default branch, a commit, a branch or tag, only a
//! tag (`type: "tag"`), or the newest release (`type: "release"`). Read from the remote's ref
//! listing (no fetch) or from a fetched mirror, through the same rules.

use std::collections::BTreeMap;

use git2::{Oid, Repository};

use crate::error::BuildError;
use crate::request::{GitRef, RefKind};

/// What the request asks for, with the remote's default branch (`refs/heads/...`).
pub struct Wanted {
    pub git_ref: Option<GitRef>,
    pub kind: RefKind,
    pub default_branch: Option<String>,
}

/// Where refs are looked up: a fetched mirror, or the remote's advertisement.
pub trait Refs {
    /// The commit `refname` (a full name) points at, tags peeled.
    fn commit_of(&self, refname: &str) -> Option<Oid>;
    /// Tag names without `refs/tags/`.
    fn tag_names(&self) -> Vec<String>;
    /// Whether a requested SHA may be taken as a commit (a listing cannot tell: as is).
    fn knows_commit(&self, oid: Oid) -> bool;
}

/// The commit a request names, the name it was found under and the full ref (none for a SHA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub oid: Oid,
    pub name: String,
    pub is_default_branch: bool,
    pub refname: Option<String>,
}

/// The commit, the name it was found under, and whether that is the default branch.
pub fn resolve(refs: &impl Refs, wanted: &Wanted) -> Result<Resolved, BuildError> {
    let not_found = |what: &str| BuildError::RefNotFound(what.to_owned());
    let found = |oid, name: &str, is_default_branch, refname: &str| Resolved {
        oid,
        name: name.to_owned(),
        is_default_branch,
        refname: Some(refname.to_owned()),
    };
    let default_branch = wanted.default_branch.as_deref();
    let Some(git_ref) = &wanted.git_ref else {
        if wanted.kind == RefKind::Release {
            let (tag, oid) = newest_release(refs).ok_or_else(|| {
                not_found(
                    "no release: no tag is a version such as v1.2.3 (pre-releases do not count)",
                )
            })?;
            return Ok(found(oid, &tag, false, &format!("refs/tags/{tag}")));
        }
        let branch = default_branch
            .ok_or_else(|| not_found("the repository has no default branch (is it empty?)"))?;
        let oid = refs.commit_of(branch).ok_or_else(|| not_found(branch))?;
        let name = branch.strip_prefix("refs/heads/").unwrap_or(branch);
        return Ok(found(oid, name, true, branch));
    };
    let raw = git_ref.as_str();
    if wanted.kind != RefKind::Repo {
        // A tag only: a branch of the same name must not stand in for the release.
        let refname = format!("refs/tags/{raw}");
        let oid = refs
            .commit_of(&refname)
            .ok_or_else(|| not_found(&format!("no tag named {raw}")))?;
        return Ok(found(oid, raw, false, &refname));
    }
    if git_ref.is_full_sha() {
        let oid = Oid::from_str(raw).map_err(|_| not_found(raw))?;
        if !refs.knows_commit(oid) {
            return Err(not_found(&format!("commit {raw} is not in the repository")));
        }
        return Ok(Resolved {
            oid,
            name: raw.to_owned(),
            is_default_branch: false,
            refname: None,
        });
    }
    // A full ref name (`refs/heads/x`) is taken as it is.
    let candidates = [
        format!("refs/heads/{raw}"),
        format!("refs/tags/{raw}"),
        raw.to_owned(),
    ];
    for candidate in candidates.iter().filter(|c| c.starts_with("refs/")) {
        if let Some(oid) = refs.commit_of(candidate) {
            let name = candidate
                .strip_prefix("refs/heads/")
                .or_else(|| candidate.strip_prefix("refs/tags/"))
                .unwrap_or(candidate);
            let is_default = default_branch == Some(candidate.as_str());
            return Ok(found(oid, name, is_default, candidate));
        }
    }
    Err(not_found(&format!("no branch or tag named {raw}")))
}

/// A fetched mirror's refs.
impl Refs for Repository {
    fn commit_of(&self, refname: &str) -> Option<Oid> {
        let reference = self.find_reference(refname).ok()?;
        reference.peel_to_commit().ok().map(|c| c.id())
    }

    fn tag_names(&self) -> Vec<String> {
        let Ok(names) = Repository::tag_names(self, None) else {
            return Vec::new();
        };
        names
            .iter()
            .flatten()
            .flatten()
            .map(str::to_owned)
            .collect()
    }

    fn knows_commit(&self, oid: Oid) -> bool {
        self.find_commit(oid).is_ok()
    }
}

/// The remote's ref advertisement: what one listing round trip tells, without a fetch.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Full ref name -> what it points at; annotated tags also as `refs/tags/x^{}` (peeled).
    pub refs: BTreeMap<String, Oid>,
    /// The branch the remote's HEAD names (`refs/heads/...`).
    pub head: Option<String>,
}

impl Refs for Listing {
    fn commit_of(&self, refname: &str) -> Option<Oid> {
        if refname.ends_with("^{}") {
            return None;
        }
        let peeled = self.refs.get(&format!("{refname}^{{}}"));
        peeled.or_else(|| self.refs.get(refname)).copied()
    }

    fn tag_names(&self) -> Vec<String> {
        self.refs
            .keys()
            .filter_map(|name| name.strip_prefix("refs/tags/"))
            .filter(|name| !name.ends_with("^{}"))
            .map(str::to_owned)
            .collect()
    }

    fn knows_commit(&self, _oid: Oid) -> bool {
        true
    }
}

/// The tag with the highest semantic version (an optional leading `v`), pre-releases left out,
/// with the commit it points at. Tags that are not versions are not releases.
fn newest_release(refs: &impl Refs) -> Option<(String, Oid)> {
    refs.tag_names()
        .into_iter()
        .filter_map(|name| release_version(&name).map(|v| (v, name)))
        .filter_map(|(version, name)| {
            let oid = refs.commit_of(&format!("refs/tags/{name}"))?;
            Some((version, name, oid))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, name, oid)| (name, oid))
}

fn release_version(tag: &str) -> Option<semver::Version> {
    let bare = tag
        .strip_prefix('v')
        .or_else(|| tag.strip_prefix('V'))
        .unwrap_or(tag);
    semver::Version::parse(bare)
        .ok()
        .filter(|v| v.pre.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repository whose commits are named by `refs`: branch or tag name -> commit message.
    fn repo_with(refs: &[(&str, &str)]) -> (tempfile::TempDir, Repository, Vec<(String, Oid)>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::init_bare(dir.path()).expect("repo");
        let mut made = Vec::new();
        {
            let who = git2::Signature::now("t", "t@example.invalid").expect("signature");
            let tree_id = repo.treebuilder(None).expect("tb").write().expect("tree");
            let tree = repo.find_tree(tree_id).expect("tree");
            for (refname, message) in refs {
                let oid = repo
                    .commit(None, &who, &who, message, &tree, &[])
                    .expect("commit");
                repo.reference(refname, oid, true, "test").expect("ref");
                made.push(((*refname).to_owned(), oid));
            }
        }
        (dir, repo, made)
    }

    /// `resolve`, as the tests compare it.
    fn resolved(refs: &impl Refs, wanted: &Wanted) -> Result<(Oid, String, bool), BuildError> {
        resolve(refs, wanted).map(|r| (r.oid, r.name, r.is_default_branch))
    }

    fn wanted(git_ref: Option<&str>, kind: RefKind) -> Wanted {
        Wanted {
            git_ref: git_ref.map(|r| GitRef::parse(r).expect("valid ref")),
            kind,
            default_branch: Some("refs/heads/main".into()),
        }
    }

    fn oid_of(made: &[(String, Oid)], refname: &str) -> Oid {
        made.iter()
            .find(|(r, _)| r == refname)
            .map(|(_, o)| *o)
            .expect("made")
    }

    #[test]
    fn a_tag_request_never_takes_a_branch_of_the_same_name() {
        let (_dir, repo, made) = repo_with(&[
            ("refs/heads/main", "main"),
            ("refs/heads/v1", "a branch posing as the tag"),
            ("refs/tags/v1", "the tag"),
            ("refs/heads/only-branch", "b"),
        ]);
        let (oid, name, default) = resolved(&repo, &wanted(Some("v1"), RefKind::Tag)).expect("tag");
        assert_eq!(oid, oid_of(&made, "refs/tags/v1"));
        assert_eq!((name.as_str(), default), ("v1", false));
        // "repo" takes the branch first, as before.
        let (oid, ..) = resolved(&repo, &wanted(Some("v1"), RefKind::Repo)).expect("branch");
        assert_eq!(oid, oid_of(&made, "refs/heads/v1"));
        let missing = resolved(&repo, &wanted(Some("only-branch"), RefKind::Tag));
        assert!(
            matches!(missing, Err(BuildError::RefNotFound(ref m)) if m == "no tag named only-branch")
        );
    }

    #[test]
    fn a_release_without_ref_is_the_highest_version_tag_not_a_pre_release() {
        let (_dir, repo, made) = repo_with(&[
            ("refs/heads/main", "main"),
            ("refs/tags/v1.2.0", "1.2.0"),
            ("refs/tags/v1.10.0", "1.10.0: numerically highest"),
            ("refs/tags/v2.0.0-rc.1", "a pre-release"),
            ("refs/tags/nightly", "not a version"),
            ("refs/tags/1.9.9", "no v"),
        ]);
        let (oid, name, default) =
            resolved(&repo, &wanted(None, RefKind::Release)).expect("a release");
        assert_eq!(name, "v1.10.0", "semantic, not lexical, order");
        assert_eq!(oid, oid_of(&made, "refs/tags/v1.10.0"));
        assert!(!default);
        // With a ref, a release is that tag, whatever its name.
        let (oid, ..) = resolved(&repo, &wanted(Some("nightly"), RefKind::Release)).expect("tag");
        assert_eq!(oid, oid_of(&made, "refs/tags/nightly"));

        let (_dir, repo, _) = repo_with(&[("refs/heads/main", "m"), ("refs/tags/x", "x")]);
        let none = resolved(&repo, &wanted(None, RefKind::Release));
        assert!(matches!(none, Err(BuildError::RefNotFound(ref m)) if m.starts_with("no release")));
    }

    #[test]
    fn repo_requests_resolve_as_before() {
        let (_dir, repo, made) = repo_with(&[("refs/heads/main", "main"), ("refs/tags/t1", "tag")]);
        let (oid, name, default) = resolved(&repo, &wanted(None, RefKind::Repo)).expect("default");
        assert_eq!(
            (oid, name.as_str(), default),
            (oid_of(&made, "refs/heads/main"), "main", true)
        );
        let (oid, name, _) = resolved(&repo, &wanted(Some("t1"), RefKind::Repo)).expect("tag");
        assert_eq!((oid, name.as_str()), (oid_of(&made, "refs/tags/t1"), "t1"));
        let sha = oid_of(&made, "refs/tags/t1").to_string();
        let (oid, ..) = resolved(&repo, &wanted(Some(&sha), RefKind::Repo)).expect("sha");
        assert_eq!(oid.to_string(), sha);
    }

    /// The advertisement a server makes of `repo`: every ref, annotated tags also peeled.
    fn advertised(repo: &Repository) -> Listing {
        let mut listing = Listing {
            head: Some("refs/heads/main".into()),
            ..Listing::default()
        };
        for reference in repo.references().expect("refs").flatten() {
            let (Some(name), Some(oid)) = (reference.name().ok(), reference.target()) else {
                continue;
            };
            listing.refs.insert(name.to_owned(), oid);
            if let Ok(tag) = repo.find_tag(oid) {
                listing.refs.insert(format!("{name}^{{}}"), tag.target_id());
            }
        }
        listing
    }

    #[test]
    fn a_listing_resolves_as_the_mirror_does_and_peels_annotated_tags() {
        let (_dir, repo, made) = repo_with(&[
            ("refs/heads/main", "main"),
            ("refs/heads/v1", "a branch posing as the tag"),
            ("refs/tags/v1", "the tag"),
            ("refs/tags/v1.2.0", "1.2.0"),
            ("refs/tags/v1.10.0-rc.1", "a pre-release"),
        ]);
        // An annotated release tag: the listing names the tag object, and its commit as ^{}.
        let commit = oid_of(&made, "refs/tags/v1.2.0");
        let who = git2::Signature::now("t", "t@example.invalid").expect("signature");
        let object = repo.find_object(commit, None).expect("commit");
        repo.tag("v1.3.0", &object, &who, "annotated", false)
            .expect("annotated tag");
        let listing = advertised(&repo);
        assert_ne!(listing.refs["refs/tags/v1.3.0"], commit, "the tag object");
        let sha = commit.to_string();
        let cases = [
            (None, RefKind::Repo),
            (None, RefKind::Release),
            (Some("v1"), RefKind::Repo),
            (Some("v1"), RefKind::Tag),
            (Some("v1.3.0"), RefKind::Tag),
            (Some("refs/heads/v1"), RefKind::Repo),
            (Some(sha.as_str()), RefKind::Repo),
            (Some("missing"), RefKind::Repo),
            (Some("missing"), RefKind::Tag),
        ];
        for (git_ref, kind) in cases {
            let wanted = wanted(git_ref, kind);
            let (from_mirror, from_listing) = (resolve(&repo, &wanted), resolve(&listing, &wanted));
            match (&from_mirror, &from_listing) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{git_ref:?} {kind:?}"),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                _ => panic!("{git_ref:?} {kind:?}: {from_mirror:?} vs {from_listing:?}"),
            }
        }
        let release = resolve(&listing, &wanted(None, RefKind::Release)).expect("release");
        assert_eq!(
            (release.name.as_str(), release.oid),
            ("v1.3.0", commit),
            "the annotated tag, peeled to its commit"
        );
        assert_eq!(release.refname.as_deref(), Some("refs/tags/v1.3.0"));
        let missing = resolve(&listing, &wanted(Some("missing"), RefKind::Repo));
        assert!(
            matches!(missing, Err(BuildError::RefNotFound(ref m)) if m == "no branch or tag named missing")
        );
    }
}
