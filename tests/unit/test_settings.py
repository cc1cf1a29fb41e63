from __future__ import annotations

import pytest

from streaming.errors import ConfigError
from streaming.io.kafka import client_config
from streaming.settings import Settings, env_name, parse_assignments


def test_defaults_use_embedded_services_on_loopback() -> None:
    s = Settings.load(env={})
    assert s.kafka.bootstrap_servers == "" and s.redis.url == ""
    assert s.runtime.bind_host == "127.0.0.1"
    assert s.topics.events == "events" and s.topics.model_updates == "model-updates"


def test_environment_and_conventional_aliases() -> None:
    s = Settings.load(env={
        "KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
        "REDIS_URL": "redis://r:6379/1",
        "STREAMREC_TOPICS_EVENTS_PARTITIONS": "12",
        "STREAMREC_TRAINER_PUBLISH_INTERVAL_S": "2.5",
    })
    assert s.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert s.redis.url == "redis://r:6379/1"
    assert s.topics.events_partitions == 12
    assert s.trainer.publish_interval_s == 2.5


def test_precedence_default_env_override() -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": "alias:1", "STREAMREC_KAFKA_BOOTSTRAP_SERVERS": "specific:2"}
    assert Settings.load(env=env).kafka.bootstrap_servers == "specific:2"
    s = Settings.load(env=env, overrides={"kafka.bootstrap_servers": "cli:3"})
    assert s.kafka.bootstrap_servers == "cli:3"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"topics.events_partitions": "many"}, "expected int"),
        ({"topics.events_partitions": "0"}, "must be > 0"),
        ({"kafka.security_protocol": "TLS"}, "security_protocol"),
        ({"kafka.security_protocol": "SASL_SSL"}, "sasl_mechanism is required"),
        ({"redis.url": "http://x"}, "redis://"),
        ({"nope.field": "1"}, "unknown setting"),
        ({"topics.dlq": "events"}, "distinct"),
        ({"stream.negative_sources": "all"}, "trending or candidates"),
        ({"model.id_map_policy": "fifo"}, "lru or lfu"),
        ({"stream.negative_sources": "candidates", "stream.negative_sampling": "popularity"},
         "samples uniformly"),
    ],
)
def test_invalid_settings_are_rejected_with_the_key(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.load(env={}, overrides=overrides)


def test_secrets_are_redacted_and_not_in_repr() -> None:
    s = Settings.load(env={"STREAMREC_KAFKA_SASL_PASSWORD": "hunter2",
                           "STREAMREC_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                           "STREAMREC_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"})
    assert s.redacted()["kafka.sasl_password"] == "***"
    assert "hunter2" not in repr(s)


def test_security_options_pass_through_to_librdkafka() -> None:
    s = Settings.load(env={}, overrides={
        "kafka.bootstrap_servers": "b:9093", "kafka.security_protocol": "SASL_SSL",
        "kafka.sasl_mechanism": "SCRAM-SHA-512", "kafka.sasl_username": "app",
        "kafka.sasl_password": "pw", "kafka.ssl_ca_location": "/etc/ca.pem",
    })
    conf = client_config(s.kafka)
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert conf["sasl.username"] == "app" and conf["sasl.password"] == "pw"
    assert conf["ssl.ca.location"] == "/etc/ca.pem"
    assert "ssl.key.location" not in conf  # unset options are not sent


def test_client_config_without_broker_explains_what_to_do() -> None:
    with pytest.raises(ConfigError, match="KAFKA_BOOTSTRAP_SERVERS"):
        client_config(Settings.load(env={}).kafka)


def test_every_setting_has_an_env_name_and_doc() -> None:
    for key, _, f in Settings().items():
        assert env_name(key).startswith("STREAMREC_")
        assert f.metadata["doc"], key


def test_parse_assignments() -> None:
    assert parse_assignments(["a.b=1", "c.d=x=y"]) == {"a.b": "1", "c.d": "x=y"}
    with pytest.raises(ConfigError):
        parse_assignments(["novalue"])


def test_to_env_round_trips_every_setting() -> None:
    s = Settings.load(env={}, overrides={"kafka.bootstrap_servers": "k:1",
                                         "topics.events_partitions": "7",
                                         "trainer.publish_interval_s": "1.5"})
    assert Settings.load(env=s.to_env()) == s


def test_training_and_serving_take_feature_rules_from_one_place() -> None:
    from streaming.features.state import feature_config
    from streaming.ingest.processor import processor_config

    s = Settings.default().with_values({"stream.recent_items": "7",
                                        "stream.affinity_half_life_ms": "1800000"})
    fc = feature_config(s)
    assert (fc.recent_items, fc.affinity_half_life_ms) == (7, 1_800_000)
    assert processor_config(s).features == fc
