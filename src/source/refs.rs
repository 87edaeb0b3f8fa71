//! Which commit a request's ref names in a fetched mirror: the default branch, a commit, a
//! branch or tag, only a tag (`type: "tag"`), or the newest release (`type: "release"`).

use git2::{Oid, Repository};

use crate::error::BuildError;
use crate::request::{GitRef, RefKind};

/// What the request asks for, with the remote's default branch as the fetch found it.
pub struct Wanted {
    pub git_ref: Option<GitRef>,
    pub kind: RefKind,
    pub default_branch: Option<String>,
}

/// The commit, the name it was found under, and whether that is the default branch.
pub fn resolve(repo: &Repository, wanted: &Wanted) -> Result<(Oid, String, bool), BuildError> {
    let not_found = |what: &str| BuildError::RefNotFound(what.to_owned());
    let default_branch = wanted.default_branch.as_deref();
    let Some(git_ref) = &wanted.git_ref else {
        if wanted.kind == RefKind::Release {
            let (tag, oid) = newest_release(repo).ok_or_else(|| {
                not_found(
                    "no release: no tag is a version such as v1.2.3 (pre-releases do not count)",
                )
            })?;
            return Ok((oid, tag, false));
        }
        let branch = default_branch
            .ok_or_else(|| not_found("the repository has no default branch (is it empty?)"))?;
        let oid = peel(repo, branch).ok_or_else(|| not_found(branch))?;
        let name = branch.strip_prefix("refs/heads/").unwrap_or(branch);
        return Ok((oid, name.to_owned(), true));
    };
    let raw = git_ref.as_str();
    if wanted.kind != RefKind::Repo {
        // A tag only: a branch of the same name must not stand in for the release.
        let oid = peel(repo, &format!("refs/tags/{raw}"))
            .ok_or_else(|| not_found(&format!("no tag named {raw}")))?;
        return Ok((oid, raw.to_owned(), false));
    }
    if git_ref.is_full_sha() {
        let oid = Oid::from_str(raw).map_err(|_| not_found(raw))?;
        repo.find_commit(oid)
            .map_err(|_| not_found(&format!("commit {raw} is not in the repository")))?;
        return Ok((oid, raw.to_owned(), false));
    }
    // A full ref name (`refs/heads/x`) is taken as it is.
    let candidates = [
        format!("refs/heads/{raw}"),
        format!("refs/tags/{raw}"),
        raw.to_owned(),
    ];
    for candidate in candidates.iter().filter(|c| c.starts_with("refs/")) {
        if let Some(oid) = peel(repo, candidate) {
            let name = candidate
                .strip_prefix("refs/heads/")
                .or_else(|| candidate.strip_prefix("refs/tags/"))
                .unwrap_or(candidate);
            let is_default = default_branch == Some(candidate.as_str());
            return Ok((oid, name.to_owned(), is_default));
        }
    }
    Err(not_found(&format!("no branch or tag named {raw}")))
}

/// The tag with the highest semantic version (an optional leading `v`), pre-releases left out,
/// with the commit it points at. Tags that are not versions are not releases.
fn newest_release(repo: &Repository) -> Option<(String, Oid)> {
    let names = repo.tag_names(None).ok()?;
    names
        .iter()
        .filter_map(|name| name.ok().flatten())
        .filter_map(|name| release_version(name).map(|v| (v, name)))
        .filter_map(|(version, name)| {
            peel(repo, &format!("refs/tags/{name}")).map(|oid| (version, name.to_owned(), oid))
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

fn peel(repo: &Repository, refname: &str) -> Option<Oid> {
    let reference = repo.find_reference(refname).ok()?;
    reference.peel_to_commit().ok().map(|c| c.id())
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
        let (oid, name, default) = resolve(&repo, &wanted(Some("v1"), RefKind::Tag)).expect("tag");
        assert_eq!(oid, oid_of(&made, "refs/tags/v1"));
        assert_eq!((name.as_str(), default), ("v1", false));
        // "repo" takes the branch first, as before.
        let (oid, ..) = resolve(&repo, &wanted(Some("v1"), RefKind::Repo)).expect("branch");
        assert_eq!(oid, oid_of(&made, "refs/heads/v1"));
        let missing = resolve(&repo, &wanted(Some("only-branch"), RefKind::Tag));
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
            resolve(&repo, &wanted(None, RefKind::Release)).expect("a release");
        assert_eq!(name, "v1.10.0", "semantic, not lexical, order");
        assert_eq!(oid, oid_of(&made, "refs/tags/v1.10.0"));
        assert!(!default);
        // With a ref, a release is that tag, whatever its name.
        let (oid, ..) = resolve(&repo, &wanted(Some("nightly"), RefKind::Release)).expect("tag");
        assert_eq!(oid, oid_of(&made, "refs/tags/nightly"));

        let (_dir, repo, _) = repo_with(&[("refs/heads/main", "m"), ("refs/tags/x", "x")]);
        let none = resolve(&repo, &wanted(None, RefKind::Release));
        assert!(matches!(none, Err(BuildError::RefNotFound(ref m)) if m.starts_with("no release")));
    }

    #[test]
    fn repo_requests_resolve_as_before() {
        let (_dir, repo, made) = repo_with(&[("refs/heads/main", "main"), ("refs/tags/t1", "tag")]);
        let (oid, name, default) = resolve(&repo, &wanted(None, RefKind::Repo)).expect("default");
        assert_eq!(
            (oid, name.as_str(), default),
            (oid_of(&made, "refs/heads/main"), "main", true)
        );
        let (oid, name, _) = resolve(&repo, &wanted(Some("t1"), RefKind::Repo)).expect("tag");
        assert_eq!((oid, name.as_str()), (oid_of(&made, "refs/tags/t1"), "t1"));
        let sha = oid_of(&made, "refs/tags/t1").to_string();
        let (oid, ..) = resolve(&repo, &wanted(Some(&sha), RefKind::Repo)).expect("sha");
        assert_eq!(oid.to_string(), sha);
    }
}
