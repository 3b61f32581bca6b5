"""The broker settings (config/settings.py: BrokerSettings) as each Kafka client library's options.

One place decides how the bootstrap list, the security protocol, SASL and TLS reach a client, so a
real cluster (deploy/compose.yaml, deploy/k8s/) is a settings change, never a code change:

    KafkaAdminClient(**client_options(settings.broker, "kafka-python"))
    AIOKafkaConsumer(topic, **client_options(settings.broker, "aiokafka"))
    faust.App(name, **client_options(settings.broker, "faust"))   # broker= and broker_credentials=

The embedded defaults give the plain loopback address and PLAINTEXT. aiokafka and faust take TLS as
an `ssl.SSLContext`, built here from the same files that kafka-python takes by name.
"""

from __future__ import annotations

import ssl
from typing import Literal

from config.settings import BrokerSettings

Client = Literal["kafka-python", "aiokafka", "faust"]


def client_options(broker: BrokerSettings, client: Client) -> dict:
    """Keyword arguments for a `client` of the configured broker(s)."""
    servers = broker.bootstrap.split(",")
    sasl = broker.security_protocol.startswith("SASL")
    tls = broker.security_protocol.endswith("SSL")
    if client == "faust":
        return {"broker": [f"kafka://{s}" for s in servers], "broker_credentials": _faust_credentials(broker, sasl, tls)}
    opts: dict = {"bootstrap_servers": servers, "security_protocol": broker.security_protocol}
    if sasl:
        opts |= {"sasl_mechanism": broker.sasl_mechanism, "sasl_plain_username": broker.sasl_username,
                 "sasl_plain_password": broker.sasl_password}  # fmt: skip
    if tls and client == "kafka-python":
        opts |= {"ssl_cafile": broker.ssl_cafile or None, "ssl_certfile": broker.ssl_certfile or None,
                 "ssl_keyfile": broker.ssl_keyfile or None, "ssl_check_hostname": broker.ssl_check_hostname}  # fmt: skip
    elif tls:
        opts["ssl_context"] = ssl_context(broker)
    return opts


def ssl_context(broker: BrokerSettings) -> ssl.SSLContext:
    """A client TLS context: the brokers' CA (or the system's), the client certificate if any."""
    from aiokafka.helpers import create_ssl_context

    context = create_ssl_context(cafile=broker.ssl_cafile or None, certfile=broker.ssl_certfile or None,
                                 keyfile=broker.ssl_keyfile or None)  # fmt: skip
    context.check_hostname = broker.ssl_check_hostname
    return context


def _faust_credentials(broker: BrokerSettings, sasl: bool, tls: bool):
    import faust

    context = ssl_context(broker) if tls else None
    if sasl:  # faust picks SASL_SSL when given a context, SASL_PLAINTEXT otherwise
        return faust.SASLCredentials(username=broker.sasl_username, password=broker.sasl_password,
                                     ssl_context=context, mechanism=broker.sasl_mechanism)  # fmt: skip
    return faust.SSLCredentials(context) if tls else None
