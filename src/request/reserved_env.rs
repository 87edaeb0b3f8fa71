//! Build-arg names podman would also read as its own configuration. Build args reach podman
//! through its environment (`--build-arg KEY` takes the value from there, which keeps values
//! off the command line), so a build arg named like one of these would change how podman
//! itself pulls, stores or authenticates, not only what the Dockerfile sees: refused.

/// Read by podman, its Go runtime, the containers libraries or the C library it uses.
const EXACT: &[&str] = &[
    "PATH",
    "HOME",
    "TMPDIR",
    "SHELL",
    "USER",
    "TZ",
    "TERM",
    "NOTIFY_SOCKET",
    "REGISTRY_AUTH_FILE",
    "REGISTRIES_CONFIG_PATH",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "SSH_AUTH_SOCK",
    "DBUS_SESSION_BUS_ADDRESS",
    "GODEBUG",
    "GOGC",
    "GOMAXPROCS",
    "GOMEMLIMIT",
    "GOTRACEBACK",
];

/// Whole families: the containers libraries' and podman's own settings, locale, loader.
const PREFIXES: &[&str] = &[
    "CONTAINERS_",
    "_CONTAINERS_",
    "CONTAINER_",
    "BUILDAH_",
    "PODMAN_",
    "STORAGE_",
    "DOCKER_",
    "XDG_",
    "LC_",
    "LANG",
    "LD_",
    "IMAGE_BUILDER",
];

/// Go reads proxies in either case.
const PROXIES: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "ftp_proxy",
    "all_proxy",
];

/// Why `name` cannot be a build arg, if it cannot.
pub(super) fn reserved(name: &str) -> Option<&'static str> {
    if PROXIES.iter().any(|p| name.eq_ignore_ascii_case(p)) {
        return Some(
            "proxy variables would also redirect the worker's own registry traffic; \
             podman's proxy is the operator's, set in containers.conf",
        );
    }
    if EXACT.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p)) {
        return Some("the name is also read by podman itself as its own configuration");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::reserved;

    #[test]
    fn podman_settings_are_reserved_and_ordinary_names_are_not() {
        for name in [
            "HTTP_PROXY",
            "https_proxy",
            "No_Proxy",
            "CONTAINERS_CONF",
            "CONTAINERS_STORAGE_CONF",
            "REGISTRY_AUTH_FILE",
            "TMPDIR",
            "PATH",
            "DOCKER_CONFIG",
            "LD_PRELOAD",
            "XDG_RUNTIME_DIR",
            "IMAGE_BUILDER__REGISTRY__PASSWORD",
        ] {
            assert!(reserved(name).is_some(), "{name} should be reserved");
        }
        for name in ["NODE_ENV", "VERSION", "GOPROXY", "path_prefix", "APP_HOME"] {
            assert!(reserved(name).is_none(), "{name} should be allowed");
        }
    }
}
