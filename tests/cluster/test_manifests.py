"""Static checks of the deployment files under ``cluster/``.

Every YAML file under ``cluster/`` is parsed with ``yaml.safe_load_all`` and checked
for the fields rayq relies on: Ray cluster-launcher configs (``cpu.yaml``,
``gpu.yaml``), KubeRay ``RayCluster`` / ``RayJob`` manifests and the search-config
``ConfigMap``. Security properties are part of the contract: loopback dashboard on
launcher clusters, token authentication on, nothing exposed through a LoadBalancer /
NodePort Service, no extra internet-facing security-group rules.

Each check is a small function that returns a list of problems (empty when the
document is fine). The real files must produce no problems, and every check is
also run against a deliberately broken in-memory document to show it can fail.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER_DIR = REPO / "cluster"
KUBERAY_DIR = CLUSTER_DIR / "kuberay"
LAUNCHER_FILES = ("cpu.yaml", "gpu.yaml")

RAY_VERSION = "2.60.0"
RAY_API_VERSION = "ray.io/v1"
EXPOSED_SERVICE_TYPES = {"LoadBalancer", "NodePort"}
# Pod labels KubeRay sets itself; its head Service selects on them.
KUBERAY_POD_LABELS = {"app.kubernetes.io/name", "app.kubernetes.io/created-by"}
WORLD = {"0.0.0.0/0", "::/0"}
SEARCH_REQUIRED_KEYS = ("model", "calibration", "validation", "validation_fn", "max_drop")
# `package.module:function`, each part a Python identifier.
VALIDATION_FN = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
# `pip install [opts] ~/rayq` or "~/rayq[gpu]" (the project mounted by file_mounts).
PIP_INSTALL_RAYQ = re.compile(r"""pip install\b[^;&|]*?["']?~/rayq(\[[\w,]+\])?["']?(\s|$)""")
PIP_INSTALL_RAYQ_GPU = re.compile(r"""pip install\b[^;&|]*?["']?~/rayq\[[\w,]*gpu[\w,]*\]["']?""")


# --------------------------------------------------------------------------- loading


def yaml_files() -> list[Path]:
    return sorted([*CLUSTER_DIR.rglob("*.yaml"), *CLUSTER_DIR.rglob("*.yml")])


def load_docs(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def load_one(path: Path) -> dict:
    docs = load_docs(path)
    assert len(docs) == 1, f"{path}: expected one YAML document, got {len(docs)}"
    return docs[0]


def kubernetes_docs() -> list[tuple[Path, dict]]:
    return [
        (path, doc)
        for path in yaml_files()
        for doc in load_docs(path)
        if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc
    ]


def docs_of_kind(kind: str) -> list[tuple[Path, dict]]:
    return [(path, doc) for path, doc in kubernetes_docs() if doc["kind"] == kind]


def walk(node: Any, path: str = "") -> Iterable[tuple[str, Any]]:
    """Yield (dotted path, value) for every node of a parsed YAML tree."""
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{path}[{index}]")


def case_id(value: Any) -> str | None:
    """Test ids: the expected message names the case; lambdas and dicts get pytest's default."""
    return value if isinstance(value, str) else None


def strings(node: Any) -> list[str]:
    return [value for _, value in walk(node) if isinstance(value, str)]


# ------------------------------------------------------------------ launcher checks


def _node_setup_commands(cfg: dict, node_type: str) -> list[str]:
    """Setup commands the launcher runs on a node of this type (Ray's merge rules)."""
    common = list(cfg.get("setup_commands") or [])
    if node_type == cfg.get("head_node_type"):
        return common + list(cfg.get("head_setup_commands") or [])
    specific = cfg["available_node_types"][node_type].get("worker_setup_commands")
    if specific is not None:  # a node type's own list replaces the global ones
        return list(specific)
    return common + list(cfg.get("worker_setup_commands") or [])


def _ray_start(commands: list[str], head: bool) -> list[str]:
    marker = "--head" if head else "--address"
    return [c for c in commands if "ray start" in c and marker in c]


def launcher_problems(cfg: Any, *, gpu: bool = False) -> list[str]:
    """Problems of a Ray cluster-launcher config (`ray up` format)."""
    if not isinstance(cfg, dict):
        return ["not a mapping"]
    problems = _launcher_structure_problems(cfg)
    if not isinstance(cfg.get("available_node_types"), dict) or not cfg["available_node_types"]:
        return problems
    problems += _launcher_setup_problems(cfg)
    problems += _launcher_start_problems(cfg)
    problems += _auth_disabled(cfg)
    problems += _security_group_problems(cfg)
    if gpu:
        problems += _launcher_gpu_problems(cfg)
    return problems


def _launcher_structure_problems(cfg: dict) -> list[str]:
    problems = []
    if not isinstance(cfg.get("cluster_name"), str) or not cfg["cluster_name"]:
        problems.append("cluster_name missing")
    if not isinstance(cfg.get("provider"), dict) or not cfg["provider"].get("type"):
        problems.append("provider.type missing")
    types = cfg.get("available_node_types")
    if not isinstance(types, dict) or not types:
        return problems + ["available_node_types missing"]
    head = cfg.get("head_node_type")
    if head not in types:
        problems.append(f"head_node_type {head!r} is not in available_node_types")
    workers = {name: t for name, t in types.items() if name != head}
    if not any(int(t.get("max_workers", 0) or 0) > 0 for t in workers.values()):
        problems.append("no worker node type with max_workers > 0")
    for name, t in workers.items():
        if int(t.get("min_workers", 0) or 0) > int(t.get("max_workers", 0) or 0):
            problems.append(f"{name}: min_workers > max_workers")
    if int(cfg.get("max_workers", 0) or 0) <= 0:
        problems.append("cluster max_workers must be > 0")
    return problems


def _launcher_setup_problems(cfg: dict) -> list[str]:
    """Every node installs the mounted project; the token is shipped with it."""
    problems = []
    if cfg.get("head_node_type") in cfg["available_node_types"]:
        for name in cfg["available_node_types"]:
            if not any(PIP_INSTALL_RAYQ.search(c) for c in _node_setup_commands(cfg, name)):
                problems.append(f"{name}: setup commands do not `pip install ~/rayq`")
    mounts = cfg.get("file_mounts") or {}
    if mounts.get("~/rayq") not in (".", "./"):
        problems.append("file_mounts must mount the project directory '.' at ~/rayq")
    if not any(remote.endswith(".ray/auth_token") for remote in mounts):
        problems.append("file_mounts must ship the Ray auth token (~/.ray/auth_token)")
    return problems


def _launcher_start_problems(cfg: dict) -> list[str]:
    """`ray start` binds the dashboard to loopback and runs with token auth."""
    problems = []
    for role in ("head", "worker"):
        cmds = [str(c) for c in cfg.get(f"{role}_start_ray_commands") or []]
        starts = _ray_start(cmds, head=role == "head")
        if not starts:
            problems.append(f"no `ray start` in {role}_start_ray_commands")
        for cmd in starts:
            if "--dashboard-host=127.0.0.1" not in cmd:
                problems.append(f"{role} `ray start` lacks --dashboard-host=127.0.0.1")
            if not re.search(r"\bRAY_AUTH_MODE=token\b", cmd):
                problems.append(f"{role} `ray start` does not set RAY_AUTH_MODE=token")
        if any("0.0.0.0" in c for c in cmds):
            problems.append(f"{role}_start_ray_commands bind something to 0.0.0.0")
    return problems


def _security_group_problems(cfg: dict) -> list[str]:
    """Extra inbound rules must not open anything to the internet."""
    provider = cfg.get("provider") if isinstance(cfg.get("provider"), dict) else {}
    problems = []
    for rule in (provider.get("security_group") or {}).get("IpPermissions") or []:
        ranges = [r.get("CidrIp") for r in rule.get("IpRanges", [])]
        ranges += [r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])]
        if WORLD.intersection(ranges):
            problems.append(f"security group rule opens ports {rule.get('FromPort')}-{rule.get('ToPort')} to the world")
    return problems


def _launcher_gpu_problems(cfg: dict) -> list[str]:
    types = cfg["available_node_types"]
    gpu_types = [n for n, t in types.items() if float((t.get("resources") or {}).get("GPU", 0)) >= 1]
    problems = [] if gpu_types else ["no node type with a GPU resource"]
    for name in gpu_types:
        if not any(PIP_INSTALL_RAYQ_GPU.search(c) for c in _node_setup_commands(cfg, name)):
            problems.append(f"{name}: GPU node type does not install rayq[gpu]")
        image = (types[name].get("docker") or {}).get("worker_image") or (cfg.get("docker") or {}).get("image", "")
        if not image.endswith("-gpu"):
            problems.append(f"{name}: GPU node type does not use a -gpu Ray image")
    return problems


def _auth_disabled(node: Any) -> list[str]:
    pattern = re.compile(r"RAY_AUTH_MODE\W{0,3}disabled", re.IGNORECASE)
    return [f"token auth disabled: {s!r}" for s in strings(node) if pattern.search(s)]


# ------------------------------------------------------------------ KubeRay checks


def _containers(template: dict) -> list[dict]:
    return list(((template or {}).get("spec") or {}).get("containers") or [])


def exposure_problems(doc: Any) -> list[str]:
    """Anything that would publish a Ray port outside the cluster network."""
    problems = []
    is_service = isinstance(doc, dict) and doc.get("kind") == "Service"
    if is_service and (doc.get("spec") or {}).get("type") in EXPOSED_SERVICE_TYPES:
        problems.append(f"Service {doc['metadata'].get('name')} is {doc['spec']['type']}")
    if isinstance(doc, dict) and doc.get("kind") == "Ingress":
        problems.append("Ingress exposes the cluster")
    for path, value in walk(doc):
        key = path.rsplit(".", 1)[-1]
        if key == "serviceType" and value in EXPOSED_SERVICE_TYPES:
            problems.append(f"{path} is {value}")
        if key == "headService" and ((value or {}).get("spec") or {}).get("type") in EXPOSED_SERVICE_TYPES:
            problems.append(f"{path} is {value['spec']['type']}")
        if key == "enableIngress" and value is True:
            problems.append(f"{path} is true")
    return problems


def cluster_spec_problems(spec: Any, *, dashboard_hosts: set[str]) -> list[str]:
    """Problems of a KubeRay RayClusterSpec (RayCluster.spec or RayJob.spec.rayClusterSpec)."""
    if not isinstance(spec, dict):
        return ["cluster spec missing"]
    problems = []
    if str(spec.get("rayVersion")) != RAY_VERSION:
        problems.append(f"rayVersion is {spec.get('rayVersion')!r}, expected {RAY_VERSION}")
    if (spec.get("authOptions") or {}).get("mode") != "token":
        problems.append("authOptions.mode is not 'token'")
    head = spec.get("headGroupSpec")
    if not isinstance(head, dict) or not _containers(head.get("template")):
        return problems + ["headGroupSpec with a container missing"]
    host = str((head.get("rayStartParams") or {}).get("dashboard-host"))
    if host not in dashboard_hosts:
        problems.append(f"head dashboard-host is {host!r}, allowed: {sorted(dashboard_hosts)}")
    if head.get("serviceType", "ClusterIP") != "ClusterIP":
        problems.append("head serviceType is not ClusterIP")
    if not _containers(head["template"])[0].get("image", "").startswith("rayq:0.1.0"):
        problems.append("head does not run the rayq:0.1.0 image")
    groups = spec.get("workerGroupSpecs") or []
    if not groups:
        return problems + ["no workerGroupSpecs"]
    return problems + _worker_group_problems(groups) + _pod_template_problems([head, *groups])


def _worker_group_problems(groups: list[dict]) -> list[str]:
    problems = []
    for group in groups:
        if int(group.get("maxReplicas", 0)) <= 0:
            problems.append(f"worker group {group.get('groupName')}: maxReplicas must be > 0")
        if not _containers(group.get("template")):
            problems.append(f"worker group {group.get('groupName')}: no container")
    gpu_groups = [g for g in groups if _gpu_limit(g) >= 1]
    if not [g for g in groups if _gpu_limit(g) == 0]:
        problems.append("no CPU worker group")
    if not gpu_groups:
        problems.append("no GPU worker group with an nvidia.com/gpu limit")
    for group in gpu_groups:
        if not _containers(group["template"])[0].get("image", "").endswith("-gpu"):
            problems.append(f"GPU group {group.get('groupName')} does not use a -gpu image")
    return problems


def _pod_template_problems(groups: list[dict]) -> list[str]:
    """Labels that would break KubeRay's selectors; containers without resources."""
    problems = []
    for group in groups:
        labels = ((group.get("template") or {}).get("metadata") or {}).get("labels") or {}
        clash = sorted(k for k in labels if k in KUBERAY_POD_LABELS or k.startswith("ray.io/"))
        if clash:
            problems.append(f"pod labels {clash} override KubeRay's own (its head Service selects on them)")
        for container in _containers(group.get("template")):
            res = container.get("resources") or {}
            if not res.get("requests") or not res.get("limits"):
                problems.append(f"container {container.get('name')} lacks resource requests/limits")
    return problems


def _gpu_limit(group: dict) -> int:
    return max(
        (
            int(((c.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu", 0))
            for c in _containers(group.get("template"))
        ),
        default=0,
    )


def search_config_problems(cfg: Any) -> list[str]:
    """Problems of a search config as the CLI reads it (`rayq search --config`)."""
    if not isinstance(cfg, dict):
        return ["search config is not a mapping"]
    problems = [f"missing key {key!r}" for key in SEARCH_REQUIRED_KEYS if key not in cfg]
    fn = cfg.get("validation_fn")
    if "validation_fn" in cfg and not (isinstance(fn, str) and VALIDATION_FN.match(fn)):
        problems.append(f"validation_fn {fn!r} is not 'module:function'")
    drop = cfg.get("max_drop")
    if "max_drop" in cfg and (isinstance(drop, bool) or not isinstance(drop, (int, float)) or drop < 0):
        problems.append(f"max_drop {drop!r} is not a non-negative number")
    for key in ("model", "calibration", "validation"):
        if key in cfg and not (isinstance(cfg[key], str) and cfg[key]):
            problems.append(f"{key} is not a path/URI string")
    if cfg.get("command", "search") != "search":
        problems.append(f"command is {cfg.get('command')!r}, expected 'search'")
    if cfg.get("drop_type", "absolute") not in ("absolute", "relative"):
        problems.append(f"drop_type {cfg.get('drop_type')!r} is not absolute/relative")
    if cfg.get("target", "openvino") not in ("openvino", "onnxruntime"):
        problems.append(f"target {cfg.get('target')!r} is not openvino/onnxruntime")
    for key in ("n_trials", "num_workers"):
        if key in cfg and not (isinstance(cfg[key], int) and cfg[key] > 0):
            problems.append(f"{key} must be a positive integer")
    return problems


def _entrypoint_args(entrypoint: str) -> dict[str, str]:
    words = shlex.split(entrypoint)
    return {w: words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("--")}


def rayjob_problems(job: Any, configmaps: dict[str, dict]) -> list[str]:
    """Problems of the RayJob that runs `rayq search` with a ConfigMap-mounted config."""
    if not isinstance(job, dict) or job.get("kind") != "RayJob":
        return ["not a RayJob"]
    problems = []
    if job.get("apiVersion") != RAY_API_VERSION:
        problems.append(f"apiVersion is {job.get('apiVersion')!r}")
    spec = job.get("spec") or {}
    entrypoint = str(spec.get("entrypoint", ""))
    if not entrypoint.startswith("rayq search --config"):
        problems.append(f"entrypoint {entrypoint!r} does not start with 'rayq search --config'")
    args = _entrypoint_args(entrypoint) if entrypoint else {}
    output = args.get("--output", "")
    if not re.match(r"^([a-z][a-z0-9+.-]*://|/)", output):
        problems.append(f"--output {output!r} is not a URI or absolute path")
    if spec.get("shutdownAfterJobFinishes") is not True:
        problems.append("shutdownAfterJobFinishes is not true")
    ttl = spec.get("ttlSecondsAfterFinished")
    if not isinstance(ttl, int) or ttl < 0:
        problems.append("ttlSecondsAfterFinished missing")
    cluster = spec.get("rayClusterSpec")
    if cluster is None and not spec.get("clusterSelector"):
        problems.append("neither rayClusterSpec nor clusterSelector")
    if cluster is not None:
        # The operator reaches the job API over the pod network (see rayjob.yaml).
        cluster_problems = cluster_spec_problems(cluster, dashboard_hosts={"127.0.0.1", "0.0.0.0"})
        problems += cluster_problems
        if (
            "headGroupSpec with a container missing" not in cluster_problems
            and "cluster spec missing" not in cluster_problems
        ):
            problems += _mounted_config_problems(cluster, args.get("--config", ""), output, configmaps)
    return problems


def _mounted_config_problems(cluster: dict, config_path: str, output: str, configmaps: dict[str, dict]) -> list[str]:
    """The --config file must come from a ConfigMap mounted in the head pod."""
    head = cluster["headGroupSpec"]["template"]["spec"]
    volumes = {v.get("name"): v for v in head.get("volumes") or []}
    for mount in head["containers"][0].get("volumeMounts") or []:
        volume = volumes.get(mount.get("name")) or {}
        name = (volume.get("configMap") or {}).get("name")
        prefix = mount.get("mountPath", "").rstrip("/") + "/"
        if name and config_path.startswith(prefix):
            key = config_path[len(prefix) :]
            if name not in configmaps:
                return [f"ConfigMap {name!r} mounted at {prefix} is not defined under cluster/"]
            data = configmaps[name].get("data") or {}
            if key not in data:
                return [f"ConfigMap {name!r} has no key {key!r}"]
            cfg = yaml.safe_load(data[key])
            problems = search_config_problems(cfg)
            if isinstance(cfg, dict) and cfg.get("output", output) != output:
                problems.append(f"config output {cfg.get('output')!r} differs from --output {output!r}")
            return problems
    return [f"--config {config_path!r} is not provided by a ConfigMap mounted in the head pod"]


def configmaps() -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in docs_of_kind("ConfigMap")}


# ---------------------------------------------------------------------- the files


def test_cluster_directory_has_the_expected_files():
    expected = [
        "cpu.yaml",
        "gpu.yaml",
        "README.md",
        "kuberay/raycluster.yaml",
        "kuberay/rayjob.yaml",
        "kuberay/configmap-search.yaml",
        "kuberay/Dockerfile",
    ]
    missing = [name for name in expected if not (CLUSTER_DIR / name).is_file()]
    assert not missing


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(CLUSTER_DIR)))
def test_every_yaml_parses_to_mappings(path):
    docs = load_docs(path)
    assert docs, f"{path} is empty"
    assert all(isinstance(doc, dict) for doc in docs)


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(CLUSTER_DIR)))
def test_no_file_disables_token_auth_or_exposes_the_dashboard(path):
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"dashboard-host(=|:\s*)['\"]?0\.0\.0\.0", text) or path.name == "rayjob.yaml"
    for doc in load_docs(path):
        assert _auth_disabled(doc) == []
        assert exposure_problems(doc) == []


@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_launcher_config_has_what_rayq_relies_on(name):
    assert launcher_problems(load_one(CLUSTER_DIR / name), gpu=name == "gpu.yaml") == []


@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_launcher_config_never_binds_the_dashboard_to_all_interfaces(name):
    text = (CLUSTER_DIR / name).read_text(encoding="utf-8")
    assert "--dashboard-host=0.0.0.0" not in text
    assert "0.0.0.0" not in " ".join(load_one(CLUSTER_DIR / name)["head_start_ray_commands"])


@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_launcher_config_uses_the_public_ray_image_of_the_pinned_version(name):
    cfg = load_one(CLUSTER_DIR / name)
    assert cfg["docker"]["image"] == f"rayproject/ray:{RAY_VERSION}-py311-cpu"
    for node_type in cfg["available_node_types"].values():
        image = (node_type.get("docker") or {}).get("worker_image")
        assert image in (None, f"rayproject/ray:{RAY_VERSION}-py311-gpu")


@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_launcher_config_matches_rays_schema(name):
    jsonschema = pytest.importorskip("jsonschema")
    autoscaler = pytest.importorskip("ray.autoscaler")
    schema = json.loads((resources.files(autoscaler) / "ray-schema.json").read_text())
    jsonschema.validate(load_one(CLUSTER_DIR / name), schema)


@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_launcher_config_passes_rays_own_validation(name):
    util = pytest.importorskip("ray.autoscaler._private.util")
    cfg = util.prepare_config(load_one(CLUSTER_DIR / name))  # fills defaults, no cloud calls
    util.validate_config(cfg)


def test_cpu_launcher_config_has_no_gpu_nodes():
    cfg = load_one(CLUSTER_DIR / "cpu.yaml")
    assert all(float((t.get("resources") or {}).get("GPU", 0)) == 0 for t in cfg["available_node_types"].values())


def test_kuberay_documents_have_the_right_api_version_and_kind():
    kinds = {(doc["apiVersion"], doc["kind"]) for _, doc in kubernetes_docs()}
    assert (RAY_API_VERSION, "RayCluster") in kinds
    assert (RAY_API_VERSION, "RayJob") in kinds
    assert ("v1", "ConfigMap") in kinds
    for _, doc in kubernetes_docs():
        if doc["kind"] in ("RayCluster", "RayJob", "RayService"):
            assert doc["apiVersion"] == RAY_API_VERSION


def test_raycluster_has_head_cpu_and_gpu_groups_with_loopback_dashboard():
    clusters = docs_of_kind("RayCluster")
    assert clusters
    for _, doc in clusters:
        assert cluster_spec_problems(doc["spec"], dashboard_hosts={"127.0.0.1"}) == []


def test_rayjob_runs_rayq_search_with_its_configmap():
    jobs = docs_of_kind("RayJob")
    assert jobs
    for _, doc in jobs:
        assert rayjob_problems(doc, configmaps()) == []


def test_search_configmap_parses_as_a_search_config():
    maps = configmaps()
    assert "rayq-search-config" in maps
    cfg = yaml.safe_load(maps["rayq-search-config"]["data"]["search.yaml"])
    assert search_config_problems(cfg) == []
    assert VALIDATION_FN.match(cfg["validation_fn"])


def test_no_service_anywhere_is_loadbalancer_or_nodeport():
    problems = [p for _, doc in kubernetes_docs() for p in exposure_problems(doc)]
    assert problems == []


def test_dockerfile_installs_the_project_on_the_ray_image():
    text = (KUBERAY_DIR / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(rf"^ARG BASE_IMAGE=rayproject/ray:{re.escape(RAY_VERSION)}-py311$", text, re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
    assert "COPY --chown=ray:users pyproject.toml" in text
    assert re.search(r"pip install --no-cache-dir \"/tmp/rayq-src\$\{RAYQ_EXTRAS\}\"", text)


def test_readme_covers_the_lifecycle_and_security():
    text = (CLUSTER_DIR / "README.md").read_text(encoding="utf-8")
    for needle in (
        "ray up",
        "ray down",
        "ray dashboard",
        "ray job submit",
        "ray job logs",
        "kubectl apply",
        "kubectl delete",
        "kubectl port-forward",
        "RAY_AUTH_TOKEN",
        "RAY_AUTH_MODE=token",
        "ray get-auth-token",
        "result.json",
        "trials.parquet",
        "pareto.png",
        "127.0.0.1",
    ):
        assert needle in text, needle


# ------------------------------------------- the checks catch broken documents


@pytest.fixture
def good_launcher():
    return load_one(CLUSTER_DIR / "gpu.yaml")


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (lambda c: c.update(cluster_name=""), "cluster_name missing"),
        (lambda c: c.pop("provider"), "provider.type missing"),
        (lambda c: c.update(head_node_type="nope"), "head_node_type 'nope'"),
        (
            lambda c: [t.update(max_workers=0) for n, t in c["available_node_types"].items() if n != "head"],
            "no worker node type with max_workers > 0",
        ),
        (lambda c: c.update(setup_commands=["pip install numpy"]), "head: setup commands do not"),
        (
            lambda c: c["available_node_types"]["gpu_worker"].update(worker_setup_commands=["pip install ~/rayq"]),
            "does not install rayq[gpu]",
        ),
        (lambda c: c["file_mounts"].pop("~/.ray/auth_token"), "auth token"),
        (
            lambda c: c.update(head_start_ray_commands=["ray start --head --dashboard-host=0.0.0.0"]),
            "head `ray start` lacks --dashboard-host=127.0.0.1",
        ),
        (
            lambda c: c.update(
                worker_start_ray_commands=[
                    "RAY_AUTH_MODE=token ray start --address=$RAY_HEAD_IP:6379 --dashboard-host=127.0.0.1"
                ]
            ),
            None,
        ),
        (
            lambda c: c.update(
                worker_start_ray_commands=["ray start --address=$RAY_HEAD_IP:6379 --dashboard-host=127.0.0.1"]
            ),
            "worker `ray start` does not set RAY_AUTH_MODE=token",
        ),
        (lambda c: c["docker"]["run_options"].append("--env RAY_AUTH_MODE=disabled"), "token auth disabled"),
        (
            lambda c: c["provider"]["security_group"].update(
                IpPermissions=[
                    {"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
                ]
            ),
            "opens ports 8265-8265 to the world",
        ),
        (
            lambda c: c["available_node_types"]["gpu_worker"].update(resources={"CPU": 4}),
            "no node type with a GPU resource",
        ),
        (lambda c: c["available_node_types"]["gpu_worker"].pop("docker"), "does not use a -gpu Ray image"),
    ],
    ids=case_id,
)
def test_launcher_check_catches(good_launcher, breakage, expected):
    assert launcher_problems(good_launcher, gpu=True) == []
    breakage(good_launcher)
    problems = launcher_problems(good_launcher, gpu=True)
    if expected is None:  # a harmless change stays clean
        assert problems == []
    else:
        assert any(expected in p for p in problems), problems


def test_launcher_check_rejects_a_head_that_listens_on_all_interfaces(good_launcher):
    good_launcher["head_start_ray_commands"] = [
        "export RAY_AUTH_MODE=token; ray start --head --dashboard-host=127.0.0.1 --node-ip-address=0.0.0.0"
    ]
    assert "head_start_ray_commands bind something to 0.0.0.0" in launcher_problems(good_launcher)


def test_launcher_check_rejects_non_mappings():
    assert launcher_problems(["not", "a", "config"]) == ["not a mapping"]


@pytest.fixture
def good_cluster_spec():
    return copy.deepcopy(docs_of_kind("RayCluster")[0][1]["spec"])


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (
            lambda s: s["headGroupSpec"]["rayStartParams"].update({"dashboard-host": "0.0.0.0"}),
            "dashboard-host is '0.0.0.0'",
        ),
        (lambda s: s.pop("authOptions"), "authOptions.mode is not 'token'"),
        (lambda s: s.update(authOptions={"mode": "disabled"}), "authOptions.mode is not 'token'"),
        (lambda s: s["headGroupSpec"].update(serviceType="LoadBalancer"), "serviceType is not ClusterIP"),
        (lambda s: s.update(workerGroupSpecs=s["workerGroupSpecs"][:1]), "no GPU worker group"),
        (lambda s: s.update(workerGroupSpecs=s["workerGroupSpecs"][1:]), "no CPU worker group"),
        (lambda s: s.update(workerGroupSpecs=[]), "no workerGroupSpecs"),
        (lambda s: s.pop("headGroupSpec"), "headGroupSpec with a container missing"),
        (lambda s: s.update(rayVersion="2.9.0"), "rayVersion is '2.9.0'"),
        (
            lambda s: s["workerGroupSpecs"][1]["template"]["spec"]["containers"][0].update(image="rayq:0.1.0"),
            "does not use a -gpu image",
        ),
        (
            lambda s: s["workerGroupSpecs"][0]["template"]["spec"]["containers"][0].pop("resources"),
            "lacks resource requests/limits",
        ),
        (
            lambda s: s["headGroupSpec"]["template"]["metadata"]["labels"].update({"app.kubernetes.io/name": "rayq"}),
            "override KubeRay's own",
        ),
    ],
    ids=case_id,
)
def test_cluster_spec_check_catches(good_cluster_spec, breakage, expected):
    assert cluster_spec_problems(good_cluster_spec, dashboard_hosts={"127.0.0.1"}) == []
    breakage(good_cluster_spec)
    problems = cluster_spec_problems(good_cluster_spec, dashboard_hosts={"127.0.0.1"})
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "dash"}, "spec": {"type": "LoadBalancer"}},
            "is LoadBalancer",
        ),
        (
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "dash"}, "spec": {"type": "NodePort"}},
            "is NodePort",
        ),
        ({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "dash"}}, "Ingress"),
        ({"spec": {"headGroupSpec": {"serviceType": "NodePort"}}}, "serviceType is NodePort"),
        (
            {"spec": {"headGroupSpec": {"headService": {"spec": {"type": "LoadBalancer"}}}}},
            "headService is LoadBalancer",
        ),
        ({"spec": {"headGroupSpec": {"enableIngress": True}}}, "enableIngress is true"),
    ],
    ids=case_id,
)
def test_exposure_check_catches(doc, expected):
    assert any(expected in p for p in exposure_problems(doc))


def test_exposure_check_accepts_clusterip():
    doc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"type": "ClusterIP"}}
    assert exposure_problems(doc) == []


@pytest.fixture
def good_job():
    return copy.deepcopy(docs_of_kind("RayJob")[0][1])


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (
            lambda j: j["spec"].update(entrypoint="python search.py --config /configs/search.yaml"),
            "does not start with 'rayq search --config'",
        ),
        (lambda j: j["spec"].update(entrypoint="rayq search --config /configs/search.yaml"), "--output ''"),
        (
            lambda j: j["spec"].update(entrypoint="rayq search --config /configs/other.yaml --output s3://b/p"),
            "has no key 'other.yaml'",
        ),
        (
            lambda j: j["spec"].update(
                entrypoint="rayq search --config /etc/search.yaml --output s3://my-bucket/rayq/run-001"
            ),
            "not provided by a ConfigMap",
        ),
        (
            lambda j: j["spec"].update(entrypoint="rayq search --config /configs/search.yaml --output s3://other/run"),
            "differs from --output",
        ),
        (lambda j: j["spec"].update(shutdownAfterJobFinishes=False), "shutdownAfterJobFinishes is not true"),
        (lambda j: j["spec"].pop("ttlSecondsAfterFinished"), "ttlSecondsAfterFinished missing"),
        (lambda j: j["spec"].pop("rayClusterSpec"), "neither rayClusterSpec nor clusterSelector"),
        (lambda j: j.update(apiVersion="ray.io/v1alpha1"), "apiVersion is 'ray.io/v1alpha1'"),
        (
            lambda j: j["spec"]["rayClusterSpec"]["headGroupSpec"].update(serviceType="NodePort"),
            "serviceType is not ClusterIP",
        ),
    ],
    ids=case_id,
)
def test_rayjob_check_catches(good_job, breakage, expected):
    assert rayjob_problems(good_job, configmaps()) == []
    breakage(good_job)
    problems = rayjob_problems(good_job, configmaps())
    assert any(expected in p for p in problems), problems


def test_rayjob_check_survives_a_job_without_head(good_job):
    good_job["spec"]["rayClusterSpec"].pop("headGroupSpec")
    assert "headGroupSpec with a container missing" in rayjob_problems(good_job, configmaps())


def test_rayjob_check_needs_the_configmap_to_exist(good_job):
    assert any("is not defined under cluster/" in p for p in rayjob_problems(good_job, {}))


@pytest.fixture
def good_search_config():
    return yaml.safe_load(configmaps()["rayq-search-config"]["data"]["search.yaml"])


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        *[((lambda k: lambda c: c.pop(k))(key), f"missing key {key!r}") for key in SEARCH_REQUIRED_KEYS],
        (lambda c: c.update(validation_fn="mypkg.metrics.accuracy"), "is not 'module:function'"),
        (lambda c: c.update(validation_fn="mypkg.metrics:"), "is not 'module:function'"),
        (lambda c: c.update(validation_fn=":accuracy"), "is not 'module:function'"),
        (lambda c: c.update(max_drop="1%"), "is not a non-negative number"),
        (lambda c: c.update(max_drop=-0.1), "is not a non-negative number"),
        (lambda c: c.update(max_drop=True), "is not a non-negative number"),
        (lambda c: c.update(drop_type="percent"), "drop_type 'percent'"),
        (lambda c: c.update(target="tensorrt"), "target 'tensorrt'"),
        (lambda c: c.update(n_trials=0), "n_trials must be a positive integer"),
        (lambda c: c.update(command="quantize"), "command is 'quantize'"),
    ],
    ids=case_id,
)
def test_search_config_check_catches(good_search_config, breakage, expected):
    assert search_config_problems(good_search_config) == []
    breakage(good_search_config)
    problems = search_config_problems(good_search_config)
    assert any(expected in p for p in problems), problems


def test_search_config_check_rejects_non_mappings():
    assert search_config_problems("model: x") == ["search config is not a mapping"]
