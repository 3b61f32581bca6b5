"""`learn replay --data PATH` produces a dataset into a running broker, as a catalogue service and
product producers would (kafka-python): every item, then every interaction in the data's time order,
paced at the chosen speed-up."""

import json
import time

import pytest
from typer.testing import CliRunner

from deploy.cli import app
from streams.topics import ensure_topics, topic_specs
from tests.gen_data import write_plain
from tests.integration.helpers import read_topic

pytestmark = pytest.mark.integration


def env_for(settings) -> dict:
    t = settings.topics
    return {"LEARN_BROKER__PORT": str(settings.broker.port), "LEARN_TOPICS__ITEMS": t.items,
            "LEARN_TOPICS__INTERACTIONS": t.interactions, "LEARN_DATA_DIR": str(settings.data_dir)}  # fmt: skip


def test_learn_replay_sends_items_then_interactions_in_time_order(settings, tmp_path):
    ensure_topics(settings.broker.bootstrap, topic_specs(settings))
    data = write_plain(tmp_path / "plain")  # 40 items, 60 users x 7 events over 25,140 s of data time
    t0 = time.time()
    res = CliRunner().invoke(app, ["replay", "--data", str(data), "--speedup", "10000", "--no-progress"], env=env_for(settings))
    took = time.time() - t0
    assert res.exit_code == 0, res.output
    assert "40 items and 420 interactions" in res.output
    assert took >= 2.5  # real time, compressed 10,000x: 2.5 s of replay
    items = read_topic(settings.broker.bootstrap, settings.topics.items, 40)
    events = [json.loads(m.value) for m in read_topic(settings.broker.bootstrap, settings.topics.interactions, 420)]
    assert len(items) == 40 and len(events) == 420
    per_user: dict[str, list[float]] = {}
    for e in events:
        per_user.setdefault(e["user_id"], []).append(e["event_time"])
    assert all(ts == sorted(ts) for ts in per_user.values()) and len(per_user) == 60
    times = sorted(e["event_time"] for e in events)
    assert times[-1] - times[0] == pytest.approx(2.514, abs=0.01) and abs(times[0] - t0) < took
    assert {e["action"] for e in events} == {"purchase"}


def test_learn_replay_refuses_a_wrong_folder_or_no_broker(settings, tmp_path):
    res = CliRunner().invoke(app, ["replay", "--data", str(tmp_path)], env=env_for(settings))
    assert res.exit_code == 2 and "no dataset found in" in res.output and "Traceback" not in res.output
    from deploy.broker import free_port

    env = {**env_for(settings), "LEARN_BROKER__PORT": str(free_port())}
    res = CliRunner().invoke(app, ["replay", "--data", str(write_plain(tmp_path / "p"))], env=env)
    assert res.exit_code == 2 and "no broker answers" in res.output
