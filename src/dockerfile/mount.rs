//! `RUN --mount=...` as BuildKit reads it: comma-separated `key=value` fields, `type` defaulting
//! to `bind`, a bind's `source` defaulting to the root of what it mounts (the context, or the
//! stage or image named by `from`).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    /// Files of the context, or of `from` (a stage or an image), read-only by default.
    Bind,
    /// A persistent cache directory; seeded from `from` when given.
    Cache,
    Tmpfs,
    /// A secret given to the build (none reads the commit).
    Secret,
    /// The SSH agent socket given to the build.
    Ssh,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub kind: MountKind,
    /// A stage name or index, or an image.
    pub from: Option<String>,
    /// Path inside the context (or `from`); None = its root.
    pub source: Option<String>,
    pub target: Option<String>,
    /// A cache mount's name (BuildKit's default is the target).
    pub id: Option<String>,
    /// `rw` / `readwrite` (or `ro=false`): steps may write to it.
    pub writable: bool,
}

/// A BuildKit boolean option: present without a value means true.
fn flag_value(val: &str) -> Result<bool, String> {
    match val.to_ascii_lowercase().as_str() {
        "" | "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(format!("{other:?} is not true or false")),
    }
}

/// Keys BuildKit accepts besides `type`, `from`, source and target (their values change no
/// file a step can read from the commit).
const OTHER_KEYS: [&str; 7] = ["sharing", "mode", "uid", "gid", "required", "size", "env"];

impl Mount {
    pub fn parse(value: &str) -> Result<Self, String> {
        if value.contains(['"', '\'']) {
            return Err(format!("quoted fields are not modelled: {value}"));
        }
        let mut mount = Self {
            kind: MountKind::Bind,
            from: None,
            source: None,
            target: None,
            id: None,
            writable: false,
        };
        for field in value.split(',').filter(|f| !f.is_empty()) {
            let (key, val) = field.split_once('=').unwrap_or((field, ""));
            match key.to_ascii_lowercase().as_str() {
                "type" => {
                    mount.kind = match val.to_ascii_lowercase().as_str() {
                        "bind" => MountKind::Bind,
                        "cache" => MountKind::Cache,
                        "tmpfs" => MountKind::Tmpfs,
                        "secret" => MountKind::Secret,
                        "ssh" => MountKind::Ssh,
                        other => return Err(format!("unknown mount type {other:?}")),
                    }
                }
                "from" => mount.from = Some(val.to_owned()),
                "source" | "src" => mount.source = Some(val.to_owned()),
                "target" | "dst" | "destination" => mount.target = Some(val.to_owned()),
                "id" => mount.id = Some(val.to_owned()),
                "rw" | "readwrite" => mount.writable = flag_value(val)?,
                "ro" | "readonly" => mount.writable = !flag_value(val)?,
                key if OTHER_KEYS.contains(&key) => {}
                other => return Err(format!("unknown mount option {other:?}")),
            }
        }
        Ok(mount)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mount_without_type_is_a_bind_of_the_context() {
        let m = Mount::parse("source=b.txt,target=/m.txt").expect("parses");
        assert_eq!(m.kind, MountKind::Bind);
        assert_eq!(m.source.as_deref(), Some("b.txt"));
        assert_eq!(m.target.as_deref(), Some("/m.txt"));
        assert_eq!(m.from, None);
        assert!(!m.writable);
        let m = Mount::parse("type=bind,target=/src,rw").expect("parses");
        assert_eq!(
            (m.kind, m.source, m.writable),
            (MountKind::Bind, None, true)
        );
        for (text, writable) in [
            ("target=/s,readwrite=true", true),
            ("target=/s,rw=false", false),
            ("target=/s,ro=false", true),
            ("target=/s,readonly", false),
        ] {
            assert_eq!(Mount::parse(text).expect(text).writable, writable, "{text}");
        }
        assert!(Mount::parse("target=/s,rw=maybe").is_err());
    }

    #[test]
    fn every_kind_and_its_from_are_read() {
        let m = Mount::parse("type=cache,target=/root/.cache,from=deps,sharing=locked")
            .expect("parses");
        assert_eq!(
            (m.kind, m.from.as_deref()),
            (MountKind::Cache, Some("deps"))
        );
        for (text, kind) in [
            ("type=tmpfs,target=/t,size=1000", MountKind::Tmpfs),
            ("type=secret,id=tok,env=TOKEN", MountKind::Secret),
            ("type=ssh", MountKind::Ssh),
            ("type=BIND,src=a,dst=/a,ro", MountKind::Bind),
        ] {
            assert_eq!(Mount::parse(text).expect(text).kind, kind, "{text}");
        }
    }

    #[test]
    fn what_is_not_understood_is_refused() {
        for text in [
            "type=volume,target=/v",
            "type=bind,source=a,target=/a,bogus=1",
            "type=bind,\"source=a,b\",target=/a",
        ] {
            assert!(Mount::parse(text).is_err(), "{text}");
        }
    }
}
