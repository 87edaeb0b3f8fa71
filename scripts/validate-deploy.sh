#!/usr/bin/env bash
# Validates deploy/kubernetes: every core resource against the Kubernetes schemas
# (kubernetes-validate, strict), the references between the files (names, ports, the queue KEDA
# watches, grace periods against the config), and the ConfigMap's settings through
# `image-builder config check` itself. Usage: scripts/validate-deploy.sh [path/to/image-builder]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
binary=${1:-$here/target/debug/image-builder}
venv=${IMAGE_BUILDER_STATE_DIR:-$here/.run}/deploy-venv
deploy=$here/deploy/kubernetes

if [ ! -x "$venv/bin/kubernetes-validate" ] || ! "$venv/bin/python" -c 'import tomli' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'kubernetes-validate==1.34.*' tomli
fi

# Core kinds only: the KEDA kinds are custom resources it has no schema for (checked below).
"$venv/bin/kubernetes-validate" --strict --quiet \
  "$deploy/config.yaml" "$deploy/worker.yaml" "$deploy/api.yaml" "$deploy/secrets.example.yaml"

config=$(mktemp)
trap 'rm -f "$config" "$config.out"' EXIT
"$venv/bin/python" - "$deploy" "$config" <<'PY'
import pathlib, sys, yaml
try:
    import tomllib
except ImportError:  # Python before 3.11
    import tomli as tomllib

deploy, config_out = pathlib.Path(sys.argv[1]), sys.argv[2]
docs = {}
for f in sorted(deploy.glob("*.yaml")):
    if f.name == "kustomization.yaml":
        continue
    for d in yaml.safe_load_all(f.read_text()):
        if d:
            docs[(d["kind"], d["metadata"]["name"])] = d
failures = []
def check(ok, what):
    if not ok:
        failures.append(what)

kust = yaml.safe_load((deploy / "kustomization.yaml").read_text())
for r in kust["resources"]:
    check((deploy / r).exists(), f"kustomization names a missing file {r}")

cm = docs[("ConfigMap", "image-builder-config")]
toml_text = cm["data"]["config.toml"]
settings = tomllib.loads(toml_text)
pathlib.Path(config_out).write_text(toml_text)
amqp = settings["amqp"]

worker = docs[("Deployment", "image-builder-worker")]
api = docs[("Deployment", "image-builder-api")]
so = docs[("ScaledObject", "image-builder-worker")]
auth = docs[("TriggerAuthentication", "image-builder-rabbitmq")]
secret = docs[("Secret", "image-builder-secrets")]

check(so["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"],
      "the ScaledObject scales another Deployment")
trigger = so["spec"]["triggers"][0]
check(trigger["metadata"]["queueName"] == f'{amqp["prefix"]}.builds',
      "KEDA watches another queue than <amqp.prefix>.builds")
check(int(trigger["metadata"]["value"]) == amqp["prefetch"],
      "KEDA's messages per pod differ from amqp.prefetch (build slots per pod)")
check(trigger["authenticationRef"]["name"] == auth["metadata"]["name"],
      "the trigger names another TriggerAuthentication")
for ref in auth["spec"]["secretTargetRef"]:
    check(ref["key"] in secret["stringData"], f'the secret has no {ref["key"]}')

def container(d):
    return d["spec"]["template"]["spec"]["containers"][0]
def port(c, name):
    return next(p["containerPort"] for p in c["ports"] if p["name"] == name)

w, a = container(worker), container(api)
grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
check(grace > amqp["shutdown_grace_secs"] + 10,
      f"worker grace {grace}s is not well past amqp.shutdown_grace_secs")
check(w["args"][0] == "worker" and a["args"][0] == "serve", "wrong subcommands")
check(w["readinessProbe"]["httpGet"]["path"] == "/readyz", "worker readiness is not /readyz")
check(a["readinessProbe"]["httpGet"]["path"] == "/readyz", "API readiness is not /readyz")
check(settings["api"]["probes_listen"].endswith(f':{port(w, "probes")}'),
      "the worker's probe port is not api.probes_listen's")
check(settings["api"]["listen"].endswith(f':{port(a, "http")}'),
      "the API's port is not api.listen's")
check(w["securityContext"].get("privileged") is True,
      "workers need a privileged container (runc, cgroups, nftables)")
check(a["securityContext"].get("privileged") is not True, "the API must not be privileged")
for d in (worker, api):
    check(all(e["secretRef"]["name"] == secret["metadata"]["name"]
              for e in container(d)["envFrom"]), "a pod reads another Secret")

if failures:
    print("deploy/kubernetes:\n  " + "\n  ".join(failures), file=sys.stderr)
    sys.exit(1)
PY

# The settings as the binary reads them in a pod: the ConfigMap plus the Secret's variables.
env -i PATH="$PATH" \
  IMAGE_BUILDER__AMQP__URL=amqp://u:p@rabbitmq:5672/%2f \
  IMAGE_BUILDER__STORE__URL=postgres://u:p@postgres/image_builder \
  IMAGE_BUILDER__REGISTRY__USERNAME=u IMAGE_BUILDER__REGISTRY__PASSWORD=p \
  "$binary" config check --config "$config" >"$config.out" 2>&1 || { cat "$config.out" >&2; exit 1; }
echo "deploy/kubernetes: valid"
