//! The corpus: Dockerfile shapes, each a chain of commits. Every commit after the first is one
//! pair (the previous commit's image -> this commit), with the route the worker must take.

/// How the worker must build a pair's second commit.
#[derive(Debug, Clone, Copy)]
pub enum Route {
    Incremental,
    /// A full build whose log line says why, containing this text.
    Full(&'static str),
}

/// One commit's changes to the work tree.
pub struct Pair {
    pub what: &'static str,
    pub write: Vec<(&'static str, &'static str)>,
    pub remove: Vec<&'static str>,
    /// (path, target): replaces whatever is at path.
    pub symlink: Vec<(&'static str, &'static str)>,
    pub executable: Vec<(&'static str, bool)>,
    pub route: Route,
}

pub struct Chain {
    pub name: &'static str,
    pub dockerfile: &'static str,
    pub files: Vec<(&'static str, &'static str)>,
    pub symlinks: Vec<(&'static str, &'static str)>,
    pub pairs: Vec<Pair>,
}

fn pair(what: &'static str, route: Route) -> Pair {
    Pair {
        what,
        write: vec![],
        remove: vec![],
        symlink: vec![],
        executable: vec![],
        route,
    }
}

impl Pair {
    fn write(mut self, path: &'static str, content: &'static str) -> Self {
        self.write.push((path, content));
        self
    }
    fn remove(mut self, path: &'static str) -> Self {
        self.remove.push(path);
        self
    }
    fn symlink(mut self, path: &'static str, target: &'static str) -> Self {
        self.symlink.push((path, target));
        self
    }
    fn executable(mut self, path: &'static str, on: bool) -> Self {
        self.executable.push((path, on));
        self
    }
}

use Route::{Full, Incremental};

const EARLIER: &str = "is read by a step before the final COPYs";
const TRIGGER: &str = "ran the ONBUILD trigger `COPY b.txt /b.txt`";

pub fn chains() -> Vec<Chain> {
    vec![
        Chain {
            name: "bind",
            // The reported bug: b.txt reaches the image through a bind mount of the context.
            dockerfile: "FROM localhost/busybox:latest\n\
                RUN --mount=type=bind,source=b.txt,target=/m.txt mkdir -p /app && cp /m.txt /app/b.txt\n\
                COPY a.txt /app/a.txt\n",
            files: vec![("a.txt", "a1\n"), ("b.txt", "b1\n")],
            symlinks: vec![],
            pairs: vec![
                pair("bind-mounted file changes", Full(EARLIER)).write("b.txt", "b2\n"),
                pair("copied file changes", Incremental).write("a.txt", "a2\n"),
                pair("both change", Full(EARLIER))
                    .write("a.txt", "a3\n")
                    .write("b.txt", "b3\n"),
                pair("a file nothing reads appears", Incremental).write("c.txt", "c\n"),
            ],
        },
        Chain {
            name: "binddir",
            dockerfile: "FROM localhost/busybox:latest\n\
                RUN --mount=type=bind,source=conf,target=/conf cat /conf/*.txt > /conf.all\n\
                COPY src /app/src\n",
            files: vec![
                ("conf/a.txt", "conf a\n"),
                ("src/main.txt", "main 1\n"),
                ("src/old.txt", "old\n"),
            ],
            symlinks: vec![],
            pairs: vec![
                pair("a file in the mounted directory changes", Full(EARLIER))
                    .write("conf/a.txt", "conf a 2\n"),
                pair("a copied file changes", Incremental).write("src/main.txt", "main 2\n"),
                pair("a copied directory grows", Incremental).write("src/new/inner.txt", "inner\n"),
                pair("a copied file goes", Incremental).remove("src/old.txt"),
            ],
        },
        Chain {
            name: "forms",
            dockerfile: "FROM localhost/busybox:latest\nWORKDIR /srv\n\
                COPY [\"sp ace.txt\", \"/data/\"]\nCOPY a.txt b.txt ./multi/\nCOPY conf.txt /etc\n\
                COPY dir/ sub/\nCOPY one.txt /opt/renamed.txt\n",
            files: vec![
                ("sp ace.txt", "space 1\n"),
                ("a.txt", "a\n"),
                ("b.txt", "b\n"),
                ("conf.txt", "conf 1\n"),
                ("dir/x.txt", "x\n"),
                ("dir/y.txt", "y\n"),
                ("one.txt", "one 1\n"),
            ],
            symlinks: vec![],
            pairs: vec![
                pair("a file copied under another name", Incremental).write("one.txt", "one 2\n"),
                pair("a file copied into an existing directory", Incremental)
                    .write("conf.txt", "conf 2\n"),
                pair("a JSON-form source with a space", Incremental)
                    .write("sp ace.txt", "space 2\n"),
                pair("a relative destination's directory changes", Incremental)
                    .write("dir/x.txt", "x 2\n")
                    .remove("dir/y.txt"),
            ],
        },
        Chain {
            name: "globs",
            dockerfile: "FROM localhost/busybox:latest\nCOPY deps/*.lock /deps/\n\
                RUN ls /deps > /deps.list\nCOPY src/ /app/\n",
            files: vec![("deps/a.lock", "a\n"), ("src/main.txt", "main\n")],
            symlinks: vec![],
            pairs: vec![
                pair("an app file changes", Incremental).write("src/main.txt", "main 2\n"),
                pair("a globbed file changes", Full("deps/a.lock")).write("deps/a.lock", "a 2\n"),
                pair("a file the glob may match appears", Full("deps/b.lock"))
                    .write("deps/b.lock", "b\n"),
            ],
        },
        Chain {
            name: "tailglob",
            dockerfile: "FROM localhost/busybox:latest\nCOPY *.txt /app/\n",
            files: vec![("a.txt", "a\n")],
            symlinks: vec![],
            pairs: vec![
                pair(
                    "a globbed file changes",
                    Full("source *.txt is not a plain path"),
                )
                .write("a.txt", "a 2\n"),
                pair(
                    "a matching file appears",
                    Full("source *.txt is not a plain path"),
                )
                .write("b.txt", "b\n"),
            ],
        },
        Chain {
            name: "ignore",
            dockerfile: "FROM localhost/busybox:latest\nCOPY . /app/\n",
            files: vec![
                (".dockerignore", "secret.txt\n/logs/\nsrc/generated\n"),
                ("a.txt", "a\n"),
                ("secret.txt", "s1\n"),
                ("logs/x.log", "log 1\n"),
                ("src/main.txt", "main 1\n"),
                ("src/generated/g.txt", "g1\n"),
            ],
            symlinks: vec![],
            pairs: vec![
                pair("an ignored file changes", Incremental).write("secret.txt", "s2\n"),
                pair("files in ignored directories change", Incremental)
                    .write("logs/y.log", "log 2\n")
                    .write("src/generated/g.txt", "g2\n"),
                pair("a copied file changes", Incremental).write("src/main.txt", "main 2\n"),
                pair("the ignore file changes", Full("the .dockerignore changed"))
                    .write(".dockerignore", "secret.txt\n/logs/\n"),
            ],
        },
        Chain {
            name: "ignoreglob",
            dockerfile: "FROM localhost/busybox:latest\nCOPY . /app/\n",
            files: vec![
                (".dockerignore", "*.log\n"),
                ("a.txt", "a\n"),
                ("x.log", "log\n"),
            ],
            symlinks: vec![],
            pairs: vec![
                pair(
                    "an ignored file changes",
                    Full("line 1 (*.log) is a pattern"),
                )
                .write("x.log", "log 2\n"),
                pair("a copied file changes", Full("line 1 (*.log) is a pattern"))
                    .write("a.txt", "a2\n"),
            ],
        },
        Chain {
            name: "ignorebind",
            dockerfile: "FROM localhost/busybox:latest\n\
                RUN --mount=type=bind,source=conf,target=/conf cat /conf/c.txt > /c.txt\n\
                COPY src /src\n",
            files: vec![
                (".dockerignore", "conf/skip.txt\n"),
                ("conf/c.txt", "c\n"),
                ("src/a.txt", "a\n"),
            ],
            symlinks: vec![],
            pairs: vec![
                pair("a copied file changes", Full("bind-mounts the context"))
                    .write("src/a.txt", "a2\n"),
            ],
        },
        Chain {
            name: "stages",
            dockerfile: "FROM localhost/busybox:latest AS gen\nCOPY gen.txt /gen.txt\n\
                RUN cp /gen.txt /gen.out\nFROM localhost/busybox:latest\n\
                COPY --from=gen /gen.out /gen.out\n\
                RUN --mount=type=bind,from=gen,source=/gen.txt,target=/g cp /g /g.copy\n\
                COPY app/ /app/\nCMD [\"cat\", \"/app/main.txt\"]\n",
            files: vec![("gen.txt", "gen 1\n"), ("app/main.txt", "main 1\n")],
            symlinks: vec![],
            pairs: vec![
                pair("the final stage's copy changes", Incremental)
                    .write("app/main.txt", "main 2\n"),
                pair("an earlier stage's input changes", Full(EARLIER)).write("gen.txt", "gen 2\n"),
                pair("the copied directory grows", Incremental).write("app/x.txt", "x\n"),
                pair("both change", Full(EARLIER))
                    .write("gen.txt", "gen 3\n")
                    .write("app/main.txt", "main 3\n"),
            ],
        },
        Chain {
            name: "argenv",
            dockerfile: "FROM localhost/busybox:latest\nARG FLAVOUR=plain\n\
                ENV APP_HOME=/app MODE=prod\nCOPY conf/$FLAVOUR.txt /conf.txt\n\
                RUN echo \"$FLAVOUR $MODE\" > /flavour\nCOPY src /app/src\nENV LATE=1\nUSER 1000\n\
                EXPOSE 8080\nLABEL org.example.team=core\nSTOPSIGNAL SIGTERM\n",
            files: vec![
                ("conf/plain.txt", "plain\n"),
                ("conf/other.txt", "other\n"),
                ("src/a.txt", "a\n"),
            ],
            symlinks: vec![],
            pairs: vec![
                pair("a file of the last COPY changes", Incremental).write("src/a.txt", "a 2\n"),
                pair("the file the variable names changes", Full(EARLIER))
                    .write("conf/plain.txt", "plain 2\n"),
                pair("a file beside it changes", Full(EARLIER))
                    .write("conf/other.txt", "other 2\n"),
                pair("the copied directory grows", Incremental).write("src/b.txt", "b\n"),
            ],
        },
        Chain {
            name: "vartail",
            dockerfile: "FROM localhost/busybox:latest\nENV APP_HOME=/app\nCOPY src $APP_HOME/src\n",
            files: vec![("src/a.txt", "a\n")],
            symlinks: vec![],
            pairs: vec![
                pair("a copied file changes", Full("is not a plain path"))
                    .write("src/a.txt", "a 2\n"),
                pair("another appears", Full("is not a plain path")).write("src/b.txt", "b\n"),
            ],
        },
        Chain {
            name: "perms",
            dockerfile: "FROM localhost/busybox:latest\nCOPY bin/ /usr/local/bin/\nCOPY run.sh /run.sh\n",
            files: vec![
                ("bin/tool", "#!/bin/sh\necho tool\n"),
                ("run.sh", "#!/bin/sh\n"),
            ],
            symlinks: vec![],
            pairs: vec![
                pair("a file becomes executable", Incremental).executable("run.sh", true),
                pair("an executable changes", Incremental)
                    .write("bin/tool", "#!/bin/sh\necho tool 2\n")
                    .executable("bin/tool", true),
                pair("an executable stops being one", Incremental).executable("bin/tool", false),
                pair("a new executable appears", Incremental)
                    .write("bin/new", "#!/bin/sh\n")
                    .executable("bin/new", true),
            ],
        },
        Chain {
            name: "flags",
            dockerfile: "FROM localhost/busybox:latest\nCOPY --chown=1000:1000 owned.txt /owned.txt\n\
                COPY --chmod=600 secret.txt /secret.txt\nCOPY plain.txt /plain.txt\n",
            files: vec![
                ("owned.txt", "o1\n"),
                ("secret.txt", "s1\n"),
                ("plain.txt", "p1\n"),
            ],
            symlinks: vec![],
            pairs: vec![
                pair("the plain tail changes", Incremental).write("plain.txt", "p2\n"),
                pair("a --chown source changes", Full(EARLIER)).write("owned.txt", "o2\n"),
                pair("a --chmod source changes", Full(EARLIER)).write("secret.txt", "s2\n"),
            ],
        },
        Chain {
            name: "tailflag",
            dockerfile: "FROM localhost/busybox:latest\nCOPY --chmod=700 tool.sh /tool.sh\n",
            files: vec![("tool.sh", "t1\n")],
            symlinks: vec![],
            pairs: vec![
                pair("a --chmod tail changes", Full("has --chmod")).write("tool.sh", "t2\n"),
            ],
        },
        Chain {
            name: "symlinks",
            dockerfile: "FROM localhost/busybox:latest\nCOPY --chmod=755 linked/ /linked/\n\
                COPY src/ /app/\n",
            files: vec![
                ("linked/real.txt", "real\n"),
                ("linked/other.txt", "other\n"),
                ("src/a.txt", "a1\n"),
                ("src/sub/b.txt", "b1\n"),
                ("data/d.txt", "d\n"),
            ],
            symlinks: vec![("linked/l", "real.txt")],
            pairs: vec![
                pair("a file of the tail changes", Incremental).write("src/a.txt", "a2\n"),
                pair("an earlier step's symlink changes target", Full(EARLIER))
                    .symlink("linked/l", "other.txt"),
                pair("a tail directory becomes a symlink", Full("is a symlink"))
                    .symlink("src/sub", "../data"),
            ],
        },
        Chain {
            name: "symread",
            // An earlier step reads data/x.txt through the symlink alias -> data.
            dockerfile: "FROM localhost/busybox:latest\nCOPY --chmod=644 alias/x.txt /x.txt\n\
                COPY src/ /app/\n",
            files: vec![("data/x.txt", "x1\n"), ("src/a.txt", "a1\n")],
            symlinks: vec![("alias", "data")],
            pairs: vec![
                pair("the file behind the symlink changes", Full(EARLIER))
                    .write("data/x.txt", "x2\n"),
                // A read through a symlink counts as a read of the whole context.
                pair("a file of the tail changes", Full(EARLIER)).write("src/a.txt", "a2\n"),
            ],
        },
        Chain {
            name: "deletions",
            dockerfile: "FROM localhost/busybox:latest\nCOPY app /app\n",
            files: vec![
                ("app/a.txt", "a\n"),
                ("app/old.txt", "old\n"),
                ("app/sub/x.txt", "x\n"),
                ("app/sub/deep/y.txt", "y\n"),
            ],
            symlinks: vec![],
            pairs: vec![
                pair("a file goes", Incremental).remove("app/old.txt"),
                pair("a directory goes", Incremental).remove("app/sub"),
                pair("it comes back", Incremental).write("app/sub/x.txt", "x 2\n"),
                pair("a file is renamed", Incremental)
                    .remove("app/a.txt")
                    .write("app/b.txt", "a\n"),
            ],
        },
        Chain {
            name: "workdir",
            dockerfile: "FROM localhost/busybox:latest\nWORKDIR /srv/www\nCOPY site/ .\n",
            files: vec![("site/index.html", "<p>1</p>\n")],
            symlinks: vec![],
            pairs: vec![
                pair("a page changes", Incremental).write("site/index.html", "<p>2</p>\n"),
                pair("a page appears in a new directory", Incremental)
                    .write("site/sub/page.html", "<p>sub</p>\n"),
                pair("it goes again", Incremental).remove("site/sub"),
            ],
        },
        Chain {
            // Climbs out of the working directory: the split full build finds that only after
            // the engine built the rest, and builds every step after all.
            name: "updir",
            dockerfile: "FROM localhost/busybox:latest\nWORKDIR /srv/www\nCOPY site/ ../data/\n",
            files: vec![("site/index.html", "<p>1</p>\n")],
            symlinks: vec![],
            pairs: vec![
                pair("a page changes", Full("is not modelled"))
                    .write("site/index.html", "<p>2</p>\n"),
            ],
        },
        Chain {
            name: "add",
            dockerfile: "FROM localhost/busybox:latest\nADD notes.txt /notes.txt\nCOPY a.txt /a.txt\n",
            files: vec![("notes.txt", "n1\n"), ("a.txt", "a1\n")],
            symlinks: vec![],
            pairs: vec![
                pair("the ADDed file changes", Full(EARLIER)).write("notes.txt", "n2\n"),
                pair("the copied file changes", Incremental).write("a.txt", "a2\n"),
            ],
        },
        Chain {
            name: "onbuild",
            // The base's trigger reads b.txt after FROM, a step no tail analysis sees.
            dockerfile: "FROM localhost/ibt-diff-onbuild:1\nCOPY a.txt /app/a.txt\n",
            files: vec![("a.txt", "a1\n"), ("b.txt", "b1\n")],
            symlinks: vec![],
            pairs: vec![
                pair("the file the trigger copies changes", Full(TRIGGER)).write("b.txt", "b2\n"),
                pair("the copied file changes", Full(TRIGGER)).write("a.txt", "a2\n"),
            ],
        },
    ]
}

/// The base image of the `onbuild` chain, built locally in docker format (which keeps
/// triggers) before the chains. One name for every run: its content never changes.
pub const ONBUILD_BASE: (&str, &str) = (
    "localhost/ibt-diff-onbuild:1",
    "FROM localhost/busybox:latest\nONBUILD COPY b.txt /b.txt\n",
);
