"""The pure parts of the embedded stack: what runs for each broker setting, supervisord's configuration,
restart counts read from its log, the fetch wait the S3 engine needs."""

import configparser
from pathlib import Path

from config import load_settings
from deploy.broker import broker_programs, for_storage
from deploy.stack import settings_env
import pytest

from deploy.supervisor import (
    START_ORDER,
    SupervisorError,
    check_can_run,
    partition_errors,
    spawn_counts,
    stack_programs,
    stack_settings,
    stage_of,
    stop_rank,
    supervisor_conf,
)


def test_broker_programs_follow_the_storage_setting(tmp_path):
    s3 = load_settings(data_dir=tmp_path)
    assert [p.name for p in broker_programs(s3)] == ["s3", "broker"]
    assert "s3://tansu/" in broker_programs(s3)[1].command
    assert broker_programs(s3)[1].env["AWS_ENDPOINT"] == f"http://127.0.0.1:{s3.broker.s3_port}"
    assert str(tmp_path / "broker") in broker_programs(s3)[0].command
    memory = load_settings(data_dir=tmp_path, broker={"storage": "memory"})
    assert [p.name for p in broker_programs(memory)] == ["broker"]
    assert "memory://tansu/" in broker_programs(memory)[0].command
    external = load_settings(data_dir=tmp_path, broker={"bootstrap_servers": "kafka1:9092,kafka2:9092"})
    assert broker_programs(external) == [] and external.broker.bootstrap == "kafka1:9092,kafka2:9092"
    assert [p.name for p in stack_programs(external)] == list(START_ORDER[2:])


def test_the_s3_engine_gets_a_fetch_wait_it_can_answer_in(tmp_path):
    s = load_settings(data_dir=tmp_path, worker={"fetch_max_wait_ms": 10})
    assert for_storage(s).worker.fetch_max_wait_ms == s.broker.s3_fetch_wait_ms
    memory = load_settings(data_dir=tmp_path, broker={"storage": "memory"}, worker={"fetch_max_wait_ms": 10})
    assert for_storage(memory).worker.fetch_max_wait_ms == 10
    assert stack_settings(s).worker.fetch_max_wait_ms == s.broker.s3_fetch_wait_ms


def test_supervisor_conf_has_every_program_restarted_and_stopped_as_a_group(tmp_path):
    s = stack_settings(load_settings(data_dir=tmp_path))
    text = supervisor_conf(stack_programs(s), tmp_path / "run 100%", Path("/repo"))
    conf = configparser.RawConfigParser()
    conf.read_string(text)
    programs = [name.split(":", 1)[1] for name in conf.sections() if name.startswith("program:")]
    assert programs == list(START_ORDER)
    for name in programs:
        sec = conf[f"program:{name}"]
        assert sec["autorestart"] == "true" and sec["stopasgroup"] == "true" and sec["killasgroup"] == "true"
        assert sec["startsecs"] == str(s.processes.start_secs) == "3"
    quick = configparser.RawConfigParser()
    quick.read_string(supervisor_conf(stack_programs(s), tmp_path / "run", Path("/repo"), start_secs=1))
    assert {quick[f"program:{n}"]["startsecs"] for n in programs} == {"1"}
    assert [int(conf[f"program:{n}"]["priority"]) for n in programs] == sorted(
        int(conf[f"program:{n}"]["priority"]) for n in programs)
    assert conf["unix_http_server"]["file"] == str(tmp_path / "run 100%%" / "supervisor.sock")  # % escaped
    assert "--web-port" in conf["program:interactions"]["command"]
    assert 'AWS_ALLOW_HTTP="true"' in conf["program:broker"]["environment"]


def test_spawn_counts_start_over_with_each_supervisord():
    log = "\n".join([
        "2026-12-01 10:00:00,000 INFO supervisord started with pid 10",
        "2026-12-01 10:00:01,000 INFO spawned: 'broker' with pid 11",
        "2026-12-01 10:00:02,000 INFO spawned: 'broker' with pid 12",
        "2026-12-01 10:01:00,000 INFO supervisord started with pid 20",
        "2026-12-01 10:01:01,000 INFO spawned: 'broker' with pid 21",
        "2026-12-01 10:01:01,000 INFO spawned: 'api' with pid 22",
        "2026-12-01 10:01:05,000 INFO spawned: 'api' with pid 23",
    ])  # fmt: skip
    assert spawn_counts(log) == {"broker": 1, "api": 2}
    assert spawn_counts("") == {}


def test_nanio_does_not_list_objects_still_being_written(tmp_path):
    """Tansu parses every listed name under records/ as an offset: an in-flight `.tmp.<uuid>` breaks a fetch."""
    from nanio.storage import filesystem

    from deploy.s3_server import patch_nanio

    records = tmp_path / "tansu" / "topics" / "t" / "records"
    records.mkdir(parents=True)
    (records / "00000000000000000000.batch").write_bytes(b"x")
    (records / ".tmp.0123456789abcdef").write_bytes(b"half written")
    patch_nanio()
    keys = list(filesystem._walk_keys(tmp_path / "tansu", "topics/t/records/", None, []))
    assert keys == ["topics/t/records/00000000000000000000.batch"]


def test_n_processes_per_stage_each_with_its_own_name_log_and_ports(tmp_path, monkeypatch):
    s = stack_settings(load_settings(data_dir=tmp_path, worker={"web_port": 7000}, serving={"port": 8100},
                                     processes={"encoder_workers": 2, "interaction_workers": 3, "api_replicas": 2}))  # fmt: skip
    programs = {p.name: p for p in stack_programs(s)}
    assert list(programs) == ["s3", "broker", "encoder", "encoder-1", "interactions", "interactions-1",
                              "interactions-2", "trainer", "api", "api-1"]  # fmt: skip
    web = {n: p.port for n, p in programs.items() if stage_of(n) in ("encoder", "interactions")}
    assert web == {"encoder": 7001, "encoder-1": 7003, "interactions": 7000, "interactions-1": 7002, "interactions-2": 7004}
    for name, port in web.items():
        cmd = programs[name].command
        assert cmd[cmd.index("--web-port") + 1] == str(port)
    assert programs["encoder-1"].command[:5] == programs["encoder"].command[:5]  # the same faust app
    assert (programs["api"].port, programs["api-1"].port) == (8100, 8101)
    assert programs["api-1"].ready_url == "http://127.0.0.1:8101/ready"
    assert programs["api-1"].env == {"LEARN_SERVING__PORT": "8101"} and programs["api"].env == {}
    for k, v in {**settings_env(s), **programs["api-1"].env}.items():  # what replica 1 reads
        monkeypatch.setenv(k, v)
    replica = load_settings()
    assert replica.serving.port == 8101 and replica.serving.metrics_urls == s.serving.metrics_urls
    assert sorted(s.serving.metrics_urls) == sorted(f"http://127.0.0.1:{p}/metrics" for p in web.values())
    conf = configparser.RawConfigParser()
    conf.read_string(supervisor_conf(list(programs.values()), tmp_path / "run", Path("/repo")))
    logs = [conf[f"program:{n}"]["stdout_logfile"] for n in programs]
    assert len(set(logs)) == len(logs) and logs[3].endswith("encoder-1.log")
    # learn down: stage by stage, the API replicas first, the broker's S3 server last
    order = sorted(programs, key=stop_rank)
    assert order[:3] == ["api", "api-1", "trainer"] and order[-2:] == ["broker", "s3"]


def test_more_workers_than_partitions_is_refused_before_anything_starts(tmp_path):
    s = load_settings(data_dir=tmp_path, topics={"partitions": 2}, processes={"interaction_workers": 3})
    errors = partition_errors(s)
    assert len(errors) == 1 and "interaction_workers = 3" in errors[0] and "2 partitions" in errors[0]
    with pytest.raises(SupervisorError, match="interaction_workers"):
        check_can_run(s)
    ok = load_settings(data_dir=tmp_path, processes={"interaction_workers": 4, "encoder_workers": 4})
    assert partition_errors(ok) == []
    # topics that already exist with fewer partitions than the setting says
    assert "encoder_workers = 4" in partition_errors(ok, {ok.topics.items: 3, ok.topics.interactions: 4})[0]


def test_milvus_server_program_and_the_vector_uri_it_sets(tmp_path):
    s = stack_settings(load_settings(data_dir=tmp_path, processes={"milvus_server": True, "milvus_port": 19999}))
    assert s.vectors.uri == "http://127.0.0.1:19999"
    programs = stack_programs(s)
    assert [p.name for p in programs].index("milvus") == 2  # after the broker, before any worker
    milvus = programs[2]
    assert milvus.command[-4:] == ["run", str(tmp_path / "milvus"), "--port", "19999"] and milvus.port == 19999
    conf = configparser.RawConfigParser()
    conf.read_string(supervisor_conf(programs, tmp_path / "run", Path("/repo")))
    assert conf["program:milvus"]["stopsignal"] == "INT" and conf["program:encoder"]["stopsignal"] == "TERM"
    # a vector store named by URI is used as it is: no server of our own
    given = stack_settings(load_settings(data_dir=tmp_path, vectors={"uri": "http://milvus:19530"},
                                         processes={"milvus_server": True}))  # fmt: skip
    assert given.vectors.uri == "http://milvus:19530" and "milvus" not in [p.name for p in stack_programs(given)]
    assert "milvus" not in [p.name for p in stack_programs(stack_settings(load_settings(data_dir=tmp_path)))]
