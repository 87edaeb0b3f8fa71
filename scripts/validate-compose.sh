#!/usr/bin/env bash
# Validates docker-compose.yml with a real compose parser (Debian's docker-compose: `config`
# resolves anchors and checks the schema, offline), then what the file must mean: RabbitMQ with its
# management console, the registry, PostgreSQL, three privileged worker replicas on one queue and
# the API; every IMAGE_BUILDER__ variable of each image-builder service accepted by
# `image-builder config check` itself. Also .devcontainer/devcontainer.json: JSON, and what it
# names exists. Usage: scripts/validate-compose.sh [path/to/image-builder]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
binary=${1:-$here/target/debug/image-builder}
cd "$here"

if ! command -v docker-compose >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
    docker-compose >/dev/null
fi
resolved=$(mktemp)
trap 'rm -f "$resolved"' EXIT
docker-compose -f docker-compose.yml config >"$resolved"

# Debian's python3 carries the yaml module docker-compose depends on.
/usr/bin/python3 - "$resolved" "$binary" <<'PY'
import json, os, pathlib, re, subprocess, sys
import yaml

resolved, binary = sys.argv[1], sys.argv[2]
services = yaml.safe_load(pathlib.Path(resolved).read_text())["services"]
failures = []
def check(ok, what):
    if not ok:
        failures.append(what)

for name in ["rabbitmq", "registry", "postgres", "setup", "api"]:
    check(name in services, f"no service {name}")
check("management" in services.get("rabbitmq", {}).get("image", ""),
      "rabbitmq must be the image with the management console")
workers = {n: s for n, s in services.items() if s.get("command") == ["worker"]}
check(len(workers) == 3, f"3 worker replicas expected, found {sorted(workers)}")
builders = {n: s for n, s in services.items() if s.get("image") == "image-builder:latest"}
for name, s in workers.items():
    check(s.get("privileged") is True, f"{name}: builds need a privileged container")
    check(any("/var/lib/containers" in str(v) for v in s.get("volumes", [])),
          f"{name}: /var/lib/containers must be a volume")
queues = {json.dumps({k: v for k, v in s.get("environment", {}).items()
                      if k.startswith("IMAGE_BUILDER__AMQP__")}, sort_keys=True)
          for s in workers.values()}
check(len(queues) == 1, "the workers must share one broker and queue settings")
check(services.get("api", {}).get("command") == ["serve"], "api must run `serve`")
check(any("8080" in str(p) for p in services.get("api", {}).get("ports", [])),
      "api must publish 8080")
check(services.get("api", {}).get("build", {}).get("target") == "runtime",
      "image-builder services build the Containerfile's runtime stage")

for name, s in builders.items():
    env = {k: str(v) for k, v in s.get("environment", {}).items()}
    unknown = [k for k in env if not k.startswith("IMAGE_BUILDER")]
    check(not unknown, f"{name}: variables the binary does not read: {unknown}")
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE_BUILDER")}
    run_env.update(env)
    out = subprocess.run([binary, "config", "check"], env=run_env, capture_output=True, text=True)
    check(out.returncode == 0, f"{name}: config check refuses its settings:\n{out.stdout}{out.stderr}")

containerfile = pathlib.Path("Containerfile").read_text()
stages = set(re.findall(r"^FROM \S+ AS (\S+)", containerfile, re.M))
check({"dev", "builder", "prebuilt", "runtime"} <= stages, f"Containerfile stages: {stages}")
dev = json.loads(pathlib.Path(".devcontainer/devcontainer.json").read_text())
check(dev["build"]["target"] in stages, "devcontainer builds a stage the Containerfile lacks")
check((pathlib.Path(".devcontainer") / dev["build"]["dockerfile"]).resolve()
      == pathlib.Path("Containerfile").resolve(), "devcontainer must build the Containerfile")
script = dev["postCreateCommand"].split()[0]
check(pathlib.Path(script).is_file(), f"devcontainer runs a missing {script}")
check("--privileged" in dev.get("runArgs", []), "the dev container runs podman: privileged")

if failures:
    print("\n".join(failures), file=sys.stderr)
    sys.exit(1)
print(f"compose: {len(services)} services, {len(workers)} workers; devcontainer: ok")
PY
