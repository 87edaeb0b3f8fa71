//! One repository per construct, and the outcome it must have.

/// What the worker's build of a fixture must come to.
pub enum Expect {
    /// The same image as raw podman's build of the commit with these extra arguments.
    Same(&'static [&'static str]),
    /// The same image as raw podman's build of this Dockerfile (what the worker fitted it to).
    SameAs(&'static str),
    /// Both fail; the worker's reason (a user fault) contains this.
    BothFail(&'static str),
}

pub struct Fixture {
    /// Also the repository, request id and image name.
    pub name: &'static str,
    pub dockerfile: Vec<u8>,
    /// Files besides the Dockerfile.
    pub files: Vec<(&'static str, Vec<u8>)>,
    pub expect: Expect,
    /// Paths the worker's image must hold, and must not.
    pub present: &'static [&'static str],
    pub absent: &'static [&'static str],
    /// Config keys (`image_tree::config`) the worker's image must set.
    pub config_set: &'static [&'static str],
}

/// Raw podman keeps HEALTHCHECK, SHELL and ONBUILD only in docker format.
const DOCKER: &[&str] = &["--format", "docker"];

/// Two triggers: one reads the child's context, one runs a command.
pub const ONBUILD_BASE: &str = "FROM localhost/busybox:latest\n\
    ONBUILD COPY a.txt /a.txt\n\
    ONBUILD RUN echo triggered > /triggered.txt\n";

const LINKED: &str = "FROM localhost/busybox:latest AS build\n\
    RUN echo built > /built.txt\n\
    FROM localhost/busybox:latest\n\
    COPY --link a.txt /a.txt\n\
    COPY \\\n  --link --chmod=755 \\\n  dir /d/\n\
    COPY --link --from=build /built.txt /built.txt\n";

/// `LINKED` as podman can build it.
const UNLINKED: &str = "FROM localhost/busybox:latest AS build\n\
    RUN echo built > /built.txt\n\
    FROM localhost/busybox:latest\n\
    COPY a.txt /a.txt\n\
    COPY \\\n  --chmod=755 \\\n  dir /d/\n\
    COPY --from=build /built.txt /built.txt\n";

fn fixture(name: &'static str, dockerfile: impl Into<Vec<u8>>, expect: Expect) -> Fixture {
    Fixture {
        name,
        dockerfile: dockerfile.into(),
        files: vec![("a.txt", b"a\n".to_vec())],
        expect,
        present: &[],
        absent: &[],
        config_set: &[],
    }
}

/// A gzipped tar of `site/index.html` and `site/css/main.css`, with fixed times and owners.
fn site_archive() -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for (path, body) in [
        ("site/index.html", "<h1>hi</h1>\n"),
        ("site/css/main.css", "h1 { color: red }\n"),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o640);
        header.set_uid(7);
        header.set_gid(8);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        tar.append_data(&mut header, path, body.as_bytes())
            .expect("tar entry");
    }
    tar.into_inner()
        .and_then(flate2::write::GzEncoder::finish)
        .expect("archive")
}

/// Every fixture; `onbuild_base` is the local image with triggers (`ONBUILD_BASE`).
pub fn all(onbuild_base: &str) -> Vec<Fixture> {
    let busybox = "FROM localhost/busybox:latest\n";
    vec![
        Fixture {
            present: &["/greeting.txt"],
            ..fixture(
                "arg_before_from",
                "ARG BASE=localhost/busybox:latest\nARG GREETING=hello\nFROM $BASE\n\
                 ARG GREETING\nRUN echo \"$GREETING\" > /greeting.txt\n",
                Expect::Same(&[]),
            )
        },
        Fixture {
            present: &["/a.txt"],
            ..fixture(
                "syntax_directive",
                format!("# syntax=docker/dockerfile:1.7\n{busybox}COPY a.txt /a.txt\n"),
                Expect::Same(&[]),
            )
        },
        Fixture {
            present: &["/path.txt", "/a.txt"],
            ..fixture(
                "escape_directive",
                format!(
                    "# escape=`\n{busybox}RUN echo one `\n    && echo 'C:\\dir\\file' > /path.txt\n\
                     COPY a.txt `\n  /a.txt\n"
                ),
                Expect::Same(&[]),
            )
        },
        fixture(
            "heredoc_run",
            format!("{busybox}RUN <<EOF\necho hi > /hi.txt\nEOF\n"),
            Expect::BothFail("the build engine cannot build this: RUN (line 2) uses a heredoc"),
        ),
        fixture(
            "heredoc_copy",
            format!("{busybox}COPY <<EOF /hi.txt\nhello\nEOF\n"),
            Expect::BothFail("the build engine cannot build this: COPY (line 2) copies a heredoc"),
        ),
        Fixture {
            present: &["/app/app.txt"],
            ..fixture(
                "copy_from_stage",
                "FROM localhost/busybox:latest AS build\n\
                 RUN mkdir -p /out && echo built > /out/app.txt\n\
                 FROM localhost/busybox:latest\nCOPY --from=build /out /app\n",
                Expect::Same(&[]),
            )
        },
        Fixture {
            files: vec![("a.txt", b"a\n".to_vec()), ("dir/x.txt", b"x\n".to_vec())],
            present: &["/a.txt", "/d/x.txt"],
            ..fixture(
                "copy_chmod",
                format!(
                    "{busybox}COPY --chmod=741 a.txt /a.txt\nCOPY --chmod=700 --chown=5:6 dir /d/\n"
                ),
                Expect::Same(&[]),
            )
        },
        Fixture {
            files: vec![("a.txt", b"a\n".to_vec()), ("dir/x.txt", b"x\n".to_vec())],
            present: &["/a.txt", "/d/x.txt", "/built.txt"],
            ..fixture("copy_link", LINKED, Expect::SameAs(UNLINKED))
        },
        Fixture {
            files: vec![("site.tar.gz", site_archive())],
            present: &["/srv/site/index.html", "/srv/site/css/main.css"],
            absent: &["/srv/site.tar.gz"],
            ..fixture(
                "add_archive",
                format!("{busybox}ADD site.tar.gz /srv/\n"),
                Expect::Same(&[]),
            )
        },
        Fixture {
            files: vec![
                (
                    ".dockerignore",
                    b"*.md\n!README.md\ndocs\n!docs/keep.txt\n".to_vec(),
                ),
                ("README.md", b"readme\n".to_vec()),
                ("NOTES.md", b"notes\n".to_vec()),
                ("docs/keep.txt", b"keep\n".to_vec()),
                ("docs/drop.txt", b"drop\n".to_vec()),
                ("a.txt", b"a\n".to_vec()),
            ],
            present: &["/app/README.md", "/app/docs/keep.txt", "/app/a.txt"],
            absent: &["/app/NOTES.md", "/app/docs/drop.txt"],
            ..fixture(
                "dockerignore",
                format!("{busybox}COPY . /app\n"),
                Expect::Same(&[]),
            )
        },
        Fixture {
            files: vec![("a.txt", b"a\n".to_vec()), ("b.txt", b"b\n".to_vec())],
            present: &["/a.txt", "/triggered.txt", "/b.txt"],
            ..fixture(
                "onbuild_base",
                format!("FROM {onbuild_base}\nCOPY b.txt /b.txt\n"),
                Expect::Same(&[]),
            )
        },
        Fixture {
            config_set: &["OnBuild"],
            ..fixture(
                "onbuild_declared",
                format!("{busybox}ONBUILD COPY . /app\nCOPY a.txt /a.txt\n"),
                Expect::Same(DOCKER),
            )
        },
        Fixture {
            config_set: &["Healthcheck"],
            ..fixture(
                "healthcheck",
                format!(
                    "{busybox}HEALTHCHECK --interval=30s --timeout=3s --retries=2 \
                     CMD test -f /a.txt\nCOPY a.txt /a.txt\n"
                ),
                Expect::Same(DOCKER),
            )
        },
        Fixture {
            config_set: &["Shell"],
            present: &["/shell.txt"],
            ..fixture(
                "shell",
                format!("{busybox}SHELL [\"/bin/sh\", \"-ec\"]\nRUN echo \"$-\" > /shell.txt\n"),
                Expect::Same(DOCKER),
            )
        },
        Fixture {
            present: &["/srv/app/a.txt", "/srv/app/sub"],
            ..fixture(
                "user_workdir",
                format!(
                    "{busybox}WORKDIR /srv/app\nCOPY a.txt .\nUSER 1000:1000\nWORKDIR sub\n\
                     RUN test \"$(pwd)\" = /srv/app/sub\n"
                ),
                Expect::Same(&[]),
            )
        },
        Fixture {
            present: &["/two.txt", "/a.txt"],
            ..fixture(
                "crlf",
                "FROM localhost/busybox:latest\r\nRUN echo one \\\r\n && echo two > /two.txt\r\n\
                 COPY a.txt /a.txt\r\n",
                Expect::Same(&[]),
            )
        },
        Fixture {
            present: &["/g.txt", "/a.txt"],
            ..fixture(
                "trailing_whitespace",
                "FROM localhost/busybox:latest  \nENV GREETING=hello \t\n\
                 RUN echo one \\  \n && echo \"$GREETING\" > /g.txt \nCOPY a.txt /a.txt   \n",
                Expect::Same(&[]),
            )
        },
        Fixture {
            present: &["/a.txt"],
            ..fixture(
                "bom",
                format!("\u{feff}{busybox}COPY a.txt /a.txt\n"),
                Expect::Same(&[]),
            )
        },
        fixture(
            "buildkit_flag",
            format!("{busybox}RUN --network=none echo hi\n"),
            Expect::BothFail(
                "the build engine cannot build this: RUN --network (line 2) is BuildKit's only",
            ),
        ),
    ]
}
