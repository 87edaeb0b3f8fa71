//! From a validated request and its checkout to exactly what the engine builds: paths inside the
//! checkout (symlinks resolved and fenced in), the image name, tags and labels.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::confined::{Kind, Refused, Tree};
use crate::dockerfile::{DISCOVERED_NAMES, Dockerfile, MAX_DOCKERFILE_BYTES};
use crate::error::BuildError;
use crate::ports::{BuildSpec, Checkout, Recipe};
use crate::request::{BuildRequest, BuilderKind, ImageName, Tag};

/// What the image is called. Known once the ref is resolved, before any checkout: enough to
/// answer an identical request from the registry.
#[derive(Debug, Clone)]
pub struct Naming {
    /// registry/namespace/name, without a tag.
    pub image: String,
    pub tags: Vec<String>,
    pub key_tag: String,
    /// Names the configuration without the commit: points at its newest build, the base of an
    /// incremental rebuild of a later commit.
    pub lineage_tag: String,
}

pub fn naming(
    req: &BuildRequest,
    checkout: &Checkout,
    registry: &str,
    source_url: &str,
) -> Result<Naming, BuildError> {
    Ok(Naming {
        image: image_name(req, registry)?,
        tags: tags(req, checkout),
        key_tag: build_key(req, source_url, &checkout.commit),
        lineage_tag: lineage_tag(req, source_url),
    })
}

/// Facts about the build that are not in the request.
pub struct PlanInput<'a> {
    pub checkout: &'a Checkout,
    pub checkout_dir: &'a Path,
    pub source_url: &'a str,
    pub build_id: &'a str,
    pub created: time::OffsetDateTime,
}

const SHORT_SHA: usize = 12;

pub fn plan(
    req: &BuildRequest,
    input: &PlanInput<'_>,
    naming: Naming,
) -> Result<BuildSpec, BuildError> {
    let root = input.checkout_dir.canonicalize().map_err(|e| {
        BuildError::Internal(anyhow::anyhow!("failed to resolve the checkout: {e}"))
    })?;
    let tree = Tree::open(&root)
        .map_err(|e| BuildError::Internal(anyhow::anyhow!("failed to open the checkout: {e}")))?;
    let context = req.context.as_str();
    let context_rel = tree
        .resolve(Path::new(context))
        .map_err(|why| refused("context", context, why))?;
    if tree
        .kind(&context_rel)
        .map_err(|why| refused("context", context, why))?
        != Some(Kind::Dir)
    {
        return Err(BuildError::NoRecipe(format!(
            "context '{context}' is not a directory in the repository"
        )));
    }
    let recipe = find_recipe(req, &tree, &context_rel)?;
    let target = check_target(req, &tree, &recipe)?;
    Ok(BuildSpec {
        // `join("")` would add a trailing slash to the root.
        context_dir: if context_rel.as_os_str().is_empty() {
            root.clone()
        } else {
            root.join(&context_rel)
        },
        checkout_dir: root,
        recipe,
        image: naming.image,
        tags: naming.tags,
        key_tag: naming.key_tag,
        lineage_tag: naming.lineage_tag,
        // Random, not the build id: two runs of one id (replicas sharing podman's storage, or a
        // redelivery while the first run still pushes) must not untag each other's image, and a
        // request id may start with characters a tag may not.
        local_ref: format!(
            "localhost/image-builder/build:b{}",
            uuid::Uuid::new_v4().simple()
        ),
        labels: labels(req, input),
        build_args: req.build_args.clone(),
        secrets: req.secrets.clone(),
        platforms: req.platforms.clone(),
        target,
        cache_scope: cache_scope(req, input.source_url),
        refresh_bases: req
            .base_update
            .iter()
            .map(|moved| moved.reference.clone())
            .collect(),
        omitted_steps: Vec::new(),
    })
}

/// The scope of a request's caches (cache mounts, recorded bases): its user and repository.
pub fn cache_scope(req: &BuildRequest, source_url: &str) -> String {
    // A NUL cannot be in either part: two pairs never run together into one scope.
    format!("{}\0{}", req.user_id.as_str(), source_url)
}

/// `registry/user_id/name`: the name is the request's `image` or derived from the repository.
pub fn image_name(req: &BuildRequest, registry: &str) -> Result<String, BuildError> {
    let name = match &req.image {
        Some(name) => name.clone(),
        None => ImageName::from_repo_name(req.repo.name()).ok_or_else(|| {
            BuildError::NoRecipe(
                "cannot derive an image name from the repository; set `image`".into(),
            )
        })?,
    };
    Ok(format!(
        "{registry}/{}/{}",
        req.user_id.as_str(),
        name.as_str()
    ))
}

/// A tag naming everything that decides the image's content: source, commit, context,
/// Dockerfile, builder, build args, platforms, user labels. Same key, same image: no rebuild.
pub fn build_key(req: &BuildRequest, source_url: &str, commit: &str) -> String {
    format!("ib-{}", configuration_digest(req, source_url, Some(commit)))
}

/// The build key without the commit: every commit built with this configuration shares it.
pub fn lineage_tag(req: &BuildRequest, source_url: &str) -> String {
    format!("ib-line-{}", configuration_digest(req, source_url, None))
}

fn configuration_digest(req: &BuildRequest, source_url: &str, commit: Option<&str>) -> String {
    let mut canonical = serde_json::json!({
        "v": 1,
        "source": source_url,
        "commit": commit,
        "context": req.context.as_str(),
        "dockerfile": req.dockerfile.as_ref().map(|d| d.as_str()),
        "builder": req.builder,
        "build_args": req.build_args.iter().collect::<Vec<_>>(),
        "platforms": req.platforms.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        "labels": req.labels,
    });
    // Only when asked for: the keys of images built before the field existed stay valid.
    if let Some(target) = &req.target {
        canonical["target"] = target.as_str().into();
    }
    // Ids only, as docker's cache does: a rotated secret value does not make a new image.
    if !req.secrets.is_empty() {
        canonical["secrets"] = req.secrets.ids().collect::<Vec<_>>().into();
    }
    let digest = Sha256::digest(canonical.to_string().as_bytes());
    hex::encode(digest)[..32].to_owned()
}

/// A path of the request that cannot be used, as the user's fault naming the field.
fn refused(field: &str, given: &str, why: Refused) -> BuildError {
    match why {
        Refused::Missing(_) => BuildError::NoRecipe(format!(
            "{field} '{given}' does not exist in the repository"
        )),
        Refused::Outside(_) => {
            BuildError::NoRecipe(format!("{field} '{given}' points outside the repository"))
        }
        Refused::Io { .. } => why.into(),
        other => BuildError::NoRecipe(format!("{field} '{given}': {other}")),
    }
}

/// An explicit `dockerfile` (relative to the context), else (unless `builder` is nixpacks) the
/// first of `DISCOVERED_NAMES` in the context, else nixpacks (unless `builder` is dockerfile).
/// Every path is resolved beneath the checkout: symlinks may lead elsewhere inside, not out.
fn find_recipe(req: &BuildRequest, tree: &Tree, context: &Path) -> Result<Recipe, BuildError> {
    let dockerfile = |rel: &Path, given: &str| {
        let resolved = tree
            .resolve(rel)
            .map_err(|why| refused("dockerfile", given, why))?;
        match tree
            .kind(&resolved)
            .map_err(|why| refused("dockerfile", given, why))?
        {
            Some(Kind::File) => Ok(Recipe::Dockerfile(tree.path().join(resolved))),
            Some(Kind::Special(kind)) => Err(BuildError::NoRecipe(format!(
                "dockerfile '{given}' is a {kind}, not a file"
            ))),
            _ => Err(BuildError::NoRecipe(format!(
                "dockerfile '{given}' is not a file"
            ))),
        }
    };
    if let Some(path) = &req.dockerfile {
        return dockerfile(&context.join(path.as_str()), path.as_str());
    }
    if req.builder != BuilderKind::Nixpacks {
        for candidate in DISCOVERED_NAMES {
            let rel = context.join(candidate);
            match tree.kind(&rel) {
                Ok(Some(Kind::File)) => return dockerfile(&rel, candidate),
                Ok(_) => {}
                Err(why) => return Err(refused("dockerfile", candidate, why)),
            }
        }
    }
    if req.builder == BuilderKind::Dockerfile {
        return Err(BuildError::NoRecipe(format!(
            "no {} in context '{}' (builder is \"dockerfile\")",
            DISCOVERED_NAMES.join(", "),
            req.context.as_str()
        )));
    }
    Ok(Recipe::Nixpacks)
}

/// The requested stage, if the Dockerfile has it. A Dockerfile that does not parse is left for
/// the engine to report; nixpacks' generated Dockerfile has no stages to choose from.
fn check_target(
    req: &BuildRequest,
    tree: &Tree,
    recipe: &Recipe,
) -> Result<Option<String>, BuildError> {
    let Some(target) = &req.target else {
        return Ok(None);
    };
    let Recipe::Dockerfile(path) = recipe else {
        return Err(BuildError::NoRecipe(format!(
            "target '{}' needs a Dockerfile; the repository has none and nixpacks makes one \
             without stages",
            target.as_str()
        )));
    };
    let rel = path.strip_prefix(tree.path()).unwrap_or(path);
    let text = tree
        .read_to_string(rel, MAX_DOCKERFILE_BYTES)
        .map_err(|why| refused("dockerfile", &rel.to_string_lossy(), why))?;
    let Ok(parsed) = Dockerfile::parse(&text) else {
        return Ok(Some(target.as_str().to_owned()));
    };
    let named = parsed
        .stages
        .iter()
        .find(|s| s.name.as_deref() == Some(target.as_str()));
    if let Some(written) = named.and_then(|s| s.written_name.clone()) {
        return Ok(Some(written));
    }
    let names: Vec<&str> = parsed
        .stages
        .iter()
        .filter_map(|s| s.name.as_deref())
        .collect();
    Err(BuildError::NoRecipe(format!(
        "target '{}' is not a stage of {}; its named stages: {}",
        target.as_str(),
        rel.display(),
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    )))
}

/// Short commit, the sanitised ref, `latest` on the default branch, then the request's own tags.
fn tags(req: &BuildRequest, checkout: &Checkout) -> Vec<String> {
    let mut tags = vec![checkout.commit.chars().take(SHORT_SHA).collect::<String>()];
    if let Some(tag) = Tag::sanitized(&checkout.ref_name) {
        tags.push(tag.as_str().to_owned());
    }
    if checkout.is_default_branch {
        tags.push("latest".into());
    }
    tags.extend(req.tags.iter().map(|t| t.as_str().to_owned()));
    let mut seen = std::collections::HashSet::new();
    tags.retain(|t| seen.insert(t.clone()));
    tags
}

fn labels(req: &BuildRequest, input: &PlanInput<'_>) -> Vec<(String, String)> {
    let created = input
        .created
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut labels: Vec<(String, String)> = req
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.extend([
        (
            "org.opencontainers.image.source".into(),
            input.source_url.to_owned(),
        ),
        (
            "org.opencontainers.image.revision".into(),
            input.checkout.commit.clone(),
        ),
        ("org.opencontainers.image.created".into(), created),
        (
            "org.opencontainers.image.ref.name".into(),
            input.checkout.ref_name.clone(),
        ),
        (
            "io.image-builder.build-id".into(),
            input.build_id.to_owned(),
        ),
        (
            "io.image-builder.request-id".into(),
            req.id.as_str().to_owned(),
        ),
        (
            "io.image-builder.user-id".into(),
            req.user_id.as_str().to_owned(),
        ),
    ]);
    labels
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::RequestPolicy;

    fn request(extra: &str) -> BuildRequest {
        let body = format!(r#"{{"repo":"acme/My_App","user_id":"u1"{extra}}}"#);
        let policy = RequestPolicy {
            max_body_bytes: 4096,
            allowed_schemes: vec!["https".into()],
        };
        BuildRequest::parse(body.as_bytes(), &policy, None).expect("valid request")
    }

    fn checkout(default: bool) -> Checkout {
        Checkout {
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            ref_name: "feature/login".into(),
            is_default_branch: default,
            committed_at: 0,
            hold: Default::default(),
        }
    }

    fn plan_in(dir: &Path, req: &BuildRequest, co: &Checkout) -> Result<BuildSpec, BuildError> {
        let source_url = "https://github.com/acme/My_App.git";
        let names = naming(req, co, "reg:5000", source_url)?;
        plan(
            req,
            &PlanInput {
                checkout: co,
                checkout_dir: dir,
                source_url,
                build_id: "b1",
                created: time::OffsetDateTime::UNIX_EPOCH,
            },
            names,
        )
    }

    #[test]
    fn names_tags_and_labels() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").expect("write");
        let req = request(
            r#","tags":["stable"],"labels":{"org.opencontainers.image.revision":"forged"}"#,
        );
        let spec = plan_in(dir.path(), &req, &checkout(true)).expect("plan");
        assert_eq!(spec.image, "reg:5000/u1/my-app");
        assert_eq!(
            spec.tags,
            vec!["0123456789ab", "feature-login", "latest", "stable"]
        );
        let revision: Vec<_> = spec
            .labels
            .iter()
            .filter(|(k, _)| k == "org.opencontainers.image.revision")
            .collect();
        assert_eq!(
            revision.last().map(|(_, v)| v.as_str()),
            Some("0123456789abcdef0123456789abcdef01234567")
        );
    }

    #[test]
    fn build_key_changes_with_what_changes_the_image() {
        let base = build_key(&request(""), "https://h/a.git", "c1");
        assert_eq!(
            base,
            build_key(&request(""), "https://h/a.git", "c1"),
            "stable"
        );
        // A valid tag in the reserved names, which no request can ask for.
        let rest = base.strip_prefix("ib-").expect("reserved prefix");
        assert!(rest.chars().all(|c| c.is_ascii_hexdigit()) && base.len() <= 128);
        assert!(Tag::parse(&base).is_err());
        for other in [
            build_key(&request(""), "https://h/a.git", "c2"),
            build_key(
                &request(r#","build_args":{"A":"1"}"#),
                "https://h/a.git",
                "c1",
            ),
            build_key(
                &request(r#","dockerfile":"x/Dockerfile""#),
                "https://h/a.git",
                "c1",
            ),
            build_key(&request(r#","context":"svc""#), "https://h/a.git", "c1"),
            build_key(
                &request(r#","platforms":["linux/arm64"]"#),
                "https://h/a.git",
                "c1",
            ),
        ] {
            assert_ne!(base, other);
        }
        // Extra tags do not change the image: same key.
        assert_eq!(
            base,
            build_key(&request(r#","tags":["x"]"#), "https://h/a.git", "c1")
        );
    }

    #[test]
    fn symlinked_context_cannot_leave_the_checkout() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink("/etc", dir.path().join("escape")).expect("symlink");
        let req = request(r#","context":"escape""#);
        let err = plan_in(dir.path(), &req, &checkout(false)).expect_err("refused");
        assert!(err.to_string().contains("outside the repository"), "{err}");
    }

    #[test]
    fn recipes_are_resolved_beneath_the_checkout() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().canonicalize().expect("root");
        std::fs::create_dir_all(root.join("services/api")).expect("dirs");
        std::fs::write(root.join("services/api/Dockerfile"), "FROM scratch\n").expect("write");
        std::fs::write(root.join("shared.Dockerfile"), "FROM scratch\n").expect("write");
        let spec = plan_in(&root, &request(""), &checkout(false)).expect("plan");
        assert_eq!(
            spec.context_dir.as_os_str(),
            root.as_os_str(),
            "no trailing slash"
        );
        // Links that stay inside are followed, to their real place.
        symlink("services/api", root.join("api")).expect("symlink");
        let spec = plan_in(&root, &request(r#","context":"api""#), &checkout(false)).expect("plan");
        assert_eq!(spec.checkout_dir, root);
        assert_eq!(spec.context_dir, root.join("services/api"));
        assert_eq!(
            spec.recipe,
            Recipe::Dockerfile(root.join("services/api/Dockerfile"))
        );
        symlink("../../shared.Dockerfile", root.join("services/api/linked")).expect("symlink");
        let req = request(r#","context":"services/api","dockerfile":"linked""#);
        let spec = plan_in(&root, &req, &checkout(false)).expect("plan");
        assert_eq!(
            spec.recipe,
            Recipe::Dockerfile(root.join("shared.Dockerfile"))
        );

        // Links that lead out are refused, through any component.
        symlink("/", root.join("h")).expect("symlink");
        symlink("/etc/passwd", root.join("passwd")).expect("symlink");
        for extra in [
            r#","dockerfile":"h/etc/passwd""#,
            r#","dockerfile":"passwd""#,
            r#","context":"h/etc""#,
        ] {
            let err = plan_in(&root, &request(extra), &checkout(false)).expect_err(extra);
            assert!(
                err.to_string().contains("points outside the repository"),
                "{extra}: {err}"
            );
            assert_eq!(err.classify(), crate::error::Fault::User);
        }
        std::fs::create_dir(root.join("evil")).expect("dir");
        symlink("/etc/passwd", root.join("evil/Dockerfile")).expect("symlink");
        let err = plan_in(&root, &request(r#","context":"evil""#), &checkout(false))
            .expect_err("a found Dockerfile leading out");
        assert!(err.to_string().contains("points outside"), "{err}");
    }

    #[test]
    fn without_a_dockerfile_auto_means_nixpacks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = plan_in(dir.path(), &request(""), &checkout(false)).expect("plan");
        assert_eq!(spec.recipe, Recipe::Nixpacks);
        let strict = request(r#","builder":"dockerfile""#);
        let err = plan_in(dir.path(), &strict, &checkout(false)).expect_err("no recipe");
        assert_eq!(err.classify(), crate::error::Fault::User);
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").expect("write");
        let forced = request(r#","builder":"nixpacks""#);
        let spec = plan_in(dir.path(), &forced, &checkout(false)).expect("plan");
        assert_eq!(
            spec.recipe,
            Recipe::Nixpacks,
            "builder nixpacks ignores the Dockerfile"
        );
    }

    #[test]
    fn dockerfiles_are_discovered_as_podman_and_docker_find_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().canonicalize().expect("root");
        std::fs::write(root.join("dockerfile"), "FROM scratch\n").expect("write");
        let found = |root: &Path| plan_in(root, &request(""), &checkout(false)).expect("plan");
        assert_eq!(
            found(&root).recipe,
            Recipe::Dockerfile(root.join("dockerfile")),
            "lowercase, as the docker CLI accepts it"
        );
        std::fs::write(root.join("Dockerfile"), "FROM scratch\n").expect("write");
        assert_eq!(
            found(&root).recipe,
            Recipe::Dockerfile(root.join("Dockerfile"))
        );
        std::fs::write(root.join("Containerfile"), "FROM scratch\n").expect("write");
        assert_eq!(
            found(&root).recipe,
            Recipe::Dockerfile(root.join("Containerfile"))
        );

        let empty = tempfile::tempdir().expect("tempdir");
        let strict = request(r#","builder":"dockerfile""#);
        let err = plan_in(empty.path(), &strict, &checkout(false)).expect_err("none");
        assert!(
            err.to_string()
                .contains("no Containerfile, Dockerfile, dockerfile in context '.'"),
            "lists what was looked for: {err}"
        );
        let named = request(r#","dockerfile":"build/Dockerfile.prod""#);
        let err = plan_in(empty.path(), &named, &checkout(false)).expect_err("missing");
        assert!(
            err.to_string()
                .contains("dockerfile 'build/Dockerfile.prod' does not exist"),
            "{err}"
        );
    }

    #[test]
    fn a_target_must_be_a_stage_of_the_dockerfile_and_changes_the_build_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("Dockerfile"),
            "FROM scratch AS Build\nFROM scratch AS test\nFROM scratch\n",
        )
        .expect("write");
        let spec = plan_in(
            dir.path(),
            &request(r#","target":"BUILD""#),
            &checkout(false),
        )
        .expect("a stage, in any case");
        assert_eq!(
            spec.target.as_deref(),
            Some("Build"),
            "as the Dockerfile spells it, for podman"
        );

        let err = plan_in(
            dir.path(),
            &request(r#","target":"lint""#),
            &checkout(false),
        )
        .expect_err("no such stage");
        assert_eq!(err.classify(), crate::error::Fault::User);
        assert!(
            err.to_string().contains(
                "target 'lint' is not a stage of Dockerfile; its named stages: build, test"
            ),
            "{err}"
        );
        let nixpacks = tempfile::tempdir().expect("tempdir");
        let err = plan_in(
            nixpacks.path(),
            &request(r#","target":"build""#),
            &checkout(false),
        )
        .expect_err("no Dockerfile");
        assert!(err.to_string().contains("needs a Dockerfile"), "{err}");

        let url = "https://h/a.git";
        let plain = build_key(&request(""), url, "c1");
        let targeted = build_key(&request(r#","target":"test""#), url, "c1");
        assert_ne!(plain, targeted);
        assert_ne!(
            targeted,
            build_key(&request(r#","target":"build""#), url, "c1")
        );
        assert_eq!(
            targeted,
            build_key(&request(r#","target":"TEST""#), url, "c1"),
            "stage names compare without case"
        );
    }
}
