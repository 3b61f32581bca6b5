"""The multi-machine layout (deploy/compose.yaml, deploy/k8s/*.yaml), checked offline: nothing here can
run containers or a cluster. Every Kubernetes manifest validates against the API schemas
(kubernetes-validate, strict); every LEARN_* variable handed to a learn-stream container names a field
of config/settings.py and the whole environment loads into the settings model; references between
objects (ConfigMap, Secret keys, volumes, services, the bootstrap list, the registry's endpoint) point at
things that exist; and no learn-stream pod mounts another pod's disk (state travels through the
changelog topic, model versions through the S3 registry)."""

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel

from config import Settings, load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))
K8S_VERSION = "1.37.0"
OUR_IMAGE = "learn-stream:"
PLACEHOLDER = re.compile(r"\$\{[^}]*\}")  # compose's ${VAR:?message}: set by whoever runs it


def docs() -> list[dict]:
    return [d for path in MANIFESTS for d in yaml.safe_load_all(path.read_text()) if d]


def by_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs() if d["kind"] == kind}


def env_field_known(name: str) -> bool:
    """Whether LEARN_<A>__<B>... is a field path of the settings model (nested sections ignore
    unknown keys, so a misspelt variable would otherwise be dropped without a word)."""
    if name == "LEARN_CONFIG":
        return True
    model: type[BaseModel] | None = Settings
    for part in name.removeprefix("LEARN_").lower().split("__"):
        if model is None or part not in model.model_fields:
            return False
        ann = model.model_fields[part].annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return True


def settings_from(env: dict[str, str], monkeypatch) -> Settings:
    for k in [k for k in __import__("os").environ if k.startswith("LEARN_")]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return load_settings()


def assert_cluster_settings(s: Settings) -> None:
    assert len(s.broker.bootstrap.split(",")) == 3 and s.broker.security_protocol.startswith("SASL")
    assert s.broker.sasl_password  # from the secret
    assert s.topics.replication_factor == 3 and 1 <= s.topics.min_insync_replicas < 3
    assert s.vectors.uri.startswith("http://milvus:")
    # issue 16: readers keep a replica of the changelog; the registry is on the S3 store
    assert s.state.changelog and s.state.reader == "changelog"
    assert s.registry.is_s3 and s.registry.s3_endpoint_url.startswith("http://minio:")


REGISTRY_USERS = ("encoder", "trainer", "api")  # the processes that read or write model versions


# ---- Kubernetes ----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifests_validate_against_the_kubernetes_schemas(path):
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises on an invalid field


def test_the_schema_check_rejects_a_misspelt_field():
    deployment = by_kind("Deployment")["api"]
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def pod_specs() -> list[tuple[str, dict]]:
    out = []
    for d in docs():
        if d["kind"] in ("Deployment", "StatefulSet", "Job"):
            out.append((d["metadata"]["name"], d["spec"]["template"]["spec"]))
    return out


def our_containers() -> list[tuple[str, dict, dict]]:
    return [(name, spec, c) for name, spec in pod_specs() for c in spec["containers"] if c["image"].startswith(OUR_IMAGE)]


def test_every_process_of_the_layout_is_there():
    names = {name for name, _, _ in our_containers()}
    assert names == {"learn-topics", "encoder", "interactions", "trainer", "api"}
    workloads = {**by_kind("Deployment"), **by_kind("StatefulSet")}
    assert {"kafka", "milvus", "minio", "etcd"} <= set(workloads)
    assert workloads["trainer"]["spec"]["replicas"] == 1  # single writer of the registry
    assert workloads["api"]["spec"]["replicas"] >= 2 and workloads["encoder"]["spec"]["replicas"] >= 2
    assert workloads["interactions"]["spec"]["replicas"] >= 2


def test_k8s_environment_is_the_settings_model(monkeypatch):
    config = by_kind("ConfigMap")["learn-config"]["data"]
    secrets = by_kind("Secret")["learn-secrets"]["stringData"]
    workloads = {**by_kind("Deployment"), **by_kind("StatefulSet")}
    for name, spec, c in our_containers():
        assert c["envFrom"] == [{"configMapRef": {"name": "learn-config"}}], name
        env = dict(config)
        for e in c.get("env", []):
            if "valueFrom" in e:
                ref = e["valueFrom"]["secretKeyRef"]
                assert ref["name"] == "learn-secrets" and ref["key"] in secrets, (name, e)
                env[e["name"]] = "from-the-secret"
            else:
                env[e["name"]] = e["value"]
        unknown = [k for k in env if k.startswith("LEARN_") and not env_field_known(k)]
        assert not unknown, (name, unknown)
        s = settings_from(env, monkeypatch)
        assert_cluster_settings(s)
        # the bootstrap list names the Kafka StatefulSet's pods on its client port
        kafka = workloads["kafka"]
        pods = {f"kafka-{i}.{kafka['spec']['serviceName']}:9092" for i in range(kafka["spec"]["replicas"])}
        assert set(s.broker.bootstrap.split(",")) == pods
        milvus_port = by_kind("Service")["milvus"]["spec"]["ports"][0]["port"]
        assert s.vectors.uri == f"http://milvus:{milvus_port}"
        if name == "api":
            assert s.serving.host == "0.0.0.0" and s.serving.token  # off loopback only with a token
        if name in ("encoder", "interactions"):  # every replica can own a partition
            assert workloads[name]["spec"]["replicas"] <= s.topics.partitions
        minio_port = by_kind("Service")["minio"]["spec"]["ports"][0]["port"]
        assert s.registry.s3_endpoint_url == f"http://minio:{minio_port}"
        if name in REGISTRY_USERS:
            assert s.registry.s3_secret_key, name  # from the secret
        mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {t["metadata"]["name"] for t in workloads.get(name, {}).get("spec", {}).get("volumeClaimTemplates", [])}
        assert set(mounts) <= set(volumes) | claims, name
        assert mounts.get("kafka-ca") == str(Path(s.broker.ssl_cafile).parent)
        if "data" in mounts:
            assert mounts["data"] == str(s.data_dir)


def test_no_pod_mounts_another_pods_disk():
    """Issue 16: state travels through Kafka and versions through S3, so every learn-stream pod may run
    on any node: none mounts a shared claim or needs another pod's node; the interaction workers keep
    their databases on a volume of their own (a StatefulSet's claim template), the others on emptyDir."""
    workloads = {**by_kind("Deployment"), **by_kind("StatefulSet")}
    assert "learn-data" not in by_kind("PersistentVolumeClaim")
    for name, spec, c in our_containers():
        assert not any("persistentVolumeClaim" in v for v in spec.get("volumes", [])), name
        assert "podAffinity" not in spec.get("affinity", {}), name
        data = {v["name"]: v for v in spec.get("volumes", [])}.get("data")
        if name == "interactions":
            assert workloads[name]["kind"] == "StatefulSet" and data is None
            (template,) = workloads[name]["spec"]["volumeClaimTemplates"]
            assert template["metadata"]["name"] == "data"
            assert workloads[name]["spec"]["serviceName"] in by_kind("Service")
        elif name != "learn-topics":
            assert data == {"name": "data", "emptyDir": {}}, name
    buckets = by_kind("Job")["learn-buckets"]["spec"]["template"]["spec"]["containers"][0]
    bucket = by_kind("ConfigMap")["learn-config"]["data"]["LEARN_REGISTRY__URI"].removeprefix("s3://").split("/")[0]
    assert f"mb --ignore-existing store/{bucket}" in buckets["command"][-1]


# ---- compose -------------------------------------------------------------------------------------
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_environment_is_the_settings_model(monkeypatch):
    services = compose()["services"]
    ours = {n: s for n, s in services.items() if s.get("image", "").startswith(OUR_IMAGE)}
    assert set(ours) == {"topics", "encoder", "interactions", "trainer", "api"}
    for name, svc in ours.items():
        env = {k: PLACEHOLDER.sub("from-the-environment", str(v)) for k, v in svc["environment"].items()}
        unknown = [k for k in env if k.startswith("LEARN_") and not env_field_known(k)]
        assert not unknown, (name, unknown)
        s = settings_from(env, monkeypatch)
        assert_cluster_settings(s)
        assert s.broker.bootstrap.split(",") == [f"kafka-{i}:9092" for i in range(3)]
        assert {server.split(":")[0] for server in s.broker.bootstrap.split(",")} <= set(services)
        assert s.vectors.uri.split("//")[1].split(":")[0] in services
        for dep in svc.get("depends_on", {}):
            assert dep in services, (name, dep)
        for volume in svc.get("volumes", []):  # a named volume exists; /data is each container's own
            source, _, target = volume.rpartition(":")
            assert (source in compose()["volumes"]) if source else target in ("/data", "/cache"), (name, volume)
            assert not (source and target in ("/data", "/cache")), (name, volume)  # never shared state
        if name in REGISTRY_USERS:
            assert s.registry.s3_secret_key, name
        assert s.registry.s3_endpoint_url.split("//")[1].split(":")[0] in services
    assert ours["api"]["environment"]["LEARN_SERVING__TOKEN"]
    bucket = ours["trainer"]["environment"]["LEARN_REGISTRY__URI"].removeprefix("s3://").split("/")[0]
    assert f"store/{bucket}" in services["buckets"]["command"][0]


def test_env_field_check_catches_a_misspelt_variable():
    assert env_field_known("LEARN_BROKER__BOOTSTRAP_SERVERS") and env_field_known("LEARN_DATA_DIR")
    assert not env_field_known("LEARN_BROKER__BOOTSTRAP_SERVER")  # would be ignored by the model
    assert not env_field_known("LEARN_DATA_DIR__X") and not env_field_known("LEARN_NOPE")
