"""The pure parts of the embedded stack: what runs for each broker setting, supervisord's configuration,
restart counts read from its log, the fetch wait the S3 engine needs."""

import configparser
from pathlib import Path

from config import load_settings
from deploy.broker import broker_programs, for_storage
from deploy.supervisor import START_ORDER, spawn_counts, stack_programs, stack_settings, supervisor_conf


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
