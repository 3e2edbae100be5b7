"""An app that forgot its Kafka producer: ``postfork doctor`` must name it by its line."""

import os

from confluent_kafka import Producer

import postfork

CONF = {"bootstrap.servers": os.environ["KAFKA_BOOTSTRAP"], "log_level": 3}

events = Producer(CONF)  # finding: client
events.list_topics(timeout=10)
audit = postfork.local(lambda: Producer(CONF))  # one per process: never inherited
