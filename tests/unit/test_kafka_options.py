"""streams/kafka_options.py: the broker settings reach kafka-python, aiokafka and faust as options each
library accepts, with the same bootstrap list, protocol and credentials; the settings refuse an
incomplete cluster configuration."""

import inspect

import faust
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from pydantic import ValidationError

from config import load_settings
from config.settings import BrokerSettings, TopicSettings
from streams.kafka_options import client_options
from streams.topics import topic_specs

SERVERS = ["kafka-0.kafka:9092", "kafka-1.kafka:9092", "kafka-2.kafka:9092"]
SASL_SSL = BrokerSettings(bootstrap_servers=",".join(SERVERS), security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-256",
                          sasl_username="learn", sasl_password="s3cret", ssl_check_hostname=False)  # fmt: skip


def test_embedded_defaults_are_one_loopback_address_in_plaintext():
    b = BrokerSettings(port=12345)
    assert client_options(b, "kafka-python") == {"bootstrap_servers": ["127.0.0.1:12345"], "security_protocol": "PLAINTEXT"}
    assert client_options(b, "faust") == {"broker": ["kafka://127.0.0.1:12345"], "broker_credentials": None}


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"])
def test_every_option_is_one_the_library_takes(protocol):
    b = SASL_SSL.model_copy(update={"security_protocol": protocol})
    kp = client_options(b, "kafka-python")
    for cls in (KafkaAdminClient, KafkaConsumer, KafkaProducer):
        assert set(kp) <= set(cls.DEFAULT_CONFIG), (cls, set(kp) - set(cls.DEFAULT_CONFIG))
    ak = client_options(b, "aiokafka")
    for cls in (AIOKafkaConsumer, AIOKafkaProducer, AIOKafkaAdminClient):
        params = inspect.signature(cls.__init__).parameters
        assert set(ak) <= set(params), (cls, set(ak) - set(params))
    assert kp["bootstrap_servers"] == ak["bootstrap_servers"] == SERVERS
    assert kp["security_protocol"] == ak["security_protocol"] == protocol
    assert ("sasl_plain_password" in kp) == ("sasl_plain_password" in ak) == protocol.startswith("SASL")
    assert ("ssl_context" in ak) == protocol.endswith("SSL") == ("ssl_check_hostname" in kp)


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"])
def test_faust_gets_what_aiokafka_gets(protocol):
    """faust hands its credentials to aiokafka: what it would pass equals our aiokafka options."""
    b = SASL_SSL.model_copy(update={"security_protocol": protocol})
    app = faust.App("t", **client_options(b, "faust"))
    assert [f"{u.host}:{u.port}" for u in app.conf.broker] == SERVERS
    via_faust = dict(credentials_to_aiokafka_auth(app.conf.broker_credentials))
    ours = client_options(b, "aiokafka")
    assert via_faust["security_protocol"] == ours["security_protocol"] == protocol
    for key in ("sasl_mechanism", "sasl_plain_username", "sasl_plain_password"):
        assert via_faust.get(key) == ours.get(key)
    assert (via_faust.get("ssl_context") is None) == (ours.get("ssl_context") is None)
    if protocol.endswith("SSL"):
        assert not ours["ssl_context"].check_hostname  # ssl_check_hostname=False reached the context


def test_bootstrap_list_from_the_environment(monkeypatch):
    monkeypatch.setenv("LEARN_BROKER__BOOTSTRAP_SERVERS", " kafka-0:9092, kafka-1:9093 ")
    assert load_settings().broker.bootstrap == "kafka-0:9092,kafka-1:9093"
    assert client_options(load_settings().broker, "aiokafka")["bootstrap_servers"] == ["kafka-0:9092", "kafka-1:9093"]


@pytest.mark.parametrize("bad", [
    {"bootstrap_servers": "kafka-0"},  # no port
    {"bootstrap_servers": "kafka-0:9092,kafka-1:x"},
    {"security_protocol": "SASL_SSL"},  # no credentials
    {"security_protocol": "SASL_PLAINTEXT", "sasl_username": "u"},
    {"security_protocol": "SSL", "ssl_certfile": "/c.pem"},  # a certificate without its key
    {"security_protocol": "SCRAM"},
])  # fmt: skip
def test_incomplete_cluster_settings_are_refused(bad):
    with pytest.raises(ValidationError):
        BrokerSettings(**bad)


def test_topics_carry_replication_and_min_insync():
    s = load_settings(topics={"replication_factor": 3, "min_insync_replicas": 2, "partitions": 12})
    specs = topic_specs(s)
    assert {(x.partitions, x.replication_factor) for x in specs} == {(12, 3), (1, 3)}
    changelog = {"min.insync.replicas": "2", "cleanup.policy": "compact"}
    assert all(x.configs == ({"min.insync.replicas": "2"} if x.name != s.topics.changelog_topic else changelog)
               for x in specs)  # fmt: skip
    assert topic_specs(load_settings())[0].configs == {}  # the embedded default: the broker's own
    with pytest.raises(ValidationError):
        TopicSettings(replication_factor=1, min_insync_replicas=2)
