use super::*;

#[test]
fn stages_steps_lines_and_flags() {
    let text = "# syntax=docker/dockerfile:1\nARG BASE=localhost/busybox:latest\n\
        FROM --platform=linux/amd64 $BASE AS Build\nRUN --mount=type=cache,target=/c \\\n  make\n\
        FROM build\nCOPY --from=build --chmod=755 /out /out\n";
    let d = Dockerfile::parse(text).expect("parses");
    assert_eq!(d.escape, '\\');
    assert_eq!(d.stages.len(), 2);
    let build = &d.stages[0];
    assert_eq!((build.line, build.name.as_deref()), (3, Some("build")));
    assert_eq!(build.base, "$BASE");
    assert_eq!(build.flags[0].value.as_deref(), Some("linux/amd64"));
    let run = &build.steps[0];
    assert_eq!((run.keyword, run.line), (Keyword::Run, 4));
    assert!(matches!(&run.body, Body::Run { command, heredocs: 0 } if command.contains("make")));
    let copy = &d.stages[1].steps[0];
    assert_eq!(
        copy.flag("chmod").and_then(|f| f.value.as_deref()),
        Some("755")
    );
    assert_eq!(d.stage_ref(1, "BUILD"), Some(0));
    assert_eq!(d.stage_ref(1, "0"), Some(0));
    assert_eq!(d.stage_ref(0, "build"), None, "a stage cannot name itself");
    assert_eq!(d.stage_ref(1, "alpine"), None);
}

#[test]
fn escape_directive_and_continuations() {
    let text =
        "# escape=`\nFROM x\nRUN echo a `\n  # inside a continuation\n\n  b\nCOPY a `\n  /b\n";
    let d = Dockerfile::parse(text).expect("parses");
    assert_eq!(d.escape, '`');
    let steps = &d.stages[0].steps;
    assert_eq!(steps.len(), 2);
    assert!(matches!(&steps[1].body, Body::Transfer { dest, .. } if dest == "/b"));
    assert_eq!(steps[1].line, 7);
    assert_eq!(escape_char(text), '`');
    assert_eq!(
        escape_char("# syntax=docker/dockerfile:1\n# escape=`\nFROM x"),
        '`'
    );
    assert_eq!(escape_char("FROM x\n# escape=`\n"), '\\');
}

#[test]
fn heredocs_are_seen() {
    let d = Dockerfile::parse("FROM x\nRUN <<EOF\necho hi\nEOF\nCOPY <<EOT /f\nhello\nEOT\n")
        .expect("parses");
    let steps = &d.stages[0].steps;
    assert!(matches!(steps[0].body, Body::Run { heredocs: 1, .. }));
    assert!(
        matches!(&steps[1].body, Body::Transfer { sources, .. } if sources == &[Source::HereDoc])
    );
}

#[test]
fn json_form_copies_are_paths() {
    let d = Dockerfile::parse("FROM x\nCOPY [\"a b.txt\", \"/dest dir/\"]\n").expect("parses");
    assert!(matches!(
        &d.stages[0].steps[0].body,
        Body::Transfer { sources, dest } if sources == &[Source::Path("a b.txt".into())] && dest == "/dest dir/"
    ));
}

#[test]
fn base_images_skip_stage_names_and_flags() {
    let text = "FROM --platform=linux/amd64 ghcr.io/railwayapp/nixpacks:ubuntu-1 AS base\n\
                RUN x\nFROM base\nFROM scratch\n";
    assert_eq!(
        base_images(text),
        vec!["ghcr.io/railwayapp/nixpacks:ubuntu-1", "scratch"]
    );
    assert!(base_images("not a dockerfile").is_empty());
}

#[test]
fn reads_cover_copies_mounts_stages_images_and_urls() {
    let text = "FROM img AS a\nCOPY x.txt ./dir/ /d/\n\
        FROM img\nCOPY --from=a /x /x\nCOPY --from=other:1 /y /y\n\
        RUN --mount=type=bind,source=b.txt,target=/m --mount=type=tmpfs,target=/t \
        --mount=type=cache,target=/c --mount=type=secret,id=s --mount=target=/all true\n\
        RUN --mount=type=bind,from=a,target=/a true\nADD https://example.invalid/f /f\n";
    let d = Dockerfile::parse(text).expect("parses");
    let reads = |stage: usize, step: usize| d.reads(stage, &d.stages[stage].steps[step]);
    assert_eq!(
        reads(0, 0).expect("reads"),
        [Read::Context("x.txt".into()), Read::Context("dir".into())]
    );
    assert_eq!(reads(1, 0).expect("reads"), [Read::Stage(0)]);
    assert_eq!(reads(1, 1).expect("reads"), [Read::Image("other:1".into())]);
    assert_eq!(
        reads(1, 2).expect("reads"),
        [Read::Context("b.txt".into()), Read::Context(".".into())]
    );
    assert_eq!(reads(1, 3).expect("reads"), [Read::Stage(0)]);
    assert_eq!(
        reads(1, 4).expect("reads"),
        [Read::Url("https://example.invalid/f".into())]
    );
}

#[test]
fn context_paths_over_approximate() {
    for (path, read) in [
        ("a.txt", "a.txt"),
        ("./src/", "src"),
        ("/abs/x", "abs/x"),
        ("src/*.rs", "src"),
        ("*.lock", "."),
        ("conf/$ENV/x", "conf"),
        ("a/../b", "."),
        (".", "."),
    ] {
        assert_eq!(context_path(path), read, "{path}");
    }
    assert!(overlaps("src", "src/main.rs"));
    assert!(
        overlaps("src/main.rs", "src"),
        "a replaced parent is read too"
    );
    assert!(overlaps(".", "anything"));
    assert!(!overlaps("src", "src2/x"));
}

#[test]
fn bind_mounts_make_the_layer_cache_blind() {
    let text = "FROM x\nRUN --mount=type=cache,target=/c true\n\
        RUN --mount=source=b.txt,target=/m cp /m /b\n";
    assert_eq!(
        layer_cache_blind_spot(text).as_deref(),
        Some("RUN (line 3) bind-mounts files")
    );
    assert_eq!(
        layer_cache_blind_spot("FROM x\nRUN true\nCOPY a /a\n"),
        None
    );
}
