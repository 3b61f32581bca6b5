"""One settings model for the whole system.

Every process (workers, trainer, API, CLI, tests) reads the same `Settings`. Values come, highest
priority first, from: keyword arguments, environment variables `LEARN_*` (nested with `__`, e.g.
`LEARN_BROKER__PORT=19092`), a TOML file named by `LEARN_CONFIG` (see `deploy/learn.example.toml`),
then the defaults below, which run everything embedded on one machine.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


class BrokerSettings(BaseModel):
    """The Kafka-protocol broker. The embedded default is Tansu on loopback."""

    host: str = "127.0.0.1"
    port: int = 19092
    # Tansu's first group join waits half the session timeout: keep it short (works on Apache Kafka too).
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1500
    # Where the embedded Tansu keeps topics and consumer-group offsets. "s3": durable, in a local
    # S3-compatible server that stores plain files under <data_dir>/broker/; records and committed
    # offsets survive restarts and kill -9 of Tansu and of that server. "memory": Tansu's in-memory
    # engine (a restart empties every topic and forgets every offset).
    storage: Literal["s3", "memory"] = "s3"
    # The local S3 server: "nanio" (fsyncs; keeps up with one-record batches, bench/results/broker.json)
    # or "localbucket" (stdlib only, no fsync; falls behind at ~50 one-record batches/s here).
    s3_server: Literal["nanio", "localbucket"] = "nanio"
    s3_port: int = 19094  # the local S3 server's port on 127.0.0.1 (storage "s3" only)
    s3_bucket: str = "tansu"
    # Tansu answers a fetch with nothing when its storage reads outlast the fetch's max wait; on the S3
    # engine each fetch lists and reads objects over HTTP (tens of ms, more on a loaded machine), so a
    # 10 ms wait never returns data (measured: 90 of 1,500 events reached the state). The embedded
    # stack raises the workers' fetch wait (worker.fetch_max_wait_ms) to at least this on "s3".
    s3_fetch_wait_ms: int = 500
    # An external Kafka (Apache Kafka, Redpanda, a shared Tansu): "host1:9092,host2:9092". Set, nothing
    # is started: `host`/`port`/`storage` are ignored and every client connects here.
    bootstrap_servers: str = ""

    @property
    def external(self) -> bool:
        return bool(self.bootstrap_servers)

    @property
    def bootstrap(self) -> str:
        return self.bootstrap_servers or f"{self.host}:{self.port}"

    # ---- a real cluster (deploy/compose.yaml, deploy/k8s/). streams/kafka_options.py turns these into
    # each client library's options; the defaults are the embedded broker's (plaintext).
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    sasl_username: str = ""
    # Plain str, not SecretStr: the stack hands settings to its processes as JSON (deploy/stack.py),
    # which would mask a SecretStr. In Kubernetes it comes from a Secret (deploy/k8s/config.yaml).
    sasl_password: str = ""
    ssl_cafile: str = ""  # CA bundle that signed the brokers' certificates (empty: the system's)
    ssl_certfile: str = ""  # client certificate and its key, for brokers that require mutual TLS
    ssl_keyfile: str = ""
    ssl_check_hostname: bool = True

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_port_list(cls, v: str) -> str:
        servers = [x.strip() for x in v.split(",") if x.strip()]
        for server in servers:
            host, _, port = server.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"bootstrap server {server!r} is not host:port")
        return ",".join(servers)

    @model_validator(mode="after")
    def _credentials_complete(self) -> "BrokerSettings":
        if self.security_protocol.startswith("SASL") and not (self.sasl_username and self.sasl_password):
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_username and sasl_password")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ValueError("ssl_certfile and ssl_keyfile go together (a client certificate and its key)")
        return self


class TopicSettings(BaseModel):
    """Topic names and partition counts. Topics are always created explicitly (never auto-created)."""

    items: str = "items"
    interactions: str = "interactions"
    items_dlq: str = "items.dlq"
    interactions_dlq: str = "interactions.dlq"
    partitions: int = 4
    dlq_partitions: int = 1
    # Records consumed from a partition that does not own their user are forwarded here (same
    # partition count as `interactions`). Empty: "<interactions>.repartition".
    interactions_repartition: str = ""

    @property
    def interactions_repartition_topic(self) -> str:
        return self.interactions_repartition or f"{self.interactions}.repartition"

    # The state's changelog (compacted; partition p = state partition p; store/changelog.py). Empty:
    # "<interactions>.changelog".
    changelog: str = ""

    @property
    def changelog_topic(self) -> str:
        return self.changelog or f"{self.interactions}.changelog"

    # ---- a real cluster: copies of each partition, and how many must acknowledge a write (acks=all).
    # The embedded broker has one node: 1 and 0 (0: leave min.insync.replicas to the broker's default).
    replication_factor: int = Field(1, ge=1)
    min_insync_replicas: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _insync_within_replicas(self) -> "TopicSettings":
        if self.min_insync_replicas > self.replication_factor:
            raise ValueError(f"min_insync_replicas {self.min_insync_replicas} > replication_factor "
                             f"{self.replication_factor}: no write could ever be acknowledged")  # fmt: skip
        return self


class WorkerSettings(BaseModel):
    """Faust worker processes. Each process gets its own web port (metrics, counts) on loopback."""

    web_port: int = 6066
    web_host: str = "127.0.0.1"
    # Consumer groups are "<app_prefix>-<worker>": two deployments (or two tests) on one broker must
    # use different prefixes, or their workers would share partitions.
    app_prefix: str = "learn"
    # How long the group coordinator waits for members to rejoin a rebalance. Short, so a killed
    # worker's partitions move on quickly (our batches take milliseconds).
    rebalance_timeout_ms: int = 10_000
    # Events handed to the state update at once (one atomic write batch) and the longest wait.
    take_max: int = 5000
    take_within_s: float = 0.05
    fetch_max_wait_ms: int = 10
    # fsync each state write batch (survives power loss, not just a process kill); slower.
    sync_writes: bool = False
    # How long a forward or a dead letter may wait for the broker's acknowledgement (the producer
    # retries meanwhile). Past it the worker stops with a non-zero exit, before storing the offset.
    send_timeout_ms: int = 30_000
    # A partition that delivered nothing for this long is checked for an offset regression (is the
    # record applied last still in the broker's log?): a broker need not report a position beyond
    # its log (Tansu answers with no records), so an idle partition is probed.
    regression_probe_s: float = 5.0
    # A restore from the changelog that reads nothing for this long stops the worker (broker away).
    restore_timeout_s: float = 60.0


class EncoderSettings(BaseModel):
    """The frozen LLM that turns item text into content embeddings (LEARN's CEG)."""

    # "smollm2" and "minilm" name the packaged models; anything else is a Hugging Face path or id.
    model: str = "smollm2"
    # Texts per forward pass. bench/encoder.py, SmolLM2 on one idle CPU thread: 10.8 items/s at 8,
    # 11.0 at 16, 10.1 at 32, 8.7 at 64 (larger batches leave the caches).
    batch_size: int = 16
    max_tokens: int = 128
    template: str = "Title: {title} Brand: {brand} Category: {categories} Description: {description}"
    device: str = "auto"  # auto | cpu | cuda
    # Compute dtype. auto: float32 on CPU, bfloat16 on CUDA (LEARN's choice). bfloat16 on a CPU with
    # AMX (bench/encoder.py measures it: ~3.5x the fp32 rate here) changes the vectors slightly, so
    # it has its own embedding-cache namespace (model id suffix "|bf16").
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # Micro-batching of the streaming worker: flush at `pool_batches * batch_size` records or after
    # this many ms. A micro-batch is sorted by token length and cut into forward passes of
    # `batch_size`, so under a backlog each pass pads little; at a low rate a micro-batch is one pass.
    # faust waits the whole `flush_ms` again after every micro-batch unless the buffer fills, so a
    # short wait is the low-rate latency (SmolLM2 at 5 items/s: freshness p50 0.97 s / p99 1.45 s at
    # 50 ms, 1.13-1.50 s / 1.61-2.74 s at 200 ms); a backlog fills the buffer at once either way.
    flush_ms: int = 50
    pool_batches: int = 8
    # torch intra-op threads for the encoder worker and bench/encoder.py (0: torch's default, all cores).
    # Measured on the shared 2-core machine: SmolLM2, 32 texts: 1.1 s with 1 thread, 7.8 s with 2
    # (other processes busy the cores, and the second thread's waits dominate).
    threads: int = 1


class StateSettings(BaseModel):
    """Per-user sequences in the state store (rocksdict)."""

    max_seq_len: int = 50
    allowed_lateness_s: float = 3600.0
    # Users changed per event-time slot are recorded at this resolution; trainer windows are whole slots.
    slot_s: float = 10.0
    # The interaction worker writes each batch's changed sequences to the changelog topic and restores
    # a missing or stale partition database from it on assignment (store/changelog.py).
    changelog: bool = True
    # How the API and the trainer read the state: "secondary" opens the workers' databases under
    # data_dir (same machine); "changelog" keeps a replica under data_dir/replica from the changelog.
    reader: Literal["secondary", "changelog"] = "secondary"


class VectorSettings(BaseModel):
    """The vector store: a milvus-lite file by default, a Milvus server when `uri` is http(s)://."""

    uri: str = ""  # empty: <data_dir>/vectors.db
    token: str = ""


class ModelSettings(BaseModel):
    """The twin towers (trainer/towers.py) and their training. `TowerConfig.from_settings` reads the
    model's fields from here (its defaults equal these: tests/unit/test_towers.py)."""

    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    d_out: int = 64
    dropout: float = 0.2
    item_tower: str = "a"  # a variant's name in trainer/towers.py ITEM_TOWERS, the one list (checked there)
    use_id_embedding: bool = False
    # full_softmax: best on validation NDCG@10 (trainer/offline.py's docstring has the numbers)
    loss: Literal["dense_all_action", "dense_full", "in_batch", "full_softmax"] = "full_softmax"
    temperature: float = 0.07
    whiten: bool = True
    whiten_dim: int = 0  # keep this many principal components when whitening (0: all)
    max_seq_len: int = 50
    target_window: int = 5
    max_negatives: int = 1024  # in-batch negatives per anchor, sampled when a batch has more
    # > 0: the full softmax plus this times the paper's dense all-action loss (item towers a/b/c differ)
    dense_weight: float = 0.0
    # Items the user has already seen (trainer/history.py; issue 17): "masked" out of the full softmax,
    # or kept as "negatives"; a learned logit per age on the history's items; a learned content-kNN
    # residual (the zero-training score with a learned weight and decay).
    history_in_loss: Literal["masked", "negatives"] = "masked"
    # Default (issue 17, chosen on validation: bench/results/quality_sweep.json): history masked in the
    # loss, then a penalty on history items and the kNN weight chosen on validation after training.
    # With history masked the age bias is not learned (held at zero in training).
    history_age_bias: bool = True
    history_knn: bool = False
    # the kNN residual's weight not trained but chosen on validation after training (a blend with the
    # zero-training score; trainer/history.choose_knn_blend)
    history_knn_blend: bool = True
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    max_epochs: int = 40
    patience: int = 5
    seed: int = 2024
    # issue 17: a collaborative item-item term (EASE on the training sequences, trainer/collab.py) added
    # after training, its lambda and weight chosen on validation with the kNN weight and the history
    # penalty; served as this many extra dimensions (a truncated SVD of EASE's weights; on validation,
    # seed 2024, mean of both conventions' NDCG@10: rank 256 0.1021 (a smaller grid), 512 0.1036, 1024 0.1046, full
    # rank 0.1046). 0: off (the content towers alone). Item ids only: an unknown item scores as content.
    collab_rank: int = 1024


class TrainerSettings(BaseModel):
    """The incremental trainer: windows, replay, publishing."""

    window_s: float = 60.0
    window_events: int = 0  # > 0: windows of N events instead of event time
    replay_ratio: float = 1.0
    steps_per_window: int = 150
    max_train_s: float = 30.0  # a window's training stops after this long, whatever the step count
    batch_size: int = 128  # sequences per optimiser step
    threads: int = 1  # torch intra-op threads of the trainer process (the workers share the cores)
    promote_margin: float = 0.02
    keep_versions: int = 5
    grace_s: float = 0.0  # event time to wait past a window's end before closing it
    poll_s: float = 1.0
    # Fault injection for tests: sleep `pause_s` at a named point of a publish ("after_commit",
    # "mid_vectors") so a test can kill the trainer there. Off by default.
    pause_at: str = ""
    pause_s: float = 0.0
    # With model.history_knn_blend: the kNN weight and history penalty are chosen after each window's
    # training on at most this many of its held-out events (a random sample; each costs a grid of rankings)
    blend_examples: int = 500
    # issue 17: the EASE term (trainer/collab.py, with model.collab_rank > 0) is fitted every
    # `collab_every` windows on the sequences the trainer holds (every user seen so far, cut at the
    # window's end, without this window's held-out events), at this rank and this one lambda (the one
    # all 3 offline seeds chose); its weight is chosen on the held-out sample with the kNN blend. One
    # core, the full Scientific replay (8,442 users): EASE 14 s, the SVD 1.6 s (rank 128) / 2.7 s (256);
    # the fit's time comes out of the next window's training budget. 0: the term is not fitted.
    collab_rank: int = 256
    collab_lambda: float = 60.0
    collab_every: int = 1
    # the fit's dense float64 matrices (users x items, items x items) stay under this many cells (8
    # bytes each: 2 GB), or the term is not fitted (a warning; Scientific: 8,442 x 4,385 = 37M)
    collab_max_cells: int = 250_000_000


class ServingSettings(BaseModel):
    """The HTTP query API (serving/)."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str = ""  # bearer token; required when host is not loopback
    # "memory": top-K over an in-memory copy of the current version's item vectors, kept in step with
    # the vector store, concurrent requests batched; "store": one vector-store search call per request.
    search: Literal["memory", "store"] = "memory"
    max_k: int = 100
    max_batch: int = 64  # requests computed together at most (user tower + search)
    poll_s: float = 0.5  # how often the registry pointer and the state store are followed
    sync_s: float = 5.0  # how often the item index and content cache are checked against the store
    content_cache_items: int = 200_000  # raw content embeddings kept in memory (LRU)
    torch_threads: int = 1  # intra-op threads of the towers in the API process (0: torch's default)
    metrics_urls: list[str] = []  # the workers' /metrics pages, re-exported (job label) on the API's /metrics
    # The memory path's top-K index (serving/ann.py): "exact" scores every item; "ann" a faiss index
    # (inner product, full vectors) of ann_kind; "auto": ann from ann_min_items items on
    # (bench/results/scale/ann.json has recall and latency at 1M items).
    index: Literal["exact", "ann", "auto"] = "auto"
    ann_min_items: int = 200_000
    # ivf: k-means cells, built in 31 s at 1M x 640 (recall@10 1.0 at nprobe 32); hnsw: a graph, 1008 s (0.966 at ef 512)
    ann_kind: Literal["ivf", "hnsw"] = "ivf"
    ann_nlist: int = 0  # ivf: k-means cells (0: about sqrt(items))
    ann_nprobe: int = 32  # ivf: cells scored per query (recall against speed)
    ann_m: int = 16  # hnsw: graph links per node
    ann_ef_construction: int = 100  # hnsw: candidates kept while inserting
    ann_ef_search: int = 512  # hnsw: candidates kept while searching
    ann_rebuild_fraction: float = 0.05  # rebuild the index once rewritten + deleted + new rows pass this share
    ann_build_threads: int = 0  # threads of a (re)build on the follower's thread (0: all cores)


class RegistrySettings(BaseModel):
    """The model registry (store/registry.py): a local folder by default, or an S3 bucket any machine
    can read (`uri = "s3://bucket/prefix"`; store/s3_registry.py), whose versions each reader
    downloads into `cache_dir` before use."""

    uri: str = ""  # empty: <data_dir>/registry; a folder path; or s3://bucket/prefix
    s3_endpoint_url: str = ""  # empty: AWS's own; the local server: http://127.0.0.1:<port>
    # Empty key and secret: boto3's own lookup (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.aws,
    # an instance role). Plain str, like broker.sasl_password (LEARN_REGISTRY__S3_SECRET_KEY).
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_region: str = "us-east-1"
    cache_dir: Path | None = None  # S3 only: downloaded versions; None: <data_dir>/registry-cache

    @field_validator("uri")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        if "://" in v and not v.startswith("s3://"):
            raise ValueError(f"registry.uri {v!r}: a folder path or s3://bucket/prefix")
        if v.startswith("s3://") and not v[5:].split("/")[0]:
            raise ValueError(f"registry.uri {v!r} names no bucket (s3://bucket/prefix)")
        return v

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")


class ProcessSettings(BaseModel):
    """How many processes `learn up` runs per stage on this machine (deploy/supervisor.py), and
    whether it runs the Milvus server for the vector store."""

    # Each encoder / interaction worker is one member of its stage's consumer group: at most one per
    # partition of its input topic (topics.partitions), or the extra ones would idle.
    encoder_workers: int = Field(1, ge=1)
    interaction_workers: int = Field(1, ge=1)
    # API replica i listens on serving.port + i; every replica follows the registry on its own.
    api_replicas: int = Field(1, ge=1)
    # Run a Milvus 2.3.5 server (deploy/milvus_server.py, private network namespace) as a program of
    # `learn up` and point vectors.uri at http://127.0.0.1:<milvus_port> (only when vectors.uri is empty).
    # Off: the milvus-lite file, which N encoder workers share through its host (store/vectors.py).
    milvus_server: bool = False
    milvus_port: int = 19540
    # supervisord's startsecs: a program alive this long counts as started (RUNNING; `learn up` starts
    # the next one only then); one that dies sooner is retried with a growing delay, later at once.
    start_secs: int = Field(3, ge=1)


class DatasetSettings(BaseModel):
    """One dataset by path (`[datasets.<name>]` in the TOML file, or `--data PATH` on the command line).

    Formats (streams/datasets.py reads them; README "Bring your own data" has an example of each):
    "plain" (interactions.csv + items.jsonl), "lcrec" (<prefix>.item.json + <prefix>.inter.json),
    "atomic" (the UniSRec/RecBole pre-split atomic files <prefix>.text, .item2index, .user2index,
    .train/.valid/.test.inter); "auto" detects which one the folder holds.
    """

    # The folder (relative: from the current directory). None: <shared_data_dir>/<the table's name>
    # (how the two built-in datasets are found).
    path: Path | None = None
    format: Literal["auto", "plain", "lcrec", "atomic"] = "auto"
    prefix: str = ""  # file-name prefix of the lcrec/atomic files ("" = detected: the one prefix present)
    # Category names dropped from every item (e.g. a root category every item shares, which tells the
    # model nothing); in the atomic ".text" strings they also mark where the title ends.
    drop_categories: list[str] = []


SCIENTIFIC_ROOT = "Industrial & Scientific"
BUILTIN_DATASETS = {
    "amazon-scientific-unisrec": DatasetSettings(format="atomic", prefix="Scientific", drop_categories=[SCIENTIFIC_ROOT]),
    "amazon-scientific-lcrec": DatasetSettings(format="lcrec", prefix="Scientific", drop_categories=[SCIENTIFIC_ROOT]),
}


class Settings(BaseSettings):
    """The whole system's configuration."""

    model_config = SettingsConfigDict(
        env_prefix="LEARN_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    data_dir: Path = Field(default=REPO_ROOT / ".learn", description="state, vectors, models, caches")
    shared_data_dir: Path = Field(default=REPO_ROOT.parent / "shared" / "data")
    # Caches that outlive one deployment's data (the embedding cache, the converted LLM weights):
    # unset, they live under data_dir; the demo points every run at one place so a second run is warm.
    cache_dir: Path | None = None
    broker: BrokerSettings = BrokerSettings()
    topics: TopicSettings = TopicSettings()
    worker: WorkerSettings = WorkerSettings()
    encoder: EncoderSettings = EncoderSettings()
    state: StateSettings = StateSettings()
    vectors: VectorSettings = VectorSettings()
    model: ModelSettings = ModelSettings()
    trainer: TrainerSettings = TrainerSettings()
    serving: ServingSettings = ServingSettings()
    registry: RegistrySettings = RegistrySettings()
    processes: ProcessSettings = ProcessSettings()
    # Datasets by name (the built-in two are always there; a TOML table adds or overrides one).
    datasets: dict[str, DatasetSettings] = dict(BUILTIN_DATASETS)

    @field_validator("datasets", mode="before")
    @classmethod
    def _keep_builtin_datasets(cls, v):
        return {**BUILTIN_DATASETS, **(v or {})}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_path = os.environ.get("LEARN_CONFIG")
        if toml_path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(toml_path)))
        return tuple(sources)

    # Derived paths: one place decides where each durable thing lives.
    @property
    def state_path(self) -> Path:
        return self.data_dir / "state"

    @property
    def cache_path(self) -> Path:
        return (self.cache_dir or self.data_dir) / "embedding-cache"

    @property
    def models_path(self) -> Path:
        return (self.cache_dir or self.data_dir) / "models"

    @property
    def registry_path(self) -> Path:
        """The folder registry's root (`registry.uri` when it is a path); an S3 registry has none."""
        r = self.registry
        return Path(r.uri) if r.uri and not r.is_s3 else self.data_dir / "registry"

    @property
    def registry_cache_path(self) -> Path:
        """Where an S3 registry's readers keep the versions they downloaded."""
        return self.registry.cache_dir or self.data_dir / "registry-cache"

    @property
    def titles_path(self) -> Path:
        return self.data_dir / "titles"

    @property
    def vector_uri(self) -> str:
        return self.vectors.uri or str(self.data_dir / "vectors.db")


def load_settings(**overrides) -> Settings:
    """Read the settings from kwargs, the environment and the optional TOML file."""
    return Settings(**overrides)
