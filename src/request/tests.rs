use secrecy::ExposeSecret;

use super::*;

fn policy() -> RequestPolicy {
    RequestPolicy {
        max_body_bytes: 4096,
        allowed_schemes: vec!["https".into()],
    }
}

fn parse(body: &str) -> Result<BuildRequest, Rejection> {
    BuildRequest::parse(body.as_bytes(), &policy(), None)
}

fn rejected_field(body: &str) -> String {
    match parse(body) {
        Ok(req) => panic!("accepted {body}: {req:?}"),
        Err(r) => r.field,
    }
}

#[test]
fn seed_readme_example_is_accepted_verbatim() {
    let req = parse(
        r#"{"token": "gho_xxx", "userID": "18008", "type": "repo", "connector": "github", "repo": "vano2903/testing"}"#,
    )
    .expect("seed example parses");
    assert_eq!(req.user_id.as_str(), "18008");
    assert_eq!(req.connector, Connector::Github);
    assert_eq!(req.repo, RepoSpec::Path("vano2903/testing".into()));
    assert_eq!(req.git_ref, None);
    assert_eq!(
        req.token.as_ref().map(|t| t.expose_secret().to_owned()),
        Some("gho_xxx".into())
    );
    assert_eq!(req.context.as_str(), ".");
    assert_eq!(req.builder, BuilderKind::Auto);
}

#[test]
fn debug_never_shows_token_or_build_arg_values() {
    let req = parse(
        r#"{"token":"gho_topsecret","user_id":"u1","repo":"a/b","build_args":{"PASS":"hunter22"}}"#,
    )
    .expect("parses");
    let shown = format!("{req:?}");
    assert!(!shown.contains("gho_topsecret"), "{shown}");
    assert!(!shown.contains("hunter22"), "{shown}");
    assert!(shown.contains("PASS"));
}

#[test]
fn fallback_id_is_used_only_without_an_id() {
    let fallback = RequestId::parse("kept-id").expect("valid");
    let req = BuildRequest::parse(
        br#"{"user_id":"u","repo":"a/b"}"#,
        &policy(),
        Some(fallback),
    )
    .expect("parses");
    assert_eq!(req.id.as_str(), "kept-id");
    let fallback = RequestId::parse("kept-id").expect("valid");
    let req = BuildRequest::parse(
        br#"{"id":"own","user_id":"u","repo":"a/b"}"#,
        &policy(),
        Some(fallback),
    )
    .expect("parses");
    assert_eq!(req.id.as_str(), "own");
}

#[test]
fn each_bad_field_is_named() {
    let cases = [
        ("not json", "body"),
        ("[1,2]", "body"),
        (r#"{"user_id":"u"}"#, "repo"),
        (r#"{"repo":"a/b"}"#, "user_id"),
        (r#"{"repo":5,"user_id":"u"}"#, "repo"),
        (
            r#"{"repo":"a/b","user_id":"u","connector":"svn"}"#,
            "connector",
        ),
        (
            r#"{"repo":"a/b","user_id":"u","ref":"--upload-pack=x"}"#,
            "ref",
        ),
        (
            r#"{"repo":"a/b","user_id":"u","context":"../../etc"}"#,
            "context",
        ),
        (
            r#"{"repo":"a/b","user_id":"u","dockerfile":"/etc/passwd"}"#,
            "dockerfile",
        ),
        (
            r#"{"repo":"a/b","user_id":"u","target":"--output=/"}"#,
            "target",
        ),
        (r#"{"repo":"a/b","user_id":"u","target":7}"#, "target"),
        (
            r#"{"repo":"a/b","user_id":"u","platforms":["linux/x"]}"#,
            "platforms[0]",
        ),
        (
            r#"{"repo":"a/b","user_id":"u","platforms":"linux/amd64"}"#,
            "platforms",
        ),
        (
            r#"{"repo":"a/b","user_id":"u","tags":["ok","-bad"]}"#,
            "tags[1]",
        ),
        (
            r#"{"repo":"a/b","user_id":"u","tags":["ok","ib-0123abcd"]}"#,
            "tags[1]",
        ),
        (
            r#"{"repo":"a/b","user_id":"u","tags":["IB-line-0123"]}"#,
            "tags[0]",
        ),
        (
            r#"{"repo":"a/b","user_id":"u","build_args":{"1X":"v"}}"#,
            "build_args.1X",
        ),
        (
            r#"{"repo":"a/b","user_id":"u","build_args":{"X":1}}"#,
            "build_args.X",
        ),
        (
            r#"{"repo":"a/b","user_id":"u","build_args":{"HTTPS_PROXY":"http://x"}}"#,
            "build_args.HTTPS_PROXY",
        ),
        (
            r#"{"repo":"a/b","user_id":"u","build_args":{"CONTAINERS_CONF":"/x"}}"#,
            "build_args.CONTAINERS_CONF",
        ),
        (
            r#"{"repo":"a/b","user_id":"u","labels":{"k":"a\nb"}}"#,
            "labels.k",
        ),
        (r#"{"repo":"a/b","user_id":"u","image":"UP"}"#, "image"),
        (
            r#"{"repo":"a/b","user_id":"u","builder":"make"}"#,
            "builder",
        ),
        (r#"{"repo":"a/b","user_id":"u","type":"tag"}"#, "ref"),
        (r#"{"repo":"a/b","user_id":"u","type":"branch"}"#, "type"),
        (
            r#"{"repo":"a/b","user_id":"u","type":"release","ref":"0123456789012345678901234567890123456789"}"#,
            "ref",
        ),
        (r#"{"repo":"a/b","user_id":"u","userID":"v"}"#, "user_id"),
        (r#"{"repo":"a/b","user_id":"u","colour":"red"}"#, "colour"),
        (r#"{"repo":"a/b","user_id":"u","id":"has space"}"#, "id"),
        (
            r#"{"repo":"file:///etc","user_id":"u","connector":"git"}"#,
            "repo",
        ),
    ];
    for (body, field) in cases {
        assert_eq!(rejected_field(body), field, "body {body}");
    }
}

#[test]
fn type_says_how_ref_is_read() {
    let kind = |body: &str| {
        BuildRequest::parse(body.as_bytes(), &policy(), None)
            .expect("valid")
            .ref_kind
    };
    assert_eq!(kind(r#"{"repo":"a/b","user_id":"u"}"#), RefKind::Repo);
    assert_eq!(
        kind(r#"{"repo":"a/b","user_id":"u","type":"repo"}"#),
        RefKind::Repo
    );
    assert_eq!(
        kind(r#"{"repo":"a/b","user_id":"u","type":"tag","ref":"v1"}"#),
        RefKind::Tag
    );
    // The newest release needs no ref.
    assert_eq!(
        kind(r#"{"repo":"a/b","user_id":"u","type":"release"}"#),
        RefKind::Release
    );
}

#[test]
fn oversize_body_is_refused_before_parsing() {
    let body = format!(
        r#"{{"repo":"a/b","user_id":"u","labels":{{"k":"{}"}}}}"#,
        "x".repeat(5000)
    );
    assert_eq!(rejected_field(&body), "body");
}

#[test]
fn summary_sniffs_what_it_can() {
    let s = RequestSummary::sniff(br#"{"id":"r1","userID":"u","repo":"a/b","ref":"bad\nref"}"#);
    assert_eq!(s.request_id.as_deref(), Some("r1"));
    assert_eq!(s.user_id.as_deref(), Some("u"));
    assert_eq!(s.git_ref.as_deref(), Some("bad?ref"));
    assert!(RequestSummary::sniff(b"garbage").repo.is_none());
}

#[test]
fn summary_never_quotes_a_token_in_the_repo() {
    let long = "t".repeat(300);
    for token in ["gho_s3cret_value", long.as_str()] {
        let body =
            format!(r#"{{"id":"r1","repo":"https://x-access-token:{token}@github.com/acme/app"}}"#);
        let s = RequestSummary::sniff(body.as_bytes());
        assert_eq!(s.repo.as_deref(), Some("https://github.com/acme/app"));
        let rejected = BuildRequest::parse(body.as_bytes(), &policy(), None)
            .expect_err("credentials in the repo are refused");
        assert_eq!(rejected.field, "repo");
        assert!(!rejected.to_string().contains(token), "{rejected}");
    }
}

#[test]
fn artifacts_are_parsed_and_normalised() {
    let req = parse(
        r#"{"user_id":"u","repo":"a/b","artifacts":[{"name":"dist","path":"/app/./dist/"},{"name":"bin","path":"/usr/local/bin/tool"}]}"#,
    )
    .expect("parses");
    let got: Vec<(&str, &str)> = req
        .artifacts
        .iter()
        .map(|a| (a.name.as_str(), a.path.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![("dist", "/app/dist"), ("bin", "/usr/local/bin/tool")]
    );
    assert_eq!(req.public_view()["artifacts"][0]["path"], "/app/dist");
}

#[test]
fn bad_artifacts_name_their_field() {
    let with = |artifacts: &str| {
        rejected_field(&format!(
            r#"{{"user_id":"u","repo":"a/b","artifacts":{artifacts}}}"#
        ))
    };
    assert_eq!(
        with(r#"[{"name":"dist","path":"/app/../../etc"}]"#),
        "artifacts[0].path"
    );
    assert_eq!(
        with(r#"[{"name":"a","path":"/a"},{"name":"b","path":"relative"}]"#),
        "artifacts[1].path"
    );
    assert_eq!(
        with(r#"[{"name":"Dist","path":"/a"}]"#),
        "artifacts[0].name"
    );
    assert_eq!(with(r#"[{"path":"/a"}]"#), "artifacts[0].name");
    assert_eq!(with(r#"[{"name":"a"}]"#), "artifacts[0].path");
    assert_eq!(with(r#"[{"name":"a","path":7}]"#), "artifacts[0].path");
    assert_eq!(
        with(r#"[{"name":"a","path":"/a","follow":true}]"#),
        "artifacts[0].follow"
    );
    assert_eq!(
        with(r#"[{"name":"a","path":"/a"},{"name":"a","path":"/b"}]"#),
        "artifacts[1].name"
    );
    assert_eq!(with(r#"["/app/dist"]"#), "artifacts[0]");
    assert_eq!(with(r#"{"name":"a"}"#), "artifacts");
    let many: Vec<String> = (0..=MAX_ARTIFACTS)
        .map(|i| format!(r#"{{"name":"a{i}","path":"/a"}}"#))
        .collect();
    assert_eq!(with(&format!("[{}]", many.join(","))), "artifacts");
}

#[test]
fn the_recorded_view_parses_back_with_its_artifacts() {
    // The rebuild route re-submits the stored view: its artifacts must survive the trip.
    let req =
        parse(r#"{"user_id":"u","repo":"a/b","artifacts":[{"name":"dist","path":"/app/dist"}]}"#)
            .expect("parses");
    let mut view = req.public_view();
    if let Some(map) = view.as_object_mut() {
        map.remove("has_token");
    }
    let again = parse(&view.to_string()).expect("the view parses");
    assert_eq!(again.artifacts, req.artifacts);
    assert_eq!(again.fingerprint(), req.fingerprint());
}

#[test]
fn rebuild_on_base_update_and_base_update_are_checked_and_named() {
    let policy = RequestPolicy {
        max_body_bytes: 65536,
        allowed_schemes: vec!["https".into()],
    };
    let parse = |extra: &str| {
        let body = format!(r#"{{"repo":"acme/app","user_id":"u1"{extra}}}"#);
        BuildRequest::parse(body.as_bytes(), &policy, None)
    };
    let plain = parse("").expect("valid");
    assert!(plain.rebuild_on_base_update);
    assert!(plain.base_update.is_none());
    let off = parse(r#","rebuild_on_base_update":false"#).expect("valid");
    assert!(!off.rebuild_on_base_update);
    assert_eq!(off.public_view()["rebuild_on_base_update"], false);
    let err = parse(r#","rebuild_on_base_update":"no""#).expect_err("a string");
    assert_eq!(err.field, "rebuild_on_base_update");

    let digest = format!("sha256:{}", "a".repeat(64));
    let commit = "b".repeat(40);
    let update = format!(
        r#","base_update":{{"reference":"reg.test/base:v1","digest":"{digest}","commit":"{commit}"}}"#
    );
    let parsed = parse(&update).expect("valid");
    let moved = parsed.base_update.as_ref().expect("set");
    assert_eq!(
        moved.why(),
        format!("base reg.test/base:v1 moved to {digest}")
    );
    assert_eq!(parsed.public_view()["base_update"]["commit"], commit);
    for (body, field) in [
        (r#","base_update":1"#.to_owned(), "base_update"),
        (
            r#","base_update":{"digest":"sha256:1","commit":"c"}"#.to_owned(),
            "base_update.reference",
        ),
        (
            format!(
                r#","base_update":{{"reference":"r:1","digest":"sha256:1","commit":"{commit}"}}"#
            ),
            "base_update.digest",
        ),
        (
            format!(r#","base_update":{{"reference":"r:1","digest":"{digest}","commit":"main"}}"#),
            "base_update.commit",
        ),
        (
            format!(
                r#","base_update":{{"reference":"r:1","digest":"{digest}","commit":"{commit}","x":1}}"#
            ),
            "base_update.x",
        ),
    ] {
        let err = parse(&body).expect_err(&body);
        assert_eq!(err.field, field, "{body}: {err:?}");
    }
}
